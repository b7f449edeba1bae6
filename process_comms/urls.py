"""URL helpers shared by the broker and the persisters: credentials never reach logs or errors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

__all__ = ["mask_url", "split_urls"]


def split_urls(url: str | Sequence[str]) -> list[str]:
    """One or several broker URLs: a list as given, or one string split at commas (``"amqp://a,amqp://b"``).

    The comma form is what the command line and ``PROCESS_COMMS_BROKER`` take; blanks around a URL are
    dropped. An empty result raises ``ValueError``.
    """
    parts = [url] if isinstance(url, str) else list(url)
    urls = [piece.strip() for part in parts for piece in part.split(",") if piece.strip()]
    if not urls:
        raise ValueError("no broker URL given")
    return urls


def mask_url(url: str) -> str:
    """Return ``url`` with any password (in the user info or a ``password=`` query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    if not (at and colon) and query == parts.query:
        return url
    netloc = f"{user}:***@{hostport}" if at and colon else parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
