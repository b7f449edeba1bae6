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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeAlias, cast

import kiwipy

from .. import defaults
from ..errors import LoadError, PersistenceError
from ..transports.base import CURRENT_DELIVERY, AsyncCommunicator, Delivery, InvalidTask
from ..transports.loop import LoopThread, run_on
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
    launch_options_of,
    wire_bool,
)
from ._claims import Claims, in_executor, token_of
from ._link import CommLink, HasCore
from ._pids import Pids, PidUse, TaskContext, answer_from_record, refuse
from ._routes import Broadcasts, Routes
from .persistence import Persister
from .process import META_KEY, KilledError, Process, Runtime
from .records import RecordWriter

__all__ = ["ProcessLauncher"]

LOGGER = logging.getLogger(__name__)

#: What a task handler returns: a pid (nowait, create) or the outputs.
Answer: TypeAlias = "Pid | dict[str, object]"


#: Namespace of the pids derived from a launch task's correlation id (same task, same pid).
LAUNCH_PID_NAMESPACE = uuid.UUID("6f1c2a4e-3b5d-4c2a-9e1f-0d7b8a9c6e21")


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
        if isinstance(communicator, HasCore) and isinstance(communicator.core, AsyncCommunicator):
            return self.link(communicator.core, communicator.loop)
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
            return await hook(*args)
        finally:
            del self._tasks[task]

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
        done = await self._start(proc, context.link, persist)
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

    async def _start(self, proc: Process, link: CommLink | None, persist: bool) -> asyncio.Future[dict[str, object]]:
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
                await self.routes.bind(proc, link)
                self._processes[key] = proc  # before the next await: a held run of the pid sees it (_routes.py)
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
