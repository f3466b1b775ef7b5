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
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from .arguments import args_json, to_jsonb
from .connections import check_connection, on_connection
from .errors import (
    InvalidArgumentError,
)
from .limits import check_idempotency_key, check_max_attempts, check_priority, check_queue, shown
from .settings import Settings, get_settings
from .store import BulkJob, Store
from .tasks import Task, get_task, task_name


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


# ---- schedule_at / enqueue -------------------------------------------------------------------


def _check_run_at(run_at: datetime | None, what: str = "run_at") -> None:
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


def _check_options(queue: Any, priority: Any, max_attempts: Any, where: str = "") -> None:
    """The per-job options given by the caller (``None``: the task's or the default)."""
    if queue is not None:
        check_queue(queue, f"{where}queue")
    if priority is not None:
        check_priority(priority, f"{where}priority")
    if max_attempts is not None:
        check_max_attempts(max_attempts, f"{where}max_attempts")


def _job_options(
    task: Task | Callable[..., Any] | str,
    queue: str | None,
    priority: int | None,
    max_attempts: int | None,
    settings: Settings,
    where: str = "",
) -> dict[str, Any]:
    """The columns that come from the task and its options (the same for every job of a bulk
    enqueue with the same options), validated; ``where`` prefixes argument names."""
    name = task_name(task, f"{where}task")
    _check_options(queue, priority, max_attempts, where)
    try:
        registered: Task | None = task if isinstance(task, Task) else get_task(name)
    except LookupError:
        registered = None  # enqueuing for a task that only workers elsewhere know is allowed

    def pick(value: Any, attr: str, fallback: Any) -> Any:
        if value is not None:
            return value
        task_value = getattr(registered, attr, None) if registered else None
        return task_value if task_value is not None else fallback

    return {
        "task": name,
        "queue": pick(queue, "queue", "default"),
        "priority": pick(priority, "priority", 0),
        "max_attempts": pick(max_attempts, "max_attempts", settings.max_attempts),
        "backoff_base_s": pick(None, "backoff_base_s", settings.backoff_base_s),
        "backoff_max_s": pick(None, "backoff_max_s", settings.backoff_max_s),
        "backoff_jitter": pick(None, "backoff_jitter", settings.backoff_jitter),
    }


def _job_params(
    task: Task | Callable[..., Any] | str,
    run_at: datetime | None,
    args: Mapping[str, Any] | None,
    queue: str | None,
    priority: int | None,
    max_attempts: int | None,
    idempotency_key: str | None,
    settings: Settings,
) -> dict[str, Any]:
    _check_run_at(run_at)
    options = _job_options(task, queue, priority, max_attempts, settings)
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key)
    return {
        **options,
        "run_at": run_at,
        "args": to_jsonb(args),
        "idempotency_key": idempotency_key,
    }


def schedule_at(
    task: Task | Callable[..., Any] | str,
    run_at: datetime | None,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None,
) -> int | Awaitable[int]:
    """Enqueue a one-off job that becomes due at ``run_at``.

    Args:
        task: a ``@task`` function, its :class:`Task`, or a task name.
        run_at: timezone-aware instant (any zone; stored in UTC). A past instant runs at once;
            ``None`` means now (the database clock).
        args: keyword arguments for the handler; JSON values only.
        queue: queue name; default the task's queue, else ``"default"``.
        priority: lower runs first among due jobs; default the task's, else 0.
        max_attempts: attempts before the job is dead-lettered; default the task's, else the
            ``SCHEDULER_MAX_ATTEMPTS`` setting (20).
        idempotency_key: while a pending or running job holds this key, a second call returns
            that job's id and inserts nothing.
        connection: the caller's psycopg connection. The INSERT joins its current transaction
            (a rollback leaves no job: the transactional outbox pattern) and is not committed
            here. With a ``psycopg.AsyncConnection`` this function returns an awaitable:
            ``job_id = await schedule_at(..., connection=aconn)``. ``None`` uses a small pool
            on ``SCHEDULER_DATABASE_URL`` and commits at once.

    Returns:
        The job id (``jobs.id``), or an awaitable of it for an async connection.

    Every value is checked before any SQL runs, with the bounds of :mod:`scheduler.limits`
    (the same as the schedules file's); a bad value writes nothing and leaves the caller's
    transaction usable. With an async connection these errors are raised by the call itself,
    not by the awaitable.

    Raises:
        InvalidArgumentError: a bad value, named in the message with the reason (also a
            ``ValueError`` and a ``TypeError``): ``task`` is not a function, Task or valid
            name (1-200 characters, no whitespace, control characters, NUL or unpaired
            surrogates); ``run_at`` is not a datetime or is naive; ``args`` is not a mapping
            or holds what ``jsonb`` cannot store (NaN, Infinity, NUL, unpaired surrogates,
            non-string keys, recursion, dates, sets, other objects); ``queue`` is not 1-100
            characters from ``A-Z a-z 0-9 _ . : / -``; ``priority`` is not an ``int`` (a bool
            is refused) in PostgreSQL ``integer`` range; ``max_attempts`` is not an ``int``
            from 1 to 2,147,483,647; ``idempotency_key`` is not 1-512 characters without NUL
            or unpaired surrogates; ``connection`` is not a psycopg connection (or is closed).
        UnknownTaskError: ``task`` is a function that was never registered with ``@task``.
        DatabaseNotConfiguredError: no connection and no ``SCHEDULER_DATABASE_URL``.
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
    settings = get_settings()
    params = _job_params(
        task, run_at, args, queue, priority, max_attempts, idempotency_key, settings
    )
    store = Store(settings.schema_name)
    return on_connection(connection, settings, store.insert_job_sync, store.insert_job, params)


def enqueue(
    task: Task | Callable[..., Any] | str,
    *,
    args: Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None,
) -> int | Awaitable[int]:
    """Enqueue a job to run now: ``schedule_at(task, None, ...)``; same arguments and errors
    (:class:`~scheduler.errors.InvalidArgumentError` for a bad value, before any SQL)."""
    return schedule_at(
        task,
        None,
        args=args,
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        connection=connection,
    )


@dataclass(frozen=True)
class JobSpec:
    """One job for :func:`schedule_many`; fields as in :func:`schedule_at`.

    Raises:
        InvalidArgumentError: when built, a field of the wrong type or out of range (as in
            :func:`schedule_at`; ``args`` must be a mapping or ``None``, and whether JSON can
            store it is checked by :func:`schedule_many`).
    """

    task: Task | Callable[..., Any] | str
    run_at: datetime | None = None
    args: Mapping[str, Any] | None = None
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.task, str) or not callable(self.task):
            task_name(self.task, "JobSpec.task")
        _check_run_at(self.run_at, "JobSpec.run_at")
        if self.args is not None and not isinstance(self.args, Mapping):
            raise InvalidArgumentError(
                f"JobSpec.args must be a mapping or None, not {type(self.args).__name__}"
            )
        _check_options(self.queue, self.priority, self.max_attempts, "JobSpec.")


def _items(value: Any, what: str, of: str) -> Iterable[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidArgumentError(
            f"{what} must be an iterable of {of}, not {type(value).__name__}"
        )
    return value


def schedule_many(
    jobs: Iterable[JobSpec],
    *,
    connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None,
) -> list[int] | Awaitable[list[int]]:
    """Enqueue many jobs with one ``COPY`` (one notification per queue).

    Every job is validated before anything is written (same rules and errors as
    :func:`schedule_at`): one bad item writes none of the batch and leaves the caller's
    transaction usable. Idempotency keys are not supported in bulk. With ``connection``
    the rows join the caller's transaction (sync, or async: returns an awaitable); without,
    they are committed at once on the default pool.

    Returns:
        The job ids, in the order of ``jobs``.

    Raises:
        InvalidArgumentError: ``jobs`` is not an iterable of :class:`JobSpec`, or an item
            has a bad value; the message names it (``jobs[3].args.to: ...``).
        UnknownTaskError, DatabaseNotConfiguredError, DatabaseUnavailableError,
        SchemaNotMigratedError, psycopg.Error: as in :func:`schedule_at`.
    """
    check_connection(connection)
    settings = get_settings()
    options: dict[tuple[Any, ...], dict[str, Any]] = {}  # task options, looked up once
    rows: list[BulkJob] = []
    for i, j in enumerate(_items(jobs, "jobs", "JobSpec")):
        if not isinstance(j, JobSpec):
            raise InvalidArgumentError(f"jobs[{i}] must be a JobSpec, not {type(j).__name__}")
        where = f"jobs[{i}]."
        _check_run_at(j.run_at, f"{where}run_at")
        key = (task_name(j.task, f"{where}task"), j.queue, j.priority, j.max_attempts)
        o = options.get(key)
        if o is None:
            o = options[key] = _job_options(
                j.task, j.queue, j.priority, j.max_attempts, settings, where
            )
        rows.append(
            (o["queue"], o["task"], args_json(j.args, f"{where}args"), o["priority"], j.run_at,
             o["max_attempts"], o["backoff_base_s"], o["backoff_max_s"], o["backoff_jitter"])
        )  # fmt: skip
    store = Store(settings.schema_name)
    return on_connection(connection, settings, store.insert_jobs_sync, store.insert_jobs, rows)


def enqueue_many(
    task: Task | Callable[..., Any] | str,
    args_list: Iterable[Mapping[str, Any]],
    *,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None,
) -> list[int] | Awaitable[list[int]]:
    """Enqueue one job of ``task`` per item of ``args_list``, due now, in one ``COPY``; see
    :func:`schedule_many` (same errors; a bad item is named ``args_list[3]``). Returns the
    ids in order."""
    check_connection(connection)
    settings = get_settings()
    o = _job_options(task, queue, priority, max_attempts, settings)
    head = (o["queue"], o["task"])
    tail = (o["priority"], None, o["max_attempts"], o["backoff_base_s"], o["backoff_max_s"],
            o["backoff_jitter"])  # fmt: skip
    items = _items(args_list, "args_list", "mappings")
    rows: list[BulkJob] = [
        (*head, args_json(args, f"args_list[{i}]"), *tail) for i, args in enumerate(items)
    ]
    store = Store(settings.schema_name)
    return on_connection(connection, settings, store.insert_jobs_sync, store.insert_jobs, rows)
