"""What an operator does to jobs and dead letters (``scheduler jobs ...``,
``scheduler dead-letters ...``); the CLI is a thin layer over these functions.

* **list** / **show**: jobs by state, queue, task or schedule; one job with every attempt
  (``job_runs``: outcome, error, traceback) and every operator action (``job_events``).
* **retry**: a ``dead`` or ``cancelled`` job goes back to ``pending``, due now, with its
  attempt budget renewed: ``max_attempts`` becomes the attempts used plus the job's original
  budget, so attempt numbers keep counting up and ``job_runs`` keeps one row per attempt.
  Recorded in ``job_events`` (``retried``).
* **cancel**: a ``pending`` job becomes ``cancelled`` at once. For a ``running`` job the
  handler is asked to stop: ``cancel_requested_at`` is set and a notification tells the
  worker running it, which cancels an async handler at its next ``await`` (a worker that
  missed the notification sees the request at its next lease extension, within
  ``lease_s / 3``); the attempt is recorded as ``cancelled``. A sync
  handler's thread cannot be interrupted: it runs to its end, but its outcome is recorded as
  ``cancelled`` all the same.
* **purge**: dead letters finished more than a given time ago, with their runs and events,
  in batches (the same fire-time guard as retention).

All functions take an autocommit async connection and a :class:`~scheduler.store.Store`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from pydantic import TypeAdapter, ValidationError

from .store import Store

PURGE_BATCH = 1000
_DURATION = TypeAdapter(timedelta)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``30d``, ``12h``, ``15m``, ``90s``, ``2w``, a number of seconds, or
    an ISO 8601 duration (``P7D``, ``PT12H``; parsed by pydantic).

    Raises:
        ValueError: ``text`` is none of these, or is not positive.
    """
    value = text.strip().lower()
    try:
        if value and value[-1] in _UNITS and value[:-1].replace(".", "", 1).isdigit():
            seconds = float(value[:-1]) * _UNITS[value[-1]]
        else:
            seconds = _DURATION.validate_python(text.strip()).total_seconds()
    except ValidationError:
        raise ValueError(
            f"{text!r} is not a duration: use e.g. 30d, 12h, 15m, 90s, 2w, a number of seconds, "
            "or ISO 8601 such as P7D"
        ) from None
    if seconds <= 0:
        raise ValueError(f"{text!r}: the duration must be positive")
    return seconds


async def list_jobs(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    state: str | None = None,
    queue: str | None = None,
    task: str | None = None,
    schedule: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Jobs matching every given filter, newest first, at most ``limit``."""
    params = {"state": state, "queue": queue, "task": task, "schedule": schedule}
    return await store.fetch(conn, "jobs_list", {**params, "limit": limit})


async def show_job(
    conn: psycopg.AsyncConnection[Any], store: Store, job_id: int
) -> dict[str, Any] | None:
    """The job's row with ``runs`` (every attempt, with error and traceback) and ``events``
    (operator actions), or ``None`` when there is no such job."""
    rows = await store.fetch(conn, "job_get", {"id": job_id})
    if not rows:
        return None
    job = rows[0]
    job["runs"] = await store.fetch(conn, "job_runs_of", {"id": job_id})
    job["events"] = await store.fetch(conn, "job_events_of", {"id": job_id})
    return job


async def retry(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    ids: list[int] | None = None,
    state: str | None = None,
    task: str | None = None,
) -> list[int]:
    """Put dead or cancelled jobs back to pending with a renewed attempt budget: the jobs in
    ``ids`` (``None``: every one matching ``state`` and ``task``). Returns the ids retried;
    jobs in another state are left alone."""
    params = {"ids": ids, "state": state, "task": task}
    return [r["job_id"] for r in await store.fetch(conn, "jobs_retry", params)]


async def cancel(conn: psycopg.AsyncConnection[Any], store: Store, job_id: int) -> str | None:
    """Cancel a pending job (``"cancelled"``) or ask a running one to stop
    (``"cancel_requested"``); ``None`` when the job does not exist or has finished."""
    rows = await store.fetch(conn, "job_cancel", {"id": job_id})
    if not rows:
        return None
    if rows[0]["event"] == "cancel_requested":
        await conn.execute(
            store.q["notify_cancel"], {"channel": store.cancel_channel, "id": job_id}
        )
    return rows[0]["event"]


async def purge_dead_letters(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    older_than_s: float,
    task: str | None = None,
) -> int:
    """Delete dead jobs finished more than ``older_than_s`` seconds ago (with their runs and
    events), in batches of :data:`PURGE_BATCH`; returns how many."""
    params = {"older_than_s": older_than_s, "task": task, "limit": PURGE_BATCH}
    total = 0
    while True:
        deleted = len(await store.fetch(conn, "dead_letters_purge", params))
        total += deleted
        if deleted < PURGE_BATCH:
            return total


async def status(conn: psycopg.AsyncConnection[Any], store: Store) -> dict[str, Any]:
    """What ``scheduler status`` shows: ``leader`` (holder, term, elected_at, heartbeat_at, or
    None), ``replicas`` (every registered replica with its heartbeat age in seconds and
    whether it leads; a replica silent for 3 x ``replica_heartbeat_s`` ages out), ``queues``
    (depth by state and ``lag_s``, the age of the oldest due-but-unclaimed job) and
    ``schedules_in_trouble`` (latest fire time dead, or missed)."""
    return {
        "leader": await store.current_leader(conn),
        "replicas": await store.fetch(conn, "status_replicas"),
        "queues": await store.fetch(conn, "status_queues"),
        "schedules_in_trouble": await store.fetch(conn, "status_schedules_in_trouble"),
    }
