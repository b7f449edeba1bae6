"""The floor: a bare aio-pika request/reply echo server in its own OS process, for ``benchmarks/run.py``.

It consumes ``[rpc].echo`` on a topic exchange (no-ack, like kiwipy's RPC queues) and publishes a fixed
reply of the size of a status reply to the request's ``reply_to`` on the same exchange (the key is the
reply queue's name, as kiwipy routes replies), without publisher confirms. No codec, no dispatch.
Prints ``READY``; exits on SIGTERM/SIGINT or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import aio_pika

from benchmarks.common import serve_until_stopped

ECHO_KEY = "[rpc].echo"


async def serve(url: str, exchange_name: str, reply_size: int, stopped: asyncio.Event) -> None:
    connection = await asyncio.wait_for(aio_pika.connect(url), 15)
    try:
        channel = await connection.channel(publisher_confirms=False)
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, auto_delete=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=ECHO_KEY)
        reply_body = b"x" * reply_size

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if message.reply_to:
                await exchange.publish(
                    aio_pika.Message(reply_body, correlation_id=message.correlation_id),
                    routing_key=message.reply_to,
                    mandatory=False,
                )

        await queue.consume(on_message, no_ack=True)
        print(f"READY {os.getpid()}", flush=True)
        await stopped.wait()
    finally:
        await asyncio.wait_for(connection.close(), 10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--reply-size", type=int, default=300)
    args = parser.parse_args()

    return serve_until_stopped(lambda stopped: serve(args.url, args.exchange, args.reply_size, stopped))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
