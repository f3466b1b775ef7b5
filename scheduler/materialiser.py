"""The leader's tick: turn due fire times into jobs, one job per (schedule, fire time).

A tick is one transaction on the leader's lock session:

1. fence: ``leader_fence`` heartbeats and returns the database ``now()`` only while this
   session holds the advisory lock and its term is current; otherwise nothing is written
   (:class:`LeadershipLostError`);
2. lock the due schedules (``next_run_at <= now``, ``FOR UPDATE``);
3. plan each schedule's fire times from its persisted ``next_run_at`` (never from "now", so a
   slow tick loses nothing) with :func:`plan`;
4. insert one job per fire time (``ON CONFLICT (schedule_name, scheduled_for) DO NOTHING``,
   the last guard against a deposed leader) and advance ``next_run_at``, in the same
   transaction, so a crash leaves either both or neither.

Catch-up in this version: every missed fire time is materialised in order, at most
``max_catch_up`` per schedule and tick; when the cap cuts, the rest are skipped (logged as
``fire_times_skipped``) and ``next_run_at`` jumps to the first fire time after now.
Per-schedule misfire and overlap policies plug in at :func:`plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import psycopg

from .cron import Cron
from .errors import CronError, LeadershipLostError
from .log import get_logger
from .store import Store

log = get_logger("scheduler.materialiser")


@lru_cache(maxsize=1024)
def _cron(expression: str, timezone: str) -> Cron:
    return Cron(expression, timezone)


@dataclass(frozen=True)
class Plan:
    """What a tick does for one schedule.

    Attributes:
        fire_times: fire times to materialise (UTC, ascending), possibly empty.
        next_run_at: the schedule's new ``next_run_at`` (UTC), always after ``now``.
        capped: True when more than ``max_catch_up`` fire times were due and the later ones
            (up to now) were skipped.
    """

    fire_times: list[datetime]
    next_run_at: datetime
    capped: bool


def plan(cron: Cron, next_run_at: datetime, now: datetime, max_catch_up: int) -> Plan:
    """Plan the fire times of one due schedule.

    Args:
        cron: the schedule's cron expression in its time zone.
        next_run_at: the persisted next fire time (aware); due when ``<= now``.
        now: the database clock (aware).
        max_catch_up: most fire times returned (>= 1).

    Returns:
        A :class:`Plan`; ``fire_times`` starts with ``next_run_at`` when it is due.
    """
    if next_run_at > now:
        return Plan([], next_run_at, False)
    fire_times = [next_run_at, *cron.fire_times(next_run_at, now, max_catch_up)]
    if len(fire_times) <= max_catch_up:
        return Plan(fire_times, cron.next_after(fire_times[-1]), False)
    # Over the cap: keep the first max_catch_up, skip the rest up to now.
    return Plan(fire_times[:max_catch_up], cron.next_after(now), True)


@dataclass(frozen=True)
class TickResult:
    """Outcome of one tick: jobs inserted, and the database clock and earliest
    ``next_run_at`` (``None`` when no schedule is enabled) to sleep until."""

    inserted: int
    now: datetime
    next_due: datetime | None


async def tick(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    holder: str,
    term: int,
    max_catch_up: int,
) -> TickResult:
    """Run one materialisation transaction on the leader's lock session.

    Raises:
        LeadershipLostError: the session no longer holds the lock or the term moved on;
            nothing was committed.
        psycopg.OperationalError: the lock session died (its writes died with it).
    """
    async with conn.transaction():
        now = await store.fence(conn, holder, term)
        if now is None:
            raise LeadershipLostError(f"term {term} is no longer current for {holder}")
        due = await store.fetch(conn, "schedules_due", {"now": now})
        names: list[str] = []
        fire_times: list[datetime] = []
        advance: dict[str, list[Any]] = {"names": [], "next_run_ats": [], "last_fire_ats": []}
        for row in due:
            try:
                cron = _cron(row["cron"], row["timezone"])
            except CronError as exc:
                # A row written by hand (not through a validated file): stop it, loudly,
                # rather than failing every tick.
                log.error("schedule_invalid", schedule=row["name"], error=str(exc))
                advance["names"].append(row["name"])
                advance["next_run_ats"].append(None)
                advance["last_fire_ats"].append(None)
                continue
            p = plan(cron, row["next_run_at"], now, max_catch_up)
            if p.capped:
                log.warning(
                    "fire_times_skipped",
                    schedule=row["name"],
                    skipped_until=now.isoformat(),
                    reason=f"more than max_catch_up={max_catch_up} fire times were due",
                )
            names.extend([row["name"]] * len(p.fire_times))
            fire_times.extend(p.fire_times)
            advance["names"].append(row["name"])
            advance["next_run_ats"].append(p.next_run_at)
            advance["last_fire_ats"].append(p.fire_times[-1] if p.fire_times else None)
        inserted = 0
        if names:
            rows = await store.fetch(
                conn,
                "materialise_fire_times",
                {"names": names, "fire_times": fire_times, "term": term},
            )
            inserted = len(rows)
        if advance["names"]:
            await conn.execute(store.q["schedules_advance"], advance)
        next_due_rows = await store.fetch(conn, "schedules_next_due")
        next_due = next_due_rows[0]["next_run_at"] if next_due_rows else None
    if names:
        log.info("fire_times_materialised", jobs=inserted, fire_times=len(names), term=term)
    return TickResult(inserted=inserted, now=now, next_due=next_due)
