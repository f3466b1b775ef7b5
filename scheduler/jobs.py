"""Jobs: their states, and the calls that enqueue them (``schedule_at``, ``enqueue``).

State machine (enforced by ``WHERE state = ...`` in every transition, see sql/queries.sql)::

    schedule_at/enqueue/materialiser
                │
                ▼            claim (FOR UPDATE SKIP LOCKED)
            pending ─────────────────────────────▶ running
               ▲  │                                 │ │ │
               │  └─ cancel ─▶ cancelled            │ │ └─ success ─────────▶ succeeded
               │                                    │ └─── attempt == max ──▶ dead (dead letter)
               └──── failure, attempt < max ────────┘      or unknown task (past unknown_task_retry_s)
                     (run_at = now() + backoff)

A job runs **at least once**: a handler may run again after a crash, so handlers should be
idempotent (or use an idempotency key for the side effects they cause).

Unique jobs: with an ``idempotency_key``, no second job is inserted while a live job holds
the key; add ``unique_for_s`` and none is inserted for that many seconds after the first
one's creation, whatever its state. ``on_conflict`` says what a duplicate call does
(``"return"`` the existing id, ``"replace"`` a pending job's arguments, ``"raise"``
:class:`~scheduler.errors.DuplicateJobError`); :func:`enqueue_result` says which happened.

A job is checked before any SQL by :mod:`scheduler.preparation` and inserted (or run by the
inline runner of :mod:`scheduler.testing`) by :mod:`scheduler.enqueueing`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .connections import check_connection
from .enqueueing import AsyncConnection as AsyncConnection  # noqa: PLC0414 - re-export (mypy)
from .enqueueing import SyncConnection as SyncConnection  # noqa: PLC0414 - re-export (mypy)
from .enqueueing import insert, insert_async, insert_result, insert_result_async
from .job_inserts import Enqueued as Enqueued  # noqa: PLC0414 - explicit re-export (mypy)
from .preparation import OnConflict as OnConflict  # noqa: PLC0414 - re-export (mypy)
from .preparation import TaskRef as TaskRef  # noqa: PLC0414 - re-export (mypy)
from .preparation import prepare


class JobState(str, enum.Enum):
    """Values of ``jobs.state``."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


class RunOutcome(str, enum.Enum):
    """Values of ``job_runs.outcome`` (one row per attempt)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    LOST = "lost"
    CANCELLED = "cancelled"


# ---- the module-level calls: any task, by handle, function or name --------------------------


def schedule_at(
    task: TaskRef,
    run_at: datetime | None,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    unique_for_s: float | None = None,
    on_conflict: OnConflict = "return",
    concurrency_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    connection: SyncConnection | None = None,
) -> int:
    """Enqueue a one-off job that becomes due at ``run_at``; returns its id (``jobs.id``).

    For a task imported in the caller, ``send_receipt.schedule_at(when, order_id=1)`` is the
    typed way (:class:`scheduler.Task`); this call serves producers that name a task.

    Args:
        task: a ``@task`` handle or function, or a task name. A name is checked against this
            process's registry when it registered any task (a typo raises
            :class:`~scheduler.errors.UnknownTaskError` with close matches); a process that
            registered none (a producer that does not import the handlers) may enqueue any
            valid name, and a worker that does not know it dead-letters the job after
            ``SCHEDULER_UNKNOWN_TASK_RETRY_S``.
        run_at: timezone-aware instant (any zone; stored in UTC). A past instant runs at once;
            ``None`` means now (the database clock).
        args: keyword arguments for the handler; JSON values only. For a registered task they
            are bound against its signature (unexpected, missing, mistyped arguments raise).
        queue: queue name; default the task's queue, else ``"default"``.
        priority: lower runs first among due jobs; default the task's, else 0.
        max_attempts: attempts before the job is dead-lettered; default the task's, else the
            ``SCHEDULER_MAX_ATTEMPTS`` setting (20).
        idempotency_key: while a pending or running job holds this key, a second call inserts
            nothing and returns that job's id (see ``on_conflict``). Keys are global, across
            tasks and queues.
        unique_for_s: with an ``idempotency_key``, a window in seconds (> 0, at most 10
            years): no second job with the key is inserted until ``unique_for_s`` s after
            the creation of the job that opened the window (the database clock), whatever
            that job's state, even succeeded, dead or cancelled (pg-boss's singleton window).
            The window is that first job's: a later call's ``unique_for_s`` neither lengthens
            nor shortens it. It ends early if that job is deleted (retention pruning). Race-free
            across processes: a unique index decides (migration 0014). ``None`` (default): only
            the live-job rule above.
        on_conflict: what a call does when the key is held (a live job, or an open window):
            ``"return"`` (default) inserts nothing and returns the existing job's id;
            ``"replace"`` gives the existing job this call's ``args``, due time and
            ``priority`` (same id) if it is pending and of the same task, else falls back to
            ``"return"``; ``"raise"`` raises :class:`~scheduler.errors.DuplicateJobError`
            and writes nothing. :func:`enqueue_result` says which happened.
        concurrency_key: the job's key for per-key flow control (``key_concurrency`` of its
            queue, :mod:`scheduler.flow`: at most that many running jobs per key, e.g. per
            customer); 1-512 characters without NUL or unpaired surrogates. ``None``
            (default): bound by the queue's other limits only.
        headers: string metadata stored with the job (``jobs.headers``) and given to the
            handler as :attr:`JobContext.headers <scheduler.JobContext>`: at most 64, names
            1-128 characters without whitespace, control characters, NUL or unpaired
            surrogates, values strings of at most 8,192 characters without NUL or unpaired
            surrogates, 32,768 characters in all (:mod:`scheduler.tracing`). When the
            application traces with OpenTelemetry, the trace context of the enqueue
            (``traceparent``, ``tracestate``) is added, replacing user headers of those
            names. ``on_conflict="replace"`` replaces a pending job's headers too.
        connection: the caller's sync psycopg connection. The INSERT joins its current
            transaction (a rollback leaves no job: the transactional outbox pattern) and is
            not committed here. ``None`` uses a small pool on the default database
            (:mod:`scheduler.connections`) and commits at once. For an
            ``AsyncConnection``, use :func:`schedule_at_async`.

    Every value is checked before any SQL runs, with the bounds of :mod:`scheduler.limits`
    (the same as the schedules file's); a bad value writes nothing and leaves the caller's
    transaction usable.

    Raises:
        TaskArgumentsError: ``args`` do not fit the registered handler (an
            :class:`InvalidArgumentError`).
        InvalidArgumentError: a bad value, named in the message with the reason (also a
            ``ValueError`` and a ``TypeError``): ``task`` is not a function, Task or valid
            name (1-200 characters, no whitespace, control characters, NUL or unpaired
            surrogates); ``run_at`` is not a datetime or is naive; ``args`` is not a mapping
            or holds what ``jsonb`` cannot store (NaN, Infinity, NUL, unpaired surrogates,
            non-string keys, recursion, dates, sets, other objects); ``queue`` is not 1-100
            characters from ``A-Z a-z 0-9 _ . : / -``; ``priority`` is not an ``int`` (a bool
            is refused) in PostgreSQL ``integer`` range; ``max_attempts`` is not an ``int``
            from 1 to 2,147,483,647; ``idempotency_key`` is not 1-512 characters without NUL
            or unpaired surrogates; ``unique_for_s`` is not an int or float (a bool is
            refused), is NaN, not more than 0 or over 10 years; ``on_conflict`` is not
            ``"return"``, ``"replace"`` or ``"raise"``; ``unique_for_s`` or an ``on_conflict``
            other than ``"return"`` is given without an ``idempotency_key``;
            ``concurrency_key`` is not 1-512 characters without NUL or unpaired surrogates;
            ``headers`` is not a mapping or breaks a bound above (the message names the
            header, ``headers['x-tenant']``); ``connection`` is not an open psycopg
            ``Connection``.
        DuplicateJobError: ``on_conflict="raise"`` and the key is held; nothing was written.
        IdempotencyKeyBusyError: the job holding the key kept finishing while this call
            looked it up (100 tries); nothing was enqueued.
        UnknownTaskError: ``task`` is a function never registered with ``@task``, or a name
            this process does not know while it registered others.
        DatabaseNotConfiguredError: no connection, no ``SCHEDULER_DATABASE_URL`` and no
            embedded database directory.
        DatabaseUnavailableError: no connection was passed and the default URL is malformed,
            unreachable, or does not answer within ``connect_timeout`` (5 s unless the URL
            sets it) or 10 s for a pooled connection; the URL in the message is redacted.
        SchemaNotMigratedError: no connection was passed and the default database has no
            scheduler tables.
        DatabaseError: no connection was passed and the default database refused the
            INSERT for another reason (e.g. a missing privilege); the message has the SQLSTATE.
        SettingsError: a ``SCHEDULER_*`` variable is invalid (from :func:`get_settings`).
        psycopg.Error: on the caller's ``connection``, a failure of the database itself
            (e.g. the transaction is read-only, aborted, or a lock timed out) propagates
            unchanged: the caller owns that transaction.
    """
    check_connection(connection)
    job = prepare(task, (), args, run_at=run_at, queue=queue, priority=priority,
                  max_attempts=max_attempts, idempotency_key=idempotency_key,
                  unique_for_s=unique_for_s, on_conflict=on_conflict,
                  concurrency_key=concurrency_key, headers=headers)  # fmt: skip
    return insert(job, connection)


async def schedule_at_async(
    task: TaskRef,
    run_at: datetime | None,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    unique_for_s: float | None = None,
    on_conflict: OnConflict = "return",
    concurrency_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    connection: AsyncConnection | None = None,
) -> int:
    """:func:`schedule_at` for async code: ``connection`` is a ``psycopg.AsyncConnection``
    (its transaction is joined) or ``None`` (an async pool on the default database, so the
    event loop is never blocked). Same arguments, result and errors."""
    check_connection(connection, is_async=True)
    job = prepare(task, (), args, run_at=run_at, queue=queue, priority=priority,
                  max_attempts=max_attempts, idempotency_key=idempotency_key,
                  unique_for_s=unique_for_s, on_conflict=on_conflict,
                  concurrency_key=concurrency_key, headers=headers)  # fmt: skip
    return await insert_async(job, connection)


def enqueue(
    task: TaskRef,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    unique_for_s: float | None = None,
    on_conflict: OnConflict = "return",
    concurrency_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    connection: SyncConnection | None = None,
) -> int:
    """Enqueue a job due now: ``schedule_at(task, None, ...)``; same arguments and errors."""
    return schedule_at(task, None, args=args, queue=queue, priority=priority,
                       max_attempts=max_attempts, idempotency_key=idempotency_key,
                       unique_for_s=unique_for_s, on_conflict=on_conflict,
                       concurrency_key=concurrency_key, headers=headers,
                       connection=connection)  # fmt: skip


async def enqueue_async(
    task: TaskRef,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    unique_for_s: float | None = None,
    on_conflict: OnConflict = "return",
    concurrency_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    connection: AsyncConnection | None = None,
) -> int:
    """:func:`enqueue` for async code (see :func:`schedule_at_async`)."""
    return await schedule_at_async(task, None, args=args, queue=queue, priority=priority,
                                   max_attempts=max_attempts, idempotency_key=idempotency_key,
                                   unique_for_s=unique_for_s, on_conflict=on_conflict,
                                   concurrency_key=concurrency_key, headers=headers,
                                   connection=connection)  # fmt: skip


def enqueue_result(
    task: TaskRef,
    *,
    run_at: datetime | None = None,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    unique_for_s: float | None = None,
    on_conflict: OnConflict = "return",
    concurrency_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    connection: SyncConnection | None = None,
) -> Enqueued:
    """:func:`schedule_at` (``run_at`` ``None``: due now) that says what it did: an
    :class:`Enqueued` with the job's ``id``, ``created`` (False: a job holding the
    ``idempotency_key`` was found), that job's ``existing_state`` and whether it was
    ``replaced`` (``on_conflict="replace"``). Same arguments and errors as :func:`schedule_at`.
    """
    check_connection(connection)
    job = prepare(task, (), args, run_at=run_at, queue=queue, priority=priority,
                  max_attempts=max_attempts, idempotency_key=idempotency_key,
                  unique_for_s=unique_for_s, on_conflict=on_conflict,
                  concurrency_key=concurrency_key, headers=headers)  # fmt: skip
    return insert_result(job, connection)


async def enqueue_result_async(
    task: TaskRef,
    *,
    run_at: datetime | None = None,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    unique_for_s: float | None = None,
    on_conflict: OnConflict = "return",
    concurrency_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    connection: AsyncConnection | None = None,
) -> Enqueued:
    """:func:`enqueue_result` for async code (see :func:`schedule_at_async`)."""
    check_connection(connection, is_async=True)
    job = prepare(task, (), args, run_at=run_at, queue=queue, priority=priority,
                  max_attempts=max_attempts, idempotency_key=idempotency_key,
                  unique_for_s=unique_for_s, on_conflict=on_conflict,
                  concurrency_key=concurrency_key, headers=headers)  # fmt: skip
    return await insert_result_async(job, connection)
