"""The documentation site: its runnable examples run, and the README's links lead somewhere.

``.ci/run`` also builds the site with warnings as errors (``sphinx-build -W docs ...``); this module needs only
the library, so it runs on every interpreter of the matrix.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN_TIMEOUT = 60
#: A ```python block right after this comment is run as a script, on the embedded default (no broker).
MARKER = "<!-- runnable -->"
_BLOCK = re.compile(re.escape(MARKER) + r"\s*\n```python\n(.*?)\n```", re.DOTALL)


def _runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in sorted(DOCS.rglob("*.md")):
        for number, match in enumerate(_BLOCK.finditer(page.read_text()), 1):
            blocks.append((f"{page.relative_to(DOCS)}#{number}", match.group(1)))
    return blocks


BLOCKS = _runnable_blocks()


def test_the_pages_have_runnable_examples() -> None:
    pages = {name.split("#")[0] for name, _ in BLOCKS}
    assert {"quickstart.md", "guides/script.md", "guides/notebook.md", "guides/service.md"} <= pages
    for page in DOCS.rglob("*.md"):  # a marker not followed by a python block would silently test nothing
        assert page.read_text().count(MARKER) == len(_BLOCK.findall(page.read_text())), page


@pytest.mark.parametrize(("name", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_runnable_example(name: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr


def test_readme_links_lead_to_files() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?!https?://|#)[^)#\s]+)(?:#[^)]*)?\)", readme)
    assert any(target.startswith("docs/") for target in targets)
    for target in targets:
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_readme_sections_moved_to_the_site_keep_their_content() -> None:
    # the README shrank to its first five minutes; what it said about these lives on in the site
    for page, phrase in (
        ("fleet.md", "x-delivery-limit"),
        ("fleet.md", "consumer_timeout = 604800000"),
        ("security.md", "worker user"),
        ("security.md", "ssl_context=context"),
        ("performance.md", "Where the time goes"),
        ("migrating.md", "Deliberately different, and why"),
    ):
        assert phrase in (DOCS / page).read_text(), (page, phrase)
