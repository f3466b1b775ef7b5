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
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from . import metrics, tracing
from .adapters import AsyncConnectionLike, SyncConnectionLike
from .arguments import args_json
from .connections import check_connection, on_async_connection, on_connection
from .errors import InvalidArgumentError
from .job_inserts import Enqueued as Enqueued  # noqa: PLC0414 - explicit re-export (mypy)
from .limits import (
    DURATION_MAX_S,
    check_concurrency_key,
    check_idempotency_key,
    check_max_attempts,
    check_priority,
    check_queue,
    shown,
)
from .registry import TaskSpec, resolve
from .settings import Settings, get_settings
from .store import Store

TaskRef = TaskSpec | Callable[..., Any] | str
"""What the enqueue calls accept as a task: a ``@task`` handle, its function, or a name."""
SyncConnection = SyncConnectionLike  # a psycopg connection, or an ORM's (scheduler.adapters)
AsyncConnection = AsyncConnectionLike
OnConflict = Literal["return", "replace", "raise"]
"""What an enqueue does when its ``idempotency_key`` is held (see :func:`schedule_at`)."""
ON_CONFLICT = ("return", "replace", "raise")


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


# ---- one job: checked, then inserted on the caller's connection or the default pool -----------


def check_run_at(run_at: datetime | None, what: str = "run_at") -> None:
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidArgumentError(
                f"{what} must be a datetime or None, not {type(run_at).__name__} {shown(run_at)}"
            )
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise InvalidArgumentError(
                f"{what}={run_at.isoformat()} is naive: pass a timezone-aware datetime, e.g. "
                "datetime.now(timezone.utc) + timedelta(minutes=5)"
            )


def delay_seconds(delay: timedelta | float, what: str = "delay") -> float:
    """``delay`` (a ``timedelta`` or seconds) in seconds, from 0 to 10 years.

    Raises:
        InvalidArgumentError: not a timedelta or a number (a bool is refused), negative,
            NaN or longer than :data:`~scheduler.limits.DURATION_MAX_S`.
    """
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        try:
            seconds = float(delay)
        except OverflowError:
            seconds = float("inf")
    else:
        raise InvalidArgumentError(
            f"{what} must be a timedelta or a number of seconds, not {type(delay).__name__} "
            f"{shown(delay)}"
        )
    if not 0 <= seconds <= DURATION_MAX_S:  # NaN too
        raise InvalidArgumentError(f"{what} must be from 0 s to 10 years, not {shown(delay)}")
    return seconds


def check_options(queue: Any, priority: Any, max_attempts: Any, where: str = "") -> None:
    """The per-job options given by the caller (``None``: the task's or the default)."""
    if queue is not None:
        check_queue(queue, f"{where}queue")
    if priority is not None:
        check_priority(priority, f"{where}priority")
    if max_attempts is not None:
        check_max_attempts(max_attempts, f"{where}max_attempts")


def check_unique(unique_for_s: Any, on_conflict: Any, idempotency_key: Any) -> float | None:
    """``unique_for_s`` in seconds (``None``: no window), once it and ``on_conflict`` are
    checked (``idempotency_key`` is checked by the caller).

    Raises:
        InvalidArgumentError: ``unique_for_s`` is not an int or float (a bool is refused), is
            NaN, not more than 0 or longer than 10 years (:data:`DURATION_MAX_S`);
            ``on_conflict`` is not ``"return"``, ``"replace"`` or ``"raise"``; either is given
            (other than the default ``"return"``) without an ``idempotency_key``.
    """
    if not (isinstance(on_conflict, str) and on_conflict in ON_CONFLICT):
        raise InvalidArgumentError(
            f"on_conflict must be 'return', 'replace' or 'raise', not {shown(on_conflict)}"
        )
    seconds = None
    if unique_for_s is not None:
        if isinstance(unique_for_s, bool) or not isinstance(unique_for_s, (int, float)):
            raise InvalidArgumentError(
                f"unique_for_s must be a number of seconds, not {type(unique_for_s).__name__} "
                f"{shown(unique_for_s)}"
            )
        try:
            seconds = float(unique_for_s)
        except OverflowError:
            seconds = float("inf")
        if not 0 < seconds <= DURATION_MAX_S:  # NaN too
            raise InvalidArgumentError(
                f"unique_for_s must be more than 0 s and at most 10 years, not "
                f"{shown(unique_for_s)}"
            )
    if idempotency_key is None and (seconds is not None or on_conflict != "return"):
        given = "unique_for_s" if seconds is not None else f"on_conflict={on_conflict!r}"
        raise InvalidArgumentError(f"{given} needs an idempotency_key: it applies to the key")
    return seconds


def job_options(
    task: TaskSpec | str,
    queue: str | None,
    priority: int | None,
    max_attempts: int | None,
    settings: Settings,
    where: str = "",
) -> dict[str, Any]:
    """The columns that come from the task and its options (the same for every job of a bulk
    enqueue with the same options), validated; ``where`` prefixes argument names."""
    check_options(queue, priority, max_attempts, where)
    spec = task if isinstance(task, TaskSpec) else None

    def pick(value: Any, attr: str, fallback: Any) -> Any:
        if value is not None:
            return value
        task_value = getattr(spec, attr, None)
        return task_value if task_value is not None else fallback

    return {
        "task": spec.name if spec else task,
        "queue": pick(queue, "queue", "default"),
        "priority": pick(priority, "priority", 0),
        "max_attempts": pick(max_attempts, "max_attempts", settings.max_attempts),
        "backoff_base_s": pick(None, "backoff_base_s", settings.backoff_base_s),
        "backoff_max_s": pick(None, "backoff_max_s", settings.backoff_max_s),
        "backoff_jitter": pick(None, "backoff_jitter", settings.backoff_jitter),
    }


@dataclass(frozen=True)
class Prepared:
    """A job checked and ready to insert: its task (``TaskSpec``, or the name of a task this
    process does not know), its arguments by name, and the insert's parameters."""

    task: TaskSpec | str
    args: dict[str, Any]
    params: dict[str, Any]


def prepare(
    task: TaskRef,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    delay_s: float = 0.0,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    concurrency_key: str | None = None,
    unique_for_s: float | None = None,
    on_conflict: OnConflict = "return",
    headers: Mapping[str, str] | None = None,
) -> Prepared:
    """Check one job before any SQL: the task (:func:`scheduler.registry.resolve`), the
    arguments (bound against the handler's signature when the task is registered here, else
    only checked as JSON), ``run_at``, the options and the headers
    (:func:`scheduler.tracing.check_headers`). Errors as :func:`schedule_at`."""
    settings = get_settings()
    check_run_at(run_at)
    spec = resolve(task)
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise InvalidArgumentError(
            f"args must be a mapping of keyword arguments, not {type(kwargs).__name__} "
            f"{shown(kwargs)}"
        )
    if isinstance(spec, TaskSpec):
        values, text = spec.bind(args, kwargs or {})
    else:
        values, text = dict(kwargs or {}), args_json(kwargs)
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    if unique_for_s is not None or on_conflict != "return":
        unique_for_s = check_unique(unique_for_s, on_conflict, idempotency_key)
    if concurrency_key is not None:  # per-key flow control (scheduler.flow)
        check_concurrency_key(concurrency_key)
    params = {**job_options(spec, queue, priority, max_attempts, settings), "run_at": run_at,
              "delay_s": delay_s, "args": text, "idempotency_key": idempotency_key,
              "concurrency_key": concurrency_key, "unique_for_s": unique_for_s,
              "on_conflict": on_conflict, "headers": tracing.check_headers(headers)}  # fmt: skip
    return Prepared(spec, values, params)


class InlineRunner(Protocol):
    """What :mod:`scheduler.testing`'s inline mode puts in place of the database."""

    def run(self, job: Prepared) -> int: ...
    async def run_async(self, job: Prepared) -> int: ...


_inline: InlineRunner | None = None


def set_inline(runner: InlineRunner | None) -> InlineRunner | None:
    """Run every job at enqueue time with ``runner`` instead of inserting it (``None``: back
    to the database); returns the previous runner. Used by :mod:`scheduler.testing`."""
    global _inline
    previous, _inline = _inline, runner
    return previous


def refuse_on_event_loop(call: str) -> None:
    """Raise :class:`InvalidArgumentError` when this thread runs an event loop: a sync call
    on the default pool would block the loop while it connects and inserts, and ``await`` on
    its ``int`` result would fail only after the job was committed (a caller retrying on
    that error enqueues it twice). Checked before anything is written."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise InvalidArgumentError(
        f"the sync {call} call was made on a running event loop, where it would block the "
        "loop: use its *_async twin (await send_receipt.defer_async(...), await "
        "enqueue_async(...)), or pass a sync connection="
    )


def inline_runner() -> InlineRunner | None:
    """The runner :func:`set_inline` installed, or ``None``."""
    return _inline


def insert(job: Prepared, connection: SyncConnection | None) -> int:
    """Insert a prepared job on ``connection`` (joining its transaction) or on the default
    pool (committed at once); returns its id. Errors as :func:`schedule_at`."""
    return insert_result(job, connection).id


async def insert_async(job: Prepared, connection: AsyncConnection | None) -> int:
    """:func:`insert` on an async connection or the default async pool."""
    return (await insert_result_async(job, connection)).id


def insert_result(job: Prepared, connection: SyncConnection | None) -> Enqueued:
    """:func:`insert`, saying whether the job was created or found (:class:`Enqueued`). In
    inline mode (:mod:`scheduler.testing`) the job runs and ``created`` is always True:
    ``unique_for_s`` and ``on_conflict`` are not applied there."""
    if _inline is not None:
        return Enqueued(_inline.run(job), True)
    if connection is None:
        refuse_on_event_loop("enqueue")
    store = Store(get_settings().schema_name)
    p = job.params
    with tracing.sending(p["task"], p["queue"], p.get("headers")) as send:
        done: Enqueued = on_connection(
            connection, get_settings(), store.insert_job_result_sync, send.params(p)
        )
        send.sent([done.id], done.created)
    return _counted(p, done)


async def insert_result_async(job: Prepared, connection: AsyncConnection | None) -> Enqueued:
    """:func:`insert_result` on an async connection or the default async pool."""
    if _inline is not None:
        return Enqueued(await _inline.run_async(job), True)
    store = Store(get_settings().schema_name)
    p = job.params
    with tracing.sending(p["task"], p["queue"], p.get("headers")) as send:
        done: Enqueued = await on_async_connection(
            connection, get_settings(), store.insert_job_result, send.params(p)
        )
        send.sent([done.id], done.created)
    return _counted(p, done)


def _counted(params: dict[str, Any], done: Enqueued) -> Enqueued:
    """Count a job inserted (``scheduler_jobs_enqueued_total``) once its statement
    succeeded; a job found holding its key is not counted."""
    if done.created:
        metrics.JOBS_ENQUEUED.labels(params["queue"], params["task"]).inc()
    return done


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
