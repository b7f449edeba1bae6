"""The worker subprocesses (``worker_pc.py``, ``worker_plumpy.py``, ``worker_raw.py``) and bounded closing."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    HERE,
    ROOT,
)


class Worker:
    """A worker subprocess that prints ``READY`` when it serves; stopped with bounded waits."""

    def __init__(self, name: str, script: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / script), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=str(ROOT),
            env=env,
        )

    def wait_ready(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker {self.name} did not become ready (log {self.log_path}):\n{tail}")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    continue
                buf += chunk
        if not buf.startswith(b"READY"):
            raise RuntimeError(f"worker {self.name} said {buf!r} instead of READY")

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    print(f"warning: worker {self.name} (pid {proc.pid}) did not exit", file=sys.stderr)
        if proc.stdout is not None:
            proc.stdout.close()
        self._log.close()


def close_bounded(fn: Callable[[], Any], timeout: float = 10.0) -> None:
    """Run a close function on a daemon thread and wait at most ``timeout`` seconds."""
    thread = threading.Thread(target=fn, daemon=True, name="bench-close")
    thread.start()
    thread.join(timeout)
