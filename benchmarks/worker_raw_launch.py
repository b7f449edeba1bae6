"""The launch-shaped floor's worker: bare AMQP doing what one launch's messages are, for ``benchmarks/run.py``.

A launch of a plumpy-compatible process (row d: ``launch_process(nowait=False)`` of a trivial process from our
controller to ``worker_pc.py``) passes these AMQP messages, seen with a spy queue bound ``#`` to both exchanges
and ``rabbitmqctl list_bindings`` (the properties are process_comms/transports/rmq/_topology.py's and
_connection.py's; kiwipy's wire: /work/shared/wire-protocol.md, sections 1 and 3):

1. the task, published by the client with publisher confirms, ``mandatory``, persistent, to the task exchange
   and from there to the durable task queue; delivered to this worker (manual ack);
2. ``queue.bind`` of the process's route ``[rpc].<pid>`` on the worker's exclusive RPC queue, with ``nowait``, on
   the channel of the worker's later publishes (process_comms/transports/rmq/_connection.py says why that is safe);
3. three ``state_changed`` broadcasts (created, running, finished) to ``[broadcast]`` on the message exchange,
   with our ``x-pc-*`` headers, delivered to every broadcast queue: in row d only the worker's own (the client
   subscribes to no broadcast then), where the worker drops them on the ``x-pc-subject`` header undecoded;
4. the task's ``basic.ack``, then the final reply to the caller's task reply queue (task exchange, routing key
   ``reply_to``), no confirm;
5. the route's ``queue.unbind`` (no ``nowait`` in AMQP 0-9-1: its ``unbind-ok`` is read), after the reply.

What a minimal client needs and nothing else: no codec (fixed bodies of the real messages' sizes, the pid pasted
in), no dispatch, no process. aio-pika declares and consumes, as in ``worker_raw.py``; the writes that wait for
nothing (the nowait bind, the unconfirmed publishes) go onto aiormq's write queue whole, without its channel lock
(which an unbind holds for a round trip), and the unbinds made meanwhile share round trips, as the library's own
do. Prints ``READY``; exits on SIGTERM/SIGINT or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from random import getrandbits
from typing import Any, cast

import aio_pika
import aio_pika.abc
import aiormq
import pamqp.commands
import yarl
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.common import FieldTable
from pamqp.header import ContentHeader

from benchmarks.common import serve_until_stopped

RPC_PREFIX = "[rpc]"
BROADCAST_KEY = "[broadcast]"
#: The three state changes of a trivial process, in the ``x-pc-subject`` header and the body (wire/states.py).
SUBJECTS = ("state_changed.None.created", "state_changed.created.running", "state_changed.running.finished")
#: The final reply of ``PcTrivial`` as the library encodes it (66 bytes with its host).
REPLY_BODY = b'{"result": {"ok": true}, "host": {"hostname": "vm", "pid": 8561}}\n'
# queue arguments: process_comms/defaults.py and transports/rmq/_topology.py
RPC_QUEUE_ARGS: FieldTable = {"x-queue-type": "classic", "x-message-ttl": 66_000, "x-expires": 60_000}
BROADCAST_QUEUE_ARGS: FieldTable = {"x-queue-type": "classic", "x-message-ttl": 66_000}
TESTING_TASK_QUEUE_ARGS: FieldTable = {"x-queue-type": "classic", "x-message-ttl": 604_800_000, "x-expires": 10_000}


def broadcast_body(pid: str, subject: str) -> bytes:
    """A ``state_changed`` broadcast's body as the library's YAML codec writes it (about 140 bytes)."""
    return f'{{"body": null, "sender": !uuid "{pid}", "subject": "{subject}", "correlation_id": null}}\n'.encode()


class Writer:
    """Frames put whole on one aiormq channel's connection write queue, in the order they were made."""

    def __init__(self, channel: aiormq.Channel, user_id: str | None) -> None:
        self.channel = channel
        self.user_id = user_id
        self.frame_max = channel.connection.connection_tune.frame_max
        self.unbinds: list[tuple[ChannelFrame, asyncio.Future[None]]] = []
        self.unbinder: asyncio.Task[None] | None = None

    async def write(self, frames: list[Any]) -> None:
        await self.channel.write_queue.put(ChannelFrame.marshall(channel_number=self.channel.number, frames=frames))

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        correlation_id: str | None = None,
        user_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Not mandatory, no confirm: ``basic.publish``, its content header and body, as aiormq marshals them."""
        properties = aiormq.spec.Basic.Properties(
            delivery_mode=1,
            correlation_id=correlation_id,
            user_id=user_id,
            headers=headers or {},
            message_id=f"{getrandbits(128):032x}",  # aiormq sets a random one on every publish
        )
        frames: list[Any] = [
            pamqp.commands.Basic.Publish(exchange=exchange, routing_key=routing_key),
            ContentHeader(body_size=len(body), properties=properties),
        ]
        chunk = self.frame_max - 8
        frames += [ContentBody(body[i : i + chunk]) for i in range(0, len(body), chunk)]
        await self.write(frames)

    async def bind_nowait(self, queue: str, exchange: str, routing_key: str) -> None:
        bind = pamqp.commands.Queue.Bind(queue=queue, exchange=exchange, routing_key=routing_key, nowait=True)
        await self.write([bind])

    async def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        """``queue.unbind`` and its ``unbind-ok``; those made meanwhile go in one write and share a round trip."""
        frame = ChannelFrame.marshall(
            channel_number=self.channel.number,
            frames=[pamqp.commands.Queue.Unbind(queue=queue, exchange=exchange, routing_key=routing_key)],
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.unbinds.append((frame, done))
        if self.unbinder is None:
            self.unbinder = asyncio.get_running_loop().create_task(self._unbind_all())
        await done

    async def _unbind_all(self) -> None:
        channel = self.channel
        batch: list[tuple[ChannelFrame, asyncio.Future[None]]] = []
        try:
            async with channel.lock:  # no aiormq call on this channel takes an unbind-ok for its own answer
                while self.unbinds:
                    batch, self.unbinds = self.unbinds, []
                    payload = b"".join(frame.payload for frame, _ in batch)
                    await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))
                    for _, done in batch:
                        answer = await channel.rpc_frames.get()
                        channel.rpc_frames.task_done()
                        if not isinstance(answer, pamqp.commands.Queue.UnbindOk):
                            raise RuntimeError(f"expected unbind-ok, got {answer!r}")
                        done.set_result(None)
                    batch = []
        except BaseException as exc:
            for _, done in (*batch, *self.unbinds):
                if not done.done():
                    done.set_exception(RuntimeError(f"unbind failed: {exc!r}"))
            self.unbinds = []
            raise
        finally:
            self.unbinder = None


async def serve(args: argparse.Namespace, stopped: asyncio.Event) -> None:
    connection = await asyncio.wait_for(aio_pika.connect(args.url), 15)
    dropped = 0
    try:
        sub = await connection.channel()  # consumers (RPC and broadcast queues), as the library's sub_channel
        fast = await connection.channel(publisher_confirms=False)  # the route's bind, broadcasts, replies
        tasks = await connection.channel()  # the task queue on a channel of its own (prefetch 0, as worker_pc)
        message_exchange = await sub.declare_exchange(
            args.message_exchange, aio_pika.ExchangeType.TOPIC, durable=False, auto_delete=True
        )
        task_exchange = await tasks.declare_exchange(
            args.task_exchange, aio_pika.ExchangeType.TOPIC, durable=False, auto_delete=True
        )
        rpc_queue = await sub.declare_queue(
            f"amq_{uuid.uuid4().hex}", exclusive=True, auto_delete=True, arguments=RPC_QUEUE_ARGS
        )

        async def on_rpc(_message: aio_pika.abc.AbstractIncomingMessage) -> None:
            pass  # nobody sends the floor's pids an RPC; the queue is there for the routes

        await rpc_queue.consume(on_rpc, no_ack=True)
        broadcasts = await sub.declare_queue(
            f"broadcast-{uuid.uuid4().hex[:22]}", exclusive=True, auto_delete=True, arguments=BROADCAST_QUEUE_ARGS
        )
        await broadcasts.bind(message_exchange, routing_key=BROADCAST_KEY)

        async def on_broadcast(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal dropped
            subject = (message.headers or {}).get("x-pc-subject")
            if isinstance(subject, str) and subject.startswith("state_changed."):
                dropped += 1  # no local subscriber wants a state change: dropped on the header, as ours

        await broadcasts.consume(on_broadcast, no_ack=True)
        writer = Writer(cast(aiormq.Channel, await fast.get_underlay_channel()), args.user)
        task_queue = await tasks.declare_queue(args.task_queue, durable=True, arguments=TESTING_TASK_QUEUE_ARGS)
        await task_queue.bind(task_exchange, routing_key=args.task_queue)

        async def on_task(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            pid = str(uuid.uuid4())
            route = f"{RPC_PREFIX}.{pid}"
            headers = {"x-pc-sender": pid, "x-pc-sender-type": "uuid"}
            await writer.bind_nowait(rpc_queue.name, args.message_exchange, route)
            for subject in SUBJECTS:
                await writer.publish(
                    args.message_exchange,
                    BROADCAST_KEY,
                    broadcast_body(pid, subject),
                    headers={**headers, "x-pc-subject": subject},
                )
            await message.ack()
            if message.reply_to:
                await writer.publish(
                    args.task_exchange,
                    message.reply_to,
                    REPLY_BODY,
                    correlation_id=message.correlation_id,
                    user_id=args.user,
                )
            await writer.unbind(rpc_queue.name, args.message_exchange, route)

        await task_queue.consume(on_task)
        print(f"READY {os.getpid()}", flush=True)
        await stopped.wait()
    finally:
        print(f"state broadcasts dropped on their header: {dropped}", file=sys.stderr, flush=True)
        await asyncio.wait_for(connection.close(), 10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--message-exchange", required=True)
    parser.add_argument("--task-exchange", required=True)
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    args.user = yarl.URL(args.url).user  # the replies' user_id, as the library's (the broker checks it)

    return serve_until_stopped(lambda stopped: serve(args, stopped))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
