"""Crossing the thread boundary: a loop on a background thread, and futures that cannot deadlock it.

What crosses is a callable and its arguments (as anyio's ``BlockingPortal.start_task_soon`` takes them,
https://anyio.readthedocs.io/en/stable/threads.html), never a coroutine object: the coroutine is made on
the loop thread when the work starts, so a call posted to a loop that has gone leaves nothing to close.

The thread-facing communicator (:mod:`process_comms.transports.threaded`) and the worker run their loop here;
what a caller does with the futures it gets back lives in :mod:`process_comms.client.futures`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Generator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from .. import defaults
from .._compat import timeout as _timeout
from ..errors import CommunicatorClosed, DeadlockError
from ..errors import TimeoutError as PCTimeoutError

__all__ = ["LoopThread", "ControllerFuture", "AsyncFn", "with_deadline", "run_on", "spawn_on", "spawn_each_on", "post"]

T = TypeVar("T")
V = TypeVar("V")
LOGGER = logging.getLogger(__name__)

AsyncFn = Callable[..., Awaitable[T]]
"""What crosses the thread boundary: a coroutine function (or any callable returning an awaitable)."""


def _refuse_coroutine(fn: object) -> None:
    if asyncio.iscoroutine(fn):
        fn.close()
        raise TypeError(
            "pass the coroutine function and its arguments (start_task_soon(fn, *args)), not a coroutine object"
        )


class ControllerFuture(concurrent.futures.Future[T]):
    """A ``concurrent.futures.Future`` that refuses to block the loop thread that must complete it."""

    def __init__(self, loop_thread: threading.Thread | None = None) -> None:
        super().__init__()
        self._loop_thread = loop_thread

    def fail_in_forked_child(self, exc: BaseException) -> None:
        """In a child of ``os.fork()``: fail with ``exc`` unless done, with a fresh condition (a parent's
        thread may have held the one copied at the fork)."""
        if not self.done():
            self._condition = threading.Condition()
            _settle(self.set_exception, exc)

    def _check_thread(self) -> None:
        if not self.done() and threading.current_thread() is self._loop_thread:
            raise DeadlockError(
                "blocking on a process_comms future from its own event-loop thread would deadlock; "
                "use add_done_callback() or await it with asyncio.wrap_future() instead"
            )

    def result(self, timeout: float | None = None) -> T:
        self._check_thread()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._check_thread()
        return super().exception(timeout)

    def __await__(self) -> Generator[object, None, T]:
        """Await from any event loop (e.g. a notebook cell): ``await future``."""
        return asyncio.wrap_future(self).__await__()


def _copy_outcome(source: asyncio.Future[T], dest: concurrent.futures.Future[T]) -> None:
    if source.cancelled():
        if not dest.done():
            dest.cancel()
        return
    exc = source.exception()  # read even when ``dest`` was settled first (stop()): no "never retrieved"
    if dest.done():
        return
    if exc is not None:
        _settle(dest.set_exception, exc)
    else:
        _settle(dest.set_result, source.result())


def _settle(setter: Callable[[V], None], value: V) -> None:
    """Settle a future unless another thread (a cancel, a close) settled it first."""
    try:
        setter(value)
    except concurrent.futures.InvalidStateError:
        pass


class _Inbox:
    """Calls posted to one loop, in order: one loop wake-up (a self-pipe write) serves a whole burst.

    ``loop.call_soon_threadsafe`` writes to the loop's self-pipe on every call; under load (a worker's
    processes broadcasting their state changes to the communicator's loop, thousands a second) those writes
    and the wake-ups they cause were a fifth of a worker's interpreter time (py-spy ``--gil``,
    docs/performance.md). Every post to a loop from this module goes through its one inbox, so calls
    posted by one thread keep their order whichever function posted them. A call posted from the loop's
    own thread skips the pipe (``call_soon``) and still runs after the calls already waiting.
    """

    __slots__ = ("__weakref__", "_calls", "_loop", "_wake_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: collections.deque[Callable[[], object]] = collections.deque()
        self._wake_pending = False

    def post(self, fn: Callable[[], object]) -> bool:
        """Queue ``fn`` for the loop's thread; False if the loop is closed (``fn`` will not run)."""
        loop = self._loop
        if loop.is_closed():
            return False
        self._calls.append(fn)
        if self._wake_pending:
            return True
        if _running_loop() is loop:  # the loop's own thread: no pipe to write, no race
            self._wake_pending = True
            loop.call_soon(self.drain)
            return True
        # a race with drain at worst schedules one drain too many; a call is never left behind, since
        # drain clears the flag before it empties the inbox and a post appends before it reads the flag
        try:
            self._wake_pending = True
            loop.call_soon_threadsafe(self.drain)
        except RuntimeError:  # closed meanwhile
            self._wake_pending = False
            return False
        except BaseException:
            # e.g. Ctrl-C in the posting thread: a flag left set with no drain scheduled would leave every
            # later call unstarted; cleared, the next post wakes the loop (and this call runs then)
            self._wake_pending = False
            raise
        return True

    def drain(self) -> None:
        """Run the calls posted so far, in order (on the loop's thread)."""
        self._wake_pending = False
        calls = self._calls
        while calls:
            fn = calls.popleft()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - one failing call must not strand the calls after it
                # as the loop reports a failing callback of its own (call_soon_threadsafe gave each call
                # a handle of its own, so a failure stopped nothing else)
                self._loop.call_exception_handler(
                    {"message": f"exception in a call posted to the loop: {fn!r}", "exception": exc}
                )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_INBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()
_INBOXES_LOCK = threading.Lock()


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    # an attribute of the loop where it takes one (asyncio's own loops): a WeakKeyDictionary lookup makes
    # a weak reference per call, and a busy worker posts thousands of calls a second
    inbox: _Inbox | None = getattr(loop, "process_comms_inbox", None)
    if inbox is not None:
        return inbox
    with _INBOXES_LOCK:
        inbox = getattr(loop, "process_comms_inbox", None) or _INBOXES.get(loop)
        if inbox is None:
            inbox = _Inbox(loop)
            try:
                loop.process_comms_inbox = inbox  # type: ignore[attr-defined]
            except AttributeError:  # a loop with slots (uvloop): the weak mapping holds it
                _INBOXES[loop] = inbox
    return inbox


def post(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> bool:
    """``loop.call_soon_threadsafe(fn, *args)`` through the loop's inbox (one wake-up per burst, in order
    with :func:`run_on`); False, ``fn`` uncalled, if the loop is closed."""
    return _inbox(loop).post(functools.partial(fn, *args) if args else fn)


class LoopThread:
    """An asyncio event loop running on a named daemon thread, with an explicit, idempotent stop.

    ``with LoopThread() as lt:`` runs the loop for the block and stops it (joining the thread) at its end,
    so the thread's life is visible in the code (as anyio's ``start_blocking_portal``). A bare
    ``LoopThread()`` starts at once too (``start=False`` defers it to :meth:`start`); :meth:`stop` ends it.
    """

    def __init__(self, name: str = "process-comms-loop", *, start: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[object]] = set()
        self._futures: set[ControllerFuture[Any]] = set()
        self._inbox = _inbox(self.loop)  # calls posted by other threads: one wake-up per burst
        self._stopping = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start the loop's thread and wait until the loop runs; idempotent."""
        if self._thread.is_alive() or self._started.is_set():
            return
        if self._stopping:
            raise CommunicatorClosed(f"the event-loop thread {self._thread.name!r} was stopped; make a new one")
        self._thread.start()
        if not self._started.wait(defaults.CLOSE_TIMEOUT):
            self._stopping = True
            raise CommunicatorClosed(
                f"the event-loop thread {self._thread.name!r} did not start within {defaults.CLOSE_TIMEOUT} s; "
                "the process may be out of threads or memory"
            )

    def __enter__(self) -> LoopThread:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def thread(self) -> threading.Thread:
        """The thread the loop runs on."""
        return self._thread

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                self._stopping = True
                self._inbox.drain()  # calls posted too late: stop() failed their futures, so they start nothing
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.wait(pending, timeout=defaults.CLOSE_TIMEOUT))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            finally:
                self.loop.close()

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    @property
    def running(self) -> bool:
        """True until stop() has been called and the loop has finished."""
        return self._thread.is_alive() and not self.loop.is_closed()

    def start_task_soon(self, fn: AsyncFn[T], *args: object) -> ControllerFuture[T]:
        """Run ``await fn(*args)`` as a task on the loop and return at once; cancelling the future cancels the task.

        ``fn(*args)`` is called on the loop thread; if the loop has stopped, the future fails with
        :class:`CommunicatorClosed` and ``fn`` is never called.
        """
        _refuse_coroutine(fn)
        fut: ControllerFuture[T] = ControllerFuture(self._thread)
        started: list[asyncio.Task[T]] = []

        def on_done(f: concurrent.futures.Future[T]) -> None:
            self._futures.discard(f)
            if f.cancelled() and started:
                self.call_soon(started[0].cancel)

        # every callback on ``fut`` is added here, by the caller: the loop thread never contends for its lock
        self._futures.add(fut)
        fut.add_done_callback(on_done)

        def start() -> None:
            if fut.done():  # cancelled, or failed by stop(), before the loop got to it
                return
            try:
                task = asyncio.ensure_future(fn(*args), loop=self.loop)
            except BaseException as exc:  # noqa: BLE001 - fn itself failed: that is the call's outcome
                _settle(fut.set_exception, exc)
                return
            started.append(task)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda t: _copy_outcome(t, fut))
            if fut.cancelled():  # cancelled by another thread while the task was being made
                task.cancel()

        if not self._post(start):
            _settle(fut.set_exception, CommunicatorClosed("the communicator is closed"))
        return fut

    def _post(self, fn: Callable[[], None]) -> bool:
        """Queue ``fn`` for the loop thread, in order; False if the loop is stopping or closed."""
        if self._stopping:
            return False
        return self._inbox.post(fn)

    def run_sync(self, fn: AsyncFn[T], *args: object, timeout: float | None = None) -> T:
        """Run ``await fn(*args)`` on the loop and block for its result, at most ``timeout`` seconds
        (None: :data:`~process_comms.defaults.CLOSE_TIMEOUT`)."""
        _refuse_coroutine(fn)
        if self.in_loop_thread():
            raise DeadlockError("cannot block on the event-loop thread for work that must run on it")
        fut = self.start_task_soon(fn, *args)
        limit = timeout if timeout is not None else defaults.CLOSE_TIMEOUT
        try:
            return fut.result(limit)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise PCTimeoutError(f"the operation did not finish within {limit} s") from None

    def call_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` on the loop thread soon (thread-safe); ignored once the loop is closed."""
        post(self.loop, fn, *args)

    def disown(self, reason: str) -> None:
        """In a child of ``os.fork()`` (where this thread does not exist): take no more calls and fail those in
        flight with :class:`CommunicatorClosed` (``reason``), never waiting on the loop."""
        self._stopping = True
        for fut in list(self._futures):
            fut.fail_in_forked_child(CommunicatorClosed(reason))

    def stop(self, timeout: float = defaults.CLOSE_TIMEOUT) -> None:
        """Fail the calls still in flight with CommunicatorClosed, stop the loop and join the thread; idempotent."""
        self._stopping = True
        closed = "closed while the call was in flight; its outcome is unknown"
        for fut in list(self._futures):
            if not fut.done():
                _settle(fut.set_exception, CommunicatorClosed(closed))  # one exception per future
        if self._thread.is_alive():
            self.call_soon(self.loop.stop)
            if not self.in_loop_thread():
                self._thread.join(timeout)


def run_on(loop: asyncio.AbstractEventLoop, fn: AsyncFn[T], *args: object) -> concurrent.futures.Future[T]:
    """Run ``await fn(*args)`` on another thread's ``loop``; on a closed loop the future fails, ``fn`` uncalled.

    The thread-safe counterpart of :meth:`LoopThread.start_task_soon` for a loop this module does not own
    (the worker's process loop); cancelling the future cancels the task.
    """
    _refuse_coroutine(fn)
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def start() -> None:
        if fut.cancelled():
            return
        try:
            task = asyncio.ensure_future(fn(*args), loop=loop)
        except BaseException as exc:  # noqa: BLE001 - fn itself failed: that is the call's outcome
            fut.set_exception(exc)
            return
        task.add_done_callback(lambda t: _copy_outcome(t, fut))
        fut.add_done_callback(lambda f: post(loop, task.cancel) if f.cancelled() else None)

    if not _inbox(loop).post(start):
        fut.set_exception(CommunicatorClosed("the event loop is closed"))
    return fut


def spawn_on(loop: asyncio.AbstractEventLoop, fn: AsyncFn[object], *args: object) -> None:
    """Start ``await fn(*args)`` on ``loop`` (any thread) and forget it: :func:`run_on` without its
    ``concurrent.futures.Future`` (a lock and a condition each), for work whose outcome no one awaits, such
    as a process's state broadcast. A failure is logged; on a closed loop ``fn`` is not called."""
    _refuse_coroutine(fn)
    if not _inbox(loop).post(functools.partial(_start_logged, loop, functools.partial(fn, *args) if args else fn)):
        LOGGER.debug("not started, the event loop is closed: %r", fn)


def spawn_each_on(loop: asyncio.AbstractEventLoop, fns: Sequence[AsyncFn[object]]) -> None:
    """:func:`spawn_on` for each of ``fns`` in one hand-over: every ``await fn()`` started on ``loop`` in order, in
    the one call that the hand-over runs, so what is posted to ``loop`` after them starts after them."""
    for fn in fns:
        _refuse_coroutine(fn)

    def start() -> None:
        for fn in fns:
            _start_logged(loop, fn)

    if not _inbox(loop).post(start):
        LOGGER.debug("not started, the event loop is closed: %r", fns)


def _start_logged(loop: asyncio.AbstractEventLoop, fn: AsyncFn[object]) -> None:
    """Start ``await fn()`` as a task on ``loop`` (its thread), its failure logged."""
    try:
        task = asyncio.ensure_future(fn(), loop=loop)
    except Exception:
        LOGGER.exception("could not start %r", fn)
        return
    task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        LOGGER.error("work started with spawn_on failed", exc_info=task.exception())


async def with_deadline(aw: Awaitable[T], timeout: float, what: str) -> T:
    """Await ``aw`` for at most ``timeout`` seconds, then fail with :class:`process_comms.TimeoutError`."""
    try:
        async with _timeout(timeout):  # no extra task per call, unlike wait_for
            return await aw
    except TimeoutError as exc:
        if isinstance(exc, PCTimeoutError):
            raise
        raise PCTimeoutError(f"{what}: no answer within {timeout} s (the remote action may still happen)") from None
