"""kiwipy's ``RmqThreadCommunicator.connect`` keywords for :func:`~.connect.connect`: replacing kiwipy's
communicator is one line (``kiwipy/rmq/threadcomms.py``; AiiDA's call is in
``aiida/brokers/rabbitmq/broker.py``). docs/migrating.md lists each keyword and what it becomes here.
"""

from __future__ import annotations

import dataclasses
import inspect
import urllib.parse
from collections.abc import Sequence
from typing import Any

import aio_pika

from ..wire.codec import Codec, FunctionCodec
from .rmq.communicator import RmqCommunicator

__all__ = ["Translated", "translate"]

#: ``connection_params`` keys (aio-pika's ``connect`` arguments) that make the URL.
_URL_PARTS = ("host", "port", "login", "password", "virtualhost", "ssl")


def _rmq_options() -> frozenset[str]:
    """The options :class:`~.rmq.RmqCommunicator` takes (its own and its connection's)."""
    params = inspect.signature(RmqCommunicator.__init__).parameters
    return frozenset(name for name, p in params.items() if p.kind is p.KEYWORD_ONLY) - {"codec"}


@dataclasses.dataclass
class Translated:
    """What kiwipy's keywords become: the URL, the codec, the back end's options, the kiwipy-mode send bound."""

    url: str | Sequence[str] | None
    codec: str | Codec | None
    options: dict[str, Any]
    send_timeout: float | None = None


def _url_of(params: Any) -> tuple[str, dict[str, Any]]:
    """The URL (and our options) of kiwipy's ``connection_params``: a URL, or aio-pika's ``connect`` keywords."""
    if isinstance(params, str):
        return params, {}
    if not isinstance(params, dict):
        raise TypeError(f"connection_params must be a URL or a dict, not {type(params).__name__}")
    params = dict(params)
    extra = {"ssl_options": params.pop("ssl_options")} if "ssl_options" in params else {}
    unknown = sorted(set(params) - {"url", *_URL_PARTS})
    if unknown:
        raise TypeError(f"connection_params keys {unknown} are not supported: use 'url' or {list(_URL_PARTS)}")
    if "url" in params:
        if set(params) & set(_URL_PARTS):
            raise TypeError("connection_params: give 'url' or its parts, not both")
        return str(params["url"]), extra
    quote = urllib.parse.quote
    scheme = "amqps" if params.get("ssl") else "amqp"
    user = f"{quote(str(params.get('login', 'guest')), safe='')}:{quote(str(params.get('password', 'guest')), safe='')}"
    host = params.get("host", "localhost")
    port = params.get("port", 5671 if params.get("ssl") else 5672)
    vhost = quote(str(params.get("virtualhost", "/")), safe="")
    return f"{scheme}://{user}@{host}:{port}/{vhost}", extra


def translate(url: str | Sequence[str] | None, codec: str | Codec | None, options: dict[str, Any]) -> Translated:
    """Turn kiwipy's ``connect`` keywords in ``options`` into ours; an unknown keyword is a TypeError."""
    options = dict(options)
    send_timeout = options.pop("async_task_timeout", None)
    if "connection_params" in options:
        params = options.pop("connection_params")
        if params is not None:
            if url is not None:
                raise TypeError("give url or connection_params, not both")
            url, extra = _url_of(params)
            options.update(extra)
    factory = options.pop("connection_factory", aio_pika.connect_robust)
    if factory not in (aio_pika.connect_robust, aio_pika.connect):
        raise TypeError("connection_factory: only aio_pika's connect_robust (our connection always reconnects)")
    if options.pop("task_prefetch_size", 0):
        raise ValueError("task_prefetch_size: RabbitMQ does not implement a size limit; only 0 (kiwipy's default)")
    encoder, decoder = options.pop("encoder", None), options.pop("decoder", None)
    if (encoder is None) != (decoder is None):
        raise TypeError("encoder and decoder go together: give both or neither")
    if encoder is not None:
        if codec is not None:
            raise TypeError("give codec or an encoder/decoder pair, not both")
        codec = FunctionCodec(encoder, decoder)
    if url is not None:
        unknown = sorted(set(options) - _rmq_options())
        if unknown:
            raise TypeError(
                f"connect() got unknown keyword(s) {unknown}; it takes {sorted(_rmq_options())} and kiwipy's"
                " connection_params, connection_factory, task_prefetch_size, encoder, decoder, async_task_timeout"
            )
    return Translated(url, codec, options, None if send_timeout is None else float(send_timeout))
