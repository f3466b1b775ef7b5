"""Which due fire times of one schedule run, and which are recorded as skipped: pure.

:func:`plan` applies a schedule's misfire and overlap policies to its due fire times, from
its persisted ``next_run_at`` (never from "now", so a slow tick loses nothing) to
``now + ahead``. It reads no clock and no database; the leader's tick
(:mod:`scheduler.materialiser`) calls it outside any transaction.

Lateness and policies (``late = now - fire time``, database clock):

* ``late < misfire_grace_s`` (60): on time, runs whatever the policy — so a leader failover of
  a few seconds loses no fire time.
* ``late > starting_deadline_s`` (unset = no deadline): recorded as ``starting_deadline``,
  never run (Kubernetes CronJob ``startingDeadlineSeconds``).
* otherwise it is a **misfire**, and the schedule's ``misfire_policy`` decides:
  ``skip`` runs none; ``run_once`` (default) runs the most recent one only (as Kubernetes
  CronJob); ``run_all`` runs every one in order. At most ``max_catch_up`` (100) fire times
  run per schedule and catch-up, the most recent ones; older ones are recorded as
  ``catch_up_cap`` with a warning.
* ``overlap_policy`` (:class:`~scheduler.config.OverlapPolicy`), enforced in the database:

  - ``allow`` (default): no restriction.
  - ``skip``: none while a job of the schedule is pending or running (unique index
    ``jobs_overlap_skip``; ``overlap`` rows).
  - ``queue``: every fire time gets a job; a job is claimed only when no older job of its
    schedule is live (see ``claim_jobs``).
  - ``buffer_one``: at most one job *waiting* (pending, never claimed) per schedule (unique
    index ``jobs_overlap_buffer_one``): a fire time that comes while one waits is recorded as
    ``overlap``; the waiting job is claimed only when no job of its schedule runs. Retries,
    rescues and releases of the running job are not "waiting" (they were claimed).
  - ``cancel_previous``: the new job's insert stops the schedule's older live jobs (trigger
    ``jobs_cancel_previous``: pending ones cancelled, running ones asked to stop as by an
    operator's cancel) and is claimed only when none of them still runs.

  With ``skip``, ``buffer_one`` and ``cancel_previous``, of several runnable fire times only
  the last is materialised (the others are ``overlap`` rows: they would be refused or
  cancelled at once), and fire times are materialised at the fire time, not ahead of it (a
  job made early would count as waiting, or stop the previous run early).

Bounded work: fire times are counted arithmetically (:mod:`scheduler.cron_count` for cron,
:mod:`scheduler.interval` for ``every:`` schedules, both through ``FireTimes``), never
walked one by one, so an outage of any length costs milliseconds to plan; skipped fire times
are recorded as spans (first, last, exact count), so a month-long outage of an every-second
schedule is one row, not millions; and a plan returns at most ``limit`` fire times, the rest
being planned by the next ticks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .config import MisfirePolicy, OverlapPolicy
from .cron import Cron
from .cron_count import FireTimes, fire_times_of

_TICK = timedelta(microseconds=1)
# decided at the fire time itself (no look-ahead), and one job per tick
AT_FIRE_TIME = frozenset(
    {OverlapPolicy.SKIP, OverlapPolicy.BUFFER_ONE, OverlapPolicy.CANCEL_PREVIOUS}
)
MAX_FIRE_TIMES_PER_TICK = 1_000  # fire times materialised per tick, all schedules together


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
    """Consecutive fire times not run: ``first``..``last`` (UTC), ``count`` of them (exact,
    counted arithmetically by :mod:`scheduler.cron_count`), and the reason (``misfire``,
    ``starting_deadline``, ``catch_up_cap``, ``overlap``)."""

    first: datetime
    last: datetime
    count: int
    reason: str


@dataclass(frozen=True)
class Plan:
    """What a tick does for one schedule: the fire times to materialise (UTC, ascending), the
    new ``next_run_at``, and the fire times recorded as skipped. ``next_run_at`` is after
    ``now`` unless the plan was cut by its ``limit``: then it is the fire time after the last
    planned one, and the next tick goes on from there."""

    fire_times: list[datetime]
    next_run_at: datetime
    skips: list[Skip] = field(default_factory=list)


Span = tuple[datetime, datetime]  # fire times in (lo, hi]


def _span(cron: FireTimes, lo: datetime, hi: datetime, reason: str) -> Skip | None:
    """The fire times in ``(lo, hi]`` as one :class:`Skip`, or ``None`` if there are none."""
    n = cron.count(lo, hi) if hi > lo else 0
    if not n:
        return None
    return Skip(cron.next_after(lo), cron.nth_after(lo, n), n, reason)


def _nth(cron: FireTimes, spans: list[Span], i: int) -> datetime:
    """The ``i``-th (1-based) fire time of ``spans`` taken in order."""
    for lo, hi in spans:
        n = cron.count(lo, hi)
        if i <= n:
            return cron.nth_after(lo, i)
        i -= n
    raise IndexError(i)


def _last_in(cron: FireTimes, lo: datetime, hi: datetime) -> datetime | None:
    """The last fire time in ``(lo, hi]``, or ``None`` when there is none."""
    n = cron.count(lo, hi)
    return cron.nth_after(lo, n) if n else None


def plan(
    schedule: Cron | FireTimes,
    next_run_at: datetime,
    now: datetime,
    policy: Policy = Policy(),
    ahead: timedelta = timedelta(0),
    limit: int = MAX_FIRE_TIMES_PER_TICK,
) -> Plan:
    """Decide which due fire times of one schedule to run and which to record as skipped.

    Pure and bounded: fire times are counted arithmetically (:mod:`scheduler.cron_count`),
    never walked one by one, so an outage of any length costs a few milliseconds, and at most
    ``limit`` fire times are returned.

    Args:
        schedule: the schedule's fire times: a :class:`Cron` in its time zone, or any
            :class:`~scheduler.cron_count.FireTimes` (an :class:`~scheduler.interval.Interval`).
        next_run_at: the persisted next fire time (aware); due when ``<= now + ahead``.
        now: the database clock (aware); lateness is measured against it.
        policy: the schedule's misfire/overlap policy (rules in the module docstring).
        ahead: look-ahead (default 0): fire times up to ``now + ahead`` are materialised
            now, as on-time jobs whose ``run_at`` is the fire time. Ignored (0) with
            ``overlap_policy`` skip, buffer_one and cancel_previous (:data:`AT_FIRE_TIME`),
            which must be decided at the fire time.
        limit: most fire times returned (>= 1, default :data:`MAX_FIRE_TIMES_PER_TICK`). When
            more are runnable, the plan stops after ``limit`` of them, and ``next_run_at`` is
            the fire time after the last one, so the next tick continues from there.

    Returns:
        A :class:`Plan`. Every due fire time up to the new ``next_run_at`` is either in
        ``fire_times`` or in a ``skips`` span.
    """
    cron = fire_times_of(schedule)
    horizon = now if policy.overlap in AT_FIRE_TIME else now + ahead
    if next_run_at > horizon:
        return Plan([], next_run_at)
    skips: list[Skip] = []

    def skip(lo: datetime, hi: datetime, reason: str) -> None:
        if (s := _span(cron, lo, hi, reason)) is not None:
            skips.append(s)

    def keep_latest(lo: datetime, hi: datetime, k: int) -> datetime:
        """Skip all but the ``k`` latest fire times of (lo, hi]; return the new ``lo``."""
        n = cron.count(lo, hi)
        if n <= k:
            return lo
        cut = cron.nth_after(lo, n - k)
        skip(lo, cut, "catch_up_cap")
        return cut

    lo = next_run_at - _TICK  # regions below are half-open: (lo, hi]
    if policy.starting_deadline_s is not None:
        expired_hi = min(now, now - timedelta(seconds=policy.starting_deadline_s) - _TICK)
        if expired_hi > lo:
            skip(lo, expired_hi, "starting_deadline")
            lo = expired_hi
    grace_hi = now - timedelta(seconds=policy.misfire_grace_s)  # late >= grace: a misfire
    misfire_lo, misfire_hi = lo, max(lo, min(grace_hi, now))

    on_time_lo = keep_latest(misfire_hi, horizon, policy.max_catch_up)
    room = policy.max_catch_up - cron.count(on_time_lo, horizon)
    spans: list[Span] = []
    if misfire_hi > misfire_lo:
        if policy.misfire is MisfirePolicy.SKIP:
            skip(misfire_lo, misfire_hi, "misfire")
        elif policy.misfire is MisfirePolicy.RUN_ONCE:
            last = _last_in(cron, misfire_lo, misfire_hi) if room >= 1 else None
            if last is not None:
                skip(misfire_lo, last - _TICK, "misfire")
                spans.append((last - _TICK, last))
            else:
                skip(misfire_lo, misfire_hi, "catch_up_cap")
        else:  # RUN_ALL
            spans.append((keep_latest(misfire_lo, misfire_hi, max(room, 0)), misfire_hi))
    spans.append((on_time_lo, horizon))
    total = sum(cron.count(a, b) for a, b in spans)
    if policy.overlap in AT_FIRE_TIME and total > 1:
        skips.append(Skip(_nth(cron, spans, 1), _nth(cron, spans, total - 1), total - 1,
                          "overlap"))  # fmt: skip
        last = _nth(cron, spans, total)
        spans, total = [(last - _TICK, last)], 1
    runs: list[datetime] = []
    for a, b in spans:
        runs += cron.fire_times(a, b, max(limit, 1) - len(runs))
    if len(runs) < total:  # cut by the limit: go on from here at the next tick
        resume = cron.next_after(runs[-1])
        return Plan(runs, resume, [s for s in skips if s.last < resume])
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
