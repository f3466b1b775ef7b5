"""What an operator does to a stored schedule (``scheduler schedules list | next | pause |
resume | trigger | backfill``, :mod:`scheduler.actions`, :mod:`scheduler.schedule_control`):
list them, preview fire times (the materialiser's own code: :func:`row_fire_times`,
:func:`preview`), pause and resume (the leader is woken: :func:`scheduler.schedules.notify`),
and enqueue jobs of a schedule now without moving its ``next_run_at`` (:func:`trigger` one
run, :func:`backfill` a range of fire times). The schedule definitions themselves are
written by :mod:`scheduler.schedules`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from .cron import Cron
from .cron_count import CronTimes, FireTimes, fire_times_of
from .errors import InvalidArgumentError, ScheduleNotFoundError
from .interval import Interval
from .schedules import notify
from .store import Store


@dataclass(frozen=True)
class Backfill:
    """What :func:`backfill` did: ``fire_times`` in the range, ``enqueued`` the ids of the jobs
    it created (one per fire time that had none), ``existing`` the fire times that had a job
    already (materialised, triggered or backfilled before)."""

    fire_times: int
    enqueued: list[int]
    existing: int


def preview(cron: Cron | FireTimes, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times strictly after ``after``, as aware datetimes in the
    schedule's zone (so their UTC offset shows). Same code path as the materialiser
    (:meth:`Cron.next_after`, :meth:`Interval.next_after <scheduler.interval.Interval>`)."""
    cron = fire_times_of(cron)
    out: list[datetime] = []
    current = after
    for _ in range(count):
        current = cron.next_after(current)
        out.append(current.astimezone(cron.timezone))
    return out


async def list_schedules(conn: psycopg.AsyncConnection[Any], store: Store) -> list[dict[str, Any]]:
    """Every row of the schedules table, by name."""
    return await store.fetch(conn, "schedules_list")


async def pause(conn: psycopg.AsyncConnection[Any], store: Store, name: str) -> bool:
    """Stop materialising ``name`` until :func:`resume`; False if there is no such schedule.
    The pause survives reconciliation (the YAML's ``enabled`` is a separate switch)."""
    paused = bool(await store.fetch(conn, "schedule_pause", {"name": name}))
    if paused:
        await notify(conn, store, name)
    return paused


async def resume(conn: psycopg.AsyncConnection[Any], store: Store, name: str) -> bool:
    """Resume ``name``; fire times missed while paused go through its misfire policy at the
    next tick. False if there is no such schedule."""
    resumed = bool(await store.fetch(conn, "schedule_resume", {"name": name}))
    if resumed:
        await notify(conn, store, name)  # due fire times are planned at once
    return resumed


async def trigger(conn: psycopg.AsyncConnection[Any], store: Store, name: str) -> int | None:
    """Enqueue a job of ``name`` to run now (``origin = 'trigger'``, recorded in the same
    history), without moving ``next_run_at``. Returns the job id, or ``None`` when the
    schedule's overlap policy refuses it: ``skip`` with a job of it pending or running,
    ``buffer_one`` with one already waiting (``cancel_previous`` stops the older jobs).

    Raises:
        ScheduleNotFoundError: there is no schedule ``name`` (a ``LookupError``).
    """
    rows = await store.fetch(conn, "schedule_trigger", {"name": name})
    if rows:
        return int(rows[0]["id"])
    if not any(r["name"] == name for r in await list_schedules(conn, store)):
        raise ScheduleNotFoundError(f"no schedule named {name!r}")
    return None


def row_fire_times(row: dict[str, Any], reach_back_to: datetime | None = None) -> FireTimes:
    """The fire times of a ``schedules`` row: its cron expression in its zone, or its interval
    from ``start_at``, else on the grid through its ``next_run_at`` (or ``last_fire_at``),
    extended back to ``reach_back_to`` when given (for a backfill before it).

    Raises:
        ValueError: an interval schedule with neither ``next_run_at`` nor ``last_fire_at``.
    """
    if row["every_s"] is None:
        return CronTimes(Cron(row["cron"], row["timezone"]))
    every = float(row["every_s"])
    anchor = row["start_at"] or row["next_run_at"] or row["last_fire_at"]
    if anchor is None:
        raise ValueError("it is disabled and has never fired: its interval grid has no anchor")
    if row["start_at"] is None and reach_back_to is not None and reach_back_to < anchor:
        steps = math.ceil((anchor - reach_back_to).total_seconds() / every)
        anchor -= timedelta(seconds=steps * every)
    return Interval(every, anchor, row["timezone"])


async def backfill(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    name: str,
    start: datetime,
    end: datetime,
    *,
    max_jobs: int,
) -> Backfill:
    """One job per fire time of ``name`` in ``[start, end]`` (both included; aware datetimes)
    that has none yet, to run now (``origin = 'backfill'``, same history); they run one at a
    time in fire-time order unless the schedule's ``overlap_policy`` is ``allow``.
    ``next_run_at`` is not moved.

    Raises:
        ScheduleNotFoundError: there is no schedule ``name``.
        InvalidArgumentError: the range holds more than ``max_jobs`` fire times, or the
            schedule's fire times cannot be computed; nothing was written.
    """
    rows = await store.fetch(conn, "schedule_row", {"name": name})
    if not rows:
        raise ScheduleNotFoundError(f"no schedule named {name!r}")
    try:
        times = row_fire_times(rows[0], reach_back_to=start)
    except ValueError as exc:
        raise InvalidArgumentError(f"cannot backfill schedule {name!r}: {exc}") from None
    after = start - timedelta(microseconds=1)
    total = times.count(after, end)
    if total > max_jobs:
        raise InvalidArgumentError(
            f"the range {start.isoformat()} .. {end.isoformat()} holds {total:,} fire times of "
            f"schedule {name!r}, more than max_jobs={max_jobs:,}; nothing was enqueued: "
            "narrow the range or raise max_jobs"
        )
    fire_times = times.fire_times(after, end, max_jobs)
    ids = [int(r["id"]) for r in await store.fetch(
        conn, "schedule_backfill", {"name": name, "fire_times": fire_times})]  # fmt: skip
    return Backfill(len(fire_times), ids, len(fire_times) - len(ids))
