"""What a dashboard is given: the broker, the installation's names, its deadline and who may act."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from .. import defaults
from ..errors import ProcessCommsError
from ..urls import mask_url, split_urls

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "ENV_READ_TOKEN",
    "ENV_TOKEN",
    "DashboardError",
    "DashboardSettings",
    "is_loopback",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8642
#: Seconds any call the dashboard makes (a records query, an action, a queue inspection) may take.
DEFAULT_TIMEOUT = 10.0
#: The environment variable that gives the token when ``--token`` does not.
ENV_TOKEN = "PROCESS_COMMS_DASHBOARD_TOKEN"
#: The environment variable that gives the read-only token when ``--read-token`` does not.
ENV_READ_TOKEN = "PROCESS_COMMS_DASHBOARD_READ_TOKEN"
#: Host names a loopback-bound dashboard answers to (a guard against DNS rebinding).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


class DashboardError(ProcessCommsError, ValueError):
    """The dashboard cannot start as configured (e.g. bound beyond loopback without a token)."""


def is_loopback(host: str) -> bool:
    """True if ``host`` (a name or an address) is only reachable from this machine."""
    name = host.strip().strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _secrets(urls: Sequence[str]) -> list[str]:
    found: set[str] = set()
    for url in urls:
        try:
            parts = urlsplit(url)
            user, password = parts.username, parts.password
        except ValueError:
            continue
        # a password equal to the user name is no secret: scrubbing it would mangle every masked URL
        if password and password != user:
            found |= {password, unquote(password)}
    return sorted(found, key=len, reverse=True)


@dataclass(frozen=True)
class DashboardSettings:
    """The dashboard's configuration; ``check()`` refuses an unsafe one."""

    broker: str | Sequence[str]
    message_exchange: str = defaults.MESSAGE_EXCHANGE
    task_exchange: str = defaults.TASK_EXCHANGE
    task_queue: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    host: str = DEFAULT_HOST
    token: str | None = None
    #: A second token that may read (the records, the event stream, the metrics) but not act.
    read_token: str | None = None
    testing_mode: bool = False
    _secrets: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_secrets", _secrets(self.urls))

    @property
    def urls(self) -> list[str]:
        """The broker address(es), one URL each."""
        return split_urls(self.broker)

    @property
    def task_queue_name(self) -> str:
        """The task queue: as given, else the task exchange's name (as the library does)."""
        return self.task_queue or self.task_exchange

    @property
    def masked_broker(self) -> str:
        """The broker URL(s) as a page may show them: passwords replaced by ``***``."""
        return ",".join(mask_url(url) for url in self.urls)

    @property
    def actions_need_token(self) -> bool:
        """True when pause/play/kill must carry the bearer token (a token is set)."""
        return bool(self.token)

    @property
    def reads_need_token(self) -> bool:
        """True when every read (records, events, queues, metrics) must carry a token too: bound beyond loopback
        with a token, or a read-only token is set; on loopback with no read token, reads are open."""
        return bool(self.token) and (not is_loopback(self.host) or bool(self.read_token))

    def check(self) -> DashboardSettings:
        """Raise :class:`DashboardError` if bound beyond loopback with no token; return self."""
        if not is_loopback(self.host) and not self.token:
            raise DashboardError(
                f"the dashboard would listen on {self.host!r}, beyond this machine, without a token: "
                f"give --token or set {ENV_TOKEN} (actions then need 'Authorization: Bearer <token>')"
            )
        if self.read_token and not self.token:
            raise DashboardError("a read-only token needs the full one too: give --token with --read-token")
        if self.read_token and self.token and self.read_token == self.token:
            raise DashboardError("the read-only token must differ from the token that may act")
        if not self.timeout > 0:
            raise DashboardError(f"the deadline must be greater than 0 seconds, got {self.timeout!r}")
        return self

    def scrub(self, text: str) -> str:
        """``text`` with the broker URL(s) masked and any broker password replaced by ``***``."""
        for url in self.urls:
            text = text.replace(url, mask_url(url))
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @staticmethod
    def token_from_env(token: str | None, variable: str = ENV_TOKEN) -> str | None:
        """``token``, else the environment's ``variable`` (:data:`ENV_TOKEN`), else None."""
        return token or os.environ.get(variable) or None
