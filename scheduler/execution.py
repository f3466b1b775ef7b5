"""Running one attempt's handler, and turning whatever it does into an outcome.

Async handlers run on the event loop, in the job's own task; sync handlers run on a pool of
``concurrency`` long-lived threads. Either way the result is data (:class:`Result`), never an
exception that escapes into the replica:

* returns                       → ``succeeded``
* raises anything (``Exception``, but also ``SystemExit`` from ``sys.exit()``,
  ``KeyboardInterrupt``, ``GeneratorExit``, an exception whose ``str()`` raises)
                                → ``failed``, with a storable error text and traceback
                                  (:func:`scheduler.limits.exception_text`; NUL and unpaired
                                  surrogates escaped, 2,000 / 16,000 characters at most)
* runs longer than ``timeout_s``→ ``timeout``. The clock starts when the handler starts (not
                                  while it waits for a thread). An async handler is cancelled;
                                  a sync handler's thread cannot be stopped, so it runs on.

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
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import metrics
from .jobs import RunOutcome
from .limits import TRACEBACK_MAX, exception_text, storable_text
from .tasks import Task


@dataclass(frozen=True)
class Result:
    """The outcome of one attempt: ``outcome`` and, unless it succeeded, a storable
    ``error`` (``"Type: message"``) and ``traceback`` (``None`` for a timeout)."""

    outcome: RunOutcome
    error: str | None = None
    traceback: str | None = None


SUCCEEDED = Result(RunOutcome.SUCCEEDED)


def failure(exc: BaseException) -> Result:
    """A ``failed`` :class:`Result` describing ``exc``; never raises."""
    try:
        tb = "".join(traceback.format_exception(exc))
    except BaseException:  # noqa: BLE001 - a hostile exception may break the formatter
        tb = "<the traceback could not be formatted>"
    return Result(RunOutcome.FAILED, exception_text(exc), storable_text(tb, TRACEBACK_MAX,
                                                                        keep="tail"))  # fmt: skip


def _call(func: Any, args: dict[str, Any]) -> Result:
    """Run a sync handler in its thread; every exception becomes a failed Result there, so a
    ``SystemExit`` never leaves the thread."""
    try:
        func(**args)
    except BaseException as exc:  # noqa: BLE001 - a handler's failure is data, not a crash
        return failure(exc)
    return SUCCEEDED


class Executor:
    """Runs handlers; see the module docstring.

    Args:
        concurrency: threads for sync handlers (the worker's slots).
        log: the worker's bound logger.
    """

    def __init__(self, concurrency: int, log: Any):
        self.log = log
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="scheduler-job")
        self._threads: dict[int, asyncio.Future[Result]] = {}  # job id -> its running thread
        self._stuck: set[int] = set()

    def stuck(self) -> int:
        """Sync handler threads still running after their attempt ended."""
        return len(self._stuck)

    async def run(self, task: Task, args: dict[str, Any], job_id: int) -> Result:
        """Run one attempt of ``task`` with ``args`` as keyword arguments.

        Raises:
            asyncio.CancelledError: only when this task was cancelled by the replica.
        """
        if task.is_async:
            return await self._run_async(task, args)
        return await self._run_sync(task, args, job_id)

    async def _run_async(self, task: Task, args: dict[str, Any]) -> Result:
        try:
            await asyncio.wait_for(task.func(**args), task.timeout_s)
        except TimeoutError:
            return _timeout(task)
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # ours: shutdown or an operator's cancel
            return failure(exc)  # the handler's own CancelledError
        except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, ...
            return failure(exc)
        return SUCCEEDED

    async def _run_sync(self, task: Task, args: dict[str, Any], job_id: int) -> Result:
        loop = asyncio.get_running_loop()
        started = loop.create_future()

        def call() -> Result:
            loop.call_soon_threadsafe(_resolve, started)  # the timeout clock starts here
            return _call(task.func, args)

        thread = loop.run_in_executor(self._pool, call)
        self._threads[job_id] = thread
        thread.add_done_callback(lambda _: self._thread_done(job_id))
        try:
            await asyncio.shield(started)
            return await asyncio.wait_for(asyncio.shield(thread), task.timeout_s)
        except TimeoutError:
            self._overrun(job_id, task, "timeout")
            return _timeout(task)
        except asyncio.CancelledError:
            self._overrun(job_id, task, "cancelled")
            raise

    async def join(self, job_id: int) -> None:
        """Return when the sync handler thread of ``job_id`` (if any) has returned; the
        caller's slot stays taken until then."""
        thread = self._threads.get(job_id)
        if thread is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(thread)

    def _overrun(self, job_id: int, task: Task, reason: str) -> None:
        thread = self._threads.get(job_id)
        if thread is None or thread.done():
            return
        self._stuck.add(job_id)
        metrics.THREADS_STUCK.set(len(self._stuck))
        self.log.warning("handler_thread_stuck", job_id=job_id, task=task.name, reason=reason,
                         timeout_s=task.timeout_s, stuck_threads=len(self._stuck))  # fmt: skip

    def _thread_done(self, job_id: int) -> None:
        self._threads.pop(job_id, None)
        if job_id in self._stuck:
            self._stuck.discard(job_id)
            metrics.THREADS_STUCK.set(len(self._stuck))
            self.log.warning("handler_thread_returned", job_id=job_id,
                             stuck_threads=len(self._stuck))  # fmt: skip

    def alive(self) -> bool:
        """True while any sync handler thread is running."""
        return bool(self._threads)

    def shutdown(self) -> None:
        """Stop accepting work; running threads cannot be stopped and run on."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _timeout(task: Task) -> Result:
    return Result(
        RunOutcome.TIMEOUT, f"TimeoutError: attempt ran longer than timeout_s={task.timeout_s}"
    )
