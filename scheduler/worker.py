"""Workers: claim due jobs, run their handlers, record each attempt.

Loop of one replica (``concurrency`` slots)::

    wake (NOTIFY on insert: now, or a timer at the earliest run_at it announces |
          a slot frees | safety poll every poll_interval_s)
      └─▶ claim up to <free slots> due jobs: one short statement, FOR UPDATE SKIP LOCKED,
          committed before any handler starts (no claimed job sits in an open transaction)
            └─▶ run each handler: async ones on the event loop, sync ones in a thread pool
                of ``concurrency`` threads, with the job's ``args`` as keyword arguments
                  └─▶ outcome → completion queue → one fenced statement per batch:
                        success              → succeeded
                        failure, attempt < max → pending, run_at = now() + backoff
                        failure, attempt = max → dead (dead letter)
                        task not registered  → dead at once, with that reason
                        cancelled by an operator (NOTIFY, or seen at a lease extension)
                                             → cancelled (async handlers stop at their
                                               next await; a sync handler's thread runs on)

Completion is fenced: the UPDATE matches ``id, state = 'running', locked_by, attempt``, so a
worker that lost its job (lease rescued by the leader) cannot overwrite a newer attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from . import metrics
from .errors import UnknownTaskError
from .jobs import JobState, RunOutcome
from .leader import KEEPALIVES
from .log import get_logger
from .retry import Backoff
from .settings import Settings
from .store import Store
from .tasks import get_task

log = get_logger("scheduler.worker")

TRACEBACK_LIMIT = 16_000  # characters kept of a traceback (the end, where the error is)
ERROR_LIMIT = 2_000
MAX_COMPLETION_BATCH = 1_000  # outcomes per completion statement


@dataclass
class _Completion:
    outcome: dict[str, Any]
    on_written: Callable[[], object] | None = field(default=None, repr=False)


class Worker:
    """Runs jobs of ``settings.queues`` with ``settings.concurrency`` slots.

    Args:
        pool: async pool for claims and completions.
        listen_url: URL of a direct connection for LISTEN (not through a transaction pooler).
        store: statements for the schema.
        settings: ``queues``, ``concurrency``, ``poll_interval_s``, ``lease_s``,
            ``shutdown_grace_s``.
        worker_id: recorded in ``jobs.locked_by`` and ``job_runs.worker_id``.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        listen_url: str,
        store: Store,
        settings: Settings,
        worker_id: str,
    ):
        self.pool = pool
        self.listen_url = listen_url
        self.store = store
        self.settings = settings
        self.worker_id = worker_id
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._completions: asyncio.Queue[_Completion] = asyncio.Queue()
        # a concrete logger, bound when run() starts (after logging is configured): the lazy
        # module logger re-binds on every call, which cost ~10% of a drain's CPU per job
        self._log: Any = log
        self._writing = 0  # outcomes in the completion write under way
        self._executor = ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix="scheduler-job"
        )
        self.listening = asyncio.Event()
        self._leases: dict[int, int] = {}  # running job id -> attempt
        self._tasks: dict[int, asyncio.Task[None]] = {}  # running job id -> its task
        self._cancelling: set[int] = set()  # job ids an operator cancelled
        self._interrupted: list[tuple[int, int]] = []  # cancelled at shutdown: (id, attempt)

    def stuck_threads(self) -> int:
        """Sync handler threads still running past their task's ``timeout_s``."""
        return 0

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until ``stop`` is set, then let running jobs finish within
        ``shutdown_grace_s`` and write their outcomes."""
        self._log = log.bind()
        listener = asyncio.create_task(self._listen(stop), name="scheduler-listen")
        flusher = asyncio.create_task(self._flush_completions(), name="scheduler-complete")
        extender = asyncio.create_task(self._extend_leases(), name="scheduler-leases")
        stopper = asyncio.create_task(stop.wait())
        try:
            backoff = 0.1
            while not stop.is_set():
                self._wake.clear()
                # Slots free when a handler returns, before its outcome is written, so the
                # next claim overlaps the completion write; at most one batch of unwritten
                # outcomes is let run ahead (backpressure when writes are slow).
                concurrency = self.settings.concurrency
                free = min(
                    concurrency - len(self._running),
                    2 * concurrency
                    - len(self._running)
                    - self._completions.qsize()
                    - self._writing,
                )
                claimed = 0
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                        backoff = 0.1
                    except psycopg.Error as exc:
                        self._log.warning("claim_failed", error=str(exc).strip()[:300])
                        await self._wait(stopper, backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                if claimed and claimed == free:
                    continue  # maybe more due: claim again as soon as a slot frees
                await self._wait(stopper, self.settings.poll_interval_s)
        finally:
            stopper.cancel()
            await self._drain()
            await self._release_interrupted()
            for t in (listener, flusher, extender):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _wait(self, stopper: asyncio.Task[Any], timeout: float) -> None:
        waker = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait(
                {waker, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waker.cancel()

    async def _claim(self, limit: int) -> int:
        async with self.pool.connection() as conn:
            jobs = await self.store.claim_jobs(
                conn,
                queues=self.settings.queues,
                limit=limit,
                worker_id=self.worker_id,
                lease_s=self.settings.lease_s,
            )
        for job in jobs:
            m = metrics.for_job(job["queue"], job["task"])
            m.claimed.inc()
            m.lateness.observe(max(0.0, job["lateness_s"]))
            self._leases[job["id"]] = job["attempt"]
            self._log.debug(
                "job_claimed", job_id=job["id"], task=job["task"], attempt=job["attempt"]
            )
            t = asyncio.create_task(self._execute(job), name=f"scheduler-job-{job['id']}")
            self._running.add(t)
            self._tasks[job["id"]] = t
            t.add_done_callback(self._job_done)
        return len(jobs)

    def _job_done(self, t: asyncio.Task[None]) -> None:
        self._running.discard(t)
        self._wake.set()

    async def _execute(self, job: dict[str, Any]) -> None:
        fields = {
            "job_id": job["id"],
            "task": job["task"],
            "attempt": job["attempt"],
            "schedule": job["schedule_name"],
        }
        args = job["args"] or {}
        try:
            registered = get_task(job["task"])
        except UnknownTaskError as exc:
            self._leases.pop(job["id"], None)
            self._tasks.pop(job["id"], None)
            metrics.JOBS_DEAD.labels(job["queue"], job["task"]).inc()
            self._log.error("job_dead", reason="unknown_task", **fields)
            self._complete(job, JobState.DEAD, RunOutcome.FAILED, error=str(exc))
            return
        started = time.monotonic()
        try:
            if registered.is_async:
                work = registered.func(**args)
            else:
                loop = asyncio.get_running_loop()
                work = loop.run_in_executor(self._executor, lambda: registered.func(**args))
            await asyncio.wait_for(work, registered.timeout_s)
        except asyncio.CancelledError:
            if job["id"] in self._cancelling:  # scheduler jobs cancel, not a shutdown
                metrics.JOBS_CANCELLED.labels(job["queue"], job["task"]).inc()
                self._complete(
                    job, JobState.CANCELLED, RunOutcome.CANCELLED, error="cancelled by operator"
                )
                return
            self._interrupted.append((job["id"], job["attempt"]))
            raise
        except TimeoutError:
            error = f"TimeoutError: attempt ran longer than timeout_s={registered.timeout_s}"
            await self._failed(job, RunOutcome.TIMEOUT, error, None, fields)
            return
        except Exception as exc:  # noqa: BLE001 - a handler's failure is data, not a crash
            error = f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]
            tb = traceback.format_exc()[-TRACEBACK_LIMIT:]
            await self._failed(job, RunOutcome.FAILED, error, tb, fields)
            return
        finally:
            self._leases.pop(job["id"], None)
            self._tasks.pop(job["id"], None)
            self._cancelling.discard(job["id"])
            m = metrics.for_job(job["queue"], job["task"])
            m.duration.observe(time.monotonic() - started)
        m.succeeded.inc()
        self._log.info("job_succeeded", **fields)
        self._complete(job, JobState.SUCCEEDED, RunOutcome.SUCCEEDED)

    async def _failed(
        self,
        job: dict[str, Any],
        outcome: RunOutcome,
        error: str,
        tb: str | None,
        fields: dict[str, Any],
    ) -> None:
        """Retry with backoff, or dead-letter at max_attempts."""
        if job["attempt"] >= job["max_attempts"]:
            metrics.JOBS_DEAD.labels(job["queue"], job["task"]).inc()
            self._log.error("job_dead", reason="max_attempts", error=error, **fields)
            self._complete(job, JobState.DEAD, outcome, error=error, tb=tb)
            return
        metrics.JOBS_FAILED.labels(job["queue"], job["task"]).inc()
        delay_s = Backoff(
            job["backoff_base_s"], job["backoff_max_s"], job["backoff_jitter"]
        ).delay_s(job["attempt"])
        self._log.warning(
            "job_failed", outcome=outcome.value, error=error, retry_in_s=round(delay_s, 3), **fields
        )
        # Wake up for the retry ourselves (a retry sends no NOTIFY). The timer starts once the
        # outcome is written, as run_at = the database's now() at that write + delay_s.
        loop = asyncio.get_running_loop()
        self._complete(
            job, JobState.PENDING, outcome, error=error, tb=tb, delay_s=delay_s,
            on_written=lambda: loop.call_later(delay_s, self._wake.set),
        )  # fmt: skip

    def _complete(
        self,
        job: dict[str, Any],
        state: JobState,
        outcome: RunOutcome,
        *,
        error: str | None = None,
        tb: str | None = None,
        delay_s: float = 0.0,
        on_written: Callable[[], object] | None = None,
    ) -> None:
        """Queue an attempt's outcome for the next batched write and return at once, so the
        slot frees while the write happens (claims overlap completions). ``on_written`` is
        called once the write committed (whether or not the outcome was fenced off)."""
        self._completions.put_nowait(
            _Completion(
                {
                    "id": job["id"],
                    "attempt": job["attempt"],
                    "state": state.value,
                    "outcome": outcome.value,
                    "error": error,
                    "traceback": tb,
                    "delay_s": delay_s,
                },
                on_written,
            )
        )

    async def _flush_completions(self) -> None:
        """Write completions in batches: whatever is queued when the previous write ends."""
        while True:
            batch = [await self._completions.get()]
            while not self._completions.empty() and len(batch) < MAX_COMPLETION_BATCH:
                batch.append(self._completions.get_nowait())
            self._writing = len(batch)
            backoff = 0.1
            while True:
                try:
                    async with self.pool.connection() as conn:
                        changed = await self.store.complete_jobs(
                            conn, self.worker_id, [c.outcome for c in batch]
                        )
                    break
                except psycopg.Error as exc:
                    self._log.warning(
                        "complete_failed", error=str(exc).strip()[:300], jobs=len(batch)
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            for c in batch:
                written = c.outcome["id"] in changed
                if not written:
                    self._log.warning(
                        "job_completion_fenced",
                        job_id=c.outcome["id"],
                        attempt=c.outcome["attempt"],
                    )
                if c.on_written is not None:
                    c.on_written()
                self._completions.task_done()
            self._writing = 0
            self._wake.set()  # slots held back by unwritten outcomes are free again

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

    async def _extend_leases(self) -> None:
        """Every lease_s/3, extend the leases of all running jobs in one statement."""
        period = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(period)
            if not self._leases:
                continue
            ids = list(self._leases)
            attempts = [self._leases[i] for i in ids]
            try:
                async with self.pool.connection() as conn:
                    rows = await (
                        await conn.execute(
                            self.store.q["extend_leases"],
                            {
                                "ids": ids,
                                "attempts": attempts,
                                "worker_id": self.worker_id,
                                "lease_s": self.settings.lease_s,
                            },
                        )
                    ).fetchall()
                kept = {r[0] for r in rows}
                for job_id, cancel in rows:
                    if cancel:
                        self._cancel(job_id)
            except psycopg.Error as exc:
                self._log.warning(
                    "lease_extension_failed", error=str(exc).strip()[:300], jobs=len(ids)
                )
                continue
            for job_id in set(ids) - kept:
                if job_id in self._leases:  # not finished meanwhile: its lease was rescued
                    self._log.warning("job_lease_lost", job_id=job_id)

    def _cancel(self, job_id: int) -> None:
        """An operator asked this job to stop: cancel its task (an async handler stops at its
        next await; a sync handler's thread cannot be stopped and runs to its end)."""
        task = self._tasks.get(job_id)
        if task is not None and job_id not in self._cancelling:
            self._cancelling.add(job_id)
            self._log.warning("job_cancel_requested", job_id=job_id)
            task.cancel()

    async def _release_interrupted(self) -> None:
        """Jobs cut off by the shutdown go back to pending without burning an attempt."""
        await self._completions.join()  # outcomes already known are written first
        if not self._interrupted:
            return
        ids = [i for i, _ in self._interrupted]
        attempts = [a for _, a in self._interrupted]
        try:
            async with self.pool.connection() as conn:
                rows = await self.store.fetch(
                    conn,
                    "release_jobs",
                    {"ids": ids, "attempts": attempts, "worker_id": self.worker_id},
                )
            self._log.warning("jobs_released", jobs=[r["id"] for r in rows], reason="shutdown")
        except psycopg.Error as exc:
            self._log.warning("release_failed", error=str(exc).strip()[:300], jobs=ids)

    def _on_notify(self, payload: str) -> None:
        """``"<queue> <epoch of the earliest run_at>"``: wake now if that is due, else set a
        timer for it (the database still decides what is due when the claim runs)."""
        queue, _, epoch = payload.rpartition(" ")
        if queue not in self.settings.queues:
            return
        try:
            delay = float(epoch) - time.time()
        except ValueError:
            delay = 0.0
        if delay <= 0:
            self._wake.set()
        else:
            asyncio.get_running_loop().call_later(delay, self._wake.set)

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN for inserted jobs and cancel requests; reconnect with backoff (polling and
        lease extensions cover the gap)."""
        channel = sql.Identifier(self.store.notify_channel)
        cancel_channel = sql.Identifier(self.store.cancel_channel)
        backoff = 0.5
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.listen_url, autocommit=True, **KEEPALIVES
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(channel))
                    await conn.execute(sql.SQL("LISTEN {}").format(cancel_channel))
                    self.listening.set()
                    self._wake.set()  # jobs may have arrived while we were not listening
                    backoff = 0.5
                    async for notify in conn.notifies():
                        if notify.channel == self.store.cancel_channel:
                            with contextlib.suppress(ValueError):
                                self._cancel(int(notify.payload))  # ignored if not ours
                        else:
                            self._on_notify(notify.payload)
            except psycopg.Error as exc:
                self.listening.clear()
                self._log.warning(
                    "listen_connection_lost", error=str(exc).strip()[:300], retry_in_s=backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
