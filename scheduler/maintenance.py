"""Leader maintenance: rescue jobs whose lease expired or whose replica is gone, and prune
old rows (retention).

A worker extends the lease of each running job every ``lease_s / 3`` seconds (one batched
statement per worker). When a worker is SIGKILLed, hung or cut off, its leases run out; the
leader then moves those jobs back to ``pending`` (due now) or to ``dead`` at
``max_attempts``, recording a ``lost`` run. At-least-once: the handler may have done part or
all of its work before it was lost, so it can run again.

Fast rescue (:class:`LostReplicas`): a replica that died (SIGKILL, crash, OOM kill: the
kernel closes its sockets) loses its liveness lock at once; the leader, checking every
``LIVENESS_CHECK_S`` (0.5 s) while jobs run, rescues its jobs once it has seen it gone twice
``LIVENESS_CONFIRM_S`` (0.5 s) apart: about 1 s after the death. A replica that is stopped
(SIGSTOP), hung or cut off keeps its liveness session open on the server (no idle timeout,
keepalive idle >= lease), so its jobs wait for their lease as before.

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
        rows = await store.fetch(conn, "rescue_expired_leases", {
            "limit": RESCUE_BATCH, "channel": store.notify_channel,
            "done_channel": store.done_channel})  # fmt: skip
    rescued = [r["job_id"] for r in rows]
    for r in rows:
        metrics.JOBS_RESCUED.labels(r["queue"], r["task"]).inc()
    if rescued:
        log.warning("jobs_rescued", jobs=rescued, term=term, reason="lease expired")
    return rescued


LIVENESS_CHECK_S = 0.5  # while jobs run, the leader looks for gone replicas this often
LIVENESS_CONFIRM_S = 0.5  # a replica must be seen gone twice, at least this far apart


class LostReplicas:
    """Fast rescue (leader side): the running jobs of a replica whose process died are
    rescued about a second after its death instead of after their lease.

    A replica with a direct connection holds a liveness lock on a session of its own
    (:class:`scheduler.liveness.LivenessLock`) and registers its key in ``replicas``. Its jobs
    are rescued (``rescue_lost_replicas``, fenced like :func:`rescue_expired_leases`) when,
    on two checks at least ``confirm_s`` apart, no backend holds that lock and no backend
    carries the name of its liveness or leader-campaign session, and the registration was
    made on this server instance and timeline (a restart or failover ends every session of
    every replica at once: not a death). Replicas without a registration are rescued by
    lease only. Called with the leader's lock session from each tick while jobs run.

    Args:
        namespace: first key of the liveness locks (:func:`scheduler.liveness.liveness_namespace`).
        confirm_s: seconds between the first and the confirming sighting (default 0.5).
    """

    def __init__(self, namespace: int, confirm_s: float = LIVENESS_CONFIRM_S):
        self.namespace = namespace
        self.confirm_s = confirm_s
        self._term: int | None = None
        self._gone_since: dict[str, float] = {}  # replica id -> when first seen gone

    async def check(
        self, conn: psycopg.AsyncConnection[Any], store: Store, *, holder: str, term: int,
        now: float,
    ) -> list[int]:  # fmt: skip
        """One check at ``now`` (monotonic seconds); returns the job ids rescued.

        Raises:
            LeadershipLostError: this session no longer leads (nothing was changed).
            psycopg.Error: a statement failed (the leader treats it as a lost session).
        """
        if term != self._term:  # sightings of an earlier term are not this leader's
            self._term, self._gone_since = term, {}
        rows = await store.fetch(conn, "replicas_gone", {"ns": self.namespace})
        self._gone_since = {r["id"]: self._gone_since.get(r["id"], now) for r in rows}
        confirmed = sorted(r for r, t in self._gone_since.items() if now - t >= self.confirm_s)
        if not confirmed:
            return []
        async with conn.transaction():
            if await store.fence(conn, holder, term) is None:
                raise LeadershipLostError(f"term {term} is no longer current for {holder}")
            rows = await store.fetch(conn, "rescue_lost_replicas", {
                "replicas": confirmed, "ns": self.namespace, "limit": RESCUE_BATCH,
                "channel": store.notify_channel, "done_channel": store.done_channel})  # fmt: skip
        for r in rows:
            metrics.JOBS_RESCUED.labels(r["queue"], r["task"]).inc()
        for replica in sorted({r["replica"] for r in rows}):
            jobs = [r["job_id"] for r in rows if r["replica"] == replica]
            log.warning("jobs_rescued", jobs=jobs, term=term, replica=replica,
                        reason=f"replica {replica} is gone (its database session ended)")  # fmt: skip
        return [r["job_id"] for r in rows]


@dataclass(frozen=True)
class Pruned:
    """Rows deleted by one :func:`prune` call, by job state (runs go with their jobs)."""

    succeeded: int = 0
    cancelled: int = 0
    dead: int = 0
    skipped_fire_times: int = 0
    incidents: int = 0  # closed alert incidents
    more: bool = False  # the batch budget ran out with rows left to prune

    @property
    def deleted(self) -> int:
        """Rows deleted in all."""
        return (self.succeeded + self.cancelled + self.dead + self.skipped_fire_times
                + self.incidents)  # fmt: skip


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
        dead_s: retention of ``dead`` jobs, of ``skipped_fire_times`` rows, of closed
            ``incidents``, of ``job_events`` whose subject is gone and of ``leader_terms``
            (the newest 100 kept), seconds.
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
    incidents = len(await store.fetch(conn, "prune_incidents", params))
    # the audit trail of actions whose subject is gone, and old leader terms (0022)
    await store.fetch(conn, "prune_job_events", params)
    await store.fetch(conn, "prune_leader_terms", params)
    if stale_replicas_s is not None:
        gone = await store.fetch(conn, "replicas_prune", {"stale_s": stale_replicas_s})
        if gone:
            log.warning("replicas_aged_out", replicas=[r["id"] for r in gone], term=term)
    result = Pruned(**counts, skipped_fire_times=skipped, incidents=incidents, more=more)
    if sum(counts.values()) or skipped or incidents:
        log.info("jobs_pruned", term=term, **counts, skipped_fire_times=skipped,
                 incidents=incidents, more=more)  # fmt: skip
    return result
