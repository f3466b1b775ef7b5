"""Runtime schedules from Python, sync and async: create or update, remove, pause, resume,
trigger and backfill schedules while the service runs.

    from scheduler import put_schedule, backfill_schedule

    put_schedule("invoice-reminders", send_reminders, cron="0 9 * * MON-FRI",
                 timezone="Europe/Paris", args={"days_overdue": 7})
    backfill_schedule("invoice-reminders", start, end)     # one job per fire time in range

A runtime schedule is a row of the ``schedules`` table with ``source = 'api'``. It is
validated exactly like an item of a schedules file (:func:`scheduler.config.check_schedule`:
same checks, same messages, did-you-mean for a misspelt field), stored by the same upsert,
and planned by the leader the moment it is written: the write notifies ``<schema>.schedules``,
which wakes the leader through the workers' LISTEN connection (without LISTEN, behind a
transaction pooler: at its next heartbeat, ``heartbeat_s``). A schedules file never changes
or deletes a runtime schedule, and these calls never change or remove a schedule a file
declares (:class:`~scheduler.errors.ScheduleSourceError`, naming both sources); pause,
resume, trigger and backfill work on both.

Every call takes ``connection=``: ``None`` runs it on the default database
(``SCHEDULER_DATABASE_URL``, else the embedded server) in a transaction of its own; a psycopg
connection runs it inside the caller's transaction (a savepoint), so a schedule can be
created atomically with the application's own rows. The ``*_async`` twins take an
``AsyncConnection``. Database failures raise :class:`~scheduler.errors.DatabaseError`
subclasses.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from . import schedule_operations, schedules
from .config import ScheduleConfig, check_schedule
from .errors import InvalidArgumentError, ScheduleNotFoundError
from .limits import check_int, check_schedule_name, shown
from .preparation import TaskRef
from .registry import task_name
from .schedule_operations import Backfill
from .schedules import ScheduleWrite
from .sessions import AsyncConn, AsyncConnArg, SyncConn, run_async, run_sync
from .settings import get_settings

BACKFILL_MAX_JOBS = 10_000  # default cap of one backfill call
BACKFILL_MAX_JOBS_LIMIT = 1_000_000  # the largest max_jobs accepted


def _definition(
    name: Any, task: Any, cron: Any, every: Any, args: Any, timezone: Any, start_at: Any,
    options: dict[str, Any],
) -> ScheduleConfig:  # fmt: skip
    """The validated schedule, as a schedules file's item would be."""
    fields: dict[str, Any] = {"name": name, "task": task_name(task), **options}
    for key, value in (("cron", cron), ("every", every), ("start_at", start_at)):
        if value is not None:
            fields[key] = value
    if args is not None:
        fields["args"] = dict(args) if isinstance(args, Mapping) else args
    if timezone is not None:
        fields["timezone"] = timezone
    return check_schedule(fields, source="put_schedule")


def put_schedule(
    name: str,
    task: TaskRef,
    *,
    cron: str | None = None,
    every: str | float | None = None,
    args: Mapping[str, Any] | None = None,
    timezone: str | None = None,
    start_at: datetime | str | None = None,
    connection: SyncConn | None = None,
    **options: Any,
) -> ScheduleWrite:
    """Create or update the runtime schedule ``name``, effective at once (the leader is woken).

    Args:
        name: the schedule's name (the schedules file's rules).
        task: a ``@task`` handle, function or task name.
        cron: a cron expression, or
        every: an interval (seconds, or ``"90s"``, ``"15m"``, ``"PT1H"``...), from
            ``start_at`` (aware datetime or ISO 8601) when given; exactly one of the two.
        args: keyword arguments of the handler (JSON values).
        timezone: IANA zone of the cron expression; default UTC.
        options: any other field of a schedules file's item: ``queue``, ``priority``,
            ``max_attempts``, ``backoff_base_s``, ``backoff_max_s``, ``backoff_jitter``,
            ``enabled``, ``misfire_policy``, ``overlap_policy``, ``max_catch_up``,
            ``misfire_grace_s``, ``starting_deadline_s``... (README "Schedules in YAML").

    Returns:
        :class:`~scheduler.schedules.ScheduleWrite`: ``action`` is ``"created"``,
        ``"rescheduled"`` (timing changed: next fire time recomputed from now), ``"updated"``
        or ``"unchanged"``; ``next_run_at`` is the next fire time (UTC).

    Raises:
        InvalidScheduleError: a field is invalid (every problem listed); nothing written.
        ScheduleSourceError: a schedules file declares ``name``.
    """
    schedule = _definition(name, task, cron, every, args, timezone, start_at, options)
    return run_sync(connection, lambda c, s: schedules.put(c, s, schedule,
                                                            settings=get_settings()))  # fmt: skip


async def put_schedule_async(
    name: str,
    task: TaskRef,
    *,
    cron: str | None = None,
    every: str | float | None = None,
    args: Mapping[str, Any] | None = None,
    timezone: str | None = None,
    start_at: datetime | str | None = None,
    connection: AsyncConnArg | None = None,
    **options: Any,
) -> ScheduleWrite:
    """:func:`put_schedule` for async code."""
    schedule = _definition(name, task, cron, every, args, timezone, start_at, options)
    return await run_async(connection, lambda c, s: schedules.put(c, s, schedule,
                                                                  settings=get_settings()))  # fmt: skip


def remove_schedule(name: str, *, connection: SyncConn | None = None) -> bool:
    """Delete the runtime schedule ``name``: no fire time after this; its jobs keep their
    state and history. False if there is no such schedule.

    Raises:
        ScheduleSourceError: ``name`` is declared in a schedules file (remove it there).
    """
    name = check_schedule_name(name)
    return run_sync(connection, lambda c, s: schedules.remove(c, s, name))


async def remove_schedule_async(name: str, *, connection: AsyncConnArg | None = None) -> bool:
    """:func:`remove_schedule` for async code."""
    name = check_schedule_name(name)
    return await run_async(connection, lambda c, s: schedules.remove(c, s, name))


async def _found(found: Any, name: str) -> None:
    if not found:
        raise ScheduleNotFoundError(f"no schedule named {name!r}")


def pause_schedule(name: str, *, connection: SyncConn | None = None) -> None:
    """Stop materialising ``name`` (runtime or file schedule) until :func:`resume_schedule`;
    the pause survives reconciliation and restarts.

    Raises:
        ScheduleNotFoundError: there is no schedule ``name``.
    """
    name = check_schedule_name(name)
    run_sync(connection, lambda c, s: _pause(c, s, name))


async def pause_schedule_async(name: str, *, connection: AsyncConnArg | None = None) -> None:
    """:func:`pause_schedule` for async code."""
    name = check_schedule_name(name)
    await run_async(connection, lambda c, s: _pause(c, s, name))


def resume_schedule(name: str, *, connection: SyncConn | None = None) -> None:
    """Resume ``name``: fire times missed while paused go through its misfire policy.

    Raises:
        ScheduleNotFoundError: there is no schedule ``name``.
    """
    name = check_schedule_name(name)
    run_sync(connection, lambda c, s: _resume(c, s, name))


async def resume_schedule_async(name: str, *, connection: AsyncConnArg | None = None) -> None:
    """:func:`resume_schedule` for async code."""
    name = check_schedule_name(name)
    await run_async(connection, lambda c, s: _resume(c, s, name))


async def _pause(conn: AsyncConn, store: Any, name: str) -> None:
    await _found(await schedule_operations.pause(conn, store, name), name)


async def _resume(conn: AsyncConn, store: Any, name: str) -> None:
    await _found(await schedule_operations.resume(conn, store, name), name)


def trigger_schedule(name: str, *, connection: SyncConn | None = None) -> int | None:
    """Enqueue a job of ``name`` to run now (``origin = 'trigger'``), without moving its next
    fire time. Returns the job id, or ``None`` when its overlap policy refuses a job now
    (``skip`` with a live job, ``buffer_one`` with one already waiting).

    Raises:
        ScheduleNotFoundError: there is no schedule ``name``.
    """
    name = check_schedule_name(name)
    return run_sync(connection, lambda c, s: schedule_operations.trigger(c, s, name))


async def trigger_schedule_async(name: str, *, connection: AsyncConnArg | None = None) -> int | None:
    """:func:`trigger_schedule` for async code."""
    name = check_schedule_name(name)
    return await run_async(connection, lambda c, s: schedule_operations.trigger(c, s, name))


def _range(start: Any, end: Any, max_jobs: Any) -> int:
    for what, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidArgumentError(
                f"{what} must be a timezone-aware datetime, not {shown(value)}"
            )
    if end < start:
        raise InvalidArgumentError(f"end {end.isoformat()} is before start {start.isoformat()}")
    return check_int(max_jobs, "max_jobs", 1, BACKFILL_MAX_JOBS_LIMIT)


def backfill_schedule(
    name: str,
    start: datetime,
    end: datetime,
    *,
    max_jobs: int = BACKFILL_MAX_JOBS,
    connection: SyncConn | None = None,
) -> Backfill:
    """Enqueue one job per fire time of ``name`` in ``[start, end]`` (both included; aware
    datetimes) that has no job yet, each unique per fire time as the materialiser's, to run
    now (``origin = 'backfill'``). They run one at a time in fire-time order unless the
    schedule's ``overlap_policy`` is ``allow``. Its next fire time does not move.

    Returns:
        :class:`~scheduler.schedule_operations.Backfill` (``fire_times``, ``enqueued`` ids,
        ``existing``).

    Raises:
        ScheduleNotFoundError: there is no schedule ``name``.
        InvalidArgumentError: naive datetimes, ``end`` before ``start``, or more than
            ``max_jobs`` (default 10,000) fire times in the range; nothing written.
    """
    name, limit = check_schedule_name(name), _range(start, end, max_jobs)
    return run_sync(connection, lambda c, s: schedule_operations.backfill(
        c, s, name, start, end, max_jobs=limit))  # fmt: skip


async def backfill_schedule_async(
    name: str,
    start: datetime,
    end: datetime,
    *,
    max_jobs: int = BACKFILL_MAX_JOBS,
    connection: AsyncConnArg | None = None,
) -> Backfill:
    """:func:`backfill_schedule` for async code."""
    name, limit = check_schedule_name(name), _range(start, end, max_jobs)
    return await run_async(connection, lambda c, s: schedule_operations.backfill(
        c, s, name, start, end, max_jobs=limit))  # fmt: skip
