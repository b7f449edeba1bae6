"""The worker side of tasks: ``ProcessLauncher`` turns ``launch``/``create``/``continue`` tasks into
running processes and wires each to the communicator, so it can be paused, killed and watched
(processes started by a bare plumpy launcher cannot be). What it must not run (unknown task type,
malformed body, a class it may not load) gets one terminal error reply, never a requeue loop or a
message held forever: see the "Bad input" section of RELIABILITY.md.

This module holds the launcher and how tasks reach it and processes are reached through it, in sections:

* **a delivery, read once**: the task's hold and identity (:func:`hold_for`, :func:`task_identity`, :func:`fresh`);
* **the launcher**: :class:`ProcessLauncher`, a few collaborators with names (the claims and the records' writer
  are in records.py, the pids in _pids.py, the :class:`~._link.CommLink` in _link.py);
* **routes**: :class:`Routes`, each process's RPC route, held until its record is written;
* **broadcasts**: :class:`Broadcasts`, ``play``/``pause``/``kill`` to every live process;
* **the fleet**: a worker's queues (:func:`check_queues`), :class:`SlotCounter` (the launcher as one queue's task
  subscriber, counting its slots; worker.py makes one for each queue) and :class:`WorkersAnswer` (the worker's
  answer to a ``workers`` broadcast).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol, TypeAlias, cast

import kiwipy

from .. import defaults
from ..errors import LoadError, PersistenceError
from ..transports.base import CURRENT_DELIVERY, AsyncCommunicator, BroadcastFilter, Delivery, InvalidTask
from ..transports.loop import LoopThread, post, run_on
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
    AllowListLoader,
    Intent,
    ObjectLoader,
    Pid,
    get_object_loader,
    launch_options_of,
    wire_bool,
    wire_text,
)
from ..wire.types import DEFAULT_QUEUE, WORKERS_SUBJECT
from ._link import CommLink, HasCore
from ._pids import Pids, PidUse, TaskContext, answer_from_record, refuse
from .persistence import Persister
from .process import META_KEY, EndedRun, KilledError, Process, RecordSink, Runtime
from .records import Claims, RecordWriter, in_executor, token_of

__all__ = [
    "DEFAULT_QUEUE",
    "WORKERS_SUBJECT",
    "Broadcasts",
    "ProcessLauncher",
    "Routes",
    "SlotCounter",
    "WorkersAnswer",
    "check_queues",
]

LOGGER = logging.getLogger(__name__)
#: Whether a communicator's type is a thread facade over an async core (``HasCore``), by type.
_FACADE_TYPES: dict[type, bool] = {}

#: What a task handler returns: a pid (nowait, create) or the outputs.
Answer: TypeAlias = "Pid | dict[str, object]"


#: Namespace of the pids derived from a launch task's correlation id (same task, same pid).
LAUNCH_PID_NAMESPACE = uuid.UUID("6f1c2a4e-3b5d-4c2a-9e1f-0d7b8a9c6e21")


# -- a delivery, read once: its hold and who its task is ----------------------------------------------
def hold_for(delivery: Delivery | None, wanted: bool) -> concurrent.futures.Future[None] | None:
    """For a persisted process answered at once (nowait): keep its task until the process ends. The hold is
    handed to the transport on ``delivery`` (it acks the task once the hold completes) and returned."""
    if not wanted or delivery is None:
        return None
    hold: concurrent.futures.Future[None] = concurrent.futures.Future()
    delivery.hold = hold
    return hold


def release(hold: concurrent.futures.Future[None] | None) -> None:
    """Let the task of ``hold`` be acked (its process ended, or its launch failed)."""
    if hold is not None and not hold.done():
        hold.set_result(None)


def task_identity(delivery: Delivery | None) -> tuple[str | None, bool]:
    """Who a delivered task is: its correlation id and whether the broker delivered it before (_pids.py)."""
    return (None, False) if delivery is None else (delivery.correlation_id, delivery.redelivered)


def fresh(context: TaskContext, pid: Pid) -> bool:
    """True for the pid a persisted launch derived from its task at its first delivery: new by construction."""
    return (
        not context.redelivered
        and context.task_id is not None
        and pid == uuid.uuid5(LAUNCH_PID_NAMESPACE, context.task_id)
    )


# -- the launcher -------------------------------------------------------------------------------------
def log_end(proc: Process, seconds: float) -> None:
    """The worker's INFO line for a process that ended here (an exception with its traceback)."""
    state = proc.state.value if proc.state.terminal else f"{proc.state.value}, handed back"
    info = proc.exception_info if proc.state.value == "excepted" else None
    if info is not None:  # the frames under the one-line error (no "Traceback" header: that marks a worker crash)
        frames = str(info.get("traceback") or "").rstrip().splitlines()[1:-1]
        error = f"{info.get('type')}: {info.get('message')}"
        LOGGER.info("process %s ended: excepted after %.3f s: %s\n%s", proc.pid, seconds, error, "\n".join(frames))
    else:
        LOGGER.info("process %s ended: %s after %.3f s", proc.pid, state, seconds)


class Accepted(NamedTuple):
    """A task the launcher took: the future of its answer, and its hold (its ack waits for it), if any."""

    future: concurrent.futures.Future[Answer]
    hold: concurrent.futures.Future[None] | None


class ProcessLauncher:
    """A task subscriber that launches, creates and continues processes on its own event loop.

    ``communicator.add_task_subscriber(launcher)`` starts it. Only :class:`Process` subclasses are
    instantiated, and with ``allowed_modules`` only from those modules (and their submodules). With
    ``records`` (the default) and a persister that keeps them, every process it runs gets a record.

    It is a few collaborators with names: :attr:`claims` (one worker runs a persisted pid at a time),
    :attr:`routes` (each process's RPC route), :attr:`broadcasts` (play/pause/kill to every process),
    :attr:`records` (the records' writer) and a :class:`~._link.CommLink` per communicator, the one
    object that crosses to the communicator's loop (CONTRIBUTING.md, "The worker").
    """

    #: Called on the communicator's loop directly: validation is quick and the work runs on our loop.
    loop_safe = True

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        persister: Persister | None = None,
        load_context: object = None,
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
        #: Seconds a claim on a persisted process lasts unless renewed (a dead worker's claims lapse after it).
        self.claim_ttl = claim_ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        keeps = records and persister is not None and persister.keeps_records
        #: Writes the records of the processes run here (None: records are off).
        self.records: RecordWriter | None = RecordWriter(persister, loop) if keeps and persister else None
        #: The claims on the persisted processes run here (None without a persister).
        self.claims = Claims(persister, self.owner, claim_ttl, self._processes) if persister is not None else None
        #: The RPC routes of the processes run here.
        self.routes = Routes(loop, self.records, self._processes)
        #: Hands play/pause/kill broadcasts to the processes run here.
        self.broadcasts = Broadcasts(self._processes)
        #: Whether a launch or create of a pid the task names may run (a pid is used once).
        self.pids = Pids(persister, self.records is not None, self.routes.held)
        self._links: dict[int, CommLink] = {}
        #: The context of each task whose hook runs now, by the asyncio task running it (:meth:`_hook`).
        self._tasks: dict[asyncio.Task[object], TaskContext] = {}

    @property
    def processes(self) -> dict[str, Process]:
        """The live processes of this launcher, by ``str(pid)``."""
        return dict(self._processes)

    def held(self, pid: object) -> Process | None:
        """The process of ``pid`` if this launcher holds it: live, or ended with its last record write (or
        the removal of its route after it) in flight, so who asks about it is answered by the process."""
        return self.routes.held(pid)

    @property
    def ending(self) -> dict[str, Process]:
        """The ended processes still held (their record or their route's removal in flight), by ``str(pid)``."""
        return self.routes.ending

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

    def __exit__(self, *exc: object) -> None:
        self.close()

    def link(self, core: AsyncCommunicator, comm_loop: asyncio.AbstractEventLoop) -> CommLink:
        """The one :class:`~._link.CommLink` of ``core`` (made at its first use)."""
        link = self._links.get(id(core))
        if link is None or link.core is not core:
            link = self._links[id(core)] = CommLink(core, comm_loop, self.loop)
        return link

    def tokens(self) -> set[str]:
        """This launcher's liveness tokens (one on each communicator that gave it one)."""
        return {link.token for link in self._links.values() if link.token is not None}

    def _link_of(self, communicator: object) -> CommLink | None:
        """The link of the communicator a task came from (an async core, or a thread facade over one)."""
        if isinstance(communicator, AsyncCommunicator):
            return self.link(communicator, asyncio.get_running_loop())
        kind = type(communicator)
        facade = _FACADE_TYPES.get(kind)
        if facade is None:  # a runtime protocol check costs tens of µs: once per type, not once per task
            facade = _FACADE_TYPES[kind] = isinstance(communicator, HasCore)
        if facade and isinstance(core := cast(HasCore, communicator).core, AsyncCommunicator):
            return self.link(core, cast(HasCore, communicator).loop)
        return None

    # -- task entry point (called on the communicator's loop) ------------------------------------
    def __call__(self, communicator: object, task: object) -> concurrent.futures.Future[Answer]:
        """Validate ``task`` at once (errors are terminal replies) and handle it on the launcher's loop."""
        return self.accept(communicator, task, CURRENT_DELIVERY.get())[0]

    def accept(self, communicator: object, task: object, delivery: Delivery | None) -> Accepted:
        """:meth:`__call__` with the transport's ``delivery`` of ``task`` passed in: the future of the task's
        answer, and the task's hold (None, or a future its ack waits for: a persisted ``nowait`` launch)."""
        try:
            return self._accept(communicator, task, delivery)
        except (kiwipy.TaskRejected, InvalidTask, LoadError) as exc:
            LOGGER.info("task rejected: %s", exc)
            raise

    def _accept(self, communicator: object, task: object, delivery: Delivery | None) -> Accepted:
        if not isinstance(task, dict) or not isinstance(task.get(TASK_KEY), str):
            raise InvalidTask("a task body must be a mapping with a 'task' name and its 'args'")
        kind = task[TASK_KEY]
        args = task.get(TASK_ARGS)
        if kind not in (LAUNCH_TASK, CONTINUE_TASK, CREATE_TASK):
            raise InvalidTask(f"unknown task type {kind!r}: expected launch, continue or create")
        if not isinstance(args, dict):
            raise InvalidTask(f"the args of a {kind} task must be a mapping")
        link = self._link_of(communicator)
        hold: concurrent.futures.Future[None] | None = None
        work: Callable[[], Awaitable[Answer]]
        if kind == CONTINUE_TASK:
            if self.persister is None:
                raise kiwipy.TaskRejected("cannot continue a process: this worker has no persister")
            if PID_KEY not in args:
                raise InvalidTask("a continue task needs a 'pid'")
            if args.get(TAG_KEY) is not None and not isinstance(args.get(TAG_KEY), str):
                raise InvalidTask("a continue task's 'tag' must be a string or null")
            nowait = wire_bool(args, NOWAIT_KEY, False)
            hold = hold_for(delivery, nowait)
            context = TaskContext(link, hold)
            work = functools.partial(
                self._hook, context, self._continue, communicator, args[PID_KEY], nowait, args.get(TAG_KEY)
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
            options = launch_options_of(task)  # ours, beside plumpy's args (wire/messages.py)
            if kind == CREATE_TASK:
                context = TaskContext(link, None, *task_identity(delivery), options)
                work = functools.partial(
                    self._hook,
                    context,
                    self._create,
                    communicator,
                    identifier,
                    persist,
                    hook_args,
                    args.get(KWARGS_KEY),
                )
            else:
                if persist and delivery is not None and delivery.correlation_id and "pid" not in init_kwargs:
                    # the same task always gets the same pid, so a redelivered launch (worker crash or
                    # hand-back) finds the checkpoint its first delivery left and continues from it
                    init_kwargs = {**init_kwargs, "pid": uuid.uuid5(LAUNCH_PID_NAMESPACE, delivery.correlation_id)}
                hold = hold_for(delivery, nowait and persist)
                context = TaskContext(link, hold, *task_identity(delivery), options)
                hook_kwargs = init_kwargs if args.get(KWARGS_KEY) is not None or init_kwargs else None
                work = functools.partial(
                    self._hook, context, self._launch, communicator, identifier, persist, nowait, hook_args, hook_kwargs
                )
        fut: concurrent.futures.Future[Answer] = run_on(self.loop, work)
        fut.add_done_callback(lambda f: release(hold) if f.cancelled() or f.exception() is not None else None)
        return Accepted(fut, hold)

    def _load_class(self, identifier: object) -> type[Process]:
        try:
            cls = self.loader.load_object(cast(str, identifier))  # anything else fails to load: a LoadError
        except LoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - a loader may raise anything: report it as a load error
            raise LoadError(f"could not load {identifier!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Process)):
            raise LoadError(f"{identifier!r} is not a process_comms.Process subclass; refusing to instantiate it")
        return cls

    def _instantiate(self, cls: type[Process], init_args: Iterable[Any], init_kwargs: Mapping[str, Any]) -> Process:
        try:
            return cls(*init_args, **{str(k): v for k, v in init_kwargs.items()})
        except (TypeError, ValueError) as exc:
            raise InvalidTask(f"the constructor arguments do not fit {cls.__name__}: {exc}") from None

    # -- handlers (run on the launcher's loop) ---------------------------------------------------
    # The hooks have plumpy's signatures (``src/plumpy/process_comms.py``, ProcessLauncher), so a subclass
    # overrides them the way AiiDA does. Those leave no argument for what only we need (the link to the
    # communicator, the task's hold, who the task is): ``_hook`` keeps it here, by the asyncio task that runs
    # the hook, for as long as the hook runs, and the handlers ask for it (``_context``).
    async def _hook(self, context: TaskContext, hook: Callable[..., Awaitable[Answer]], *args: object) -> Answer:
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = context
        try:
            answer = await hook(*args)
        finally:
            del self._tasks[task]
        if context.link is not None:  # what the task sent (its route's bind) reaches the communicator before its answer
            context.link.flush()
        return answer

    def _context(self, communicator: object) -> TaskContext:
        task = asyncio.current_task()
        context = self._tasks.get(task) if task is not None else None
        if context is not None:
            return context
        if isinstance(communicator, AsyncCommunicator):
            return TaskContext(None, None)  # called directly, off a task: not wired to a communicator
        return TaskContext(self._link_of(communicator), None)

    def _class_of(self, process_class: object) -> type[Process]:
        """A loader identifier (plumpy's ``process_class``) as a class; a class passed by a subclass is checked."""
        if isinstance(process_class, type):
            if not issubclass(process_class, Process):
                raise LoadError(f"{process_class!r} is not a process_comms.Process subclass; refusing it")
            return process_class
        return self._load_class(process_class)

    def _store(self) -> Persister:
        assert self.persister is not None, "a persisted process needs a persister (checked when its task came)"
        return self.persister

    async def _create(
        self,
        _communicator: object,
        process_class: object,
        persist: bool,
        init_args: Iterable[object] | None = None,
        init_kwargs: dict[str, object] | None = None,
    ) -> Pid:
        """Create (and with ``persist`` checkpoint) a process of ``process_class`` (a loader identifier); its pid."""
        cls, init_kwargs = self._class_of(process_class), init_kwargs or {}
        context = self._context(_communicator)
        if "pid" in init_kwargs:  # a pid is used once (_pids.py); the same create delivered again answers it
            pid = cast(Pid, init_kwargs["pid"])  # the task names it: vetted below (_pids.py)
            if (await self.pids.vet(pid, context, cls, init_kwargs.get("inputs"))).again:
                return pid
        proc = self._instantiate(cls, init_args or (), init_kwargs)
        _limit(proc, context)
        if persist:
            await in_executor(self._store().save_checkpoint, proc)
        return proc.pid

    async def _launch(
        self,
        _communicator: object,
        process_class: object,
        persist: bool,
        nowait: bool,
        init_args: Iterable[object] | None = None,
        init_kwargs: dict[str, object] | None = None,
    ) -> Answer:
        """Run a new process of ``process_class`` (a loader identifier): its pid with ``nowait``, else its outputs."""
        context = self._context(_communicator)
        cls = self._class_of(process_class)
        init_args, init_kwargs = init_args or (), init_kwargs or {}
        old: dict[str, object] | None = None
        named = cast("Pid | None", init_kwargs.get("pid"))  # the task names it: vetted here (_pids.py)
        vetted = named is not None and not fresh(context, named)
        if vetted:
            # a pid the task names is used once (_pids.py): refused, or the same task again
            use = await self.pids.vet(cast(Pid, named), context, cls, init_kwargs.get("inputs"))
            if use.again:
                again = await self._again(_communicator, use, cast(Pid, named), persist, nowait)
                if again is not None:
                    return again[0]
                old = use.record  # it had not ended: it runs again from the start, its history kept
        proc = self._instantiate(cls, init_args, init_kwargs)
        proc.restore_record(old, context.task_id)
        _limit(proc, context)
        if persist:
            store = self._store()
            assert self.claims is not None
            await self.claims.claim(proc.pid, context.link)
            try:
                if vetted and bool(await in_executor(store.get_process_checkpoints, proc.pid)):
                    raise refuse(proc.pid, "another worker ran it meanwhile")  # both passed the vetting at once
                await in_executor(store.save_checkpoint, proc)
            except BaseException:
                await self.claims.unclaim(proc.pid)
                raise
        # new by construction: made by the process, or the one this task's first delivery derived (_pids.py)
        made = proc.pid is getattr(proc, "made_pid", None) or (named is not None and not vetted and proc.pid == named)
        done = await self._start(proc, context.link, persist, new_pid=made)
        if nowait:
            done.add_done_callback(lambda _: release(context.hold))
            return proc.pid
        return await asyncio.shield(done)

    async def _again(
        self, _communicator: object, use: PidUse, pid: Pid, persist: bool, nowait: bool
    ) -> tuple[Answer] | None:
        """The same launch task delivered again (its worker died or handed it back): the first run's answer,
        held here or from its checkpoint or record, as a 1-tuple; None if it must run again from the start."""
        hold = self._context(_communicator).hold
        if use.proc is not None:  # still here: never a second copy beside it
            if nowait:
                use.proc.wait_done().add_done_callback(lambda _: release(hold))
                return (pid,)
            return (await asyncio.shield(use.proc.wait_done()),)
        if persist and bool(await in_executor(self._store().get_process_checkpoints, pid)):
            return (await self._continue(_communicator, pid, nowait, None),)
        outputs = answer_from_record(pid, use.record) if use.record is not None else None
        if outputs is None:
            return None
        release(hold)
        return (pid,) if nowait else (outputs,)

    async def _continue(self, _communicator: object, pid: Pid, nowait: bool, tag: str | None = None) -> Answer:
        """Continue ``pid`` from its checkpoint (``tag``): the pid with ``nowait``, else its outputs."""
        context = self._context(_communicator)
        existing = self._processes.get(str(pid))
        if existing is not None:  # never a second copy of a process this worker runs
            done = existing.wait_done()
        else:
            assert self.claims is not None, "continuing a process needs a persister (checked when its task came)"
            await self.claims.claim(pid, context.link)  # nor a copy of one that still runs on another worker
            existing = self._processes.get(str(pid))
            if existing is not None:
                return await self._continue(_communicator, pid, nowait, tag)
            try:
                proc = await self._recreate(pid, tag)
            except BaseException:  # it does not run here: another worker may take it at once
                await self.claims.unclaim(pid)
                raise
            done = await self._start(proc, context.link, True)
        if nowait:
            done.add_done_callback(lambda _: release(context.hold))
            return pid
        return await asyncio.shield(done)

    async def _recreate(self, pid: Pid, tag: str | None) -> Process:
        """The process of ``pid`` from its checkpoint (KilledError if its record says it was killed)."""
        old = await self._killed_record(pid)
        bundle = await in_executor(self._store().load_checkpoint, pid, tag)
        if not isinstance(bundle, dict) or not isinstance(bundle.get(META_KEY), dict):
            raise PersistenceError(f"the checkpoint of process {pid} is not a process_comms checkpoint")
        cls = self._load_class(bundle[META_KEY].get("class_name"))
        proc = cls.recreate_from(bundle)
        proc.restore_record(old)
        return proc

    async def start_process(
        self,
        proc: Process,
        core: AsyncCommunicator | None = None,
        comm_loop: asyncio.AbstractEventLoop | None = None,
        persist: bool = False,
    ) -> asyncio.Future[dict[str, object]]:
        """Wire ``proc`` to the communicator (RPC route, broadcasts) and start it on this loop."""
        link = self.link(core, comm_loop) if core is not None and comm_loop is not None else None
        return await self._start(proc, link, persist)

    async def _start(
        self, proc: Process, link: CommLink | None, persist: bool, *, new_pid: bool = False
    ) -> asyncio.Future[dict[str, object]]:
        """Attach ``proc``'s runtime, bind its route and start it; ``new_pid``: its pid was made for this launch
        (no subscriber can hold it), so its route's bind may go without a wait (``Routes.bind``)."""
        key = str(proc.pid)
        routed = not proc.state.terminal and link is not None
        holder = (self.owner, await token_of(link)) if self.records is not None else (None, None)
        runtime = Runtime(
            self.loop,
            link,
            self.persister if persist else None,
            self.records,
            holder,  # the record names its holder: the fleet marks it lost once that is gone
            self.loop.create_future() if routed else None,
        )
        proc.attach(runtime)
        started = time.monotonic()
        if routed:
            assert link is not None
            try:
                await self.routes.bind(proc, link, new_pid=new_pid)
                self._processes[key] = proc  # before the next await: a held run of the pid sees it (Routes, below)
                await self.broadcasts.ensure(link)
            except BaseException:
                if self._processes.get(key) is proc:
                    del self._processes[key]
                if self.claims is not None and self.claims.holds(proc.pid):  # another worker may take it at once
                    await self.claims.unclaim(proc.pid)
                raise
        self._processes[key] = proc
        done = proc.start()
        LOGGER.info("process %s (%s) started", key, type(proc).__qualname__)

        def cleanup(_: object) -> None:
            if self._processes.get(key) is proc:
                del self._processes[key]
            log_end(proc, time.monotonic() - started)
            if self.claims is not None:
                self.claims.let_go(proc.pid)
            if routed:  # the reply goes now; an ended process keeps its route until its record is written
                assert link is not None
                self.routes.let_go(proc, link)

        done.add_done_callback(cleanup)
        return done

    async def _killed_record(self, pid: Pid) -> dict[str, object] | None:
        """The record of ``pid`` (None without records); KilledError if it says killed: a killed process is
        never run again (a queued task killed before it started, an orphan killed after its worker died)."""
        if self.records is None:
            return None
        record = await in_executor(self._store().load_record, pid)
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


def _limit(proc: Process, context: TaskContext) -> None:
    """Give a new process the task's label and time limit (before its first checkpoint, which keeps them)."""
    if context.options.label is not None or context.options.time_limit is not None:
        proc.set_limits(context.options.time_limit, context.options.label)


# -- routes: each process's RPC route, held until its record is written -------------------------------
# A launcher's per-process RPC routes, and how an ended process keeps its route until its record is written.
#
# kiwipy's wire format routes an RPC to a process by its own route (``[rpc].<pid>``). A process's reply no
# longer waits for its record to be stored (the launch rate: docs/performance.md); instead the ended process stays
# *held* with its route bound until the record is written, so whoever asks about it meanwhile is answered
# by the process itself, and the fleet's record queries find it in memory (docs/performance.md, "What
# records cost"). Only ended processes are held: a suspended one (released, or its worker stopping) is
# written before it lets go, since a held one would answer a ``play`` it can no longer act on.
#
# A route's subscriber is a :class:`_Route`, not the process itself: it answers for the run of the pid
# that holds the route, so a new run of a pid (a launch that reuses it) takes the route over from a held,
# ended one instead of failing with ``DuplicateSubscriber``, and a route being removed is waited for
# first. Once removed, the communicator keeps the subscriber a while for requests routed before the
# unbind (``transports/base.py``, ``RETIRED_RPC_SECONDS``): they get the last run's answer.
class WhenWritten(RecordSink, Protocol):
    """A record sink that says when a process's record is written (records.py's ``RecordWriter``)."""

    def when_written(self, proc: Process, callback: Callable[[], None]) -> None: ...


class _Route:
    """The subscriber of one pid's route (on the communicator's loop): its run answers, and once the route
    is gone and the run has ended, an :class:`EndedRun` of it (the process itself is let go)."""

    __slots__ = ("proc",)

    def __init__(self, proc: Process) -> None:
        self.proc: Process | EndedRun = proc

    def __call__(self, comm: object, msg: object) -> object:
        return self.proc.handle_rpc(comm, msg)


class Routes:
    """Binds, holds and removes the RPC routes of a launcher's processes (all on the launcher's loop).

    ``processes`` is the launcher's own map of its live processes (by ``str(pid)``), shared, not copied."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, records: WhenWritten | None, processes: dict[str, Process]
    ) -> None:
        self.loop = loop
        self.records = records
        self._processes = processes
        #: Ended processes whose last record write, or the removal of their route after it, is in flight.
        self._ending: dict[str, Process] = {}
        #: Routes being removed, by key: resolved once unroutable (a new run of the pid waits for it).
        self._unbinding: dict[str, asyncio.Future[None]] = {}
        #: The bound routes, by key.
        self._routes: dict[str, _Route] = {}

    def held(self, pid: object) -> Process | None:
        """The process of ``pid`` if this launcher holds it: live, or ended with its last record write (or
        the removal of its route after it) in flight, so who asks about it is answered by the process."""
        key = str(pid)
        return self._processes.get(key) or self._ending.get(key)

    @property
    def ending(self) -> dict[str, Process]:
        """The ended processes still held (their record or their route's removal in flight), by ``str(pid)``."""
        return dict(self._ending)

    async def bind(self, proc: Process, link: CommLink, *, new_pid: bool = False) -> None:
        """Bind the route of ``proc``'s pid, or take it over from an ended run still held (its runtime's
        ``route_gone`` is resolved once the route is gone). The caller puts ``proc`` in the processes before
        its next await, so the held run does not remove the route.

        A ``new_pid`` (made for this launch: no subscriber can hold it) on a link whose earlier bind was allowed
        is bound without waiting: the bind goes with the launch's other sends, in order, and the launcher hands
        them over before the task's answer (``ProcessLauncher._hook``), so the route is in place before anyone
        learns the pid. If it fails all the same (the communicator closing, its connection lost), the process is
        killed, saying why: nobody could reach it."""
        key = str(proc.pid)
        while (unbinding := self._unbinding.get(key)) is not None:
            # bounded: an unbind stuck on a lost connection leaves the old subscriber, and the add below
            # then fails with DuplicateSubscriber instead of this run waiting for ever
            if not (await asyncio.wait({unbinding}, timeout=defaults.RPC_TIMEOUT))[0]:
                break
        route = self._routes.get(key)
        if route is not None and key in self._ending and key not in self._processes:
            route.proc = proc
            return
        route = _Route(proc)
        if new_pid and link.bound and key not in self._routes:
            self._routes[key] = route
            link.send(functools.partial(self._bind_sent, proc, route, link))
            return
        await link.call(link.core.add_rpc_subscriber, route, key)  # DuplicateSubscriber if live
        link.bound = True
        self._routes[key] = route

    async def _bind_sent(self, proc: Process, route: _Route, link: CommLink) -> None:
        """On the communicator's loop: bind a route sent without waiting; a failure goes back to the launcher."""
        try:
            await link.core.add_rpc_subscriber(route, str(proc.pid))
        except Exception as exc:  # noqa: BLE001 - told to the launcher's loop, which ends the process
            post(self.loop, functools.partial(self._not_bound, proc, exc))

    def _not_bound(self, proc: Process, exc: Exception) -> None:
        """On the launcher's loop: ``proc``'s route could not be bound; it is killed, saying why."""
        LOGGER.error("process %s: its route could not be bound, so it is killed: %s", proc.pid, exc)
        if not proc.state.terminal:
            proc.handle_intent(Intent.KILL, f"its route could not be bound: {exc}", False)

    def let_go(self, proc: Process, link: CommLink) -> None:
        """``proc`` has ended or been suspended: remove its route, after its record is written if it ended."""
        key = str(proc.pid)
        if proc.state.terminal and self.records is not None:
            self._ending[key] = proc
            self.records.when_written(proc, functools.partial(self._after_record, proc, link))
        elif key not in self._processes:
            self._unbind(proc, link)

    def _after_record(self, proc: Process, link: CommLink) -> None:
        key = str(proc.pid)
        if key in self._processes:  # a new run of this pid took the route over
            if self._ending.get(key) is proc:
                del self._ending[key]
            return
        self._unbind(proc, link)

    def _unbind(self, proc: Process, link: CommLink) -> None:
        key = str(proc.pid)
        unbound = self.loop.create_future()
        self._unbinding[key] = unbound
        route = self._routes.get(key)
        gone = proc.runtime.route_gone if proc.runtime is not None else None

        def done() -> None:
            if self._unbinding.get(key) is unbound:
                del self._unbinding[key]
            if self._ending.get(key) is proc:
                del self._ending[key]
            if route is not None and self._routes.get(key) is route:
                del self._routes[key]
            if route is not None and route.proc is proc and proc.state.terminal:
                route.proc = EndedRun(proc)  # what a request routed before the unbind is answered with
            unbound.set_result(None)
            if gone is not None and not gone.done():
                gone.set_result(None)

        async def remove() -> None:
            try:
                await link.core.remove_rpc_subscriber(key)
            except Exception:  # noqa: BLE001 - on a lost connection the route went with it
                pass
            finally:
                post(self.loop, done)  # not posted once the loop is gone: the launcher is closed

        link.send(remove)


# -- broadcasts: play/pause/kill to every live process ------------------------------------------------
# :class:`Broadcasts` is the other way a process is reached: ``play``/``pause``/``kill`` broadcasts, subscribed
# once per communicator and handed to every live process.
class Broadcasts:
    """Subscribes a launcher to broadcasts once per communicator and hands them to its live processes
    (``processes``: the launcher's own map, shared)."""

    def __init__(self, processes: dict[str, Process]) -> None:
        self._processes = processes
        self._ids: dict[int, object] = {}

    async def ensure(self, link: CommLink) -> None:
        """Subscribe to ``link``'s communicator's broadcasts (once for each communicator)."""
        if id(link.core) in self._ids:
            return
        self._ids[id(link.core)] = None

        def on_broadcast(_comm: object, body: object, _sender: object, subject: object, correlation_id: object) -> None:
            self.deliver(link, body, subject, correlation_id)

        # the subjects it acts on, so that a communicator of ours drops the rest undecoded (wire/extensions.py)
        wanted = BroadcastFilter(on_broadcast, subject=re.compile(f"({Intent.PLAY}|{Intent.PAUSE}|{Intent.KILL})$"))
        self._ids[id(link.core)] = await link.call(link.core.add_broadcast_subscriber, wanted)

    def deliver(self, link: CommLink, body: object, subject: object, cid: object) -> None:
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
            fut = proc.handle_intent(str(subject), text, False)
            if cid is not None:
                fut.add_done_callback(functools.partial(_answer, link, proc.pid, str(subject), cid))


def _answer(link: CommLink, pid: Pid, subject: str, cid: object, fut: concurrent.futures.Future[bool]) -> None:
    result = False if fut.cancelled() or fut.exception() is not None else fut.result()
    answer = functools.partial(
        link.core.broadcast_send, result, sender=pid, subject=f"{ANSWER_PREFIX}{subject}", correlation_id=cid
    )
    link.send(answer)


# -- the fleet: a worker's queues and slots (the slot counter), its answer to ``workers`` -------------
# A worker in a fleet (docs/fleet.md, "Workers"): its queues and slots, its health, and its answer to ``workers``.
#
# ``controller.list_workers(within)`` broadcasts :data:`WORKERS_SUBJECT` with a correlation id; every
# worker answers with an ``intent_result.workers`` broadcast (sender: its id, body: :meth:`Worker.info`),
# as processes answer ``pause_all(answers_within=...)`` (Broadcasts, above): one round trip for the fleet.
FLEET_LOGGER = logging.getLogger("process_comms.worker")  # the worker's log lines keep their logger name


def check_queues(queues: Mapping[str, int]) -> dict[str, int]:
    """``{queue name: slots}`` checked: names non-empty strings, slots integers of 0 or more (0: no limit)."""
    if not queues:
        raise ValueError("queues must name at least one task queue")
    checked: dict[str, int] = {}
    for name, slots in queues.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"a task queue name must be a non-empty string, not {name!r}")
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 0:
            raise ValueError(f"the slots of queue {name!r} must be an integer of 0 or more (0: no limit): {slots!r}")
        checked[name] = slots
    return checked


class Acceptor(Protocol):
    """What takes a queue's tasks: the launcher, or a recycling worker's wrapper of it (_recycle.py)."""

    def accept(self, communicator: object, task: object, delivery: Delivery | None) -> Accepted: ...


class SlotCounter:
    """The launcher as one queue's task subscriber, counting that queue's tasks in progress here.

    A task is in progress until the launcher's future is done and, for a persisted ``nowait`` launch, until
    its held delivery is released (the process ended): as long as it takes one of the queue's slots.
    """

    #: Called on the communicator's loop directly, as the launcher it wraps.
    loop_safe = True

    def __init__(self, launcher: Acceptor, queue: str, slots: int) -> None:
        self.launcher, self.queue, self.slots = launcher, queue, slots
        self.used = 0
        self._lock = threading.Lock()

    def __call__(self, communicator: object, task: object) -> concurrent.futures.Future[Answer]:
        # a task refused here raises: it took no slot
        fut, hold = self.launcher.accept(communicator, task, CURRENT_DELIVERY.get())
        pending: list[concurrent.futures.Future[Answer] | concurrent.futures.Future[None]] = [fut]
        if hold is not None:
            pending.append(hold)
        left = [len(pending)]
        with self._lock:
            self.used += 1

        def settled(_f: object) -> None:
            with self._lock:
                left[0] -= 1
                if left[0] == 0:
                    self.used -= 1

        for f in pending:
            f.add_done_callback(settled)
        return fut


class WorkersAnswer:
    """The broadcast subscriber that answers a ``workers`` request with the worker's :meth:`info`."""

    #: Called on the communicator's loop directly: it only schedules the answer.
    loop_safe = True

    def __init__(
        self,
        worker_id: str,
        info: Callable[[], dict[str, object]],
        core: AsyncCommunicator,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.worker_id, self.info, self.core, self.loop = worker_id, info, core, loop

    def is_filtered(self, _sender: object, subject: object) -> bool:
        """kiwipy's filter question: a communicator of ours drops what every subscriber filters out undecoded."""
        return bool(subject != WORKERS_SUBJECT)

    def __call__(self, _comm: object, _body: object, _sender: object, subject: object, correlation_id: object) -> None:
        if subject != WORKERS_SUBJECT or correlation_id is None:
            return
        answer = functools.partial(
            self.core.broadcast_send,
            self.info(),
            sender=self.worker_id,
            subject=f"{ANSWER_PREFIX}{WORKERS_SUBJECT}",
            correlation_id=correlation_id,
        )
        run_on(self.loop, answer).add_done_callback(_log_failure)


def _log_failure(fut: concurrent.futures.Future[bool]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        FLEET_LOGGER.warning("could not answer a workers request: %s", fut.exception())
