"""Writing attempt outcomes: batched for speed, and one bad row never blocks the others.

The worker queues each outcome (:meth:`CompletionWriter.put`) and frees the slot at once; the
writer's loop sends whatever is queued when its previous write ends as one fenced statement
(``complete_jobs``, or ``complete_succeeded`` when all succeeded), at most
:data:`MAX_BATCH` outcomes. A row is *settled* (``on_settled(job_id)``: the worker stops
extending its lease) only once its statement committed, so a job's lease is extended until
its outcome is written.

When a write fails::

    connection lost, lock or statement timeout, deadlock (psycopg.OperationalError)
        → the same batch again after a back-off (0.1 s doubling to 5 s); leases are still
          extended meanwhile. After TRANSIENT_SPLIT failures in a row a batch of several rows
          is split too, in case one row keeps causing it.
    anything else (a constraint, a value the database refuses, a bug)
        → the batch is split in halves and each half written alone, down to single rows;
    a single row that still fails
        → written once more with ``complete_jobs`` (not the all-succeeded shortcut, whose
          plain insert of the runs is the hot path), which records the job's transition even
          when its ``job_runs`` row cannot be inserted (a run already recorded for that
          attempt: an attempt number reset by hand; ``run_not_recorded``);
    and if that fails too
        → *dropped*: logged (``completion_dropped``, error level) and counted
          (``scheduler_completions_dropped_total``), its lease left to expire, so the leader
          rescues the job as ``lost`` and it runs again (at-least-once).

Error and traceback texts are made storable before they get here (see
:mod:`scheduler.execution`), so NUL bytes and unpaired surrogates never reach this point.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import metrics
from .limits import exception_text
from .store import Store

MAX_BATCH = 1_000  # outcomes per completion statement
TRANSIENT_SPLIT = 5  # failed writes of one batch before it is split anyway


@dataclass
class Completion:
    """One attempt's outcome, as :meth:`Store.complete_jobs` takes it, plus a callback run
    once the write committed (whether or not the fence let it change the row)."""

    outcome: dict[str, Any]
    on_written: Callable[[], object] | None = field(default=None, repr=False)


class _RowError(Exception):
    """A write failed for a reason that retrying the same rows will not cure."""


class CompletionWriter:
    """Batches outcomes into fenced statements; see the module docstring.

    Args:
        pool: the worker's autocommit pool.
        store: statements for the schema.
        worker_id: the fence (``jobs.locked_by``) and ``job_runs.worker_id``.
        log: the worker's bound logger.
        on_settled: called with a job id once its outcome is written, fenced off or dropped.
        on_batch: called after every batch (the worker wakes its claim loop).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        store: Store,
        worker_id: str,
        log: Any,
        on_settled: Callable[[int], None],
        on_batch: Callable[[], None],
    ):
        self.pool, self.store, self.worker_id, self.log = pool, store, worker_id, log
        self.on_settled, self.on_batch = on_settled, on_batch
        self._queue: asyncio.Queue[Completion] = asyncio.Queue()
        self._batch: list[Completion] = []  # the write under way (kept across a restart)

    def put(self, completion: Completion) -> None:
        """Queue an outcome for the next batch; returns at once."""
        self._queue.put_nowait(completion)

    @property
    def backlog(self) -> int:
        """Outcomes queued or being written."""
        return self._queue.qsize() + len(self._batch)

    async def run(self) -> None:
        """The writer's loop (runs until cancelled; a crash leaves the batch under way to the
        restarted loop)."""
        while True:
            if not self._batch:
                self._batch = [await self._queue.get()]
                while not self._queue.empty() and len(self._batch) < MAX_BATCH:
                    self._batch.append(self._queue.get_nowait())
            await self._write(self._batch)
            for _ in self._batch:
                self._queue.task_done()
            self._batch = []
            self.on_batch()

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until everything queued is written; False if not."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            return False
        return True

    async def _write(self, batch: list[Completion]) -> None:
        try:
            changed = await self._statement(batch, split_after=TRANSIENT_SPLIT)
        except _RowError as exc:
            if len(batch) > 1:
                half = len(batch) // 2
                await self._write(batch[:half])
                await self._write(batch[half:])
                return
            await self._fallback(batch[0], exc)
            return
        self._settle(batch, changed)

    async def _statement(self, batch: list[Completion], *, split_after: int) -> dict[int, bool]:
        """``{job id: run recorded}`` of the jobs the statement changed. Transient errors are retried here (a batch of several
        rows at most ``split_after`` times); others raise :class:`_RowError`."""
        backoff, failures = 0.1, 0
        while True:
            try:
                async with self.pool.connection() as conn:
                    return await self.store.complete_jobs(
                        conn, self.worker_id, [c.outcome for c in batch]
                    )
            except psycopg.OperationalError as exc:
                failures += 1
                self.log.warning("complete_failed", error=_short(exc), jobs=len(batch),
                                 retry_in_s=backoff)  # fmt: skip
                if len(batch) > 1 and failures >= split_after:
                    raise _RowError(exc) from exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:
                self.log.warning("complete_refused", error=_short(exc), jobs=len(batch))
                raise _RowError(exc) from exc

    async def _fallback(self, completion: Completion, first: _RowError) -> None:
        outcome = completion.outcome
        try:
            async with self.pool.connection() as conn:
                changed = await self.store.complete_jobs(
                    conn, self.worker_id, [outcome], succeeded_shortcut=False
                )
        except Exception as exc:  # noqa: BLE001 - nothing more to try: let the lease expire
            metrics.COMPLETIONS_DROPPED.inc()
            self.log.error("completion_dropped", job_id=outcome["id"], attempt=outcome["attempt"],
                           error=_short(first.__cause__ or first), fallback_error=_short(exc))  # fmt: skip
            self.on_settled(outcome["id"])
            return
        self._settle([completion], changed)

    def _settle(self, batch: list[Completion], changed: dict[int, bool]) -> None:
        for c in batch:
            job_id, attempt = c.outcome["id"], c.outcome["attempt"]
            if job_id not in changed:
                self.log.warning("job_completion_fenced", job_id=job_id, attempt=attempt)
            elif not changed[job_id]:
                self.log.warning(
                    "run_not_recorded", job_id=job_id, attempt=attempt,
                    reason="job_runs already holds this attempt (was jobs.attempt reset by "
                    "hand? use scheduler jobs retry)",
                )  # fmt: skip
            self.on_settled(job_id)
            if c.on_written is not None:
                c.on_written()


def _short(exc: BaseException) -> str:
    return exception_text(exc, 300).strip()
