"""The leader's tick: turn due fire times into jobs, applying misfire and overlap policies.

A tick is one transaction on the leader's lock session:

1. fence: ``leader_heartbeat`` heartbeats and returns the database ``now()`` only while this
   session holds the advisory lock and its term is current; otherwise nothing is written
   (:class:`LeadershipLostError`);
2. lock the due schedules (``next_run_at <= now + materialise_ahead_s``, not paused,
   ``FOR UPDATE``; ``overlap_policy: skip`` schedules only when ``next_run_at <= now``);
3. plan each schedule's fire times from its persisted ``next_run_at`` (never from "now", so a
   slow tick loses nothing) with :func:`plan`;
4. insert one job per chosen fire time (``ON CONFLICT DO NOTHING``: the unique
   ``(schedule_name, scheduled_for)`` is the last guard against a deposed leader, and for
   ``overlap_policy: skip`` a unique index allows one live job per schedule), record the fire
   times not run in ``skipped_fire_times``, and advance ``next_run_at`` — all in the same
   transaction, so a crash leaves all or nothing.

Look-ahead: fire times up to ``materialise_ahead_s`` (1 s) ahead become jobs whose ``run_at``
is the fire time; the insert notification carries that time and workers start the job on a
timer, so cron jobs start within milliseconds of the second. The leader does not tick on a
fixed period: its heartbeat returns when the next materialisation is due and it sleeps until
then (at most ``heartbeat_s``). ``overlap_policy: skip`` is decided at the fire time itself
(a job materialised early would count as "live" against the previous one), so those
schedules are materialised when due.

Lateness and policies (``late = now - fire time``, database clock):

* ``late < misfire_grace_s`` (60): on time, runs whatever the policy — so a leader failover of
  a few seconds loses no fire time.
* ``late > starting_deadline_s`` (unset = no deadline): recorded as ``starting_deadline``,
  never run (Kubernetes CronJob ``startingDeadlineSeconds``).
* otherwise it is a **misfire**, and the schedule's ``misfire_policy`` decides:
  ``skip`` runs none; ``run_once`` (default) runs the most recent one only (as Kubernetes
  CronJob); ``run_all`` runs every one in order. At most ``max_catch_up`` (100) fire times
  run per schedule and tick, the most recent ones; older ones are recorded as
  ``catch_up_cap`` with a warning.
* ``overlap_policy: skip``: of several runnable fire times only the last is materialised, and
  none while a job of the schedule is pending or running (``overlap`` rows). ``queue``: jobs
  are materialised, and a job is claimed only when no older job of its schedule is live (see
  ``claim_jobs``). ``allow`` (default): no restriction.

Skipped fire times are recorded as spans (first, last, count) so a month-long outage of an
every-second schedule is one row, not millions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import psycopg

from . import metrics
from .config import MisfirePolicy, OverlapPolicy
from .cron import Cron
from .errors import CronError, LeadershipLostError
from .log import get_logger
from .store import Store

log = get_logger("scheduler.materialiser")

_TICK = timedelta(microseconds=1)
COUNT_CAP = 10_000  # fire times counted in a skipped span; more is recorded as NULL


@lru_cache(maxsize=1024)
def _cron(expression: str, timezone: str) -> Cron:
    return Cron(expression, timezone)


@dataclass(frozen=True)
class Policy:
    """A schedule's catch-up rules; durations in seconds. Defaults match the column defaults."""

    misfire: MisfirePolicy = MisfirePolicy.RUN_ONCE
    overlap: OverlapPolicy = OverlapPolicy.ALLOW
    max_catch_up: int = 100
    misfire_grace_s: float = 60.0
    starting_deadline_s: float | None = None


@dataclass(frozen=True)
class Skip:
    """Consecutive fire times not run: ``first``..``last`` (UTC), ``count`` of them (``None``
    when more than :data:`COUNT_CAP`), and the reason (``misfire``, ``starting_deadline``,
    ``catch_up_cap``, ``overlap``)."""

    first: datetime
    last: datetime
    count: int | None
    reason: str


@dataclass(frozen=True)
class Plan:
    """What a tick does for one schedule: the fire times to materialise (UTC, ascending), the
    new ``next_run_at`` (after ``now``), and the fire times recorded as skipped."""

    fire_times: list[datetime]
    next_run_at: datetime
    skips: list[Skip] = field(default_factory=list)


def _latest(cron: Cron, lo: datetime, hi: datetime, k: int) -> list[datetime]:
    """Up to ``k`` most recent fire times in ``(lo, hi]``, ascending, found by widening a
    window back from ``hi`` (so an outage of months costs a few small searches)."""
    if k <= 0 or hi <= lo:
        return []
    width = timedelta(minutes=1)
    while True:
        start = max(lo, hi - width)
        found: list[datetime] = []
        cursor = start
        while True:  # walk the window forward in bounded batches, keeping the last k
            batch = cron.fire_times(cursor, hi, 4 * k + 16)
            found = (found + batch)[-k:]
            if len(batch) < 4 * k + 16:
                break
            cursor = batch[-1]
        if len(found) >= k or start == lo:
            return found
        width *= 2


def _span(cron: Cron, lo: datetime, hi: datetime, reason: str) -> Skip | None:
    """The fire times in ``(lo, hi]`` as one :class:`Skip`, or ``None`` if there are none."""
    if hi <= lo:
        return None
    first = cron.next_after(lo)
    if first > hi:
        return None
    last = _latest(cron, lo, hi, 1)[-1]
    counted = len(cron.fire_times(lo, hi, COUNT_CAP + 1))
    return Skip(first, last, counted if counted <= COUNT_CAP else None, reason)


def plan(
    cron: Cron,
    next_run_at: datetime,
    now: datetime,
    policy: Policy = Policy(),
    ahead: timedelta = timedelta(0),
) -> Plan:
    """Decide which due fire times of one schedule to run and which to record as skipped.

    Args:
        cron: the schedule's cron expression in its time zone.
        next_run_at: the persisted next fire time (aware); due when ``<= now + ahead``.
        now: the database clock (aware); lateness is measured against it.
        policy: the schedule's misfire/overlap policy (rules in the module docstring).
        ahead: look-ahead (default 0): fire times up to ``now + ahead`` are materialised
            now, as on-time jobs whose ``run_at`` is the fire time. Ignored (0) with
            ``overlap_policy: skip``, which must be decided at the fire time.

    Returns:
        A :class:`Plan`. Every due fire time is either in ``fire_times`` or in a ``skips``
        span; ``next_run_at`` is the first fire time after ``now + ahead``.
    """
    horizon = now if policy.overlap is OverlapPolicy.SKIP else now + ahead
    if next_run_at > horizon:
        return Plan([], next_run_at)
    skips: list[Skip] = []

    def skip(lo: datetime, hi: datetime, reason: str) -> None:
        s = _span(cron, lo, hi, reason)
        if s:
            skips.append(s)

    lo = next_run_at - _TICK  # regions below are half-open: (lo, hi]
    if policy.starting_deadline_s is not None:
        expired_hi = min(now, now - timedelta(seconds=policy.starting_deadline_s) - _TICK)
        if expired_hi > lo:
            skip(lo, expired_hi, "starting_deadline")
            lo = expired_hi
    grace_hi = now - timedelta(seconds=policy.misfire_grace_s)  # late >= grace: a misfire
    misfire_lo, misfire_hi = lo, max(lo, min(grace_hi, now))
    lo = misfire_hi

    on_time = _latest(cron, lo, horizon, policy.max_catch_up)
    if on_time:
        skip(lo, on_time[0] - _TICK, "catch_up_cap")
    room = policy.max_catch_up - len(on_time)
    chosen: list[datetime] = []
    if misfire_hi > misfire_lo:
        if policy.misfire is MisfirePolicy.SKIP:
            skip(misfire_lo, misfire_hi, "misfire")
        elif policy.misfire is MisfirePolicy.RUN_ONCE:
            chosen = _latest(cron, misfire_lo, misfire_hi, min(1, room))
            if chosen:
                skip(misfire_lo, chosen[0] - _TICK, "misfire")
            else:
                skip(misfire_lo, misfire_hi, "catch_up_cap")
        else:  # RUN_ALL
            chosen = _latest(cron, misfire_lo, misfire_hi, room)
            skip(misfire_lo, chosen[0] - _TICK if chosen else misfire_hi, "catch_up_cap")
    runs = chosen + on_time
    if policy.overlap is OverlapPolicy.SKIP and len(runs) > 1:
        skips.append(Skip(runs[0], runs[-2], len(runs) - 1, "overlap"))
        runs = runs[-1:]
    return Plan(runs, cron.next_after(horizon), skips)


def policy_of(row: dict[str, Any]) -> Policy:
    """The :class:`Policy` of a ``schedules`` row."""
    return Policy(
        misfire=MisfirePolicy(row["misfire_policy"]),
        overlap=OverlapPolicy(row["overlap_policy"]),
        max_catch_up=row["max_catch_up"],
        misfire_grace_s=row["misfire_grace_s"],
        starting_deadline_s=row["starting_deadline_s"],
    )


@dataclass(frozen=True)
class TickResult:
    """Outcome of one tick: jobs inserted, fire times recorded as skipped, the database clock,
    and when the next tick must materialise (``None`` when no schedule is active): the
    earliest ``next_run_at`` minus the look-ahead (``overlap_policy: skip``: the fire time)."""

    inserted: int
    skipped: int
    now: datetime
    materialise_at: datetime | None


async def tick(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    holder: str,
    term: int,
    now: datetime | None = None,
    ahead_s: float = 0.0,
) -> TickResult:
    """Run one materialisation transaction on the leader's lock session.

    Args:
        now: the clock to plan against; ``None`` (production) = the database ``now()``.
            Tests inject it.
        ahead_s: look-ahead in seconds (``Settings.materialise_ahead_s``, default 0 here):
            fire times up to ``now + ahead_s`` become jobs now, with ``run_at`` = the fire
            time, so workers can start them on a timer at the exact second.

    Raises:
        LeadershipLostError: the session no longer holds the lock or the term moved on;
            nothing was committed.
        psycopg.OperationalError: the lock session died (its writes died with it).
    """
    async with conn.transaction():
        db_now = await store.fence(conn, holder, term, now=now)
        if db_now is None:
            raise LeadershipLostError(f"term {term} is no longer current for {holder}")
        due = await store.fetch(conn, "schedules_due", {"now": db_now, "ahead_s": ahead_s})
        ahead = timedelta(seconds=ahead_s)
        names: list[str] = []
        fire_times: list[datetime] = []
        skips: list[tuple[str, Skip]] = []
        advance: dict[str, list[Any]] = {"names": [], "next_run_ats": [], "last_fire_ats": []}
        for row in due:
            try:
                p = plan(
                    _cron(row["cron"], row["timezone"]),
                    row["next_run_at"],
                    db_now,
                    policy_of(row),
                    ahead,
                )
            except CronError as exc:
                # A row written by hand (not through a validated file): stop it, loudly,
                # rather than failing every tick.
                log.error("schedule_invalid", schedule=row["name"], error=str(exc))
                p = None
            for s in p.skips if p else []:
                (log.warning if s.reason == "catch_up_cap" else log.info)(
                    "fire_times_skipped",
                    schedule=row["name"],
                    reason=s.reason,
                    first=s.first.isoformat(),
                    last=s.last.isoformat(),
                    fire_times=s.count,
                )
                skips.append((row["name"], s))
            names.extend([row["name"]] * len(p.fire_times if p else []))
            fire_times.extend(p.fire_times if p else [])
            advance["names"].append(row["name"])
            advance["next_run_ats"].append(p.next_run_at if p else None)
            advance["last_fire_ats"].append(p.fire_times[-1] if p and p.fire_times else None)
        inserted = 0
        if names:
            params = {"names": names, "fire_times": fire_times, "term": term}
            inserted = len(await store.fetch(conn, "materialise_fire_times", params))
            # planned but neither inserted nor already there: an overlap skip
            overlap = await store.fetch(conn, "record_overlap_skips", params)
            if overlap:
                log.info(
                    "fire_times_skipped",
                    reason="overlap",
                    schedules=[r["schedule_name"] for r in overlap],
                )
                for r in overlap:
                    metrics.FIRE_TIMES.labels(r["schedule_name"], "overlap").inc()
        if skips:
            await conn.execute(
                store.q["record_skips"],
                {
                    "names": [n for n, _ in skips],
                    "firsts": [s.first for _, s in skips],
                    "lasts": [s.last for _, s in skips],
                    "counts": [s.count for _, s in skips],
                    "reasons": [s.reason for _, s in skips],
                    "term": term,
                },
            )
        if advance["names"]:
            await conn.execute(store.q["schedules_advance"], advance)
        next_rows = await store.fetch(conn, "schedules_next_due", {"ahead_s": ahead_s})
        materialise_at = next_rows[0]["materialise_at"] if next_rows else None
    for name, n in Counter(names).items():
        metrics.FIRE_TIMES.labels(name, "materialised").inc(n)
    for name, s in skips:
        metrics.FIRE_TIMES.labels(name, s.reason).inc(s.count or COUNT_CAP)
    if names:
        log.info("fire_times_materialised", jobs=inserted, fire_times=len(names), term=term)
    return TickResult(
        inserted=inserted, skipped=len(skips), now=db_now, materialise_at=materialise_at
    )
