"""What a replica does while it leads (the :class:`Leadership` part of
:class:`~scheduler.service.Replica`), called by its :class:`~scheduler.leader.LeaderElector`:

* when elected (``on_elected``, in the election's fenced transaction): reconcile the schedules
  file (unless another file was applied with ``scheduler schedules apply``), report schedules
  that came from another file, apply the file's ``queues:`` section;
* every tick (``tick``): one heartbeat statement, then each duty only when it is due:
  materialise, rescue expired leases, rescue the jobs of lost replicas, prune, evaluate
  alerts; a failing duty costs only itself this tick. Returns the seconds until the next tick.

Its events are the replica's (logger ``scheduler.service``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

import psycopg

from . import maintenance, materialiser, schedule_files
from .alerts import Alerts
from .config import SchedulesConfig
from .errors import LeadershipLostError
from .limits import exception_text
from .log import get_logger
from .queue_limits import apply_declared_limits
from .schedules import ReconcileResult
from .settings import Settings
from .store import Store

PRUNE_IDLE_S = 60.0  # the pruning pause after a prune that found nothing to delete

log = get_logger("scheduler.service")  # the replica's events
T = TypeVar("T")


async def _duty(name: str, work: Awaitable[T]) -> T | None:
    """Run one of the leader's duties (materialise, rescue, prune): a failure that is not a
    lost lock session is logged and costs only this duty this tick, never the others."""
    try:
        return await work
    except (LeadershipLostError, psycopg.OperationalError):
        raise
    except Exception as exc:  # a bug or a refused row: the others go on
        log.error("leader_duty_failed", duty=name, error=exception_text(exc), exc_info=exc)
        return None


def _seconds_until(target: datetime | None, now: datetime, cap: float) -> float:
    if target is None:
        return cap
    return min(cap, max(0.0, (target - now).total_seconds()))


class Leadership:
    """The leader's side of a :class:`~scheduler.service.Replica` (a mixin of it, over the
    replica's state declared here)."""

    config: SchedulesConfig | None
    store: Store
    settings: Settings
    id: str
    lost_replicas: maintenance.LostReplicas
    alerts: Alerts  # the leader's alert evaluation (scheduler.alerts)
    _next_prune: float
    _next_liveness_check: float

    async def _on_elected(self, conn: psycopg.AsyncConnection[Any], term: int) -> None:
        if self.config is None:
            return
        applied = await schedule_files.applied_file(conn, self.store)
        own_hash = self.config.config_hash()
        if applied and applied["applied_by"] == "apply" and applied["config_hash"] != own_hash:
            log.error(
                "schedules_file_differs", term=term, file=self.config.path,
                config_hash=own_hash[:12], applied_file=applied["path"],
                applied_config_hash=applied["config_hash"][:12],
                applied_at=applied["applied_at"].isoformat(),
                detail="this leader's schedules file differs from the one applied with "
                "`scheduler schedules apply`; the applied schedules stay as they are (this "
                "file is not reconciled). Deploy the applied file to this replica, or apply "
                "this one",
            )  # fmt: skip
            return
        now = await self.store.database_now(conn)
        result = await schedule_files.reconcile_file(
            conn, self.store, self.config, now=now, settings=self.settings, applied_by="leader"
        )
        log.info(
            "schedules_reconciled",
            term=term,
            added=result.added,
            rescheduled=result.rescheduled,
            updated=result.updated,
            removed=result.removed,
        )
        if result.conflicts:
            log.error(
                "schedule_source_conflict", term=term, schedules=result.conflicts,
                file=self.config.path,
                detail="these names are declared in this schedules file and are runtime (api) "
                "schedules too; the runtime schedules were left as they are and the file's "
                "definitions ignored: rename them in the file or remove the runtime schedules",
            )  # fmt: skip
        if result.from_other_config:
            await self._report_other_config(conn, term, result)
        await self._apply_declared_limits(conn, term)

    async def _apply_declared_limits(self, conn: psycopg.AsyncConnection[Any], term: int) -> None:
        """The file's ``queues:`` section, in the election's fenced transaction (a savepoint:
        a role that may not write the ``queues`` table logs a warning and leads on)."""
        assert self.config is not None
        try:
            done = await apply_declared_limits(conn, self.store, self.config.queues)
        except psycopg.errors.InsufficientPrivilege as exc:
            log.warning("queue_limits_not_applied", term=term, error=exception_text(exc, 300),
                        detail="this database role may not write the queues table: the "
                        "schedules file's queues: section is not applied")  # fmt: skip
            return
        if done.written or done.removed:
            log.info("queue_limits_applied", source="config", term=term,
                     written=done.written, removed=done.removed)  # fmt: skip
        if done.overridden:
            log.info("queue_limits_overridden", term=term, queues=done.overridden,
                     detail="SCHEDULER_QUEUE_LIMITS sets these queues' limits; the schedules "
                     "file's are not applied")  # fmt: skip

    async def _report_other_config(
        self, conn: psycopg.AsyncConnection[Any], term: int, result: ReconcileResult
    ) -> None:
        """Schedules written from another file were replaced. An error only while a live
        replica still runs that other file; else the file was edited and rolled out."""
        running = await self.store.fetch(conn, "replicas_running_config", {
            "hashes": sorted(result.other_config_hashes), "id": self.id,
            "fresh_s": 3 * self.settings.replica_heartbeat_s})  # fmt: skip
        if running:
            log.error(
                "config_mismatch",
                term=term,
                schedules=result.from_other_config,
                replicas=[r["id"] for r in running],
                detail="these schedules were written from a different schedules file, which "
                "these live replicas still run; this leader's file replaced them",
            )
        else:
            log.info("schedules_file_changed", term=term, schedules=result.from_other_config)

    async def _tick(self, conn: psycopg.AsyncConnection[Any], term: int) -> float:
        """One heartbeat statement; a materialisation and a rescue only when one is due."""
        ahead_s = self.settings.materialise_ahead_s
        beat = await self.store.heartbeat(conn, self.id, term, ahead_s=ahead_s)
        if beat is None:
            raise LeadershipLostError(f"term {term} is no longer current for {self.id}")
        now, materialise_at = beat["now"], beat["materialise_at"]
        more = False
        if materialise_at is not None and materialise_at <= now:
            result = await _duty("materialise", materialiser.tick(
                conn, self.store, holder=self.id, term=term, ahead_s=ahead_s))  # fmt: skip
            if result is not None:
                now, materialise_at, more = result.now, result.materialise_at, result.more
        fire_times_left = more  # a next_run_at left in the past would look stuck to alerts
        if beat["rescue_at"] is not None and beat["rescue_at"] <= now:
            await _duty("rescue", maintenance.rescue_expired_leases(
                conn, self.store, holder=self.id, term=term))  # fmt: skip
        loop_time = asyncio.get_running_loop().time()
        jobs_running = beat["rescue_at"] is not None
        if jobs_running and loop_time >= self._next_liveness_check:
            self._next_liveness_check = loop_time + maintenance.LIVENESS_CHECK_S
            await _duty("rescue_lost_replicas", self.lost_replicas.check(
                conn, self.store, holder=self.id, term=term, now=loop_time))  # fmt: skip
        if loop_time >= self._next_prune:
            s = self.settings
            pruned = await _duty("prune", maintenance.prune(
                conn, self.store, holder=self.id, term=term, succeeded_s=s.retention_succeeded_s,
                dead_s=s.retention_dead_s, batch=s.retention_batch,
                stale_replicas_s=3 * s.replica_heartbeat_s))  # fmt: skip
            # a backlog is worked off one batch budget per tick, the ticks back to back, so
            # materialisation and rescue still get their turn between budgets
            backlog = pruned is not None and pruned.more
            # every retention_interval_s while there is something to prune (small prunes
            # under load), six times less often (at most a minute) after finding nothing
            idle = pruned is not None and not pruned.deleted
            pause = s.retention_interval_s
            if idle:
                pause = max(pause, min(PRUNE_IDLE_S, 6 * pause))
            self._next_prune = loop_time + (0.0 if backlog else pause)
            more = more or backlog
        if beat["alerts"] and not fire_times_left and self.alerts.due(loop_time):
            await _duty("alerts", self.alerts.run(conn, self.store, holder=self.id, term=term))
        if more:
            return 0.0  # bounded ticks back to back until the backlog is worked off
        wake = min(
            (t for t in (materialise_at, beat["rescue_at"]) if t is not None and t > now),
            default=None,
        )
        cap = self.settings.heartbeat_s
        if jobs_running:  # look for gone replicas every LIVENESS_CHECK_S while jobs run
            cap = min(cap, max(0.0, self._next_liveness_check - loop_time))
        return _seconds_until(wake, now, cap)
