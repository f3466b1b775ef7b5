"""Workers: claim due jobs, run their handlers, record each attempt.

Loop of one replica (``concurrency`` slots)::

    wake (NOTIFY on insert: now, or a timer at the earliest run_at it announces |
          a slot frees | safety poll every poll_interval_s)
      └─▶ claim up to <free slots> due jobs: one short statement, FOR UPDATE SKIP LOCKED,
          committed before any handler starts (no claimed job sits in an open transaction)
            └─▶ run each handler (scheduler.execution): async ones on the event loop, sync
                ones on ``concurrency`` threads, with the job's ``args`` as keyword arguments;
                whatever a handler raises (SystemExit included) is a failed attempt
                  └─▶ outcome → completion writer (scheduler.completion), batched, fenced:
                        success              → succeeded
                        failure, attempt < max → pending, run_at = now() + backoff
                        failure, attempt = max → dead (dead letter)
                        task not registered  → retried with backoff while the job has been
                                               due less than unknown_task_retry_s (600 s),
                                               then dead, with that reason
                        cancelled by an operator (NOTIFY, or seen at a lease extension)
                                             → cancelled (async handlers stop at their
                                               next await; a sync handler's thread runs on)

Flow control (:mod:`scheduler.flow`): while one of its queues has limits (read at start, on
a NOTIFY on ``<schema>.limits``, at every safety poll) the claim is ``claim_jobs_limited``,
else the lock-free ``claim_jobs``; a full rate window sets a timer for when it frees.

Leases (extended until the outcome is written, released at a shutdown): :mod:`scheduler.leases`.
What wakes the loop (LISTEN, timers): :mod:`scheduler.wakeups`.

Slots: a slot frees when a handler returns, before its outcome is written (the next claim
overlaps the write; at most one batch of unwritten outcomes may run ahead). A sync handler
that outlives its attempt (timeout, operator cancel) keeps its slot until its thread returns.

The claim loop, the completion writer, the lease extender and the listener each run under
the replica's :class:`~scheduler.supervision.Supervisor`: a crash is logged and the loop
restarted; a loop that keeps crashing stops the replica.

Completion is fenced: the UPDATE matches ``id, state = 'running', locked_by, attempt``, so a
worker that lost its job (lease rescued by the leader) cannot overwrite a newer attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import metrics, tracing
from .completion import Completion, CompletionWriter
from .errors import UnknownTaskError
from .execution import Executor, Result
from .flow import LimitedQueues
from .job_context import JobContext
from .jobs import JobState, RunOutcome
from .leases import LeaseKeeper
from .limits import exception_text
from .log import get_logger
from .registry import get_task
from .retry import Backoff
from .settings import Settings
from .store import Store
from .supervision import Supervisor
from .wakeups import WakeUps

log = get_logger("scheduler.worker")
CANCELLED_TEXT = (
    "cancelled on request (scheduler jobs cancel / cancel_job, or a newer run of "
    "its overlap_policy cancel_previous schedule)"
)


class Worker(LeaseKeeper, WakeUps):
    """Runs jobs of ``settings.queues`` with ``settings.concurrency`` slots.

    Args:
        pool: async pool for claims and completions.
        listen_url: URL of a direct connection for LISTEN (not through a transaction pooler),
            or ``None`` when there is none: the worker then wakes on a timer at the earliest
            pending ``run_at`` it reads after each claim, and on the safety poll.
        store: statements for the schema.
        settings: ``queues``, ``concurrency``, ``poll_interval_s``, ``lease_s``,
            ``shutdown_grace_s``, ``unknown_task_retry_s``.
        worker_id: recorded in ``jobs.locked_by`` and ``job_runs.worker_id``.
        supervisor: restarts the worker's loops when they crash (default: its own, which
            stops the worker when a loop keeps crashing).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        listen_url: str | None,
        store: Store,
        settings: Settings,
        worker_id: str,
        supervisor: Supervisor | None = None,
    ):
        self.pool = pool
        self.listen_url = listen_url
        self.store = store
        self.settings = settings
        self.worker_id = worker_id
        self.supervisor = supervisor
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        # a concrete logger, bound when run() starts (after logging is configured): the lazy
        # module logger re-binds on every call, which cost ~10% of a drain's CPU per job
        self._log: Any = log
        self._executor = Executor(settings.concurrency, log)
        self._writer = CompletionWriter(pool, store, worker_id, log, self._settled, self._wake.set)
        self.listening = asyncio.Event()
        #: called when a schedule was written (NOTIFY <schema>.schedules): the replica wakes
        #: its leader with it (scheduler.service)
        self.on_schedules_written: Callable[[], None] | None = None
        self.parked = asyncio.Event()  # set while the claim loop waits with free slots
        self._leases: dict[int, int] = {}  # job id -> attempt, from claim until written
        self._tasks: dict[int, asyncio.Task[None]] = {}  # job id -> its task, until its outcome
        self._cancelling: set[int] = set()  # job ids an operator cancelled
        self._interrupted: list[tuple[int, int]] = []  # cancelled at shutdown: (id, attempt)
        # which queues have limits: claim_jobs_limited while any has (scheduler.flow)
        self.limits = LimitedQueues(store, settings.queues, settings.poll_interval_s)
        self._rate_timer: asyncio.TimerHandle | None = None

    def stuck_threads(self) -> int:
        """Sync handler threads still running after their attempt ended (timeout_s passed,
        or cancelled by an operator); each holds its slot until it returns."""
        return self._executor.stuck()

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until ``stop`` is set, then let running jobs finish within
        ``shutdown_grace_s`` and write their outcomes (waiting at most SHUTDOWN_WRITE_S)."""
        self._log = log.bind()
        self._executor.log = self._writer.log = self._log
        tracing.install_if_used()  # a span per attempt, if the application uses OpenTelemetry
        supervisor = self.supervisor or Supervisor(stop)
        loops = [
            supervisor.start("scheduler-listen", lambda: self._listen(stop)),
            supervisor.start("scheduler-complete", self._writer.run),
            supervisor.start("scheduler-leases", self._extend_leases),
        ]
        try:
            await supervisor.run("scheduler-claim", lambda: self._claim_loop(stop))
        finally:
            await self._drain()
            await self._release_interrupted()
            for t in loops:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            self._executor.shutdown()

    def threads_alive(self) -> bool:
        """True while a sync handler's thread is still running (it cannot be stopped)."""
        return self._executor.alive()

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        stopper = asyncio.ensure_future(stop.wait())
        try:
            backoff = 0.1
            while not stop.is_set():
                self._wake.clear()
                concurrency = self.settings.concurrency
                free = min(
                    concurrency - len(self._running),
                    2 * concurrency - len(self._running) - self._writer.backlog,
                )
                claimed = 0
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                        backoff = 0.1
                    except psycopg.Error as exc:
                        self._log.warning("claim_failed", error=exception_text(exc, 300))
                        await self._wait(stopper, backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                if claimed and claimed == free:
                    continue  # maybe more due: claim again as soon as a slot frees
                if self.listen_url is None:
                    await self._timer_for_next_due()
                if free > 0 and self.limits.rated:
                    await self._timer_for_rate_window()
                self.parked.set()
                await self._wait(stopper, self.settings.poll_interval_s)
                self.parked.clear()
        finally:
            stopper.cancel()

    async def _wait(self, stopper: asyncio.Future[Any], timeout: float) -> None:
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(
                {waker, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waker.cancel()

    async def _claim(self, limit: int) -> int:
        async with self.pool.connection() as conn:
            now = time.monotonic()
            if self.limits.stale(now):
                await self.limits.refresh(conn, now)
            jobs = await self.store.claim_jobs(
                conn,
                queues=self.settings.queues,
                limit=limit,
                worker_id=self.worker_id,
                lease_s=self.settings.lease_s,
                limited=bool(self.limits.names),
            )
        claimed: dict[tuple[str, str], int] = {}
        for job in jobs:
            key = (job["queue"], job["task"])
            claimed[key] = claimed.get(key, 0) + 1
            metrics.for_job(*key).lateness.observe(max(0.0, job["lateness_s"]))
            self._leases[job["id"]] = job["attempt"]
            self._log.debug(
                "job_claimed", job_id=job["id"], task=job["task"], attempt=job["attempt"]
            )
            t = asyncio.create_task(self._execute(job), name=f"scheduler-job-{job['id']}")
            self._running.add(t)
            self._tasks[job["id"]] = t
            t.add_done_callback(self._job_done)
        for key, n in claimed.items():  # one increment per task and batch, not per job
            metrics.for_job(*key).claimed.inc(n)
        return len(jobs)

    def _job_done(self, t: asyncio.Task[None]) -> None:
        self._running.discard(t)
        self._wake.set()

    async def _execute(self, job: dict[str, Any]) -> None:
        job_id = job["id"]
        try:
            registered = get_task(job["task"])
        except UnknownTaskError as exc:
            self._unknown_task(job, exc)
            return
        started = time.monotonic()
        try:
            ctx = JobContext(job_id, job["task"], job["attempt"], job["max_attempts"],
                             job["queue"], job["schedule_name"], job["scheduled_for"],
                             job["run_at"], tracing.frozen(job.get("headers")))  # fmt: skip
            result = await self._executor.run(registered, job["args"] or {}, ctx)
        except asyncio.CancelledError:
            if job_id not in self._cancelling:  # a shutdown: released to pending
                self._tasks.pop(job_id, None)
                self._interrupted.append((job_id, job["attempt"]))
                raise
            metrics.JOBS_CANCELLED.labels(job["queue"], job["task"]).inc()
            result = Result(RunOutcome.CANCELLED, CANCELLED_TEXT)
        finally:
            metrics.for_job(job["queue"], job["task"]).duration.observe(time.monotonic() - started)
        if result.outcome is RunOutcome.CANCELLED:
            # a sync handler's thread cannot be stopped: the job stays running (lease
            # extended) until it returns, so nothing waiting for it (overlap_policy
            # queue / buffer_one / cancel_previous, a concurrency limit) starts meanwhile
            await self._executor.join(job_id)
        self._record(job, result)
        await self._executor.join(job_id)  # a sync thread that outlived its attempt

    def _record(self, job: dict[str, Any], result: Result) -> None:
        """Turn an attempt's result into the job's next state and queue it for writing."""
        self._tasks.pop(job["id"], None)
        self._cancelling.discard(job["id"])
        fields = {"job_id": job["id"], "task": job["task"], "attempt": job["attempt"],
                  "schedule": job["schedule_name"]}  # fmt: skip
        if result.outcome is RunOutcome.SUCCEEDED:
            metrics.for_job(job["queue"], job["task"]).succeeded.inc()
            self._log.debug("job_succeeded", **fields)  # per job: debug (as River logs none)
            self._complete(job, JobState.SUCCEEDED, result)
        elif result.outcome is RunOutcome.CANCELLED:
            self._log.warning("job_cancelled", **fields)
            self._complete(job, JobState.CANCELLED, result)
        elif job["attempt"] >= job["max_attempts"]:
            metrics.JOBS_DEAD.labels(job["queue"], job["task"]).inc()
            self._log.error("job_dead", reason="max_attempts", error=result.error, **fields)
            self._complete(job, JobState.DEAD, result)
        else:
            self._retry(job, result, fields)

    def _retry(self, job: dict[str, Any], result: Result, fields: dict[str, Any]) -> None:
        metrics.JOBS_FAILED.labels(job["queue"], job["task"]).inc()
        delay_s = Backoff(
            job["backoff_base_s"], job["backoff_max_s"], job["backoff_jitter"]
        ).delay_s(job["attempt"])
        self._log.warning("job_failed", outcome=result.outcome.value, error=result.error,
                          retry_in_s=round(delay_s, 3), **fields)  # fmt: skip
        # Wake up for the retry ourselves (a retry sends no NOTIFY). The timer starts once the
        # outcome is written, as run_at = the database's now() at that write + delay_s.
        loop = asyncio.get_running_loop()
        self._complete(job, JobState.PENDING, result, delay_s=delay_s,
                       on_written=lambda: loop.call_later(delay_s, self._wake.set))  # fmt: skip

    def _unknown_task(self, job: dict[str, Any], exc: UnknownTaskError) -> None:
        """Not registered here: another replica (a newer release) may know it. Retried like
        a failure while the job has been due less than ``unknown_task_retry_s``."""
        reason = f"task {job['task']!r} is not registered in replica {self.worker_id}"
        result = Result(RunOutcome.FAILED, exception_text(UnknownTaskError(reason)))
        if job["age_s"] < self.settings.unknown_task_retry_s:
            self._record(job, result)
            return
        self._tasks.pop(job["id"], None)
        metrics.JOBS_DEAD.labels(job["queue"], job["task"]).inc()
        self._log.error("job_dead", reason="unknown_task", job_id=job["id"], task=job["task"],
                        attempt=job["attempt"], schedule=job["schedule_name"])  # fmt: skip
        self._complete(job, JobState.DEAD, result)

    def _complete(
        self,
        job: dict[str, Any],
        state: JobState,
        result: Result,
        *,
        delay_s: float = 0.0,
        on_written: Callable[[], object] | None = None,
    ) -> None:
        """Queue an attempt's outcome for the next batched write and return at once, so the
        slot frees while the write happens (claims overlap completions)."""
        outcome = {
            "id": job["id"],
            "attempt": job["attempt"],
            "state": state.value,
            "outcome": result.outcome.value,
            "error": result.error,
            "traceback": result.traceback,
            "delay_s": delay_s,
            "result": result.value,
        }
        self._writer.put(Completion(outcome, on_written))

    async def _drain(self) -> None:
        if not self._running:
            return
        self._log.info(
            "worker_draining", running=len(self._running), grace_s=self.settings.shutdown_grace_s
        )
        _, pending = await asyncio.wait(self._running, timeout=self.settings.shutdown_grace_s)
        for t in pending:
            t.cancel()
        if pending:
            self._log.warning("worker_drain_timeout", unfinished=len(pending))
            await asyncio.wait(pending, timeout=1.0)

    def _cancel(self, job_id: int) -> None:
        """An operator asked this job to stop: cancel its task (an async handler stops at its
        next await; a sync handler's thread cannot be stopped and runs to its end)."""
        task = self._tasks.get(job_id)
        if task is not None and job_id not in self._cancelling:
            self._cancelling.add(job_id)
            self._log.warning("job_cancel_requested", job_id=job_id)
            self._executor.request_cancel(job_id)  # JobContext.cancel_requested, for sync ones
            task.cancel()
