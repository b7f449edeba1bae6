"""The thread controller's plumpy-shaped mode: ``RemoteProcessThreadController(comm, api="plumpy")`` makes one.

plumpy's calls return what plumpy's ``RemoteProcessThreadController`` returns (client/_plumpy.py says what that
is and why); the rest is our facade's, flat and bounded. It is a class of its own because it is not a facade
over the asyncio controller: plumpy's calls go straight to the communicator (tests/client/test_facade_parity.py holds
the facade to a line per method).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..wire.messages import (
    Intent,
    MessageBuilder,
    MessageType,
    ObjectLoader,
    Pid,
    create_continue_body,
    create_launch_body,
    with_launch_options,
)
from ._plumpy import ControllerApi, PlumpyShape, kiwipy_shaped
from .thread_controller import RemoteProcessThreadController

__all__ = ["PlumpyThreadController"]


class PlumpyThreadController(RemoteProcessThreadController):
    """plumpy's shapes for plumpy's calls; our keyword-only extras (``release``, ``resume``, ``queue``,
    ``answers_within``) and the calls plumpy lacks are our facade's (flat, bounded)."""

    def __init__(
        self,
        communicator: object,
        *,
        rpc_timeout: float | None = None,
        task_timeout: float | None = None,
        api: ControllerApi = "plumpy",
    ) -> None:
        kiwipy_shaped(communicator)  # refused before the facade makes a loop thread for it
        super().__init__(communicator, rpc_timeout=rpc_timeout, task_timeout=task_timeout, api=api)
        self._shape = PlumpyShape(communicator, rpc_timeout, task_timeout, self._schedule)

    def _schedule(self, delay: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop thread after ``delay`` seconds (a plumpy-shaped call's deadline)."""
        loop = self._communicator.loop
        try:
            loop.call_soon_threadsafe(loop.call_later, delay, callback)
        except RuntimeError:  # the loop has closed: the communicator's futures fail on their own
            pass

    def get_status(self, pid: Pid, timeout: float | None = None) -> Any:
        """The communicator's future of the status (nested as the process answers)."""
        return self._shape.rpc(pid, MessageBuilder.status(), timeout)

    def pause_process(
        self, pid: Pid, msg_text: str | None = None, timeout: float | None = None, *, release: bool = False
    ) -> Any:
        """The communicator's future of the pause; ``release=True`` is ours (flat)."""
        if release:
            return super().pause_process(pid, msg_text, timeout, release=True)
        return self._shape.rpc(pid, MessageBuilder.pause(msg_text), timeout)

    def play_process(self, pid: Pid, timeout: float | None = None, *, resume: bool = False) -> Any:
        """The communicator's future of the play; ``resume=True`` is ours (flat)."""
        if resume:
            return super().play_process(pid, timeout, resume=True)
        return self._shape.rpc(pid, MessageBuilder.play(), timeout)

    def kill_process(
        self, pid: Pid, msg_text: str | None = None, force_kill: bool = False, timeout: float | None = None
    ) -> Any:
        """The communicator's future of the kill; ``UnroutableError`` from the call where it raises one."""
        return self._shape.rpc(pid, MessageBuilder.kill(msg_text, force_kill), timeout)

    def pause_all(self, msg_text: str | None, *, answers_within: float | None = None) -> Any:
        """Broadcast a pause (None, as plumpy); with ``answers_within``, ours."""
        if answers_within is not None:
            return super().pause_all(msg_text, answers_within=answers_within)
        self._shape.broadcast(MessageBuilder.pause(msg_text), Intent.PAUSE)
        return None

    def play_all(self, *, answers_within: float | None = None) -> Any:
        """Broadcast a play (None, as plumpy); with ``answers_within``, ours."""
        if answers_within is not None:
            return super().play_all(answers_within=answers_within)
        self._shape.broadcast(None, Intent.PLAY)
        return None

    def kill_all(self, msg_text: str | None, *, answers_within: float | None = None) -> Any:
        """Broadcast a kill (None, as plumpy); with ``answers_within``, ours."""
        if answers_within is not None:
            return super().kill_all(msg_text, answers_within=answers_within)
        self._shape.broadcast(MessageBuilder.kill(msg_text), Intent.KILL)
        return None

    def launch_process(
        self,
        process_class: object,
        init_args: Sequence[object] | None = None,
        init_kwargs: Mapping[str, object] | None = None,
        persist: bool = False,
        loader: ObjectLoader | None = None,
        nowait: bool = False,
        no_reply: bool = False,
        timeout: float | None = None,
        *,
        queue: str | None = None,
        label: str | None = None,
        time_limit: float | None = None,
    ) -> Any:
        """The communicator's future of the launch (None with ``no_reply``); a named ``queue`` is ours, and so
        are a ``label`` and a ``time_limit`` (they travel where a plumpy worker ignores them)."""
        if queue is not None:
            args = (process_class, init_args, init_kwargs, persist, loader, nowait, no_reply, timeout)
            return super().launch_process(*args, queue=queue, label=label, time_limit=time_limit)
        body = create_launch_body(process_class, init_args, init_kwargs, persist, loader, nowait)
        return self._shape.task(with_launch_options(body, label, time_limit), no_reply, timeout)

    def continue_process(
        self,
        pid: Pid,
        tag: str | None = None,
        nowait: bool = False,
        no_reply: bool = False,
        timeout: float | None = None,
        *,
        queue: str | None = None,
    ) -> Any:
        """The communicator's future of the continue (AiiDA's ``revive_processes`` unwraps one level)."""
        if queue is not None:
            return super().continue_process(pid, tag, nowait, no_reply, timeout, queue=queue)
        return self._shape.task(create_continue_body(pid, tag, nowait), no_reply, timeout)

    def execute_process(
        self,
        process_class: object,
        init_args: Sequence[object] | None = None,
        init_kwargs: Mapping[str, object] | None = None,
        loader: ObjectLoader | None = None,
        nowait: bool = False,
        no_reply: bool = False,
        timeout: float | None = None,
        *,
        label: str | None = None,
        time_limit: float | None = None,
    ) -> Any:
        """A future of what the continue gives, after the create (plumpy's ``execute_process``); with a
        ``label`` or a ``time_limit`` (ours, not plumpy's) the flat future of our own controller."""
        if label is not None or time_limit is not None:
            args = (process_class, init_args, init_kwargs, loader, nowait, no_reply, timeout)
            return super().execute_process(*args, label=label, time_limit=time_limit)
        return self._shape.execute(process_class, init_args, init_kwargs, loader, nowait, no_reply, timeout)

    def task_send(self, message: MessageType, no_reply: bool = False, timeout: float | None = None) -> Any:
        """The communicator's future of a raw task."""
        return self._shape.task(message, no_reply, timeout)
