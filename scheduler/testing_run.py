"""Running due jobs in the test's process: :meth:`scheduler.testing.SchedulerDB.run_jobs`.

One job at a time, with the worker's own statements: claimed by ``claim_jobs`` (whose
``now`` parameter is the due-time horizon, so a test can run "6 minutes from now" without
waiting), completed by ``complete_jobs`` with the worker's rules (success, retry after the
job's :class:`~scheduler.retry.Backoff`, dead after ``max_attempts``). No replica, leader,
lease extension or notification is involved.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg

from .connections import close_default_async_pools
from .errors import DatabaseUnavailableError, InvalidArgumentError, SchedulerError, UnknownTaskError
from .execution import Result, enter_job, failure, succeeded
from .job_context import JobContext
from .jobs import JobState, RunOutcome
from .limits import check_queue, exception_text, shown
from .log import redact_url
from .preparation import check_run_at, delay_seconds
from .registry import TaskSpec, get_task
from .retry import Backoff
from .store import Store
from .tracing import frozen

WORKER_ID = "scheduler-testing"  # jobs.locked_by and job_runs.worker_id of these attempts
LEASE_S = 3600.0  # no leader runs in a test: the lease only has to outlast one attempt

Until = datetime | timedelta | float | None


@dataclass
class RunReport:
    """What one ``run_jobs`` call ran.

    Attributes:
        succeeded_ids: jobs that succeeded, in order.
        failed_ids: one entry per failed attempt that was retried (the job went back to
            pending): a job that fails twice then succeeds is here twice, and in
            ``succeeded_ids``.
        dead_ids: jobs dead-lettered (their last attempt failed, or the task is unknown).
        errors: the last error text (``"Type: message"``) per job id.
        results: the JSON-decoded return value per succeeded job id (``None`` for none).
        limit_reached: the call stopped after ``max_jobs`` attempts.
    """

    succeeded_ids: list[int] = field(default_factory=list)
    failed_ids: list[int] = field(default_factory=list)
    dead_ids: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    results: dict[int, Any] = field(default_factory=dict)
    limit_reached: bool = False
    _order: list[int] = field(default_factory=list, repr=False)

    @property
    def succeeded(self) -> int:
        """Jobs that succeeded."""
        return len(self.succeeded_ids)

    @property
    def failed(self) -> int:
        """Failed attempts that were retried."""
        return len(self.failed_ids)

    @property
    def dead(self) -> int:
        """Jobs dead-lettered."""
        return len(self.dead_ids)

    @property
    def attempts(self) -> int:
        """Attempts in all (an unknown task's dead-lettering counts as one)."""
        return len(self._order)

    @property
    def job_ids(self) -> list[int]:
        """Every job run, once, in the order of their first attempt."""
        return list(dict.fromkeys(self._order))

    def _add(self, job_id: int, state: JobState, result: Result) -> None:
        self._order.append(job_id)
        if state is JobState.SUCCEEDED:
            self.succeeded_ids.append(job_id)
            self.results[job_id] = None if result.value is None else json.loads(result.value)
        else:
            (self.dead_ids if state is JobState.DEAD else self.failed_ids).append(job_id)
        if result.error is not None:
            self.errors[job_id] = result.error


def run_jobs(url: str, store: Store, until: Until = None, queues: Any = None,
             max_jobs: int = 10_000) -> RunReport:  # fmt: skip
    """See :meth:`scheduler.testing.SchedulerDB.run_jobs`."""
    run = _Run(store, queues, max_jobs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise SchedulerError("run_jobs() was called inside a running event loop: use "
                             "`await scheduler_db.run_jobs_async(...)`")  # fmt: skip
    with asyncio.Runner() as runner:
        conn = runner.run(_connect(url))
        try:
            runner.run(run.start(conn, until))
            while job := runner.run(run.claim(conn)):
                spec, context, ctx = _attempt_context(job)
                if spec is None:
                    result = None
                elif spec.is_async:
                    result = runner.run(_call_async(spec, job, ctx), context=context)
                else:  # in this thread, with no event loop running (as in a worker's thread)
                    result = context.run(_call_sync, spec, job, ctx)
                runner.run(run.finish(conn, job, result))
        finally:
            runner.run(conn.close())
            runner.run(close_default_async_pools())
    return run.report


async def run_jobs_async(url: str, store: Store, until: Until = None, queues: Any = None,
                         max_jobs: int = 10_000) -> RunReport:  # fmt: skip
    """See :meth:`scheduler.testing.SchedulerDB.run_jobs_async`."""
    run = _Run(store, queues, max_jobs)
    async with await _connect(url) as conn:
        await run.start(conn, until)
        while job := await run.claim(conn):
            spec, context, ctx = _attempt_context(job)
            if spec is None:
                result = None
            elif spec.is_async:
                result = await asyncio.create_task(_call_async(spec, job, ctx), context=context)
            else:
                result = await asyncio.to_thread(context.run, _call_sync, spec, job, ctx)
            await run.finish(conn, job, result)
    return run.report


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.Error as e:
        raise DatabaseUnavailableError(f"run_jobs: cannot connect to {redact_url(url)}: "
                                       f"{redact_url(str(e))}") from None  # fmt: skip


class _Run:
    """The state of one ``run_jobs`` call: the queues, the horizon, the report."""

    def __init__(self, store: Store, queues: Any, max_jobs: Any):
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise InvalidArgumentError(f"max_jobs must be an int >= 1, not {shown(max_jobs)}")
        if queues is not None and (isinstance(queues, str) or not isinstance(
                queues, (list, tuple, set, frozenset))):  # fmt: skip
            raise InvalidArgumentError(f"queues must be a list of queue names or None, not "
                                       f"{type(queues).__name__} {shown(queues)}")  # fmt: skip
        self.store = store
        self.names = None if queues is None else [check_queue(q, "queues[]") for q in queues]
        self.max_jobs = max_jobs
        self.horizon: datetime | None = None
        self.report = RunReport()

    async def start(self, conn: psycopg.AsyncConnection[Any], until: Any) -> None:
        """Fix the horizon: ``None`` (the database clock at each claim), a datetime, or the
        database's now plus a timedelta or seconds."""
        if until is None or isinstance(until, datetime):
            check_run_at(until, "until")
            self.horizon = until
        else:
            seconds = delay_seconds(until, "until")
            self.horizon = await self.store.database_now(conn) + timedelta(seconds=seconds)

    async def claim(self, conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
        """The next due job (priority, run_at, id order), claimed; ``None`` when none is."""
        if self.report.attempts >= self.max_jobs:
            self.report.limit_reached = True
            return None
        names = self.names
        if names is None:  # every queue with a pending job (handlers may use new queues)
            rows = await self.store.fetch(conn, "status_queues")
            names = [r["queue"] for r in rows if r["due"] or r["scheduled"]]
        if not names:
            return None
        jobs = await self.store.claim_jobs(conn, queues=names, limit=1, worker_id=WORKER_ID,
                                           lease_s=LEASE_S, now=self.horizon)  # fmt: skip
        return jobs[0] if jobs else None

    async def finish(self, conn: psycopg.AsyncConnection[Any], job: dict[str, Any],
                     result: Result | None) -> None:  # fmt: skip
        """Record the attempt as the worker does (``result`` None: the task is unknown)."""
        delay_s = 0.0
        if result is None:
            reason = f"task {job['task']!r} is not registered in this process ({WORKER_ID})"
            result = Result(RunOutcome.FAILED, exception_text(UnknownTaskError(reason)))
            state = JobState.DEAD
        elif result.outcome is RunOutcome.SUCCEEDED:
            state = JobState.SUCCEEDED
        elif job["attempt"] >= job["max_attempts"]:
            state = JobState.DEAD
        else:
            state = JobState.PENDING
            delay_s = Backoff(job["backoff_base_s"], job["backoff_max_s"],
                              job["backoff_jitter"]).delay_s(job["attempt"])  # fmt: skip
        outcome = {"id": job["id"], "attempt": job["attempt"], "state": state.value,
                   "outcome": result.outcome.value, "error": result.error,
                   "traceback": result.traceback, "delay_s": delay_s,
                   "result": result.value}  # fmt: skip
        await self.store.complete_jobs(conn, WORKER_ID, [outcome])
        self.report._add(job["id"], state, result)


def _attempt_context(job: dict[str, Any]) -> tuple[TaskSpec | None, contextvars.Context,
                                                   JobContext]:  # fmt: skip
    """The job's task (``None`` if not registered), its JobContext, and a contextvars
    context in which it is the current job (its own: nothing leaks into the test)."""
    ctx = JobContext(job["id"], job["task"], job["attempt"], job["max_attempts"], job["queue"],
                     job["schedule_name"], job["scheduled_for"], job["run_at"],
                     headers=frozen(job.get("headers")))  # fmt: skip
    context = contextvars.copy_context()
    context.run(enter_job, ctx)
    try:
        return get_task(job["task"]), context, ctx
    except UnknownTaskError:
        return None, context, ctx


def _call_sync(spec: TaskSpec, job: dict[str, Any], ctx: JobContext) -> Result:
    args = job["args"] or {}
    try:
        value = spec.func(ctx, **args) if spec.takes_context else spec.func(**args)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a failed attempt, as in the worker
        return failure(exc)
    return succeeded(value)


async def _call_async(spec: TaskSpec, job: dict[str, Any], ctx: JobContext) -> Result:
    args = job["args"] or {}
    try:
        call = spec.func(ctx, **args) if spec.takes_context else spec.func(**args)
        value = await (call if spec.timeout_s is None else asyncio.wait_for(call, spec.timeout_s))
    except TimeoutError as exc:
        if spec.timeout_s is None:
            return failure(exc)
        message = f"TimeoutError: attempt ran longer than timeout_s={spec.timeout_s}"
        return Result(RunOutcome.TIMEOUT, message)
    except asyncio.CancelledError as exc:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the test's own cancellation
        return failure(exc)  # the handler's own CancelledError
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a failed attempt, as in the worker
        return failure(exc)
    return succeeded(value)
