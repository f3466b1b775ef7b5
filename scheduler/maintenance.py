"""Leader maintenance: rescue jobs whose lease expired, and prune old rows (retention).

A worker extends the lease of each running job every ``lease_s / 3`` seconds (one batched
statement per worker). When a worker is SIGKILLed, hung or cut off, its leases run out; the
leader then moves those jobs back to ``pending`` (due now) or to ``dead`` at
``max_attempts``, recording a ``lost`` run. At-least-once: the handler may have done part or
all of its work before it was lost, so it can run again.

Retention: every ``retention_interval_s`` (60 s) the leader deletes ``succeeded`` and
``cancelled`` jobs finished more than ``retention_succeeded_s`` (7 days) ago and ``dead`` jobs
finished more than ``retention_dead_s`` (30 days) ago, with their runs, in batches of
``retention_batch`` (1,000) rows, each batch one short autocommit statement (no long locks,
bounded WAL per transaction), at most ``PRUNE_BATCHES_PER_TICK`` batches per tick so the
heartbeat is never held up; a backlog is worked off over the next ticks. A cron job is kept
while its fire time is not before its schedule's ``next_run_at`` (see ``prune_jobs`` in
sql/queries.sql), so pruning never lets a fire time run twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from . import metrics
from .errors import LeadershipLostError
from .log import get_logger
from .store import Store

log = get_logger("scheduler.maintenance")

RESCUE_BATCH = 1000
PRUNE_BATCHES_PER_TICK = 10


async def rescue_expired_leases(
    conn: psycopg.AsyncConnection[Any], store: Store, *, holder: str, term: int
) -> list[int]:
    """Rescue up to :data:`RESCUE_BATCH` expired leases in one fenced transaction on the
    leader's lock session; returns the rescued job ids.

    Raises:
        LeadershipLostError: this session no longer leads (nothing was changed).
    """
    async with conn.transaction():
        if await store.fence(conn, holder, term) is None:
            raise LeadershipLostError(f"term {term} is no longer current for {holder}")
        rows = await store.fetch(conn, "rescue_expired_leases", {"limit": RESCUE_BATCH})
    rescued = [r["job_id"] for r in rows]
    for r in rows:
        metrics.JOBS_RESCUED.labels(r["queue"], r["task"]).inc()
    if rescued:
        log.warning("jobs_rescued", jobs=rescued, term=term, reason="lease expired")
    return rescued


@dataclass(frozen=True)
class Pruned:
    """Rows deleted by one :func:`prune` call, by job state (runs go with their jobs)."""

    succeeded: int = 0
    cancelled: int = 0
    dead: int = 0
    skipped_fire_times: int = 0
    more: bool = False  # the batch budget ran out with rows left to prune


async def prune(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    holder: str,
    term: int,
    succeeded_s: float,
    dead_s: float,
    batch: int,
    stale_replicas_s: float | None = None,
) -> Pruned:
    """Delete expired finished jobs (and their runs) and old skipped-fire-time records, in
    batches of ``batch`` rows, one autocommit statement each, on the leader's lock session.

    Not fenced: deleting expired rows is safe whoever does it (a deposed leader included),
    because the fire-time guard rests on ``next_run_at`` only moving forward, not on
    leadership. ``holder`` and ``term`` only label the log line.

    Args:
        succeeded_s: retention of ``succeeded`` and ``cancelled`` jobs, seconds after
            ``finished_at``.
        dead_s: retention of ``dead`` jobs and of ``skipped_fire_times`` rows, seconds.
        batch: rows per transaction.
        stale_replicas_s: also delete ``replicas`` rows silent for this long (None: keep).

    Raises:
        psycopg.Error: the statement failed (earlier batches stay deleted, which is
            harmless); the leader's loop treats it like any lost lock session.
    """
    counts = {"succeeded": 0, "cancelled": 0, "dead": 0}
    params = {"succeeded_s": succeeded_s, "dead_s": dead_s, "limit": batch}
    more = False
    for _ in range(PRUNE_BATCHES_PER_TICK):
        rows = await store.fetch(conn, "prune_jobs", params)  # one autocommit statement
        for r in rows:
            counts[r["state"]] += 1
        more = len(rows) == batch
        if not more:
            break
    skipped = len(await store.fetch(conn, "prune_skipped_fire_times", params))
    if stale_replicas_s is not None:
        gone = await store.fetch(conn, "replicas_prune", {"stale_s": stale_replicas_s})
        if gone:
            log.warning("replicas_aged_out", replicas=[r["id"] for r in gone], term=term)
    result = Pruned(**counts, skipped_fire_times=skipped, more=more)
    if sum(counts.values()) or skipped:
        log.info("jobs_pruned", term=term, **counts, skipped_fire_times=skipped, more=more)
    return result
