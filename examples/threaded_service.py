"""A small HTTP JSON service whose request threads share ONE RemoteProcessThreadController.

Run from the repository root::

    python examples/threaded_service.py [--port 8080] [--broker URL] [--prefix NAME] [--with-worker]

Without a broker URL (and without ``$PROCESS_COMMS_BROKER``) it runs on the embedded default with an
in-process worker: no broker needed. With ``--broker`` it is a client of RabbitMQ; workers run elsewhere
(``examples/remote_worker.py``), or in this process too with ``--with-worker``. ``--port 0`` picks a free
port. It prints ``listening on <port>`` when it serves, and stops gracefully on SIGTERM or Ctrl-C.

Endpoints (JSON in, JSON out)::

    POST /launch        {"class": "examples.processes:Countdown", "inputs": {...}, "nowait": true,
                         "persist": false, "timeout": 30}        -> {"pid": ...} or {"outputs": {...}}
    GET  /status/<pid>                                           -> the status dict
    POST /pause/<pid>   {"message": "..."} (optional)            -> {"pid": ..., "paused": true}
    POST /play/<pid>                                             -> {"pid": ..., "played": true}
    POST /kill/<pid>    {"message": "...", "force": false}       -> {"pid": ..., "killed": true}

Every call takes ``?timeout=SECONDS``. Errors are ``{"error": <type>, "message": ...}`` with a
meaningful code: 400 rejected or malformed (unknown class, class not allowed, bad JSON, bad pid),
404 unreachable (no worker holds the pid: it never ran or has ended), 409 killed (a waited-for launch
was killed), 502 the process failed, 503 the broker is unavailable, 504 no answer in time.

Each handler thread calls the shared controller, which returns a future at once; the thread then
blocks on that future (bounded), never on the broker connection: no locks, no per-thread clients.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import sys
import threading
import urllib.parse
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import process_comms
import process_comms.urls

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ALLOWED = ("examples.processes",)
MAX_BODY = 1 << 20


class BadRequest(ValueError):
    """The request itself is malformed (400)."""


class NotFound(LookupError):
    """No such endpoint (404)."""


def error_code(exc: BaseException) -> int:
    """The HTTP status for an error raised by a controller call (or by request parsing)."""
    if isinstance(exc, NotFound | process_comms.ProcessUnreachable):
        return HTTPStatus.NOT_FOUND
    if isinstance(exc, process_comms.TimeoutError | concurrent.futures.TimeoutError):
        return HTTPStatus.GATEWAY_TIMEOUT
    if isinstance(
        exc,
        BadRequest
        | process_comms.TaskRejected
        | process_comms.LoadError
        | process_comms.InvalidPid
        | process_comms.EncodeError
        | process_comms.DecodeError,
    ):
        return HTTPStatus.BAD_REQUEST
    if isinstance(exc, process_comms.ProcessKilled):
        return HTTPStatus.CONFLICT
    if isinstance(exc, process_comms.BrokerUnavailable | process_comms.CommunicatorClosed):
        return HTTPStatus.SERVICE_UNAVAILABLE
    if isinstance(exc, process_comms.RemoteError):
        return HTTPStatus.BAD_GATEWAY
    return HTTPStatus.INTERNAL_SERVER_ERROR


def unreachable_if_ended(exc: BaseException) -> BaseException:
    """An RPC that reaches a worker while the route of its (just ended) process is being removed fails with
    ``RemoteError("LookupError: no subscriber ...")`` instead of ``ProcessUnreachable``: same meaning."""
    if isinstance(exc, process_comms.RemoteError) and exc.remote_type == "LookupError":
        return process_comms.ProcessUnreachable(f"the process is not reachable (it has ended): {exc.message}")
    return exc


def to_json(value: Any) -> bytes:
    """Encode an answer; UUIDs and other non-JSON values become strings."""
    return json.dumps(value, default=str, sort_keys=True).encode()


class ProcessService:
    """The request logic, independent of HTTP plumbing: ``handle(method, path, body) -> (code, answer)``."""

    def __init__(
        self,
        controller: process_comms.RemoteProcessThreadController,
        allowed_modules: Iterable[str] = DEFAULT_ALLOWED,
        default_timeout: float = 30.0,
    ) -> None:
        """Requests may launch classes from ``allowed_modules`` only (checked here before anything is sent)."""
        self.controller = controller
        self.loader = process_comms.AllowListLoader(allowed_modules)
        self.default_timeout = default_timeout

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """Answer one request; every error becomes ``{"error", "message"}`` with its HTTP code."""
        try:
            return HTTPStatus.OK, self._route(method, path, body)
        except Exception as exc:  # noqa: BLE001 - every failure is an answer, never a dropped connection
            error = unreachable_if_ended(exc)
            return error_code(error), {"error": type(error).__name__, "message": str(error)}

    def _route(self, method: str, path: str, body: bytes) -> Any:
        url = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(url.query)
        timeout = self._timeout(query)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        payload = self._json(body)
        match method, parts:
            case "POST", ["launch"]:
                return self._launch(payload, timeout)
            case "GET", ["status", pid]:
                return self._wait(self.controller.get_status(pid, timeout), timeout)
            case "POST", ["pause", pid]:
                paused = self._wait(self.controller.pause_process(pid, payload.get("message"), timeout), timeout)
                return {"pid": pid, "paused": paused}
            case "POST", ["play", pid]:
                return {"pid": pid, "played": self._wait(self.controller.play_process(pid, timeout), timeout)}
            case "POST", ["kill", pid]:
                force = bool(payload.get("force", False))
                killed = self._wait(self.controller.kill_process(pid, payload.get("message"), force, timeout), timeout)
                return {"pid": pid, "killed": killed}
        raise NotFound(f"no endpoint {method} {url.path}")

    def _timeout(self, query: dict[str, list[str]]) -> float:
        if "timeout" not in query:
            return self.default_timeout
        try:
            value = float(query["timeout"][-1])
        except ValueError:
            raise BadRequest(f"timeout must be a number of seconds, not {query['timeout'][-1]!r}")
        if not 0 < value <= 3600:
            raise BadRequest("timeout must be between 0 and 3600 seconds")
        return value

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        if not body.strip():
            return {}
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise BadRequest(f"the body is not JSON: {exc}")
        if not isinstance(payload, dict):
            raise BadRequest("the body must be a JSON object")
        return payload

    def _launch(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        name = payload.get("class")
        if not isinstance(name, str):
            raise BadRequest('"class" must be a string "module:Name"')
        if not self.loader.is_allowed(name):  # refused here, before anything is sent (LoadError if malformed)
            raise process_comms.LoadError(
                f"{name!r} is not allowed: allowed modules are {list(self.loader.allowed_modules)}"
            )
        inputs = payload.get("inputs", {})
        if not isinstance(inputs, dict):
            raise BadRequest('"inputs" must be a JSON object')
        nowait = bool(payload.get("nowait", False))
        future = self.controller.launch_process(
            name,
            init_kwargs={"inputs": inputs},
            persist=bool(payload.get("persist", False)),
            loader=self.loader,
            nowait=nowait,
            timeout=timeout,
        )
        result = self._wait(future, timeout)
        return {"pid": result} if nowait else {"outputs": result}

    @staticmethod
    def _wait(future: concurrent.futures.Future[Any], timeout: float) -> Any:
        # the future has its own deadline (``timeout``) and fails with process_comms.TimeoutError;
        # the margin only guards against a future that would never resolve
        return future.result(timeout + 5)


def make_handler(service: ProcessService, verbose: bool = False) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``service`` (one instance per request, on the server's threads)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "process-comms-example/0.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            code: int
            if length > MAX_BODY:
                code, answer = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "BadRequest", "message": "too large"}
            else:
                code, answer = service.handle(self.command, self.path, self.rfile.read(length) if length else b"")
            data = to_json(answer)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            if verbose:
                super().log_message(format, *args)

    return Handler


class Server(ThreadingHTTPServer):
    """One thread per request; a listen backlog for bursts of concurrent clients (the default is 5)."""

    daemon_threads = True
    request_queue_size = 128


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HTTP JSON service over one shared thread controller.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument(
        "--broker",
        default=os.environ.get("PROCESS_COMMS_BROKER") or None,
        help="amqp:// URL (default: $PROCESS_COMMS_BROKER, else the embedded default with an in-process worker)",
    )
    parser.add_argument("--prefix", default=None, help="prefix of the exchange and queue names on the broker")
    parser.add_argument("--with-worker", action="store_true", help="also run a worker in this process (broker)")
    parser.add_argument("--allow", action="append", help="module whose processes may be launched (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    allowed = args.allow or list(DEFAULT_ALLOWED)

    names: dict[str, Any] = {}
    if args.prefix:
        names = {
            "message_exchange": f"{args.prefix}.messages",
            "task_exchange": f"{args.prefix}.tasks",
            "task_queue": f"{args.prefix}.process.queue",
        }
    if args.broker is None and names:
        parser.error("--prefix applies to a broker only")
    comm = process_comms.connect(args.broker, **names)
    worker: process_comms.Worker | None = None
    if args.broker is None:  # the embedded bus lives in this communicator: the worker must share it
        worker = process_comms.Worker(communicator=comm, allowed_modules=allowed).start()
    elif args.with_worker:
        worker = process_comms.Worker(args.broker, allowed_modules=allowed, **names).start()

    controller = process_comms.RemoteProcessThreadController(comm)
    server = Server((args.host, args.port), make_handler(ProcessService(controller, allowed), args.verbose))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve_forever, name="http-server", daemon=True)
    serving.start()
    where = "embedded default" if args.broker is None else process_comms.urls.mask_url(args.broker)
    print(f"listening on {server.server_address[1]} ({where})", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
        if worker is not None:
            worker.stop()
        controller.close()
    print("service stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
