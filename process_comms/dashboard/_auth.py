"""Who may read and who may act: the dashboard's tokens, given as ``Authorization: Bearer <token>`` or (the page)
as a session cookie that ``POST /api/login`` sets.

Two roles: ``act`` (the ``--token``: everything) and ``read`` (the ``--read-token``: the records, the event
stream, the queues, the metrics; no action). When :attr:`~._settings.DashboardSettings.reads_need_token` is
False (loopback and no read token) anyone may read, as before. The cookie holds no token: it is the role and an
HMAC of it under a key made when the dashboard starts (so a restart ends every session); it is ``HttpOnly``
(no script reads it) and ``SameSite=Strict`` (no other site's page sends it). See
https://developer.mozilla.org/en-US/docs/Web/HTTP/Cookies#security.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal
from urllib.parse import urlsplit

from starlette.requests import Request

from ._settings import DashboardSettings

__all__ = ["ACT", "COOKIE", "READ", "Guard", "Role"]

Role = Literal["act", "read"]
ACT: Role = "act"
READ: Role = "read"
#: The session cookie's name.
COOKIE = "pc_session"


class Guard:
    """Tells a request's role from its bearer token or session cookie, and makes the cookie for a role."""

    def __init__(self, settings: DashboardSettings) -> None:
        self._settings = settings
        self._key = secrets.token_bytes(32)  # sessions last as long as this dashboard process

    def _sign(self, role: Role) -> str:
        return f"{role}.{hmac.new(self._key, role.encode(), hashlib.sha256).hexdigest()}"

    def role_of_token(self, given: str) -> Role | None:
        """The role ``given`` grants (compared in constant time), else None."""
        token, read_token = self._settings.token, self._settings.read_token
        if token and hmac.compare_digest(given.encode(), token.encode()):
            return ACT
        if read_token and hmac.compare_digest(given.encode(), read_token.encode()):
            return READ
        return None

    def role(self, request: Request) -> Role | None:
        """The role the request carries: its bearer token's, else its cookie's, else None."""
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            return self.role_of_token(header[len("Bearer ") :])
        cookie = request.cookies.get(COOKIE, "")
        for role in (ACT, READ):
            if hmac.compare_digest(cookie.encode(), self._sign(role).encode()):
                return role
        return None

    def may_read(self, request: Request) -> bool:
        """True if the request may read (reads are open, or it carries either token)."""
        return not self._settings.reads_need_token or self.role(request) is not None

    def may_act(self, request: Request) -> bool:
        """True if the request may pause, play or kill (actions are open, or it carries the full token)."""
        return not self._settings.actions_need_token or self.role(request) == ACT

    def cookie(self, role: Role) -> str:
        """The session cookie's value for ``role``."""
        return self._sign(role)

    @staticmethod
    def cross_site(request: Request) -> str | None:
        """The foreign ``Origin`` of a request another site's page made (a form needs no CORS preflight)."""
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return origin
        return None
