"""Execute examples/notebook.ipynb in a real Jupyter kernel against the real broker, and check its outputs.

The kernel is this interpreter (a kernel spec written to a temporary directory), so the test needs no
``ipykernel install`` and works right after ``pip install -e '.[test]'``.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

import process_comms
from process_comms.client.display import Progress, status_table
from tests.conftest import delete_broker_objects

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "notebook.ipynb"
KERNEL_NAME = "process-comms-test"


@pytest.fixture
def prefix(broker_url: str) -> Iterator[str]:
    """Unique exchange/queue names; the durable task queue and the exchanges are deleted afterwards."""
    prefix = f"pc-notebook-{uuid.uuid4().hex[:10]}"
    yield prefix
    delete_broker_objects(prefix)


def kernel_manager(tmp_path: Path) -> KernelManager:
    """A kernel manager for this very interpreter, whatever kernels are (or are not) installed."""
    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    write_kernel_spec(spec_dir, overrides={"display_name": "process_comms tests"})
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
    assert Path(specs.get_kernel_spec(KERNEL_NAME).argv[0]) == Path(sys.executable)
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def outputs_of(nb: Any) -> tuple[str, list[str], list[str]]:
    """All stream text, every text/html of display_data and execute_result outputs, and the error names."""
    text, html, errors = [], [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                text.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                if "text/html" in out.data:
                    html.append(out.data["text/html"])
            elif out.output_type == "error":
                errors.append(out.ename)
    return "".join(text), html, errors


def execute_notebook(tmp_path: Path, extra_env: dict[str, str]) -> tuple[str, list[str]]:
    """Run every cell in a fresh kernel started in examples/ (as Jupyter would); return stdout text and HTML."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "outputs are stored"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESS_COMMS_")}
    env.update(extra_env)
    client = NotebookClient(
        nb,
        km=kernel_manager(tmp_path),
        timeout=90,  # per cell
        startup_timeout=60,
        resources={"metadata": {"path": str(ROOT / "examples")}},
    )
    client.execute(env=env)  # raises CellExecutionError if any cell fails
    text, html, errors = outputs_of(nb)
    assert errors == []
    return text, html


def check_outputs(text: str, html: list[str]) -> None:
    assert re.search(r"countdown outputs: \{.*'liftoff': True.*\}", text)
    assert "paused: True" in text and "killed: True" in text and "played: True" in text
    assert "awaited status: " in text and "| paused: False" in text
    assert re.search(r"awaited outputs: \{.*'steps': 2.*\}", text)
    assert "all lifted off: True" in text
    assert "killed: [True, True]" in text
    assert text.rstrip().endswith("NOTEBOOK DONE")

    tables = [h for h in html if 'class="process-comms-status"' in h]
    assert len(tables) == 5, html
    assert tables[0].count("<tr data-pid=") == 3 and "examples.processes:LongWaiter" in tables[0]
    assert "coffee break" in tables[1]
    # the killed process has ended: its status comes from its record, a failure with its reason, not an error
    assert "<td>killed</td>" in tables[1] and "not needed" in tables[1]
    assert '<tr class="failed"' in tables[1]
    assert all('<tr class="error"' not in table for table in tables)
    # ended processes stay findable: the finished countdowns are successes, never red rows
    assert re.search(r"listed: \[.*'finished'.*'killed'.*\]", text)
    assert tables[4].count('<tr class="finished"') == 7 and tables[4].count('<tr class="failed"') == 1
    progress = [h for h in html if "process-comms-progress" in h]
    assert any("3/3 done" in h for h in progress) and any("5/5 done" in h for h in progress)


def test_notebook_runs_against_the_broker(broker_url: str, prefix: str, tmp_path: Path) -> None:
    text, html = execute_notebook(tmp_path, {"PROCESS_COMMS_BROKER": broker_url, "PROCESS_COMMS_PREFIX": prefix})
    assert "broker: RabbitMQ" in text and prefix in text
    check_outputs(text, html)


def test_notebook_runs_on_the_embedded_default(tmp_path: Path) -> None:
    text, html = execute_notebook(tmp_path, {})
    assert "broker: embedded default" in text
    check_outputs(text, html)


# -- the display helpers the notebook uses, outside a notebook ----------------------------------------
def test_status_table_text_and_html() -> None:
    pid = uuid.uuid4()
    status = {"state": "ProcessState.WAITING", "paused": True, "status": "<b>hold</b>", "class": "m:Cls", "pid": pid}
    table = status_table({pid: status, "gone": process_comms.ProcessUnreachable("process gone is not reachable")})
    lines = str(table).splitlines()
    assert lines[0].split() == ["pid", "state", "paused", "status", "class"]
    assert lines[2].split() == [str(pid), "waiting", "yes", "<b>hold</b>", "m:Cls"]
    assert lines[3].split()[:2] == ["gone", "error"] and "process gone is not reachable" in lines[3]
    html = table._repr_html_()
    assert html.startswith('<table class="process-comms-status">') and "&lt;b&gt;hold&lt;/b&gt;" in html
    assert '<tr class="error" data-pid="gone">' in html and "<b>" not in html


def test_status_table_waits_for_futures_under_one_deadline() -> None:
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()
    done.set_result({"state_name": "running", "paused": False, "status": None, "class": "m:C"})
    failed: concurrent.futures.Future[Any] = concurrent.futures.Future()
    failed.set_exception(process_comms.ProcessUnreachable("nobody home"))
    never: concurrent.futures.Future[Any] = concurrent.futures.Future()
    table = status_table({"a": done, "b": failed, "c": never}, timeout=0.2)
    assert [row[:2] for row in table.rows] == [("a", "running"), ("b", "error"), ("c", "error")]
    assert table.rows[1][3] == "nobody home" and "no answer within 0.2 s" in table.rows[2][3]


def test_progress_writes_text_and_returns_outcomes() -> None:
    ok: concurrent.futures.Future[Any] = concurrent.futures.Future()
    ok.set_result(1)
    bad: concurrent.futures.Future[Any] = concurrent.futures.Future()
    bad.set_exception(ValueError("no"))
    never: concurrent.futures.Future[Any] = concurrent.futures.Future()
    stream = io.StringIO()
    outcomes = Progress("jobs", stream=stream, notebook=False).track([ok, bad, never], timeout=0.3)
    assert outcomes[0] == 1 and isinstance(outcomes[1], ValueError)
    assert isinstance(outcomes[2], process_comms.TimeoutError)
    assert stream.getvalue().splitlines()[-1].startswith("jobs: [################--------] 2/3 done, 1 failed")
    by_key = Progress(stream=io.StringIO(), notebook=False).track({"x": ok}, timeout=1)
    assert by_key == {"x": 1}


def test_display_does_not_need_ipython() -> None:
    code = (
        "import sys; sys.modules['IPython'] = None\n"  # any `import IPython...` now fails
        "import concurrent.futures as cf\n"
        "from process_comms.display import Progress, status_table\n"
        "f = cf.Future(); f.set_result('ok')\n"
        "print(Progress('w').track([f], timeout=5))\n"
        "print(status_table({'p': {'state_name': 'running'}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("['ok']") and "running" in done.stdout
    assert "w: [########################] 1/1 done" in done.stderr
