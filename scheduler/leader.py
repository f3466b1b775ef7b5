"""Leader election with a session-level PostgreSQL advisory lock.

Every replica runs one :class:`LeaderElector`. States and timings (defaults in seconds, from
:class:`scheduler.settings.Settings`)::

              connect (dedicated connection, outside the pool)
                  │
                  ▼
    ┌────────▶ follower ── waits INSIDE PostgreSQL: pg_advisory_lock(key) under ──┐
    │             ▲        lock_timeout 10 s (no polling; granted the moment the   │
    │             │        leader's session ends)                                 │ granted
    │             └── timeout: compare config with the leader's, wait again       ▼
    │                                                                         candidate
    │                                                                           │ INSERT ... term+1
    │                                                                           ▼
    │                                                              leader (term N): reconcile once,
    │                                                              then every heartbeat_s (2) or when
    │                                                              a schedule is written: one
    │                                                              statement (heartbeat + fence +
    │                                                              next work times); materialise /
    │                                                              rescue only when due
    │  fence fails (lock not held by this session, term moved on),              │
    │  connection error, or stop requested                                      ▼
    └──────────────── backoff (0.5 → 5) ◀────────────────────────────── stepping down:
                                                                      unlock + close the session

* The key is ``hashtextextended('scheduler.leader:<schema>', 0)``: one leader per schema.
* The lock session sets ``idle_session_timeout``, ``idle_in_transaction_session_timeout`` and
  ``statement_timeout`` = ``leader_session_timeout_s`` (5): a leader that hangs (SIGSTOP,
  blocked loop) between statements, inside a tick's transaction or inside a statement goes
  idle, PostgreSQL ends its session and frees the lock,
  and the waiting follower is granted the lock at once (measured: ~5 s in all).
  The leader's heartbeat keeps its session busy every ``heartbeat_s``. When the hung process
  resumes, its next statement fails (session gone): it steps down and campaigns again.
  The follower's wait itself is a statement, so ``statement_timeout`` is lifted for it
  alone (``SET LOCAL``); if a follower hangs just as it is granted the lock, its session
  goes idle and ``idle_session_timeout`` frees the lock as for a hung leader.
* Crash (SIGKILL): PostgreSQL frees the lock when the backend sees the socket close (~ms) and
  grants it to a waiting follower in the same moment.
* Graceful stop (SIGTERM): the leader unlocks before closing; a waiting follower is granted
  the lock at once. A follower asked to stop cancels its wait (``cancel_safe``).
* Idle cost: the leader sends one statement per ``heartbeat_s``; a follower one wait per
  10 s plus a config check.
* Database restart or failover: every session dies; replicas reconnect with backoff (0.5 s
  doubling to 1 s), so one leads within ~1 s of PostgreSQL (or a promoted standby on a
  multi-host URL with ``target_session_attrs=read-write``) accepting connections. Each
  election records the database's timeline; a new one (a promoted standby) is logged as
  ``database_failover_detected`` at error level (with asynchronous replication, acknowledged
  work may have been lost).
* Transaction-mode poolers (PgBouncer) break session locks (:mod:`scheduler.pooler`): the
  lock session uses ``SCHEDULER_DIRECT_DATABASE_URL`` when set. Without it, the replica checks
  its one URL first; if it is a transaction pooler the elector never opens a session
  (:attr:`LeaderElector.refusal`, ``leader_refused`` logged once at error level): no lock,
  ``SET`` or session through the pool. As a second guard, after taking the lock the elector
  checks that the lock's backend is still its own; if not, it ends that backend (releasing the
  lock) and refuses to lead (``leader_refused``, retried every 60 s).
* Network partition: the lock session goes silent, so ``idle_session_timeout`` (5 s) ends it
  on the server and frees the lock (measured 5.0 s on PostgreSQL 15,
  ``tests/acceptance/test_partition.py``); TCP keepalives (idle 5 s, interval 1 s, 3 probes)
  and ``tcp_user_timeout`` (10 s) on both ends are the backstop (~10.5 s). The cut-off
  leader's next statement fails after ``tcp_user_timeout``, so it steps down by itself
  (~11.5 s after the cut, committing nothing meanwhile: its session is gone), and after the
  heal it campaigns again as a follower (``leader_campaigning`` with ``rejoined=true``).
* Materialisation runs on the lock session itself, so when the session dies its transaction
  dies with it; each transaction first runs ``leader_heartbeat`` (lock still held by this backend,
  term current). ``UNIQUE (schedule_name, scheduled_for)`` is the last guard.
* ``leader`` row: holder, term, elected_at, heartbeat_at, config_hash: audit and liveness,
  not the lock. Followers compare the leader's ``config_hash`` with their own schedules file
  every 10 s and log ``config_mismatch`` (error level) once per term when they differ: the
  leader's file wins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict

import psycopg

from . import metrics
from .errors import LeadershipLostError, PoolerError
from .log import get_logger
from .settings import Settings
from .store import Store

log = get_logger("scheduler.leader")

OnElected = Callable[[psycopg.AsyncConnection[Any], int], Awaitable[None]]
Tick = Callable[[psycopg.AsyncConnection[Any], int], Awaitable[float]]

RECONNECT_MAX_S = 1.0  # a lost lock session is reopened at least this often: after a failover
# the promoted standby is found within about a second (a new leader within 2 s of promotion)
POOLER_RETRY_S = 60.0  # a replica behind a transaction-mode pooler retries leading this rarely
POOLED_LOCK = (
    "the advisory lock was taken by a server session this connection no longer talks to: "
    "SCHEDULER_DATABASE_URL goes through a transaction-mode pooler (e.g. PgBouncer), which "
    "breaks session locks. Refusing to lead (that session was ended when idle, releasing the "
    "lock); set SCHEDULER_DIRECT_DATABASE_URL to a direct connection"
)
POOLED_LOCK_KEPT = (
    " - it was never idle within a second, so the lock stays with it until the pooler closes "
    "that server connection (server_idle_timeout, server_lifetime)"
)
CONFIG_CHECK_S = 10.0  # how often a follower compares its schedules file with the leader's


class Keepalives(TypedDict):
    """libpq connection parameters of :data:`KEEPALIVES` (typed, so ``**KEEPALIVES`` is
    checked against ``psycopg.connect``'s parameters)."""

    connect_timeout: int
    keepalives: int
    keepalives_idle: int
    keepalives_interval: int
    keepalives_count: int
    tcp_user_timeout: int


KEEPALIVES: Keepalives = {  # every connection of a replica (pool, lock session, LISTEN, probes)
    "connect_timeout": 10,  # s: an unreachable server fails a connect in time, then backoff
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # ms: unacknowledged data for this long breaks the connection
}


def _failover(before: int, timeline: int, term: int) -> None:
    """The database is on another timeline than at the previous election: a standby was
    promoted. Say so loudly: with asynchronous replication, commits acknowledged by the old
    primary after the standby's last replayed WAL are gone (jobs enqueued, fire times
    materialised, outcomes written), so jobs may be missing and fire times may run again."""
    metrics.DATABASE_FAILOVERS.inc()
    log.error(
        "database_failover_detected", old_timeline=before, new_timeline=timeline, term=term,
        detail="PostgreSQL switched timelines since the previous election (a standby was "
        "promoted). With asynchronous replication, work acknowledged by the old primary may "
        "be lost: enqueued jobs missing, fire times run again. Use synchronous replication "
        "(docs/operations.md) to prevent it.",
    )  # fmt: skip


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))


async def sleep_or_wake(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, less when ``stop`` or ``wake`` is set meanwhile."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


class LeaderElector:
    """Campaigns for leadership and, while leader, calls ``on_elected`` once then ``tick``.

    Args:
        url: libpq URL of a direct (session-mode) connection.
        store: statements for the schema.
        settings: timings (``leader_retry_s`` = first reconnect backoff, ``heartbeat_s``,
            ``leader_session_timeout_s``).
        holder: this replica's id, recorded in the ``leader`` row.
        config_hash: hash of this replica's schedules file, recorded when elected.
        on_elected: ``await on_elected(conn, term)`` once per term, before the first tick,
            inside a fenced transaction opened by the elector.
        tick: ``await tick(conn, term)`` returns the seconds to sleep before the next tick
            (capped at ``heartbeat_s``); it raises :class:`LeadershipLostError` to step down.
    """

    def __init__(
        self,
        url: str,
        store: Store,
        settings: Settings,
        *,
        holder: str,
        config_hash: str | None,
        on_elected: OnElected,
        tick: Tick,
    ):
        self.url = url
        self.store = store
        self.settings = settings
        self.holder = holder
        self.config_hash = config_hash
        self.on_elected = on_elected
        self.tick = tick
        self.term: int | None = None
        self.is_leader = asyncio.Event()
        #: set when a schedule was written (a runtime schedule, ``schedules apply``): a
        #: leader's sleep between ticks ends at once (:mod:`scheduler.schedule_control`)
        self.wake = asyncio.Event()
        self._mismatch_term: int | None = None
        self._lost = False  # a lock session of this elector was lost before (rejoin logs)
        #: why this replica must not campaign at all (its only URL is a transaction pooler:
        #: no session, lock or SET may go through it), set before run(); None: campaign
        self.refusal: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign until ``stop`` is set; on stop, release the lock if held. With a
        :attr:`refusal`, log it once (error) and never open a session."""
        if self.refusal is not None:
            log.error("leader_refused", error=self.refusal)
            await stop.wait()
            return
        backoff = self.settings.leader_retry_s
        while not stop.is_set():
            try:
                await self._session(stop)
                backoff = self.settings.leader_retry_s
            except PoolerError as exc:
                self._step_down()
                log.error("leader_refused", error=str(exc), retry_in_s=POOLER_RETRY_S)
                await sleep_or_stop(stop, POOLER_RETRY_S)
            except (psycopg.Error, LeadershipLostError, OSError) as exc:
                was_leader = self.term is not None
                self._lost = True
                self._step_down()
                log.warning(
                    "leader_stepped_down" if was_leader else "leader_connection_lost",
                    error=str(exc).strip()[:300],
                    retry_in_s=round(backoff, 2),
                )
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
            except Exception:
                self._step_down()  # a bug: the supervisor logs it and starts a new campaign
                raise

    async def _check_config(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Log loudly (once per term) when the leader runs a different schedules file. Only a
        live leader counts: the row of one that exited stays until the next election, and a
        replica restarted with an edited file would otherwise report its own old file."""
        if not self.config_hash:
            return
        rows = await self.store.fetch(conn, "status_leader", {"key": self.store.leader_key})
        leader = rows[0] if rows and rows[0]["lock_held"] else None
        if not leader or not leader["config_hash"]:
            return
        if leader["config_hash"] != self.config_hash and leader["term"] != self._mismatch_term:
            self._mismatch_term = leader["term"]
            log.error(
                "config_mismatch",
                leader=leader["holder"],
                term=leader["term"],
                leader_config_hash=leader["config_hash"][:12],
                our_config_hash=self.config_hash[:12],
                detail="this replica's schedules file differs from the leader's; the leader's "
                "file wins until a replica with this file is elected",
            )

    async def _wait_for_lock(
        self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event
    ) -> int | None:
        """Wait inside PostgreSQL for the lock, at most CONFIG_CHECK_S; a stop cancels the
        wait. The pid of the backend that took it when granted, else None."""
        waiter = asyncio.ensure_future(self.store.wait_lock_leader(conn, CONFIG_CHECK_S))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not waiter.done():
            await conn.cancel_safe(timeout=5)
            with contextlib.suppress(psycopg.Error):
                await waiter
            return None
        return waiter.result()

    def _step_down(self) -> None:
        metrics.LEADER.set(0)
        metrics.INCIDENT_OPEN.clear()  # set by the leader's alert evaluation only
        self.term = None
        self.is_leader.clear()

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, **KEEPALIVES)
        try:
            await self.store.setup_session(
                conn,
                idle_session_timeout_s=self.settings.leader_session_timeout_s,
                name=f"scheduler leader {self.holder}",
            )
            await conn.execute(self.store.q["client_check_interval"], {"interval_ms": "200"})
            log.info("leader_campaigning", holder=self.holder, rejoined=self._lost)
            pid = None
            while not stop.is_set() and pid is None:
                await self._check_config(conn)
                pid = await self._wait_for_lock(conn, stop)
            if stop.is_set() or pid is None:  # pid is None only when stopped
                return  # closing the session frees the lock if it was granted meanwhile
            if not await self.store.lock_held(conn, pid):
                released = await self.store.release_pooled_lock(conn, pid)
                raise PoolerError(POOLED_LOCK + ("" if released else POOLED_LOCK_KEPT))
            self.term, before, timeline = await self.store.elect_on_timeline(
                conn, self.holder, self.config_hash
            )
            log.info("leader_elected", holder=self.holder, term=self.term, timeline=timeline)
            if before is not None and before != timeline:
                _failover(before, timeline, self.term)
            metrics.ELECTIONS.inc()
            metrics.LEADER.set(1)
            metrics.LEADER_TERM.set(self.term)
            self.is_leader.set()
            async with conn.transaction():
                if await self.store.fence(conn, self.holder, self.term) is None:
                    raise LeadershipLostError("lost the lock right after the election")
                await self.on_elected(conn, self.term)
            while not stop.is_set():
                self.wake.clear()  # a write during the tick wakes the next sleep at once
                sleep_s = await self.tick(conn, self.term)
                await sleep_or_wake(stop, self.wake, min(sleep_s, self.settings.heartbeat_s))
            # Graceful stop: release the lock at once so a follower leads within leader_retry_s.
            await self.store.unlock_leader(conn)
            log.info("leader_released", holder=self.holder, term=self.term)
            self._step_down()
        finally:
            await conn.close()
