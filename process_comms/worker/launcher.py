"""The worker side of tasks: ``ProcessLauncher`` turns ``launch``/``create``/``continue`` tasks into
running processes and wires each to the communicator, so it can be paused, killed and watched
(processes started by a bare plumpy launcher cannot be). What it must not run (unknown task type,
malformed body, a class it may not load) gets one terminal error reply, never a requeue loop or a
message held forever: see the "Bad input" section of RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import socket
import uuid
from collections.abc import Iterable
from typing import Any

import kiwipy

from .. import defaults
from ..errors import LoadError, PersistenceError
from ..transports._loop import AsyncFn, LoopThread, run_on
from ..transports.base import CURRENT_DELIVERY, AsyncCommunicator, InvalidTask
from ..wire.loaders import AllowListLoader, ObjectLoader, get_object_loader
from ..wire.messages import (
    ANSWER_PREFIX,
    ARGS_KEY,
    CONTINUE_TASK,
    CREATE_TASK,
    KWARGS_KEY,
    LAUNCH_TASK,
    MESSAGE_TEXT_KEY,
    NOWAIT_KEY,
    PERSIST_KEY,
    PID_KEY,
    PROCESS_CLASS_KEY,
    TAG_KEY,
    TASK_ARGS,
    TASK_KEY,
    Intent,
    Pid,
    wire_bool,
    wire_text,
)
from .process import META_KEY, Process

__all__ = ["ProcessLauncher"]

LOGGER = logging.getLogger(__name__)

#: Namespace of the pids derived from a launch task's correlation id (same task, same pid).
LAUNCH_PID_NAMESPACE = uuid.UUID("6f1c2a4e-3b5d-4c2a-9e1f-0d7b8a9c6e21")


def _release(hold: concurrent.futures.Future[Any] | None) -> None:
    if hold is not None and not hold.done():
        hold.set_result(None)


class ProcessLauncher:
    """A task subscriber that launches, creates and continues processes on its own event loop.

    ``communicator.add_task_subscriber(launcher)`` starts it. Only :class:`Process` subclasses are
    instantiated, and with ``allowed_modules`` only from those modules (and their submodules).
    """

    #: Called on the communicator's loop directly: validation is quick and the work runs on our loop.
    loop_safe = True

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        persister: Any = None,
        load_context: Any = None,
        loader: ObjectLoader | None = None,
        *,
        allowed_modules: Iterable[str] | None = None,
        claim_ttl: float = defaults.CLAIM_TTL,
    ) -> None:
        """``loop=None`` gives the launcher a loop thread of its own (stopped by :meth:`close`)."""
        self._own_loop: LoopThread | None = None
        if loop is None:
            self._own_loop = LoopThread("process-comms-worker")
            loop = self._own_loop.loop
        self.loop = loop
        self.persister = persister
        self.load_context = load_context
        if allowed_modules is not None:
            loader = AllowListLoader(allowed_modules)
        self.loader = loader or get_object_loader()
        self._processes: dict[str, Process] = {}
        self._broadcast_ids: dict[int, Any] = {}
        #: Seconds a claim on a persisted process lasts unless renewed (a dead worker's claims lapse after it).
        self.claim_ttl = claim_ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._claimed: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None

    @property
    def processes(self) -> dict[str, Process]:
        """The live processes of this launcher, by ``str(pid)``."""
        return dict(self._processes)

    def close(self) -> None:
        """Stop the launcher's own loop thread (if it made one); running processes stop with it."""
        if self._own_loop is not None:
            self._own_loop.stop()

    def __enter__(self) -> ProcessLauncher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- task entry point (called on the communicator's loop) ------------------------------------
    def __call__(self, communicator: Any, task: Any) -> concurrent.futures.Future[Any]:
        """Validate ``task`` at once (errors are terminal replies) and handle it on the launcher's loop."""
        if not isinstance(task, dict) or not isinstance(task.get(TASK_KEY), str):
            raise InvalidTask("a task body must be a mapping with a 'task' name and its 'args'")
        kind = task[TASK_KEY]
        args = task.get(TASK_ARGS)
        if kind not in (LAUNCH_TASK, CONTINUE_TASK, CREATE_TASK):
            raise InvalidTask(f"unknown task type {kind!r}: expected launch, continue or create")
        if not isinstance(args, dict):
            raise InvalidTask(f"the args of a {kind} task must be a mapping")
        core, comm_loop = self._core_of(communicator)
        hold: concurrent.futures.Future[Any] | None = None
        if kind == CONTINUE_TASK:
            if self.persister is None:
                raise kiwipy.TaskRejected("cannot continue a process: this worker has no persister")
            if PID_KEY not in args:
                raise InvalidTask("a continue task needs a 'pid'")
            if args.get(TAG_KEY) is not None and not isinstance(args.get(TAG_KEY), str):
                raise InvalidTask("a continue task's 'tag' must be a string or null")
            nowait = wire_bool(args, NOWAIT_KEY, False)
            hold = self._hold(nowait)
            work = functools.partial(self._continue, core, comm_loop, args[PID_KEY], args.get(TAG_KEY), nowait, hold)
        else:
            # declined (another worker may take it) when persisted, or malformed: one with a persister judges it
            if args.get(PERSIST_KEY) not in (None, False) and self.persister is None:
                raise kiwipy.TaskRejected("cannot persist a process: this worker has no persister")
            cls = self._load_class(args.get(PROCESS_CLASS_KEY))  # a class it may not load is a LoadError first
            persist = wire_bool(args, PERSIST_KEY, False)
            nowait = wire_bool(args, NOWAIT_KEY, False) if kind == LAUNCH_TASK else False
            init_args = args.get(ARGS_KEY) or ()
            init_kwargs = args.get(KWARGS_KEY) or {}
            if not isinstance(init_args, (list, tuple)) or not isinstance(init_kwargs, dict):
                raise InvalidTask("init_args must be a list (or null) and init_kwargs a mapping (or null)")
            if kind == CREATE_TASK:
                work = functools.partial(self._create, cls, init_args, init_kwargs, persist)
            else:
                delivery = CURRENT_DELIVERY.get()
                if persist and delivery is not None and delivery.correlation_id and "pid" not in init_kwargs:
                    # the same task always gets the same pid, so a redelivered launch (worker crash or
                    # hand-back) finds the checkpoint its first delivery left and continues from it
                    init_kwargs = {**init_kwargs, "pid": uuid.uuid5(LAUNCH_PID_NAMESPACE, delivery.correlation_id)}
                hold = self._hold(nowait and persist)
                if persist and delivery is not None and delivery.redelivered and "pid" in init_kwargs:
                    work = functools.partial(self._relaunch, core, comm_loop, cls, init_args, init_kwargs, nowait, hold)
                else:
                    work = functools.partial(
                        self._launch, core, comm_loop, cls, init_args, init_kwargs, persist, nowait, hold
                    )
        fut: concurrent.futures.Future[Any] = run_on(self.loop, work)
        fut.add_done_callback(lambda f: _release(hold) if f.cancelled() or f.exception() is not None else None)
        return fut

    @staticmethod
    def _hold(wanted: bool) -> concurrent.futures.Future[Any] | None:
        """For a persisted process answered at once (nowait): keep its task until the process ends."""
        delivery = CURRENT_DELIVERY.get()
        if not wanted or delivery is None:
            return None
        delivery.hold = concurrent.futures.Future()
        return delivery.hold

    @staticmethod
    def _core_of(communicator: Any) -> tuple[AsyncCommunicator | None, asyncio.AbstractEventLoop | None]:
        if isinstance(communicator, AsyncCommunicator):
            return communicator, asyncio.get_running_loop()
        core = getattr(communicator, "core", None)
        if isinstance(core, AsyncCommunicator):
            return core, communicator.loop
        return None, None

    def _load_class(self, identifier: Any) -> type[Process]:
        try:
            cls = self.loader.load_object(identifier)
        except LoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - a loader may raise anything: report it as a load error
            raise LoadError(f"could not load {identifier!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Process)):
            raise LoadError(f"{identifier!r} is not a process_comms.Process subclass; refusing to instantiate it")
        return cls

    def _instantiate(self, cls: type[Process], init_args: Any, init_kwargs: dict[str, Any]) -> Process:
        try:
            return cls(*init_args, **{str(k): v for k, v in init_kwargs.items()})
        except (TypeError, ValueError) as exc:
            raise InvalidTask(f"the constructor arguments do not fit {cls.__name__}: {exc}") from None

    # -- handlers (run on the launcher's loop) ---------------------------------------------------
    async def _save(self, proc: Process) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.persister.save_checkpoint, proc)

    async def _create(self, cls: type[Process], init_args: Any, init_kwargs: dict[str, Any], persist: bool) -> Pid:
        proc = self._instantiate(cls, init_args, init_kwargs)
        if persist:
            await self._save(proc)
        return proc.pid

    async def _launch(
        self,
        core: AsyncCommunicator | None,
        comm_loop: asyncio.AbstractEventLoop | None,
        cls: type[Process],
        init_args: Any,
        init_kwargs: dict[str, Any],
        persist: bool,
        nowait: bool,
        hold: concurrent.futures.Future[Any] | None = None,
    ) -> Any:
        proc = self._instantiate(cls, init_args, init_kwargs)
        if persist:
            await self._claim(proc.pid)
            await self._save(proc)
        done = await self.start_process(proc, core, comm_loop, persist)
        if nowait:
            done.add_done_callback(lambda _: _release(hold))
            return proc.pid
        return await asyncio.shield(done)

    async def _relaunch(
        self,
        core: AsyncCommunicator | None,
        comm_loop: asyncio.AbstractEventLoop | None,
        cls: type[Process],
        init_args: Any,
        init_kwargs: dict[str, Any],
        nowait: bool,
        hold: concurrent.futures.Future[Any] | None = None,
    ) -> Any:
        """A redelivered persisted launch: continue from its checkpoint if the first delivery left one."""
        pid = init_kwargs["pid"]
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.persister.load_checkpoint, pid, None)
        except PersistenceError:
            return await self._launch(core, comm_loop, cls, init_args, init_kwargs, True, nowait, hold)
        return await self._continue(core, comm_loop, pid, None, nowait, hold)

    async def _continue(
        self,
        core: AsyncCommunicator | None,
        comm_loop: asyncio.AbstractEventLoop | None,
        pid: Pid,
        tag: str | None,
        nowait: bool,
        hold: concurrent.futures.Future[Any] | None = None,
    ) -> Any:
        existing = self._processes.get(str(pid))
        if existing is not None:  # never a second copy of a process this worker runs
            done = existing.wait_done()
        else:
            await self._claim(pid)  # nor a copy of one that still runs on another worker
            existing = self._processes.get(str(pid))
            if existing is not None:
                return await self._continue(core, comm_loop, pid, tag, nowait, hold)
            bundle = await asyncio.get_running_loop().run_in_executor(None, self.persister.load_checkpoint, pid, tag)
            if not isinstance(bundle, dict) or not isinstance(bundle.get(META_KEY), dict):
                raise PersistenceError(f"the checkpoint of process {pid} is not a process_comms checkpoint")
            cls = self._load_class(bundle[META_KEY].get("class_name"))
            proc = cls.recreate_from(bundle)
            done = await self.start_process(proc, core, comm_loop, True)
        if nowait:
            done.add_done_callback(lambda _: _release(hold))
            return pid
        return await asyncio.shield(done)

    async def _claim(self, pid: Pid) -> None:
        """Own ``pid``'s claim, waiting while another live worker holds it (it runs the process now)."""
        loop = asyncio.get_running_loop()
        while not await loop.run_in_executor(None, self.persister.claim, pid, self.owner, self.claim_ttl):
            LOGGER.info("process %s runs on another worker: waiting for it to end or for its claim to lapse", pid)
            await asyncio.sleep(self.claim_ttl / 3)  # polling the shared store: the other worker renews at ttl/3
        self._claimed.add(str(pid))
        if self._renewer is None or self._renewer.done():
            self._renewer = loop.create_task(self._renew_claims(), name="process-comms-claims")

    async def _renew_claims(self) -> None:
        """Renew the claims of the persisted processes running here, until there are none."""
        loop = asyncio.get_running_loop()
        while self._claimed:
            await asyncio.sleep(self.claim_ttl / 3)
            for key in list(self._claimed):
                proc = self._processes.get(key)
                if proc is None:
                    continue
                try:
                    if not await loop.run_in_executor(None, self.persister.claim, proc.pid, self.owner, self.claim_ttl):
                        LOGGER.error("lost the claim on process %s to another worker", proc.pid)
                except Exception:
                    LOGGER.warning("could not renew the claim on process %s", proc.pid, exc_info=True)

    async def start_process(
        self,
        proc: Process,
        core: AsyncCommunicator | None = None,
        comm_loop: asyncio.AbstractEventLoop | None = None,
        persist: bool = False,
    ) -> asyncio.Future[dict[str, Any]]:
        """Wire ``proc`` to the communicator (RPC route, broadcasts) and start it on this loop."""
        key = str(proc.pid)
        proc.attach(self.loop, core, comm_loop, self.persister if persist else None)
        if not proc.state.terminal and core is not None and comm_loop is not None:
            await self._on_comm_loop(comm_loop, core.add_rpc_subscriber, proc._on_rpc, key)
            await self._ensure_broadcasts(core, comm_loop)
        self._processes[key] = proc
        done = proc.start()

        def cleanup(_: Any) -> None:
            self._processes.pop(key, None)
            if core is not None and comm_loop is not None:
                run_on(comm_loop, core.remove_rpc_subscriber, key)
            if key in self._claimed:
                self._claimed.discard(key)
                self.loop.run_in_executor(None, self.persister.release, proc.pid, self.owner)

        done.add_done_callback(cleanup)
        return done

    async def _ensure_broadcasts(self, core: AsyncCommunicator, comm_loop: asyncio.AbstractEventLoop) -> None:
        if id(core) in self._broadcast_ids:
            return
        self._broadcast_ids[id(core)] = None

        def on_broadcast(_comm: Any, body: Any, _sender: Any, subject: Any, correlation_id: Any) -> None:
            self._on_broadcast(core, comm_loop, body, subject, correlation_id)

        self._broadcast_ids[id(core)] = await self._on_comm_loop(comm_loop, core.add_broadcast_subscriber, on_broadcast)

    def _on_broadcast(
        self, core: AsyncCommunicator, comm_loop: asyncio.AbstractEventLoop, body: Any, subject: Any, cid: Any
    ) -> None:
        """``play``/``pause``/``kill`` broadcasts reach every live process (``force_kill`` is ignored, as in plumpy).

        With a correlation id, each process answers with an ``intent_result.<intent>`` broadcast (sender = its
        pid, body = its result), so a controller can tell which processes acted (plumpy processes do not).
        """
        if subject not in (Intent.PLAY, Intent.PAUSE, Intent.KILL):
            return
        text = body.get(MESSAGE_TEXT_KEY) if isinstance(body, dict) and subject != Intent.PLAY else None
        try:  # the text becomes each process's status, saved by every checkpoint: a str or None only
            text = wire_text(text, f"text of a {subject} broadcast")
        except InvalidTask as exc:
            LOGGER.warning("dropped a %s broadcast: %s", subject, exc)
            return
        for proc in list(self._processes.values()):
            fut = proc._schedule(str(subject), text, False)
            if cid is not None:
                fut.add_done_callback(functools.partial(self._answer, core, comm_loop, proc.pid, subject, cid))

    @staticmethod
    def _answer(
        core: AsyncCommunicator,
        comm_loop: asyncio.AbstractEventLoop,
        pid: Pid,
        subject: str,
        cid: Any,
        fut: concurrent.futures.Future[Any],
    ) -> None:
        result = False if fut.cancelled() or fut.exception() is not None else fut.result()
        answer = functools.partial(
            core.broadcast_send, result, sender=pid, subject=f"{ANSWER_PREFIX}{subject}", correlation_id=cid
        )
        run_on(comm_loop, answer)

    async def suspend_all(self) -> list[Pid]:
        """Stop every live process here, saving its checkpoint (graceful shutdown); returns their pids."""
        procs = list(self._processes.values())
        await asyncio.gather(*(proc.suspend() for proc in procs), return_exceptions=True)
        return [proc.pid for proc in procs]

    @staticmethod
    async def _on_comm_loop(comm_loop: asyncio.AbstractEventLoop, fn: AsyncFn[Any], *args: Any) -> Any:
        """``await fn(*args)`` on the communicator's loop (directly when already on it)."""
        if asyncio.get_running_loop() is comm_loop:
            return await fn(*args)
        return await asyncio.wrap_future(run_on(comm_loop, fn, *args))
