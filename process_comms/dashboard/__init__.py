"""The ``process-comms dashboard``: a live web page and an HTTP API over one asyncio controller (docs/dashboard.md).

It needs only the broker: process records come from the fleet's workers (``list_processes``,
``get_process``; with ``--store URL`` or a profile's store, from that store, read-only, when no worker
answers), live changes from the ``state_changed.*`` broadcasts, queue depth from a passive
declare. Install it from a clone with ``pip install '.[dashboard]'``; run it with
``process-comms --broker URL dashboard [--host 127.0.0.1] [--port 8642] [--token T] [--read-token R]``.

The HTTP API (JSON; pids as strings; every call bounded by the dashboard's deadline)::

    GET  /api/info                      broker (password masked), names, deadline, whether actions need a token
    GET  /api/processes                 ?state=S (repeatable) &active=1 &class=module:Name &label=TEXT
                                        &sort=age|state|class|label &reverse=1 &since=EPOCH
                                        &limit=N (1-1000, 100) &cursor=C | &offset=M
                                        -> {"processes": [summary...], "offset", "limit", "has_more", "next"}
                                        summary: pid, class, state_name, paused, status, progress, host, label,
                                        error ("Type: message"), ctime, mtime, live; read from the store (no
                                        worker answered): also "source": "store" and "source_reason", on the
                                        page and each row
    GET  /api/processes/{pid}           -> the whole record: history (event, time, message), inputs, outputs,
                                        exception (type, message, traceback), log lines (and "source",
                                        "source_reason" when read from the store)
    POST /api/processes/{pid}/pause     body (optional) {"message": TEXT}      -> {"pid", "action", "result": bool}
    POST /api/processes/{pid}/play                                             -> {"pid", "action", "result": bool}
    POST /api/processes/{pid}/kill      body (optional) {"message": TEXT, "force": bool}
                                        (a body: at most _body.MAX_BODY_BYTES, _body.MAX_BODY_DEPTH deep, else 400)
    POST /api/login                     {"token": T} -> {"role": "act"|"read"} and the session cookie
    POST /api/logout                    forget the session cookie
    GET  /api/queues                    -> {"queues": [{"queue", "exists", "messages", "consumers"}],
                                            "workers": {"available", "within", "rows": [list_workers rows]}}
    GET  /api/events                    server-sent events: ``state`` {pid, from, to, time} for each
                                        ``state_changed`` broadcast, ``action`` {pid, action, result} for each
                                        action taken through this dashboard
    GET  /metrics                       Prometheus text format (prometheus_client)

Errors are ``{"error": "...", "error_type": "ProcessUnreachable"}`` with 400 (bad input, ``InvalidPid``, a body
too large or too deep), 401 (no or wrong token), 403 (cross-site request, an action with the read-only token),
404 (``ProcessUnreachable``), 422 (``TaskRejected``), 502 (``RemoteError``), 503 (broker unavailable or closed,
``StoreUnavailable``, no worker up and no store), 504 (``TimeoutError``), 500 (anything else).

Safe by default: it binds to 127.0.0.1 (and then answers only to loopback host names); bound anywhere
else it refuses to start without a token, which every request but the page must then carry (reads too) as
``Authorization: Bearer <token>`` or the page's session cookie (``_auth.py``); on loopback only actions need it
(reads too once a read-only token is set). A POST from another origin is refused. No broker password
appears in a page, a log line or an error.
"""

from __future__ import annotations

from ._settings import DEFAULT_PORT, DashboardError, DashboardSettings, is_loopback

__all__ = ["DEFAULT_PORT", "DashboardError", "DashboardSettings", "create_app", "is_loopback"]


def __getattr__(name: str) -> object:
    """``create_app`` imports Starlette: only when asked for, so the settings work without the extra."""
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
