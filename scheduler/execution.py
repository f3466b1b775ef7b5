"""Running one attempt's handler, and turning whatever it does into an outcome.

Async handlers run on the event loop, in the job's own task; sync handlers run on up to
``concurrency`` long-lived threads (:class:`HandlerThreads`), which hand results back to the
loop in batches. Either way the result is data (:class:`Result`), never an
exception that escapes into the replica:

* returns                       → ``succeeded``; a JSON value it returns is stored in
                                  ``jobs.result`` (at most :data:`~scheduler.limits.RESULT_MAX`
                                  characters of JSON; a value that cannot be stored leaves
                                  ``result`` NULL and says why in the run's ``error``)
* raises anything (``Exception``, but also ``SystemExit`` from ``sys.exit()``,
  ``KeyboardInterrupt``, ``GeneratorExit``, an exception whose ``str()`` raises)
                                → ``failed``, with a storable error text and traceback
                                  (:func:`scheduler.limits.exception_text`; NUL and unpaired
                                  surrogates escaped, 2,000 / 16,000 characters at most)
* runs longer than ``timeout_s``→ ``timeout``. The clock starts when the handler starts (not
                                  while it waits for a thread). An async handler is cancelled;
                                  a sync handler's thread cannot be stopped, so it runs on.

While a handler runs, :func:`scheduler.current_job` returns its :class:`JobContext` (passed
as the first argument to handlers that declare it), structlog's contextvars carry ``job_id``,
``task``, ``attempt`` and ``schedule``, and stdlib ``logging`` records get
``scheduler_job_id``, ``scheduler_task``, ``scheduler_attempt`` and ``scheduler_schedule``
attributes (for format strings), in the job's asyncio task or handler thread only.

Only the replica's own cancellation (shutdown, or an operator's ``scheduler jobs cancel``)
leaves :meth:`Executor.run` as ``asyncio.CancelledError``.

A sync handler that outlives its attempt (timeout, or cancelled by an operator) keeps its
thread, and the worker keeps its slot taken until the thread returns (:meth:`Executor.join`):
with ``concurrency`` threads and ``concurrency`` slots, a job never waits for a thread, and a
hung handler costs its own slot, not the timeout budget of the jobs behind it. Such threads are
*stuck*: counted by :meth:`Executor.stuck` (metric ``scheduler_handler_threads_stuck``, the
``replicas.stuck_threads`` column shown by ``scheduler status``) and logged when they start
and stop overrunning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import structlog

from . import metrics
from .arguments import result_json
from .hooks import attempt_scope, report_failure
from .job_context import JobContext, current_job, set_current_job
from .jobs import RunOutcome
from .limits import TRACEBACK_MAX, exception_text, storable_text
from .registry import TaskSpec


@dataclass(frozen=True)
class Result:
    """The outcome of one attempt: ``outcome``; unless it succeeded, a storable ``error``
    (``"Type: message"``) and ``traceback`` (``None`` for a timeout); when it succeeded,
    ``value``, the JSON text of what the handler returned (``None`` for ``None``), and an
    ``error`` saying why a value could not be stored."""

    outcome: RunOutcome
    error: str | None = None
    traceback: str | None = None
    value: str | None = None


SUCCEEDED = Result(RunOutcome.SUCCEEDED)


def succeeded(value: Any) -> Result:
    """The Result of a handler that returned ``value``; never raises."""
    if value is None:
        return SUCCEEDED
    text, problem = result_json(value)
    if problem is not None:
        return Result(RunOutcome.SUCCEEDED, storable_text(f"result not stored: {problem}",
                                                          2_000))  # fmt: skip
    return Result(RunOutcome.SUCCEEDED, value=text)


def enter_job(ctx: JobContext) -> None:
    """Make ``ctx`` the current job of this context (the job's asyncio task): for
    :func:`scheduler.current_job`, structlog's contextvars and stdlib logging records."""
    set_current_job(ctx)
    structlog.contextvars.bind_contextvars(
        job_id=ctx.job_id, task=ctx.task, attempt=ctx.attempt, schedule=ctx.schedule_name
    )


def _install_record_factory() -> None:
    """Give stdlib logging records ``scheduler_job_id``, ``scheduler_task``,
    ``scheduler_attempt`` and ``scheduler_schedule`` (``None`` outside a job), once per
    process. Prefixed: a handler's own ``extra={"task": ...}`` must not collide with them."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "scheduler_job_fields", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        ctx = current_job()
        record.scheduler_job_id = ctx.job_id if ctx else None
        record.scheduler_task = ctx.task if ctx else None
        record.scheduler_attempt = ctx.attempt if ctx else None
        record.scheduler_schedule = ctx.schedule_name if ctx else None
        return record

    factory.scheduler_job_fields = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def failure(exc: BaseException) -> Result:
    """A ``failed`` :class:`Result` describing ``exc``; never raises."""
    try:
        tb = "".join(traceback.format_exception(exc))
    except BaseException:  # noqa: BLE001 - a hostile exception may break the formatter
        tb = "<the traceback could not be formatted>"
    return Result(RunOutcome.FAILED, exception_text(exc), storable_text(tb, TRACEBACK_MAX,
                                                                        keep="tail"))  # fmt: skip


def _ours(exc: BaseException) -> bool:
    """True for the replica's own cancellation of this task (shutdown, an operator's
    cancel), as opposed to a ``CancelledError`` the handler raised itself."""
    current = asyncio.current_task()
    return (isinstance(exc, asyncio.CancelledError) and current is not None
            and current.cancelling() > 0)  # fmt: skip


def _call(func: Any, args: dict[str, Any], ctx: JobContext | None, pass_ctx: bool) -> Result:
    """Run a sync handler in its thread, inside the attempt hooks (:mod:`scheduler.hooks`);
    every exception becomes a failed Result there (after the failure hooks), so a
    ``SystemExit`` never leaves the thread."""
    try:
        with attempt_scope(ctx) if ctx is not None else contextlib.nullcontext():
            try:
                value = func(ctx, **args) if pass_ctx else func(**args)
            except BaseException as exc:
                report_failure(ctx, exc)  # inside the hooks: a tracing span is still current
                raise
    except BaseException as exc:  # noqa: BLE001 - a handler's failure is data, not a crash
        return failure(exc)
    return succeeded(value)


class HandlerThreads:
    """Up to ``size`` long-lived threads running sync handlers (``scheduler-job-N``).

    Per job, the event loop puts one item on a queue and gets back an asyncio future; the
    threads hand results back in batches (one ``call_soon_threadsafe`` per batch of results
    that arrived while the loop was busy, not one per job), and no ``concurrent.futures``
    machinery (work item, condition, chained futures) runs per job. Threads start on demand
    and stay (daemon threads: a handler that never returns does not keep the process alive).
    The worker never has more sync jobs running than ``size`` (its slots), so a job never
    waits for a thread.

    The pool, not the future, knows whether a handler still runs: the future may be
    cancelled (the attempt ended: operator cancel, shutdown) while its thread runs on;
    :meth:`running` and :meth:`returned` answer for the thread.
    """

    def __init__(self, size: int):
        self.size = size
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done: list[tuple[int, asyncio.Future[Result], Result]] = []
        self._notified = False
        self._threads: list[threading.Thread] = []
        self._running: set[int] = set()  # job ids submitted whose handler has not returned
        self._started: dict[int, float] = {}  # job id -> time.monotonic() its handler started
        self._waiters: dict[int, asyncio.Future[None]] = {}  # job id -> set when it returns
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(
        self,
        job_id: int,
        func: Any,
        args: dict[str, Any],
        ctx: JobContext | None = None,
        pass_ctx: bool = False,
    ) -> asyncio.Future[Result]:
        """Run ``func(**args)`` (``func(ctx, **args)`` when ``pass_ctx``) on a thread, which
        makes ``ctx`` its current job first (:func:`enter_job`, in the thread's own context:
        each thread runs one job at a time); the future resolves on the loop with its Result
        (unless it was cancelled meanwhile: the Result is then dropped)."""
        self._loop = loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._running.add(job_id)
        if len(self._running) > len(self._threads) and len(self._threads) < self.size:
            thread = threading.Thread(target=self._serve, daemon=True,
                                      name=f"scheduler-job-{len(self._threads)}")  # fmt: skip
            self._threads.append(thread)
            thread.start()
        self._work.put((job_id, func, args, ctx, pass_ctx, future))
        return future

    def started_at(self, job_id: int) -> float | None:
        """``time.monotonic()`` when the handler of ``job_id`` started, None if not yet."""
        return self._started.get(job_id)

    def running(self, job_id: int) -> bool:
        """True until the handler of ``job_id`` has returned (as seen by the loop)."""
        return job_id in self._running

    def returned(self, job_id: int) -> asyncio.Future[None]:
        """A future set when the handler of ``job_id`` returns (at once if it has)."""
        assert self._loop is not None
        waiter = self._waiters.get(job_id)
        if waiter is None:
            waiter = self._loop.create_future()
            if job_id in self._running:
                self._waiters[job_id] = waiter
            else:
                waiter.set_result(None)
        return waiter

    def busy(self) -> int:
        """Handlers submitted and not yet returned."""
        return len(self._running)

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            job_id, func, args, ctx, pass_ctx, future = item
            self._started[job_id] = time.monotonic()
            if ctx is not None:
                enter_job(ctx)
            result = _call(func, args, ctx, pass_ctx)
            with self._lock:
                self._done.append((job_id, future, result))
                notify, self._notified = not self._notified, True
            if notify and self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            done, self._done, self._notified = self._done, [], False
        for job_id, future, result in done:
            self._running.discard(job_id)
            self._started.pop(job_id, None)
            if not future.done():
                future.set_result(result)
            if self._waiters and (waiter := self._waiters.pop(job_id, None)) is not None:
                waiter.set_result(None)

    def shutdown(self) -> None:
        """Let idle threads end; threads still running a handler end when it returns."""
        for _ in self._threads:
            self._work.put(None)


class Executor:
    """Runs handlers; see the module docstring.

    Args:
        concurrency: threads for sync handlers (the worker's slots).
        log: the worker's bound logger.
    """

    def __init__(self, concurrency: int, log: Any):
        self.log = log
        self._pool = HandlerThreads(concurrency)
        self._stuck: set[int] = set()
        self._contexts: dict[int, JobContext] = {}  # job id -> its context, while it runs
        _install_record_factory()

    def stuck(self) -> int:
        """Sync handler threads still running after their attempt ended."""
        return len(self._stuck)

    async def run(self, task: TaskSpec, args: dict[str, Any], ctx: JobContext) -> Result:
        """Run one attempt of ``task`` with ``args`` as keyword arguments (and ``ctx`` first
        when the handler takes a :class:`JobContext`), as the current job of this asyncio
        task (:func:`enter_job`).

        Raises:
            asyncio.CancelledError: only when this task was cancelled by the replica.
        """
        self._contexts[ctx.job_id] = ctx
        try:
            if task.is_async:
                enter_job(ctx)  # this task's context is the job's own
                return await self._run_async(task, args, ctx)
            return await self._run_sync(task, args, ctx)  # its thread enters the job
        finally:
            del self._contexts[ctx.job_id]

    def request_cancel(self, job_id: int) -> None:
        """Set :attr:`JobContext.cancel_requested` of a running job (an operator's cancel)."""
        ctx = self._contexts.get(job_id)
        if ctx is not None:
            ctx.request_cancel()

    async def _run_async(self, task: TaskSpec, args: dict[str, Any], ctx: JobContext) -> Result:
        try:
            with attempt_scope(ctx):  # the hooks of scheduler.hooks, in this task's context
                try:
                    call = task.func(ctx, **args) if task.takes_context else task.func(**args)
                    if task.timeout_s is None:  # awaited in place: no wait_for frame per job
                        value = await call
                    else:
                        value = await asyncio.wait_for(call, task.timeout_s)
                except BaseException as exc:
                    if not _ours(exc):  # inside the hooks: a tracing span is still current
                        report_failure(ctx, exc)
                    raise
        except TimeoutError:
            return _timeout(task)
        except asyncio.CancelledError as exc:
            if _ours(exc):
                raise  # ours: shutdown or an operator's cancel
            return failure(exc)  # the handler's own CancelledError
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, ...
            return failure(exc)
        return succeeded(value)

    async def _run_sync(self, task: TaskSpec, args: dict[str, Any], ctx: JobContext) -> Result:
        # awaited directly (no shield, no callback per job): a cancel of this attempt cancels
        # the future only; the pool still tracks the thread, which runs on
        job_id = ctx.job_id
        future = self._pool.submit(job_id, task.func, args, ctx, task.takes_context)
        try:
            if task.timeout_s is None:
                return await future
            return await self._within(future, task, job_id)
        except asyncio.CancelledError:
            self._overrun(job_id, task, "cancelled")
            raise

    async def _within(self, future: asyncio.Future[Result], task: TaskSpec, job_id: int) -> Result:
        """The handler's Result, or a timeout once it has run ``timeout_s`` (counted from when
        its thread started it, not from when it was submitted)."""
        assert task.timeout_s is not None
        while True:
            started = self._pool.started_at(job_id)
            left = task.timeout_s if started is None else started + task.timeout_s - time.monotonic()
            done, _ = await asyncio.wait({future}, timeout=max(left, 0.0))
            if done:
                return future.result()
            started = self._pool.started_at(job_id)
            if started is not None and time.monotonic() - started >= task.timeout_s:
                future.cancel()  # its Result, when the thread returns, is dropped
                self._overrun(job_id, task, "timeout")
                return _timeout(task)

    async def join(self, job_id: int) -> None:
        """Return when the sync handler thread of ``job_id`` (if any) has returned; the
        caller's slot stays taken until then."""
        if self._pool.running(job_id):
            await asyncio.shield(self._pool.returned(job_id))

    def _overrun(self, job_id: int, task: TaskSpec, reason: str) -> None:
        ctx = self._contexts.get(job_id)
        if ctx is not None:
            ctx.request_cancel()  # a sync handler can look at ctx.cancel_requested and stop
        if not self._pool.running(job_id) or job_id in self._stuck:
            return
        self._stuck.add(job_id)
        metrics.THREADS_STUCK.set(len(self._stuck))
        self._pool.returned(job_id).add_done_callback(lambda _: self._thread_done(job_id))
        self.log.warning("handler_thread_stuck", job_id=job_id, task=task.name, reason=reason,
                         timeout_s=task.timeout_s, stuck_threads=len(self._stuck))  # fmt: skip

    def _thread_done(self, job_id: int) -> None:
        self._stuck.discard(job_id)
        metrics.THREADS_STUCK.set(len(self._stuck))
        self.log.warning("handler_thread_returned", job_id=job_id,
                         stuck_threads=len(self._stuck))  # fmt: skip

    def alive(self) -> bool:
        """True while any sync handler thread is running."""
        return self._pool.busy() > 0

    def shutdown(self) -> None:
        """Stop accepting work; running threads cannot be stopped and run on."""
        self._pool.shutdown()


def _timeout(task: TaskSpec) -> Result:
    return Result(
        RunOutcome.TIMEOUT, f"TimeoutError: attempt ran longer than timeout_s={task.timeout_s}"
    )
