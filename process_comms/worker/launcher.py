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
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import kiwipy

from .. import defaults
from ..errors import LoadError, PersistenceError
from ..transports.base import CURRENT_DELIVERY, AsyncCommunicator, InvalidTask
from ..transports.loop import LoopThread, run_on
from ..wire.launch_options import launch_options_of
from ..wire.loaders import AllowListLoader, ObjectLoader, get_object_loader
from ..wire.messages import (
    ARGS_KEY,
    CONTINUE_TASK,
    CREATE_TASK,
    KWARGS_KEY,
    LAUNCH_TASK,
    NOWAIT_KEY,
    PERSIST_KEY,
    PID_KEY,
    PROCESS_CLASS_KEY,
    TAG_KEY,
    TASK_ARGS,
    TASK_KEY,
    Pid,
    wire_bool,
)
from ._broadcasts import BroadcastsMixin
from ._bundle import META_KEY
from ._claims import ClaimsMixin
from ._pids import PidUse, answer_from_record, refuse, vet_pid
from ._routes import RoutesMixin
from ._state import KilledError
from ._tasking import _EXTRAS, LAUNCH_PID_NAMESPACE, _log_end, _release, _TaskExtras, hold_for, task_identity
from .process import Process
from .records import RecordWriter

__all__ = ["ProcessLauncher"]

LOGGER = logging.getLogger(__name__)


class ProcessLauncher(ClaimsMixin, BroadcastsMixin, RoutesMixin):
    """A task subscriber that launches, creates and continues processes on its own event loop.

    ``communicator.add_task_subscriber(launcher)`` starts it. Only :class:`Process` subclasses are
    instantiated, and with ``allowed_modules`` only from those modules (and their submodules). With
    ``records`` (the default) and a persister that keeps them, every process it runs gets a record.
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
        records: bool = True,
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
        self._launching: set[str] = set()  # pids whose launch is between its check and its start (_pids.py)
        self._init_routes()
        self._broadcast_ids: dict[int, Any] = {}
        #: Seconds a claim on a persisted process lasts unless renewed (a dead worker's claims lapse after it).
        self.claim_ttl = claim_ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._claimed: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._tokens: dict[int, str | None] = {}  # liveness token by communicator (_claims.py)
        self._alive: dict[str, tuple[bool | None, float]] = {}
        keeps = records and persister is not None and bool(getattr(persister, "keeps_records", False))
        #: Writes the records of the processes run here (None: records are off).
        self.records: RecordWriter | None = RecordWriter(persister, loop) if keeps else None

    @property
    def processes(self) -> dict[str, Process]:
        """The live processes of this launcher, by ``str(pid)``."""
        return dict(self._processes)

    async def drain(self) -> None:
        """Wait until every record changed so far is written (so the ended processes have let go)."""
        if self.records is not None:
            await self.records.flush()

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
        try:
            return self._accept(communicator, task)
        except (kiwipy.TaskRejected, InvalidTask, LoadError) as exc:
            LOGGER.info("task rejected: %s", exc)
            raise

    def _accept(self, communicator: Any, task: Any) -> concurrent.futures.Future[Any]:
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
            extras = _TaskExtras(core, comm_loop, hold)
            work = functools.partial(
                self._hook, extras, self._continue, communicator, args[PID_KEY], nowait, args.get(TAG_KEY)
            )
        else:
            # declined (another worker may take it) when persisted, or malformed: one with a persister judges it
            if args.get(PERSIST_KEY) not in (None, False) and self.persister is None:
                raise kiwipy.TaskRejected("cannot persist a process: this worker has no persister")
            identifier = args.get(PROCESS_CLASS_KEY)
            self._load_class(identifier)  # a class it may not load is a LoadError first
            persist = wire_bool(args, PERSIST_KEY, False)
            nowait = wire_bool(args, NOWAIT_KEY, False) if kind == LAUNCH_TASK else False
            init_args = args.get(ARGS_KEY) or ()
            init_kwargs = args.get(KWARGS_KEY) or {}
            if not isinstance(init_args, (list, tuple)) or not isinstance(init_kwargs, dict):
                raise InvalidTask("init_args must be a list (or null) and init_kwargs a mapping (or null)")
            # the hooks get the task's own values, as plumpy passes them (None when the task says null)
            hook_args = args.get(ARGS_KEY)
            options = launch_options_of(task)  # ours, beside plumpy's args (wire/launch_options.py)
            if kind == CREATE_TASK:
                extras = _TaskExtras(core, comm_loop, None, *task_identity(CURRENT_DELIVERY.get()), options)
                work = functools.partial(
                    self._hook, extras, self._create, communicator, identifier, persist, hook_args, args.get(KWARGS_KEY)
                )
            else:
                delivery = CURRENT_DELIVERY.get()
                if persist and delivery is not None and delivery.correlation_id and "pid" not in init_kwargs:
                    # the same task always gets the same pid, so a redelivered launch (worker crash or
                    # hand-back) finds the checkpoint its first delivery left and continues from it
                    init_kwargs = {**init_kwargs, "pid": uuid.uuid5(LAUNCH_PID_NAMESPACE, delivery.correlation_id)}
                hold = self._hold(nowait and persist)
                extras = _TaskExtras(core, comm_loop, hold, *task_identity(delivery), options)
                hook = self._launch  # a redelivered one continues from its checkpoint (_again)
                hook_kwargs = init_kwargs if args.get(KWARGS_KEY) is not None or init_kwargs else None
                work = functools.partial(
                    self._hook, extras, hook, communicator, identifier, persist, nowait, hook_args, hook_kwargs
                )
        fut: concurrent.futures.Future[Any] = run_on(self.loop, work)
        fut.add_done_callback(lambda f: _release(hold) if f.cancelled() or f.exception() is not None else None)
        return fut

    _hold = staticmethod(hold_for)

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
    # The hooks have plumpy's signatures (``src/plumpy/process_comms.py``, ProcessLauncher), so a subclass
    # overrides them the way AiiDA does; what only we need (the async core, its loop, the task's hold) is
    # in a context variable set for the task that runs the hook.
    async def _hook(self, extras: _TaskExtras, hook: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        _EXTRAS.set(extras)  # the task running this has its own context: no other task sees it
        return await hook(*args)

    def _extras(self, communicator: Any) -> _TaskExtras:
        extras = _EXTRAS.get()
        if extras is not None:
            return extras
        if isinstance(communicator, AsyncCommunicator) or not isinstance(
            getattr(communicator, "core", None), AsyncCommunicator
        ):
            return _TaskExtras(None, None, None)  # called directly, off a task: not wired to a communicator
        return _TaskExtras(communicator.core, communicator.loop, None)

    def _class_of(self, process_class: Any) -> type[Process]:
        """A loader identifier (plumpy's ``process_class``) as a class; a class passed by a subclass is checked."""
        if isinstance(process_class, type):
            if not issubclass(process_class, Process):
                raise LoadError(f"{process_class!r} is not a process_comms.Process subclass; refusing it")
            return process_class
        return self._load_class(process_class)

    async def _save(self, proc: Process) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.persister.save_checkpoint, proc)

    async def _create(
        self,
        _communicator: Any,
        process_class: Any,
        persist: bool,
        init_args: Any = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> Pid:
        """Create (and with ``persist`` checkpoint) a process of ``process_class`` (a loader identifier); its pid."""
        cls, init_kwargs = self._class_of(process_class), init_kwargs or {}
        if "pid" in init_kwargs:  # a pid is used once (_pids.py); the same create delivered again answers it
            pid: Pid = init_kwargs["pid"]
            if (await vet_pid(self, pid, self._extras(_communicator), cls, init_kwargs.get("inputs"))).again:
                return pid
        proc = self._instantiate(cls, init_args or (), init_kwargs)
        self._limit(proc, self._extras(_communicator))
        if persist:
            await self._save(proc)
        return proc.pid

    async def _launch(
        self,
        _communicator: Any,
        process_class: Any,
        persist: bool,
        nowait: bool,
        init_args: Any = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Run a new process of ``process_class`` (a loader identifier): its pid with ``nowait``, else its outputs."""
        core, comm_loop, hold, *_ = extras = self._extras(_communicator)
        cls = self._class_of(process_class)
        init_args, init_kwargs = init_args or (), init_kwargs or {}
        old: dict[str, Any] | None = None
        vetted = "pid" in init_kwargs and not self._fresh_pid(init_kwargs["pid"], extras)
        if vetted:
            # a pid the task names is used once (_pids.py): refused, or the same task again
            use = await vet_pid(self, init_kwargs["pid"], extras, cls, init_kwargs.get("inputs"))
            if use.again:
                again = await self._again(_communicator, use, init_kwargs["pid"], persist, nowait)
                if again is not None:
                    return again[0]
                old = use.record  # it had not ended: it runs again from the start, its history kept
        proc = self._instantiate(cls, init_args, init_kwargs)
        proc._task_id = extras.task_id
        proc._restore_record(old)
        self._limit(proc, extras)
        if persist:
            await self._claim(proc.pid, core, comm_loop)
            try:
                if vetted and await self._store(self.persister.get_process_checkpoints, proc.pid):
                    raise refuse(proc.pid, "another worker ran it meanwhile")  # both passed vet_pid at once
                await self._save(proc)
            except BaseException:
                await self._unclaim(proc.pid)
                raise
        done = await self.start_process(proc, core, comm_loop, persist)
        if nowait:
            done.add_done_callback(lambda _: _release(hold))
            return proc.pid
        return await asyncio.shield(done)

    @staticmethod
    def _limit(proc: Process, extras: _TaskExtras) -> None:
        """Give a new process the task's label and time limit (before its first checkpoint, which keeps them)."""
        if extras.options.label is not None or extras.options.time_limit is not None:
            proc._set_limits(extras.options.time_limit, extras.options.label)

    @staticmethod
    def _fresh_pid(pid: Pid, extras: _TaskExtras) -> bool:
        """True for the pid a persisted launch derived from its task at its first delivery: new by construction."""
        return (
            not extras.redelivered
            and extras.task_id is not None
            and pid == uuid.uuid5(LAUNCH_PID_NAMESPACE, extras.task_id)
        )

    async def _again(self, _communicator: Any, use: PidUse, pid: Pid, persist: bool, nowait: bool) -> tuple[Any] | None:
        """The same launch task delivered again (its worker died or handed it back): the first run's answer,
        held here or from its checkpoint or record, as a 1-tuple; None if it must run again from the start."""
        hold = self._extras(_communicator).hold
        if use.proc is not None:  # still here: never a second copy beside it
            if nowait:
                use.proc.wait_done().add_done_callback(lambda _: _release(hold))
                return (pid,)
            return (await asyncio.shield(use.proc.wait_done()),)
        if persist and await self._store(self.persister.get_process_checkpoints, pid):
            return (await self._continue(_communicator, pid, nowait, None),)
        outputs = answer_from_record(pid, use.record) if use.record is not None else None
        if outputs is None:
            return None
        _release(hold)
        return (pid,) if nowait else (outputs,)

    async def _continue(self, _communicator: Any, pid: Pid, nowait: bool, tag: str | None = None) -> Any:
        """Continue ``pid`` from its checkpoint (``tag``): the pid with ``nowait``, else its outputs."""
        core, comm_loop, hold, *_ = self._extras(_communicator)
        existing = self._processes.get(str(pid))
        if existing is not None:  # never a second copy of a process this worker runs
            done = existing.wait_done()
        else:
            await self._claim(pid, core, comm_loop)  # nor a copy of one that still runs on another worker
            existing = self._processes.get(str(pid))
            if existing is not None:
                return await self._continue(_communicator, pid, nowait, tag)
            try:
                proc = await self._recreate(pid, tag)
            except BaseException:  # it does not run here: another worker may take it at once
                await self._unclaim(pid)
                raise
            done = await self.start_process(proc, core, comm_loop, True)
        if nowait:
            done.add_done_callback(lambda _: _release(hold))
            return pid
        return await asyncio.shield(done)

    async def _recreate(self, pid: Pid, tag: str | None) -> Process:
        """The process of ``pid`` from its checkpoint (KilledError if its record says it was killed)."""
        old = await self._killed_record(pid)
        bundle = await asyncio.get_running_loop().run_in_executor(None, self.persister.load_checkpoint, pid, tag)
        if not isinstance(bundle, dict) or not isinstance(bundle.get(META_KEY), dict):
            raise PersistenceError(f"the checkpoint of process {pid} is not a process_comms checkpoint")
        cls = self._load_class(bundle[META_KEY].get("class_name"))
        proc = cls.recreate_from(bundle)
        proc._restore_record(old)
        return proc

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
        proc._recorder = self.records
        if self.records is not None:  # the record names its holder: the fleet marks it lost once that is gone
            proc._holder = (self.owner, await self._token(core, comm_loop))
        started = time.monotonic()
        routed = not proc.state.terminal and core is not None and comm_loop is not None
        if routed:
            assert core is not None and comm_loop is not None
            try:
                await self._bind_route(proc, core, comm_loop)
                self._processes[key] = proc  # before the next await: a held run of the pid sees it (_routes.py)
                await self._ensure_broadcasts(core, comm_loop)
            except BaseException:
                if self._processes.get(key) is proc:
                    del self._processes[key]
                if key in self._claimed:  # it does not run here: another worker may take it at once
                    await self._unclaim(proc.pid)
                raise
        self._processes[key] = proc
        done = proc.start()
        LOGGER.info("process %s (%s) started", key, type(proc).__qualname__)
        proc._touch_record()

        def cleanup(_: Any) -> None:
            if self._processes.get(key) is proc:
                del self._processes[key]
            _log_end(proc, time.monotonic() - started)
            if key in self._claimed:
                self._claimed.discard(key)
                self.loop.run_in_executor(None, self.persister.release, proc.pid, self.owner)
            if routed:  # the reply goes now; an ended process keeps its route until its record is written
                self._let_go_route(proc, core, comm_loop)

        done.add_done_callback(cleanup)
        return done

    async def _killed_record(self, pid: Pid) -> dict[str, Any] | None:
        """The record of ``pid`` (None without records); KilledError if it says killed: a killed process is
        never run again (a queued task killed before it started, an orphan killed after its worker died)."""
        if self.records is None:
            return None
        record: dict[str, Any] | None = await asyncio.get_running_loop().run_in_executor(
            None, self.persister.load_record, pid
        )
        if isinstance(record, dict) and record.get("state_name") == "killed":
            LOGGER.info("task of process %s dropped: its record says it was killed", pid)
            raise KilledError(str(record.get("status") or "killed before it ran"))
        return record

    async def suspend_all(self) -> tuple[list[Pid], list[Pid]]:
        """Stop every live process here (graceful shutdown): the persisted ones are checkpointed, to be
        continued elsewhere; the others cannot be and end as lost (their records say so). Returns
        ``(handed back, lost)`` pids."""
        procs = list(self._processes.values())
        kept = [proc for proc in procs if proc.persister is not None]
        lost = [proc for proc in procs if proc.persister is None]
        reason = f"its worker {self.owner} stopped and it was not persisted, so no worker can continue it"
        await asyncio.gather(
            *(proc.suspend() for proc in kept), *(proc.abandon(reason) for proc in lost), return_exceptions=True
        )
        await self.drain()  # their records say they were suspended or lost before the worker lets go of them
        return [proc.pid for proc in kept], [proc.pid for proc in lost]
