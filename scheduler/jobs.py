"""Jobs: their states, and the calls that enqueue them (``schedule_at``, ``enqueue``).

State machine (enforced by ``WHERE state = ...`` in every transition, see sql/queries.sql)::

    schedule_at/enqueue/materialiser
                │
                ▼            claim (FOR UPDATE SKIP LOCKED)
            pending ─────────────────────────────▶ running
               ▲  │                                 │ │ │
               │  └─ cancel ─▶ cancelled            │ │ └─ success ─────────▶ succeeded
               │                                    │ └─── attempt == max ──▶ dead (dead letter)
               └──── failure, attempt < max ────────┘      or unknown task
                     (run_at = now() + backoff)

A job runs **at least once**: a handler may run again after a crash, so handlers should be
idempotent (or use an idempotency key for the side effects they cause).
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import math
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from .errors import DatabaseNotConfiguredError
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


JsonPath = tuple[str | int, ...]


def json_problems(
    value: Any, path: (), _active: set[int] | None = None
) -> Iterator[tuple[JsonPath, str]]:
    """Yield ``(path, reason)`` for every part of ``value`` that JSON or PostgreSQL ``jsonb``
    cannot store: NaN/Infinity, strings or keys with ``\\u0000`` or unpaired surrogates,
    non-string keys, dates/timestamps (YAML reads unquoted ones), sets, bytes, other types."""
    active = set() if _active is None else _active
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        yield path, f"{value!r} is not valid JSON (PostgreSQL jsonb rejects NaN and Infinity)"
    elif isinstance(value, str):
        if "\x00" in value:
            yield path, "contains \\u0000, which PostgreSQL jsonb rejects"
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            yield path, "contains an unpaired surrogate, which PostgreSQL jsonb rejects"
    elif isinstance(value, (list, dict)):
        if id(value) in active:
            yield path, "recursive structure (a YAML alias used inside its own anchor)"
            return
        active.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and not isinstance(key, str):
                kind = type(key).__name__
                yield (*path, str(key)), f"key {key!r} is a {kind}; JSON keys must be strings"
                continue
            if isinstance(key, str):
                for _, reason in json_problems(key, (), active):
                    yield (*path, key), f"key {reason}"
            yield from json_problems(item, (*path, key), active)
        active.discard(id(value))
    elif isinstance(value, (_dt.date, _dt.time)):  # datetime is a date
        kind = type(value).__name__
        yield path, f"{value.isoformat()} is a {kind}, not JSON; quote it in YAML, or pass a string"
    elif isinstance(value, (set, frozenset)):
        yield path, "a set is not JSON; use a list"
    elif not isinstance(value, float):
        yield path, f"a {type(value).__name__} is not JSON"


def dotted_path(path: tuple[Any, ...]) -> str:
    """``("args", "to", 0)`` → ``"args.to[0]"``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))  # built once, not per call


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


_SCALARS = (str, int, bool, type(None))


def _checked_args(args: Mapping[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """Validated copy of ``args`` and, when the fast path applies, its JSON text.

    Fast path (most job arguments: one level of strings, numbers, booleans, nulls): the JSON
    text itself shows the two things the encoder lets through, ``\\u0000`` and surrogates
    (escaped as ``\\ud...``; a false alarm only falls back to the full check). Anything else
    is checked by :func:`json_problems`, which names every problem with its path.
    """
    if args is None:
        return {}, "{}"
    if not isinstance(args, Mapping):
        raise TypeError(f"args must be a mapping of keyword arguments, not {args!r}")
    checked = dict(args)
    if all(type(k) is str for k in checked) and all(
        type(v) in _SCALARS or (type(v) is float and math.isfinite(v)) for v in checked.values()
    ):
        text = _dumps(checked)
        if "\\u0000" not in text and "\\ud" not in text:
            return checked, text
    problems = [f"{dotted_path(p)}: {r}" for p, r in json_problems(checked, ("args",))]
    if problems:
        raise ValueError("args cannot be stored as JSON: " + "; ".join(problems))
    return checked, None


def args_json(args: Mapping[str, Any] | None) -> str:
    """:func:`to_jsonb`'s checks, returning the JSON text (for ``COPY``); same errors."""
    checked, text = _checked_args(args)
    return text if text is not None else _dumps(checked)


def to_jsonb(args: Mapping[str, Any] | None) -> Jsonb:
    """Validate job arguments and wrap them for a jsonb parameter.

    Raises:
        TypeError: ``args`` is not a mapping.
        ValueError: a value JSON or PostgreSQL ``jsonb`` cannot store (see
            :func:`json_problems`), every problem listed with its path.
    """
    return Jsonb(_checked_args(args)[0], dumps=_dumps)


# ---- the default connection (when the caller passes none) ------------------------------------

_pool_lock = threading.Lock()
_pools: dict[str, ConnectionPool] = {}
_default_url: str | None = None


def set_default_database_url(url: str | None) -> None:
    """Make ``url`` the database of ``schedule_at(connection=None)`` in this process.

    The service calls this when it starts (so handlers can enqueue follow-up jobs even with
    the embedded server); otherwise ``SCHEDULER_DATABASE_URL`` is used.
    """
    global _default_url
    _default_url = url


def _default_pool(settings: Settings) -> ConnectionPool:
    url = _default_url or settings.database_url
    if not url:
        raise DatabaseNotConfiguredError(
            "no connection was passed and SCHEDULER_DATABASE_URL is not set; pass "
            "connection=<psycopg connection> or set SCHEDULER_DATABASE_URL"
        )
    with _pool_lock:
        pool = _pools.get(url)
        if pool is None:
            # autocommit: one round trip per enqueue (no BEGIN/COMMIT around the INSERT)
            pool = ConnectionPool(
                url,
                min_size=1,
                max_size=4,
                open=True,
                name="scheduler-enqueue",
                kwargs={"autocommit": True},
            )
            _pools[url] = pool
        return pool


def close_default_pools() -> None:
    """Close the connection pools opened for ``schedule_at(connection=None)``."""
    with _pool_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()


def _on_connection(
    connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None,
    settings: Settings,
    sync_insert: Callable[[psycopg.Connection[Any], Any], Any],
    async_insert: Callable[[psycopg.AsyncConnection[Any], Any], Awaitable[Any]],
    payload: Any,
) -> Any:
    """Run an insert on the caller's connection (sync, or async: returns the awaitable), or
    on the default pool, committing at once."""
    if isinstance(connection, psycopg.AsyncConnection):
        return async_insert(connection, payload)
    if connection is not None:
        return sync_insert(connection, payload)
    with _default_pool(settings).connection() as conn:
        return sync_insert(conn, payload)


# ---- schedule_at / enqueue -------------------------------------------------------------------


def _check_run_at(run_at: datetime | None) -> None:
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise TypeError(f"run_at must be a datetime, not {type(run_at).__name__}")
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise ValueError(
                f"run_at={run_at.isoformat()} is naive: pass a timezone-aware datetime, e.g. "
                "datetime.now(timezone.utc) + timedelta(minutes=5)"
            )


def _job_options(
    task: Task | Callable[..., Any] | str,
    queue: str | None,
    priority: int | None,
    max_attempts: int | None,
    settings: Settings,
) -> dict[str, Any]:
    """The columns that come from the task and its options (the same for every job of a bulk
    enqueue with the same options)."""
    name = task_name(task)
    try:
        registered: Task | None = task if isinstance(task, Task) else get_task(name)
    except LookupError:
        registered = None  # enqueuing for a task that only workers elsewhere know is allowed

    def pick(value: Any, attr: str, fallback: Any) -> Any:
        if value is not None:
            return value
        task_value = getattr(registered, attr, None) if registered else None
        return task_value if task_value is not None else fallback

    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, not {max_attempts}")
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

    Raises:
        ValueError: ``run_at`` is naive, ``max_attempts`` < 1, or args hold NaN/\\u0000.
        TypeError: ``args`` is not a JSON-representable mapping.
        UnknownTaskError: ``task`` is a function that was never registered with ``@task``.
        DatabaseNotConfiguredError: no connection and no ``SCHEDULER_DATABASE_URL``.
    """
    settings = get_settings()
    params = _job_params(
        task, run_at, args, queue, priority, max_attempts, idempotency_key, settings
    )
    store = Store(settings.schema_name)
    return _on_connection(connection, settings, store.insert_job_sync, store.insert_job, params)


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
    """Enqueue a job to run now: ``schedule_at(task, None, ...)``; same arguments and errors."""
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
    """One job for :func:`schedule_many`; fields as in :func:`schedule_at`."""

    task: Task | Callable[..., Any] | str
    run_at: datetime | None = None
    args: Mapping[str, Any] | None = None
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None


def schedule_many(
    jobs: Iterable[JobSpec],
    *,
    connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None,
) -> list[int] | Awaitable[list[int]]:
    """Enqueue many jobs with one ``COPY`` (one notification per queue).

    Every job is validated before anything is written (same rules and errors as
    :func:`schedule_at`). Idempotency keys are not supported in bulk. With ``connection``
    the rows join the caller's transaction (sync, or async: returns an awaitable); without,
    they are committed at once on the default pool.

    Returns:
        The job ids, in the order of ``jobs``.
    """
    settings = get_settings()
    options: dict[tuple[Any, ...], dict[str, Any]] = {}  # task options, looked up once
    rows: list[BulkJob] = []
    for j in jobs:
        _check_run_at(j.run_at)
        key = (task_name(j.task), j.queue, j.priority, j.max_attempts)
        o = options.get(key)
        if o is None:
            o = options[key] = _job_options(j.task, j.queue, j.priority, j.max_attempts, settings)
        rows.append(
            (o["queue"], o["task"], args_json(j.args), o["priority"], j.run_at,
             o["max_attempts"], o["backoff_base_s"], o["backoff_max_s"], o["backoff_jitter"])
        )  # fmt: skip
    store = Store(settings.schema_name)
    return _on_connection(connection, settings, store.insert_jobs_sync, store.insert_jobs, rows)


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
    :func:`schedule_many` (same errors). Returns the ids in order."""
    settings = get_settings()
    o = _job_options(task, queue, priority, max_attempts, settings)
    head = (o["queue"], o["task"])
    tail = (o["priority"], None, o["max_attempts"], o["backoff_base_s"], o["backoff_max_s"],
            o["backoff_jitter"])  # fmt: skip
    rows: list[BulkJob] = [(*head, args_json(args), *tail) for args in args_list]
    store = Store(settings.schema_name)
    return _on_connection(connection, settings, store.insert_jobs_sync, store.insert_jobs, rows)
