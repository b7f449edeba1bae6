"""The ASGI app: Starlette routes over one :class:`~.api.Dashboard`, the page and its static files.

``create_app(settings)`` connects in the app's lifespan, on the server's own loop; ``create_app(settings,
dashboard=opened)`` serves a dashboard its caller opened and closes (what ``process-comms dashboard`` does,
so a broker that is down is a one-line error before anything listens).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ._settings import LOOPBACK_NAMES, DashboardSettings, is_loopback
from .api import Dashboard, error_response

__all__ = ["STATIC", "create_app"]

#: The page, its script and its style sheet (no build step).
STATIC = Path(__file__).resolve().parent / "static"


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Routing errors (no such path, wrong method) as the API's JSON errors."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return error_response(str(detail), "NotFound" if status == 404 else f"HTTP{status}", status)


async def _index(_request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def create_app(settings: DashboardSettings, dashboard: Dashboard | None = None) -> Starlette:
    """The dashboard's ASGI app; with ``dashboard``, one its caller has opened (and will close)."""
    board = dashboard if dashboard is not None else Dashboard(settings)
    owned = dashboard is None

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if owned:
            await board.open()
        try:
            yield
        finally:
            if owned:
                await board.close()
            else:
                board.hub.end_streams()

    read = board.reading  # every read needs a token when the settings say so (_auth.py); the page itself does not
    routes = [
        Route("/", _index),
        Route("/api/login", board.login, methods=["POST"]),
        Route("/api/logout", board.logout, methods=["POST"]),
        Route("/api/info", read(board.info)),
        Route("/api/processes", read(board.processes)),
        Route("/api/processes/{pid}", read(board.process)),
        Route("/api/processes/{pid}/{action}", board.act, methods=["POST"]),
        Route("/api/queues", read(board.queues)),
        Route("/api/events", read(board.events)),
        Route("/metrics", read(board.prometheus)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = []
    if is_loopback(board.settings.host):
        # bound to loopback, answer only to loopback names: a rebinding DNS name cannot reach the API
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_NAMES)))
    app = Starlette(
        routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={HTTPException: _http_error}
    )
    app.state.dashboard = board
    return app
