"""What the command line prints: one line per error or log record, the broker password never in it."""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO
from urllib.parse import unquote, urlsplit

from ..urls import mask_url

__all__ = ["PROG", "Scrubber", "mask_urls", "print_error", "setup_logging"]

#: The command's name, as errors start with it.
PROG = "process-comms"

_URL_PASSWORD = re.compile(r"(amqps?://[^:/@\s]*:)[^@\s]*@")


def mask_urls(text: str) -> str:
    """``text`` with the password of every amqp(s):// URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


class Scrubber:
    """Removes the broker password from any text before it is printed or logged."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.urls = [one.strip() for one in url.split(",") if one.strip()] if url else []  # a cluster's nodes
        secrets: set[str] = set()
        for one in self.urls:
            try:
                parts = urlsplit(one)
                user, password = parts.username, parts.password
            except ValueError:
                user = password = None
            # a password equal to the user name is no secret: scrubbing it would mangle every masked URL
            if password and password != user:
                secrets |= {password, unquote(password)}
        self.secrets: list[str] = sorted(secrets, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for one in [self.url, *self.urls] if self.url else []:
            text = text.replace(one, mask_url(one))
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return mask_urls(text)


def print_error(message: str, scrub: Scrubber, stream: TextIO) -> None:
    """``process-comms: error: ...`` in one line on ``stream``, password scrubbed."""
    print(f"{PROG}: error: {scrub(' '.join(message.split()))}", file=stream, flush=True)


class _OneLineFormatter(logging.Formatter):
    """Log records as single lines with the password scrubbed (tracebacks only if ``tracebacks``)."""

    def __init__(self, fmt: str, scrub: Scrubber, tracebacks: bool) -> None:
        super().__init__(fmt)
        self._scrub = scrub
        self._tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if not self._tracebacks:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return self._scrub(super().format(record))


def setup_logging(level: str, scrub: Scrubber, tracebacks: bool) -> None:
    """Log to stderr at ``level``, one line a record, password scrubbed."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if tracebacks else f"{PROG}: log: %(name)s: %(message)s"
    handler.setFormatter(_OneLineFormatter(fmt, scrub, tracebacks))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
