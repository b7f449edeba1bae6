"""pamqp's lenient short-string decoder is ours alone (process_comms/transports/rmq/_connection.py): our
connections survive a peer's malformed property, every other pamqp user decodes as pamqp does."""

from __future__ import annotations

import asyncio

import pamqp.decode
import pytest

import process_comms
from process_comms.transports.rmq import _connection as _frames

NOT_UTF8 = b"\x02\xff\xfe"  # a short string of two bytes that are not UTF-8


def test_outside_our_connections_short_strings_decode_strictly() -> None:
    _frames.install()
    with pytest.raises(UnicodeDecodeError):
        pamqp.decode.short_str(NOT_UTF8)
    with _frames.lenient():
        assert pamqp.decode.short_str(NOT_UTF8) == (3, "\udcff\udcfe")
    with pytest.raises(UnicodeDecodeError):
        pamqp.decode.METHODS["shortstr"](NOT_UTF8)
    assert pamqp.decode.short_str(b"\x02ok") == (3, "ok")


@pytest.mark.broker
def test_connecting_a_communicator_leaves_other_pamqp_users_strict(broker_url: str, names: dict[str, str]) -> None:
    async def main() -> None:
        async with process_comms.RmqCommunicator(broker_url, testing_mode=True, **names) as comm:
            await comm.broadcast_send("connected")
            with pytest.raises(UnicodeDecodeError):
                pamqp.decode.short_str(NOT_UTF8)

    asyncio.run(main())
