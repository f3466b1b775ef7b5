"""The leader's tick: turn due fire times into jobs, applying misfire and overlap policies.

A tick runs on the leader's lock session, in three steps, so that no Python planning happens
inside a transaction that holds locks (a long one once outlived the lock session's
``idle_in_transaction_session_timeout`` after a week-long outage: no jobs, and an election
every few seconds):

1. read the due schedules (``next_run_at <= now + materialise_ahead_s``, not paused;
   ``overlap_policy`` skip, buffer_one and cancel_previous schedules only when
   ``next_run_at <= now``), at most
   :data:`MAX_SCHEDULES_PER_TICK`, without a lock and outside any transaction;
2. plan each one in Python (:func:`scheduler.planning.plan`: misfire and overlap policies,
   fire times counted arithmetically), within :data:`MAX_FIRE_TIMES_PER_TICK` fire times and
   :data:`PLAN_BUDGET_S` seconds for the whole tick; what does not fit is left for the next
   tick, which the leader runs at once (``TickResult.more``);
3. apply, in one short transaction: fence (``leader_heartbeat`` matches only while this
   session holds the advisory lock and its term is current, else nothing is written:
   :class:`LeadershipLostError`), lock the planned schedules whose ``next_run_at`` is still
   the one planned from, insert one job per chosen fire time (``ON CONFLICT DO NOTHING``: the
   unique ``(schedule_name, scheduled_for)`` is the last guard against a deposed leader; for
   ``overlap_policy: skip`` a unique index allows one live job per schedule, for
   ``buffer_one`` one waiting job per schedule: a refused fire time is recorded as an
   ``overlap`` skip; for ``cancel_previous`` the insert's trigger stops the schedule's older
   jobs in this transaction), record the fire times not run in ``skipped_fire_times``, and
   advance ``next_run_at`` — all or nothing.

One bad schedule costs only itself: a row that cannot be planned (a cron expression written
by hand that never fires) is stopped (``next_run_at = NULL``) with ``last_error``; a row
whose writes the database refuses (the batch is then applied schedule by schedule) or whose
planning fails otherwise gets ``last_error`` / ``last_error_at`` and is tried again a minute
later (``schedule_failed`` at error level, ``scheduler_schedule_errors_total``,
``scheduler status``). The other schedules, and the leader's rescue and pruning, go on.

Look-ahead: fire times up to ``materialise_ahead_s`` (1 s) ahead become jobs whose ``run_at``
is the fire time; the insert notification carries that time and workers start the job on a
timer, so cron jobs start within milliseconds of the second. The leader does not tick on a
fixed period: its heartbeat returns when the next materialisation is due and it sleeps until
then (at most ``heartbeat_s``). ``overlap_policy`` skip, buffer_one and cancel_previous are
decided at the fire time itself (a job materialised early would count as "live" or "waiting"
against the previous one, or stop it early), so those schedules are materialised when due.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import psycopg

from . import metrics
from .cron import Cron
from .cron_count import CronTimes, FireTimes
from .errors import CronError, InvalidArgumentError, LeadershipLostError
from .interval import Interval
from .limits import exception_text
from .log import get_logger
from .planning import MAX_FIRE_TIMES_PER_TICK, Plan, Skip, plan, policy_of
from .store import Store

log = get_logger("scheduler.materialiser")

MAX_SCHEDULES_PER_TICK = 500  # due schedules read per tick
PLAN_BUDGET_S = 1.0  # planning stops after this long; the rest waits for the next tick


@lru_cache(maxsize=1024)
def _cron(expression: str, timezone: str) -> Cron:
    return Cron(expression, timezone)


def _fire_times(row: dict[str, Any]) -> FireTimes:
    """A due row's fire times: its cron expression, or its interval from ``start_at``, else
    anchored at its ``next_run_at`` (see :mod:`scheduler.schedules`)."""
    if row["every_s"] is None:
        return CronTimes(_cron(row["cron"], row["timezone"]))
    return Interval(row["every_s"], row["start_at"] or row["next_run_at"], row["timezone"])


@dataclass(frozen=True)
class TickResult:
    """Outcome of one tick: jobs inserted, fire-time spans recorded as skipped, the clock
    planned against, when the next tick must materialise (``None`` when no schedule is
    active: the earliest ``next_run_at`` minus the look-ahead; ``overlap_policy`` skip,
    buffer_one, cancel_previous: the fire time; a schedule that failed: a minute after its
    failure), and ``more``: due work
    was left for the next tick by the per-tick bounds."""

    inserted: int
    skipped: int
    now: datetime
    materialise_at: datetime | None
    more: bool = False


@dataclass
class _Work:
    """A tick's plans (name -> the ``next_run_at`` planned from, and the plan) and the
    schedules that failed (name -> error text, and whether to stop it)."""

    plans: dict[str, tuple[datetime, Plan]] = field(default_factory=dict)
    errors: dict[str, tuple[str, bool]] = field(default_factory=dict)
    more: bool = False


def _plan_due(
    due: list[dict[str, Any]], now: datetime, ahead: timedelta, *, budget: int, budget_s: float
) -> _Work:
    """Plan the due schedules in Python, outside any transaction, within ``budget`` fire
    times and ``budget_s`` seconds; whatever does not fit waits for the next tick. A schedule
    that cannot be planned costs only itself."""
    work, started = _Work(), time.monotonic()
    for row in due:
        if budget <= 0 or time.monotonic() - started > budget_s:
            work.more = True
            break
        try:
            times = _fire_times(row)
            p = plan(times, row["next_run_at"], now, policy_of(row), ahead, limit=budget)
        except (CronError, InvalidArgumentError) as exc:  # a row written by hand: stop it
            work.errors[row["name"]] = (exception_text(exc), True)
            continue
        except Exception as exc:  # noqa: BLE001 - one bad row must not stop the others
            work.errors[row["name"]] = (exception_text(exc), False)
            continue
        work.plans[row["name"]] = (row["next_run_at"], p)
        budget -= len(p.fire_times)
    return work


async def tick(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    holder: str,
    term: int,
    now: datetime | None = None,
    ahead_s: float = 0.0,
    budget: int = MAX_FIRE_TIMES_PER_TICK,
) -> TickResult:
    """One materialisation on the leader's lock session: read the due schedules (no lock),
    plan them in Python outside any transaction, then apply the plans in one short fenced
    transaction to the schedules whose ``next_run_at`` is still the one planned from.

    Args:
        now: the clock to plan against; ``None`` (production) = the database ``now()``.
            Tests inject it.
        ahead_s: look-ahead in seconds (``Settings.materialise_ahead_s``, default 0 here):
            fire times up to ``now + ahead_s`` become jobs now, with ``run_at`` = the fire
            time, so workers can start them on a timer at the exact second.
        budget: most fire times materialised by this tick (default 1,000); at most
            :data:`MAX_SCHEDULES_PER_TICK` schedules are read and planning stops after
            :data:`PLAN_BUDGET_S`. ``TickResult.more`` says work was left.

    Raises:
        LeadershipLostError: the session no longer holds the lock or the term moved on;
            nothing was committed.
        psycopg.OperationalError: the lock session died (its writes died with it).
    """
    clock = now or await store.database_now(conn)
    due = await store.fetch(
        conn, "schedules_due", {"now": clock, "ahead_s": ahead_s, "limit": MAX_SCHEDULES_PER_TICK}
    )
    work = _plan_due(due, clock, timedelta(seconds=ahead_s), budget=budget,
                     budget_s=PLAN_BUDGET_S)  # fmt: skip
    work.more = work.more or len(due) == MAX_SCHEDULES_PER_TICK
    try:
        inserted, skipped = await _apply(conn, store, work, holder=holder, term=term, now=now)
    except (LeadershipLostError, psycopg.OperationalError):
        raise
    except psycopg.Error as exc:  # one schedule's rows refused: apply each schedule alone
        log.warning("materialise_batch_failed", error=exception_text(exc, 300),
                    schedules=len(work.plans))  # fmt: skip
        inserted, skipped = await _apply_one_by_one(conn, store, work, holder, term, now)
    await _record_errors(conn, store, work.errors)
    rows = await store.fetch(conn, "schedules_next_due", {"ahead_s": ahead_s})
    materialise_at = rows[0]["materialise_at"] if rows else None
    return TickResult(inserted, skipped, clock, materialise_at, work.more)


async def _apply_one_by_one(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    work: _Work,
    holder: str,
    term: int,
    now: datetime | None,
) -> tuple[int, int]:
    inserted = skipped = 0
    for name, planned in work.plans.items():
        one = _Work(plans={name: planned})
        try:
            i, k = await _apply(conn, store, one, holder=holder, term=term, now=now)
        except (LeadershipLostError, psycopg.OperationalError):
            raise
        except psycopg.Error as exc:
            work.errors[name] = (exception_text(exc), False)
            continue
        inserted, skipped = inserted + i, skipped + k
    return inserted, skipped


async def _record_errors(
    conn: psycopg.AsyncConnection[Any], store: Store, errors: dict[str, tuple[str, bool]]
) -> None:
    """Note each failed schedule on its row (``last_error``, ``last_error_at``); it is tried
    again a minute later, or never (``next_run_at = NULL``) when it cannot be planned at all."""
    if not errors:
        return
    for name, (error, stop) in errors.items():
        metrics.SCHEDULE_ERRORS.labels(name).inc()
        log.error("schedule_failed", schedule=name, error=error,
                  action="stopped until its definition changes" if stop else "retried in 60 s")  # fmt: skip
    await conn.execute(
        store.q["schedules_record_errors"],
        {"names": list(errors), "errors": [e for e, _ in errors.values()],
         "stops": [stop for _, stop in errors.values()]},
    )  # fmt: skip


async def _apply(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    work: _Work,
    *,
    holder: str,
    term: int,
    now: datetime | None,
) -> tuple[int, int]:
    """Write the plans in one fenced transaction, for the schedules whose ``next_run_at`` is
    still the one they were planned from (another leader may have moved it meanwhile).
    Returns (jobs inserted, skip spans recorded)."""
    async with conn.transaction():
        if await store.fence(conn, holder, term, now=now) is None:
            raise LeadershipLostError(f"term {term} is no longer current for {holder}")
        if not work.plans:
            return 0, 0
        locked = await store.fetch(conn, "schedules_lock_planned", {
            "names": list(work.plans), "next_run_ats": [f for f, _ in work.plans.values()]})  # fmt: skip
        plans = {r["name"]: work.plans[r["name"]][1] for r in locked}
        names = [n for n, p in plans.items() for _ in p.fire_times]
        fire_times = [t for p in plans.values() for t in p.fire_times]
        skips: list[tuple[str, Skip | None]] = [(n, s) for n, p in plans.items() for s in p.skips]
        inserted = 0
        if names:
            params = {"names": names, "fire_times": fire_times, "term": term}
            inserted = len(await store.fetch(conn, "materialise_fire_times", params))
            # planned but neither inserted nor already there: an overlap skip
            overlap = await store.fetch(conn, "record_overlap_skips", params)
            skips += [(r["schedule_name"], None) for r in overlap]
        if any(s is not None for _, s in skips):
            real = [(n, s) for n, s in skips if s is not None]
            await conn.execute(store.q["record_skips"], {
                "names": [n for n, _ in real], "firsts": [s.first for _, s in real],
                "lasts": [s.last for _, s in real], "counts": [s.count for _, s in real],
                "reasons": [s.reason for _, s in real], "term": term})  # fmt: skip
        if plans:
            await conn.execute(store.q["schedules_advance"], {
                "names": list(plans), "next_run_ats": [p.next_run_at for p in plans.values()],
                "last_fire_ats": [p.fire_times[-1] if p.fire_times else None
                                  for p in plans.values()]})  # fmt: skip
    _report(plans, names, skips, inserted, term)
    return inserted, len(skips)


def _report(
    plans: dict[str, Plan],
    names: list[str],
    skips: list[tuple[str, Skip | None]],
    inserted: int,
    term: int,
) -> None:
    """Log and count what a committed apply wrote."""
    for name, s in skips:
        if s is None:
            metrics.FIRE_TIMES.labels(name, "overlap").inc()
            log.info("fire_times_skipped", schedule=name, reason="overlap")
            continue
        metrics.FIRE_TIMES.labels(name, s.reason).inc(s.count)
        (log.warning if s.reason == "catch_up_cap" else log.info)(
            "fire_times_skipped", schedule=name, reason=s.reason, first=s.first.isoformat(),
            last=s.last.isoformat(), fire_times=s.count,
        )  # fmt: skip
    for name, n in Counter(names).items():
        metrics.FIRE_TIMES.labels(name, "materialised").inc(n)
    if names:
        log.info("fire_times_materialised", jobs=inserted, fire_times=len(names), term=term,
                 schedules=len(plans))  # fmt: skip
