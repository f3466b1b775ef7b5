"""Job control from code: the operations of ``scheduler jobs ...`` (:mod:`scheduler.operations`)
as sync functions with ``*_async`` twins (a sync call blocks its thread: from async code,
await the twin)::

    job = get_job(42)                     # Job, with every attempt
    cancel_job(42)                        # "cancelled", "cancel_requested", or how it ended
    job = wait_for_job(42, timeout_s=30)  # once succeeded, dead or cancelled

**Database.** Without ``connection=``, a call opens its own connection to the default
database (:func:`scheduler.connections.default_database_url`) in
:func:`scheduler.operations.session`: connect within ``SCHEDULER_CONNECT_TIMEOUT_S``, schema
checked, statements ended after ``SCHEDULER_STATEMENT_TIMEOUT_S``, committed at once. With
``connection=`` (a ``psycopg.Connection``; an ``AsyncConnection`` for the twins), the
statements join the caller's transaction as ``schedule_at``'s do: not in autocommit mode
(psycopg's default), nothing is committed until the caller commits; in autocommit mode, a
call is one transaction, committed at once. No timeout is set on the caller's connection.

**Errors.** A bad argument raises :class:`~scheduler.errors.InvalidArgumentError`, naming
it, before any SQL. A database failure raises ``DatabaseUnavailableError`` (cannot connect,
connection lost, no answer in time), ``SchemaNotMigratedError`` or ``DatabaseError`` (a
refused statement; on the caller's connection, the psycopg error is its ``__cause__``);
``DatabaseNotConfiguredError``: no connection and no default database.

**wait_for_job** listens on ``<schema>.done`` from before it first reads the job, so no
wake-up is lost: the worker's completion statement sends there the ids of the jobs it
finished ('' for a batch of more than 500: look again), a cancel of a pending job its id.
It re-reads the job at each notification naming it, and every :data:`SAFETY_POLL_S` seconds
in any case: the lease rescue that dead-letters a job sends none, and behind a
transaction-mode pooler LISTEN does not work (give it a direct URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from . import job_changes, operations
from .connections import default_database_url
from .errors import InvalidArgumentError, JobNotFoundError, JobWaitTimeoutError
from .jobs import JobState, RunOutcome
from .limits import DURATION_MAX_S, check_int, check_queue, check_schedule_name, shown
from .preparation import TaskRef
from .registry import task_name
from .sessions import AsyncConn, AsyncConnArg, SyncConn, blocking, run_async, run_sync
from .settings import get_settings
from .store import Store

T = TypeVar("T")
CancelOutcome = Literal["cancelled", "cancel_requested", "succeeded", "dead"]

JOB_ID_MAX = 2**63 - 1  # jobs.id is a bigint
LIST_LIMIT_MAX = 10_000  # jobs one list_jobs call returns at most
SAFETY_POLL_S = 5.0  # wait_for_job re-reads the job this often without a notification
FINISHED = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})


@dataclass(frozen=True)
class Attempt:
    """One attempt of a job (a ``job_runs`` row); times are timezone-aware.

    ``attempt``: its number, from 1. ``worker_id``: who ran it (``None``: unknown).
    ``started_at``: when it was claimed; ``finished_at``: when its outcome was written.
    ``error``, ``traceback``: of a failed attempt (``None`` when it succeeded)."""

    attempt: int
    outcome: RunOutcome
    worker_id: str | None
    started_at: datetime
    finished_at: datetime
    error: str | None
    traceback: str | None


@dataclass(frozen=True)
class Job:
    """A job (a ``jobs`` row); times are timezone-aware.

    ``args``: its arguments by name. ``result``: the JSON value its handler returned
    (``None``: none, or it has not succeeded). ``attempt``: attempts started so far, of
    ``max_attempts``. ``priority``: lower runs first. ``run_at``: when it is (was last) due.
    ``finished_at``: ``None`` until it succeeds, dies or is cancelled. ``schedule_name``,
    ``fire_time``: of a cron job, else ``None``. ``last_error``: the last attempt's error
    (``None`` after a success). ``cancel_requested_at``: when a cancel asked it to stop
    while running. ``attempts``: every attempt, oldest first; empty from :func:`list_jobs`."""

    id: int
    task: str
    queue: str
    state: JobState
    args: dict[str, Any]
    result: Any
    attempt: int
    max_attempts: int
    priority: int
    run_at: datetime
    created_at: datetime
    finished_at: datetime | None
    schedule_name: str | None
    fire_time: datetime | None
    idempotency_key: str | None
    last_error: str | None
    cancel_requested_at: datetime | None
    attempts: list[Attempt]


@dataclass(frozen=True)
class RetryOutcome:
    """What :func:`retry_job` did: ``retried`` (back to pending), else ``reason`` says why
    not. True in a boolean context when retried."""

    retried: bool
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.retried


_COLUMNS = [f.name for f in fields(Job) if f.name not in ("state", "fire_time", "attempts")]
_RUN_COLUMNS = [f.name for f in fields(Attempt) if f.name != "outcome"]


def _job(row: dict[str, Any], runs: Iterable[dict[str, Any]] = ()) -> Job:
    attempts = [Attempt(**{name: r[name] for name in _RUN_COLUMNS},
                        outcome=RunOutcome(r["outcome"])) for r in runs]  # fmt: skip
    return Job(**{name: row[name] for name in _COLUMNS}, state=JobState(row["state"]),
               fire_time=row["scheduled_for"], attempts=attempts)  # fmt: skip


def _not_found(job_id: int) -> JobNotFoundError:
    return JobNotFoundError(f"no job {job_id}: it never existed, or was deleted (retention)")


# ---- checks of the caller's values ---------------------------------------------------------


def _check_id(job_id: Any) -> int:
    return check_int(job_id, "job_id", 1, JOB_ID_MAX)


def _check_timeout(timeout_s: Any) -> float:
    number = isinstance(timeout_s, int | float) and not isinstance(timeout_s, bool)
    if not number or not 0 < timeout_s <= DURATION_MAX_S:  # NaN fails this too
        raise InvalidArgumentError(f"timeout_s must be a number of seconds, more than 0 and at "
                                   f"most 10 years, not {shown(timeout_s)}")  # fmt: skip
    return float(timeout_s)


def _check_url(url: Any) -> str:
    try:  # the URL is never shown: it may hold a password
        if not isinstance(url, str) or "\x00" in url:
            raise ValueError
        conninfo_to_dict(url)
        return url
    except (psycopg.Error, ValueError, UnicodeError):
        raise InvalidArgumentError(
            "database_url must be a libpq URL (postgresql://...) or key=value conninfo string"
        ) from None


def _filters(state: Any, queue: Any, task: Any, schedule: Any, limit: Any) -> dict[str, Any]:
    if state is not None:
        try:
            state = JobState(state).value
        except (ValueError, TypeError):
            names = ", ".join(s.value for s in JobState)
            raise InvalidArgumentError(f"state must be one of {names}, not {shown(state)}") from None
    return {
        "state": state,
        "queue": None if queue is None else check_queue(queue, "queue"),
        "task": None if task is None else task_name(task, "task"),
        "schedule": None if schedule is None else check_schedule_name(schedule, "schedule"),
        "limit": check_int(limit, "limit", 1, LIST_LIMIT_MAX),
    }


# ---- the operations, on a connection -------------------------------------------------------


async def _get(conn: AsyncConn, store: Store, job_id: int) -> Job:
    row = await operations.show_job(conn, store, job_id)
    if row is None:
        raise _not_found(job_id)
    return _job(row, row["runs"])


async def _list(conn: AsyncConn, store: Store, filters: dict[str, Any]) -> list[Job]:
    ids = [r["id"] for r in await operations.list_jobs(conn, store, **filters)]
    if not ids:
        return []
    cur = conn.cursor(row_factory=dict_row)  # one round trip (a pipeline)
    await cur.executemany(store.q["job_get"], [{"id": i} for i in ids], returning=True)
    jobs = []
    while True:  # one result per id, in order; empty for a job deleted meanwhile
        jobs += [_job(row) for row in await cur.fetchall()]
        if not cur.nextset():
            return jobs


async def _state(conn: AsyncConn, store: Store, job_id: int) -> str:
    rows = await store.fetch(conn, "job_get", {"id": job_id})
    if not rows:
        raise _not_found(job_id)
    return str(rows[0]["state"])


async def _cancel(conn: AsyncConn, store: Store, job_id: int) -> CancelOutcome:
    while True:
        event = await job_changes.cancel(conn, store, job_id)
        if event is not None:
            return cast(CancelOutcome, event)
        state = await _state(conn, store, job_id)
        if JobState(state) in FINISHED:
            return cast(CancelOutcome, state)
        # retried back to pending between the two statements: cancel it again


async def _retry(conn: AsyncConn, store: Store, job_id: int) -> RetryOutcome:
    done = await job_changes.retry(conn, store, ids=[job_id])
    if job_id in done.retried:
        return RetryOutcome(True)
    if job_id in done.skipped:
        return RetryOutcome(False, done.skipped[job_id])
    state = await _state(conn, store, job_id)
    return RetryOutcome(False, f"it is {state}: only a dead or cancelled job can be retried")


# ---- the public calls ------------------------------------------------------------------------


def get_job(job_id: int, *, connection: SyncConn | None = None) -> Job:
    """The job ``job_id`` (an ``int``, 1 .. 2**63-1) with every attempt, its errors and
    tracebacks, and its result.

    Raises:
        JobNotFoundError: no such job (never existed, or deleted after its retention).
        InvalidArgumentError: ``job_id`` is not an int in range (a bool is refused), or
            ``connection`` is not an open psycopg connection of the right kind.
        DatabaseError and its subclasses: see the module's docstring.
    """
    job_id = _check_id(job_id)
    return run_sync(connection, lambda c, s: _get(c, s, job_id))


async def get_job_async(job_id: int, *, connection: AsyncConnArg | None = None) -> Job:
    """:func:`get_job` for async code (``connection``: an ``AsyncConnection``)."""
    job_id = _check_id(job_id)
    return await run_async(connection, lambda c, s: _get(c, s, job_id))


def list_jobs(
    state: JobState | str | None = None,
    queue: str | None = None,
    task: TaskRef | None = None,
    schedule: str | None = None,
    limit: int = 50,
    *,
    connection: SyncConn | None = None,
) -> list[Job]:
    """Jobs matching every filter given, newest (highest id) first, at most ``limit`` (1 ..
    10,000); their ``attempts`` are empty (:func:`get_job` reads them). ``state``: a
    :class:`~scheduler.jobs.JobState` or its value; ``task``: a ``@task`` handle or
    function, or a name; ``schedule``: jobs of that cron schedule.

    Raises:
        InvalidArgumentError: a filter or ``limit`` of the wrong type or out of range.
        UnknownTaskError: ``task`` is a function never registered with ``@task``.
        DatabaseError and its subclasses: see the module's docstring.
    """
    filters = _filters(state, queue, task, schedule, limit)
    return run_sync(connection, lambda c, s: _list(c, s, filters))


async def list_jobs_async(
    state: JobState | str | None = None,
    queue: str | None = None,
    task: TaskRef | None = None,
    schedule: str | None = None,
    limit: int = 50,
    *,
    connection: AsyncConnArg | None = None,
) -> list[Job]:
    """:func:`list_jobs` for async code."""
    filters = _filters(state, queue, task, schedule, limit)
    return await run_async(connection, lambda c, s: _list(c, s, filters))


def cancel_job(job_id: int, *, connection: SyncConn | None = None) -> CancelOutcome:
    """Cancel the job ``job_id``. Returns ``"cancelled"`` when it was pending (or cancelled
    already; waiters of :func:`wait_for_job` wake); ``"cancel_requested"`` when it is
    running: its worker is told to stop it (an async handler at its next ``await``; a sync
    one runs to its end) and the job ends ``cancelled``; ``"succeeded"`` or ``"dead"`` when
    it had finished so (nothing changes).

    Raises:
        JobNotFoundError, InvalidArgumentError, DatabaseError: as :func:`get_job`.
    """
    job_id = _check_id(job_id)
    return run_sync(connection, lambda c, s: _cancel(c, s, job_id))


async def cancel_job_async(job_id: int, *, connection: AsyncConnArg | None = None) -> CancelOutcome:
    """:func:`cancel_job` for async code."""
    job_id = _check_id(job_id)
    return await run_async(connection, lambda c, s: _cancel(c, s, job_id))


def retry_job(job_id: int, *, connection: SyncConn | None = None) -> RetryOutcome:
    """Put a dead or cancelled job back to pending, due now, with its attempt budget renewed
    (as ``scheduler jobs retry``). The outcome is true when it was retried; else its
    ``reason`` says why not: the job is in another state, its idempotency key is held by a
    live job, its schedule has ``overlap_policy: skip`` and a live job, or it never started
    and its ``buffer_one`` schedule has a job waiting already.

    Raises:
        JobNotFoundError, InvalidArgumentError, DatabaseError: as :func:`get_job`.
    """
    job_id = _check_id(job_id)
    return run_sync(connection, lambda c, s: _retry(c, s, job_id))


async def retry_job_async(job_id: int, *, connection: AsyncConnArg | None = None) -> RetryOutcome:
    """:func:`retry_job` for async code."""
    job_id = _check_id(job_id)
    return await run_async(connection, lambda c, s: _retry(c, s, job_id))


def wait_for_job(job_id: int, timeout_s: float = 60.0, *, database_url: str | None = None) -> Job:
    """Wait until the job ``job_id`` has finished (succeeded, dead or cancelled: see
    ``job.state``) and return it with its attempts and result, at once if it has.

    It wakes on the notification of the job's completion, or re-reads it every
    :data:`SAFETY_POLL_S` (5) seconds (see the module's docstring), on a connection of its
    own (LISTEN needs a session, so there is no ``connection=``): to ``database_url`` (a
    libpq URL or conninfo), else ``SCHEDULER_DIRECT_DATABASE_URL``, else the default database.
    ``timeout_s``: seconds, more than 0 and at most 10 years.

    Raises:
        JobWaitTimeoutError: not finished after ``timeout_s`` (a read under way at the
            deadline ends first); also a ``TimeoutError``. The message has its state.
        JobNotFoundError: no such job, or it was deleted meanwhile.
        InvalidArgumentError: ``job_id``, ``timeout_s`` or ``database_url`` is wrong.
        DatabaseError and its subclasses: see the module's docstring; also when the
            connection is lost while waiting.
    """
    return blocking(lambda: wait_for_job_async(job_id, timeout_s, database_url=database_url))


async def _woken(conn: AsyncConn, job_id: int, timeout_s: float) -> None:
    """Return at the first notification naming ``job_id`` (or an empty one), or after
    ``timeout_s`` seconds."""
    mine = str(job_id)
    async with contextlib.aclosing(conn.notifies(timeout=timeout_s)) as notes:
        async for note in notes:
            if note.payload == "" or mine in note.payload.split(","):
                return


async def wait_for_job_async(
    job_id: int, timeout_s: float = 60.0, *, database_url: str | None = None
) -> Job:
    """:func:`wait_for_job` for async code: waits without blocking the event loop."""
    job_id, timeout_s = _check_id(job_id), _check_timeout(timeout_s)
    settings = get_settings()
    url = settings.direct_database_url if database_url is None else _check_url(database_url)
    if url is None:
        url = (await asyncio.to_thread(default_database_url, settings))[0]
    deadline, bounded = time.monotonic() + timeout_s, operations.bounded

    async def wait(conn: AsyncConn, store: Store) -> Job:
        async with bounded(conn, store, settings.statement_timeout_s):  # committed: listening
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(store.done_channel)))
        while True:
            async with bounded(conn, store, settings.statement_timeout_s):
                job = await _get(conn, store, job_id)
            remaining = deadline - time.monotonic()
            if job.state in FINISHED or remaining <= 0:
                return job
            await _woken(conn, job_id, min(remaining, SAFETY_POLL_S))

    job: Job = await operations.session(url, settings, wait, transaction=False)
    if job.state not in FINISHED:  # raised here: session maps a TimeoutError to the database's
        raise JobWaitTimeoutError(
            f"job {job_id} is still {job.state.value} after {timeout_s:g} s (attempt "
            f"{job.attempt} of {job.max_attempts}, due {job.run_at.isoformat()})"
        )
    return job
