"""What an operator changes of jobs and dead letters (``scheduler jobs retry | cancel``,
``scheduler dead-letters retry | purge``, the dashboard's buttons via :mod:`scheduler.actions`,
:mod:`scheduler.control`); what they read, and the session every command runs in:
:mod:`scheduler.operations`.

* **retry**: a ``dead`` or ``cancelled`` job goes back to ``pending``, due now, with its
  attempt budget renewed: ``max_attempts`` becomes the attempts used plus the job's original
  budget, so attempt numbers keep counting up and ``job_runs`` keeps one row per attempt.
  Recorded in ``job_events`` (``retried``). A job whose retry would break a rule is skipped,
  with the reason, and the others are retried: its idempotency key is held by a live job
  (or by another job retried in the same call), or its schedule's ``overlap_policy`` is
  ``skip`` and a job of that schedule is live (or retried in the same call).
* **cancel**: a ``pending`` job becomes ``cancelled`` at once. For a ``running`` job the
  handler is asked to stop: ``cancel_requested_at`` is set and a notification tells the
  worker running it, which cancels an async handler at its next ``await`` (a worker that
  missed the notification sees the request at its next lease extension, within
  ``lease_s / 3``); the attempt is recorded as ``cancelled``. A sync
  handler's thread cannot be interrupted: it runs to its end, but its outcome is recorded as
  ``cancelled`` all the same.
* **purge**: dead letters finished more than a given time ago, with their runs and events,
  in batches (the same fire-time guard as retention).

The functions take an autocommit async connection and a
:class:`~scheduler.store.Store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from .limits import INT32_MAX, shown
from .operations import bounded
from .store import Store

PURGE_BATCH = 1000
_RETRY_TRIES = 3  # a live job taking a key or a skip slot between the check and the update


@dataclass(frozen=True)
class RetryResult:
    """What :func:`retry` did: ``retried`` (job ids, ascending) and ``skipped`` (job id ->
    the reason it stayed where it was)."""

    retried: list[int]
    skipped: dict[int, str]


def _skip_reason(row: dict[str, Any]) -> str:
    key, schedule, other = row["idempotency_key"], row["schedule_name"], row["other_id"]
    return {
        "budget": f"its attempt count is at the limit ({INT32_MAX:,})",
        "key_live": f"its idempotency key {shown(key)} is held by live job {other}",
        "key_retried": f"its idempotency key {shown(key)} is shared with job {other}, "
        "retried instead",
        "overlap_live": f"its schedule {shown(schedule)} has overlap_policy skip and live job "
        f"{other}",
        "overlap_retried": f"its schedule {shown(schedule)} has overlap_policy skip and job "
        f"{other} of it is retried instead",
        "overlap_waiting": f"it never started and its schedule {shown(schedule)} has "
        f"overlap_policy buffer_one and job {other} waiting",
        "overlap_waiting_retried": f"it never started and its schedule {shown(schedule)} has "
        f"overlap_policy buffer_one and job {other} of it is retried instead",
    }.get(row["skip"], str(row["skip"]))


async def retry(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    ids: list[int] | None = None,
    state: str | None = None,
    task: str | None = None,
    actor: str | None = None,
) -> RetryResult:
    """Put dead or cancelled jobs back to pending with a renewed attempt budget: the jobs in
    ``ids`` (``None``: every one matching ``state`` and ``task``), in one statement.

    A job that cannot go back without breaking a unique rule is skipped with the reason,
    and the others are retried: its idempotency key is held by a live job, its schedule has
    ``overlap_policy`` skip and a live job, or another job of the same key / skip schedule
    is retried in this call (the newest one is). Jobs in another state are left alone and
    are in neither list. Runs inside a savepoint and tries again (up to 3 times) when a
    concurrent insert takes a key or schedule slot between the check and the update.
    ``actor`` (who asked: "cli:<user>@<host>", "dashboard:<user>") goes in each job's
    ``retried`` event.
    """
    params = {"ids": ids, "state": state, "task": task, "actor": actor}
    for attempt in range(_RETRY_TRIES):
        try:
            async with conn.transaction():
                rows = await store.fetch(conn, "jobs_retry", params)
            break
        except psycopg.errors.UniqueViolation:
            if attempt == _RETRY_TRIES - 1:
                raise
    return RetryResult(
        retried=[r["job_id"] for r in rows if r["skip"] is None],
        skipped={r["job_id"]: _skip_reason(r) for r in rows if r["skip"] is not None},
    )


async def cancel(
    conn: psycopg.AsyncConnection[Any], store: Store, job_id: int, actor: str | None = None
) -> str | None:
    """Cancel a pending job (``"cancelled"``) or ask a running one to stop
    (``"cancel_requested"``); ``None`` when the job does not exist or has finished. ``actor``
    (who asked) goes in the job's event."""
    return (await cancel_many(conn, store, [job_id], actor)).get(job_id)


async def cancel_many(
    conn: psycopg.AsyncConnection[Any], store: Store, ids: list[int], actor: str | None = None
) -> dict[int, str]:
    """:func:`cancel` for many jobs in two statements: ``{id: "cancelled" |
    "cancel_requested"}`` for the jobs it changed (finished or missing ones are left out).

    Notifies (at commit) each running job's worker on ``cancel_channel``, and for the jobs
    cancelled now the :func:`scheduler.wait_for_job` waiters on ``done_channel``."""
    rows = await store.fetch(conn, "job_cancel", {"ids": ids, "actor": actor})
    done = {int(r["job_id"]): str(r["event"]) for r in rows}
    for channel, event in ((store.cancel_channel, "cancel_requested"),
                           (store.done_channel, "cancelled")):  # fmt: skip
        notify = [i for i, e in done.items() if e == event]
        if notify:
            await conn.execute(store.q["notify_cancel"], {"channel": channel, "ids": notify})
    return done


async def purge_dead_letters(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    older_than_s: float,
    task: str | None = None,
    statement_timeout_s: float | None = None,
) -> int:
    """Delete dead jobs finished more than ``older_than_s`` seconds ago (with their runs and
    events), in batches of :data:`PURGE_BATCH`, each its own transaction; returns how many.
    With ``statement_timeout_s``, each batch runs in :func:`bounded` (the errors it raises
    end the purge; the batches before it stay deleted)."""
    params = {"older_than_s": older_than_s, "task": task, "limit": PURGE_BATCH}
    total = 0
    while True:
        if statement_timeout_s is None:
            deleted = len(await store.fetch(conn, "dead_letters_purge", params))
        else:
            async with bounded(conn, store, statement_timeout_s):
                deleted = len(await store.fetch(conn, "dead_letters_purge", params))
        total += deleted
        if deleted < PURGE_BATCH:
            return total
