"""Operator actions with an audit trail: each one writes a ``job_events`` row per job,
schedule or queue it changed, with who did it (``actor``). The dashboard's buttons, the
``scheduler queues pause|resume`` commands and :func:`scheduler.pause_queue` come here::

    await actions.retry_jobs(conn, store, [41, 42], actor="dashboard:alice")
    await actions.pause_queue(conn, store, "smtp", actor=cli_actor())

Every function runs in the caller's transaction on ``conn`` (an ``AsyncConnection``; nothing
is committed here) and validates its arguments before any SQL, raising
:class:`~scheduler.errors.InvalidArgumentError` naming the bad one. ``actor`` is free text
(at most :data:`ACTOR_MAX` characters once cleaned of NUL bytes and lone surrogates):
``"dashboard:<user>"``, ``"cli:<user>@<host>"``, ``"api"``.

**Queue pause** (a row in ``queue_pauses``, 0022): replicas claim no job of a paused queue
(``claim_jobs`` and ``claim_jobs_limited`` skip it in SQL, so the pause holds from its commit
on, on every replica, LISTEN or not); running jobs finish; enqueueing still works. Resuming
wakes the queue's workers as an insert does.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from . import job_changes, schedule_operations
from .errors import InvalidArgumentError, ScheduleNotFoundError
from .limits import check_int, check_queue, check_schedule_name, shown, storable_text
from .schedule_operations import Backfill
from .store import Store

AsyncConn = psycopg.AsyncConnection[Any]
ACTOR_MAX = 200
IDS_MAX = 10_000  # jobs per call: the dashboard's bulk actions say so in their confirmation


def cli_actor() -> str:
    """``"cli:<user>@<host>"`` for commands run from a shell."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = "?"
    return f"cli:{user}@{socket.gethostname()}"


def check_actor(actor: Any) -> str:
    """``actor`` cleaned (NUL bytes and lone surrogates replaced) and cut to ACTOR_MAX."""
    if not isinstance(actor, str) or not actor.strip():
        raise InvalidArgumentError(f"actor must be a non-empty string, not {shown(actor)}")
    return storable_text(actor, ACTOR_MAX)


def check_ids(ids: Any) -> list[int]:
    """A list of job ids (ints >= 1), at most :data:`IDS_MAX`."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise InvalidArgumentError(f"job ids must be a list of integers, not {shown(ids)}")
    if len(ids) > IDS_MAX:
        raise InvalidArgumentError(f"at most {IDS_MAX} job ids per action, not {len(ids)}")
    return [check_int(i, "job id", 1, 2**63 - 1) for i in ids]


async def retry_jobs(
    conn: AsyncConn, store: Store, ids: Sequence[int], actor: str
) -> job_changes.RetryResult:
    """Put the dead or cancelled jobs of ``ids`` back to pending (see
    :func:`scheduler.job_changes.retry` for the budget and the unique rules that skip one)."""
    return await job_changes.retry(conn, store, ids=check_ids(ids), actor=check_actor(actor))


async def cancel_jobs(
    conn: AsyncConn, store: Store, ids: Sequence[int], actor: str
) -> dict[int, str]:
    """Cancel the pending jobs of ``ids`` and ask the running ones to stop; returns
    ``{id: "cancelled" | "cancel_requested"}`` for those it changed (finished or missing
    jobs are left out)."""
    return await job_changes.cancel_many(conn, store, check_ids(ids), check_actor(actor))


async def delete_jobs(conn: AsyncConn, store: Store, ids: Sequence[int], actor: str) -> list[int]:
    """Delete the jobs of ``ids`` that are not running (a running job must be cancelled
    first), with their runs; returns the deleted ids. A ``deleted`` event with ``actor``
    stays for each (pruned after ``SCHEDULER_RETENTION_DEAD_S``)."""
    params = {"ids": check_ids(ids), "actor": check_actor(actor)}
    return [r["id"] for r in await store.fetch(conn, "jobs_delete", params)]


async def _record(conn: AsyncConn, store: Store, event: str, actor: str, **subject: Any) -> None:
    params: dict[str, Any] = {"job_id": None, "schedule_name": None, "queue": None,
                              "detail": None}  # fmt: skip
    params.update(subject, event=event, actor=actor)
    await conn.execute(store.q["job_events_record"], params)


async def pause_queue(conn: AsyncConn, store: Store, queue: str, actor: str) -> bool:
    """Stop every replica claiming ``queue``; False when it was paused already (nothing
    recorded). The queue need not have jobs or limits yet."""
    queue, actor = check_queue(queue), check_actor(actor)
    if not await store.fetch(conn, "queue_pause", {"queue": queue, "actor": actor}):
        return False
    await _record(conn, store, "queue_paused", actor, queue=queue)
    return True


async def resume_queue(conn: AsyncConn, store: Store, queue: str, actor: str) -> bool:
    """Let replicas claim ``queue`` again and wake them; False when it was not paused."""
    queue, actor = check_queue(queue), check_actor(actor)
    params = {"queue": queue, "channel": store.notify_channel}
    if not await store.fetch(conn, "queue_resume", params):
        return False
    await _record(conn, store, "queue_resumed", actor, queue=queue)
    return True


async def paused_queues(conn: AsyncConn, store: Store) -> dict[str, dict[str, Any]]:
    """``{queue: {"paused_at": datetime (UTC), "paused_by": str | None}}``."""
    rows = await store.fetch(conn, "queues_paused")
    return {r["queue"]: {"paused_at": r["paused_at"], "paused_by": r["paused_by"]} for r in rows}


async def pause_schedule(conn: AsyncConn, store: Store, name: str, actor: str) -> None:
    """Pause schedule ``name`` (:func:`scheduler.schedule_operations.pause`).

    Raises:
        ScheduleNotFoundError: there is no schedule ``name``.
    """
    name, actor = check_schedule_name(name), check_actor(actor)
    if not await schedule_operations.pause(conn, store, name):
        raise ScheduleNotFoundError(f"no schedule named {name!r}")
    await _record(conn, store, "schedule_paused", actor, schedule_name=name)


async def resume_schedule(conn: AsyncConn, store: Store, name: str, actor: str) -> None:
    """Resume schedule ``name``; missed fire times go through its misfire policy.

    Raises:
        ScheduleNotFoundError: there is no schedule ``name``.
    """
    name, actor = check_schedule_name(name), check_actor(actor)
    if not await schedule_operations.resume(conn, store, name):
        raise ScheduleNotFoundError(f"no schedule named {name!r}")
    await _record(conn, store, "schedule_resumed", actor, schedule_name=name)


async def trigger_schedule(conn: AsyncConn, store: Store, name: str, actor: str) -> int | None:
    """Enqueue a run of ``name`` now (:func:`scheduler.schedule_operations.trigger`); the job
    id, or None when its overlap policy refuses one now (recorded either way).

    Raises:
        ScheduleNotFoundError: there is no schedule ``name``.
    """
    name, actor = check_schedule_name(name), check_actor(actor)
    job_id = await schedule_operations.trigger(conn, store, name)
    detail = f"job {job_id}" if job_id is not None else "refused by its overlap policy"
    await _record(conn, store, "schedule_triggered", actor, schedule_name=name, job_id=job_id,
                  detail=detail)  # fmt: skip
    return job_id


async def backfill_schedule(
    conn: AsyncConn,
    store: Store,
    name: str,
    start: datetime,
    end: datetime,
    actor: str,
    max_jobs: int = 1000,
) -> Backfill:
    """One job per fire time of ``name`` in ``[start, end]`` that has none
    (:func:`scheduler.schedule_operations.backfill`); at most ``max_jobs`` fire times.

    Raises:
        ScheduleNotFoundError: there is no schedule ``name``.
        InvalidArgumentError: naive datetimes, ``end`` before ``start``, or more fire times
            than ``max_jobs``; nothing written.
    """
    name, actor = check_schedule_name(name), check_actor(actor)
    for what, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidArgumentError(f"{what} must be a timezone-aware datetime")
    if end < start:
        raise InvalidArgumentError(f"end {end.isoformat()} is before start {start.isoformat()}")
    limit = check_int(max_jobs, "max_jobs", 1, 100_000)
    done = await schedule_operations.backfill(conn, store, name, start, end, max_jobs=limit)
    detail = (f"{start.isoformat()}..{end.isoformat()}: {len(done.enqueued)} enqueued, "
              f"{done.existing} had a job")  # fmt: skip
    await _record(conn, store, "schedule_backfilled", actor, schedule_name=name, detail=detail)
    return done
