"""URL helpers shared by the broker and the persisters: credentials never reach logs or errors."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["mask_url"]


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
