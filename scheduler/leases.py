"""Leases of a worker's jobs: held from the claim until the outcome is written, released at a
shutdown (the :class:`LeaseKeeper` part of :class:`~scheduler.worker.Worker`).

Leases: every ``lease_s / 3`` one statement extends the lease of every job this worker holds,
from its claim until its outcome is written (not only until its handler returns), so a slow
or failing write never lets the leader rescue a job that already ran. The same statement says
which of them an operator cancelled; a held job it no longer finds lost its lease (rescued by
the leader), which is logged (``job_lease_lost``).

Shutdown: jobs cut off by the grace period go back to pending without burning an attempt,
after the outcomes already known are written (waiting at most ``SHUTDOWN_WRITE_S``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from .completion import CompletionWriter
from .limits import exception_text
from .settings import Settings
from .store import Store, int_array

SHUTDOWN_WRITE_S = 10.0  # how long a stopping worker waits for its last outcomes to be written


class LeaseKeeper:
    """The leases of a :class:`~scheduler.worker.Worker`'s jobs (a mixin of it, over the
    worker's state declared here)."""

    pool: AsyncConnectionPool
    store: Store
    settings: Settings
    worker_id: str
    _log: Any
    _writer: CompletionWriter
    _leases: dict[int, int]  # job id -> attempt, from claim until written
    _interrupted: list[tuple[int, int]]  # cancelled at shutdown: (id, attempt)

    if TYPE_CHECKING:

        def _cancel(self, job_id: int) -> None: ...

    def _settled(self, job_id: int) -> None:
        """The writer is done with this job's outcome: stop extending its lease."""
        self._leases.pop(job_id, None)

    async def _extend_leases(self) -> None:
        """Every lease_s/3, extend the leases of all held jobs in one statement."""
        period = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(period)
            if not self._leases:
                continue
            ids = list(self._leases)
            attempts = [self._leases[i] for i in ids]
            params = {"ids": int_array(ids), "attempts": int_array(attempts),
                      "worker_id": self.worker_id,
                      "lease_s": self.settings.lease_s}  # fmt: skip
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(self.store.q["extend_leases"], params)
                    rows = await cur.fetchall()
            except psycopg.Error as exc:
                self._log.warning("lease_extension_failed", error=exception_text(exc, 300),
                                  jobs=len(ids))  # fmt: skip
                continue
            for job_id, cancel in rows:
                if cancel:
                    self._cancel(job_id)
            for job_id in set(ids) - {r[0] for r in rows}:
                if job_id in self._leases:  # not settled meanwhile: its lease was rescued
                    self._log.warning("job_lease_lost", job_id=job_id)

    async def _release_interrupted(self) -> None:
        """Jobs cut off by the shutdown go back to pending without burning an attempt; the
        outcomes already known are written first (waiting at most SHUTDOWN_WRITE_S)."""
        if not await self._writer.drain(SHUTDOWN_WRITE_S):
            self._log.error("outcomes_unwritten", jobs=self._writer.backlog,
                            detail="their leases expire and the leader rescues them")  # fmt: skip
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
            self._log.warning("release_failed", error=exception_text(exc, 300), jobs=ids)
