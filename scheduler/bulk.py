"""Many jobs in one ``COPY``: ``schedule_many`` / ``enqueue_many`` (and ``Task.defer_many``),
with their async twins. Every job is checked as :mod:`scheduler.jobs` checks one, before
anything is written: one bad item writes none of the batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import metrics, tracing
from .arguments import args_json
from .connections import check_connection, on_async_connection, on_connection
from .enqueueing import AsyncConnection, SyncConnection, inline_runner, refuse_on_event_loop
from .errors import InvalidArgumentError
from .job_inserts import BulkJob
from .limits import check_concurrency_key
from .preparation import TaskRef, check_options, check_run_at, job_options
from .registry import TaskSpec, resolve, task_name
from .settings import get_settings
from .store import Store

# ---- many jobs: one COPY -------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """One job for :func:`schedule_many`; fields as in :func:`schedule_at`.

    Raises:
        InvalidArgumentError: when built, a field of the wrong type or out of range (as in
            :func:`schedule_at`; ``args`` must be a mapping or ``None``, and whether they fit
            the task is checked by :func:`schedule_many`).
    """

    task: TaskRef
    run_at: datetime | None = None
    args: Mapping[str, Any] | None = None
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    concurrency_key: str | None = None
    headers: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.task, str) or not callable(self.task):
            task_name(self.task, "JobSpec.task")
        check_run_at(self.run_at, "JobSpec.run_at")
        if self.args is not None and not isinstance(self.args, Mapping):
            raise InvalidArgumentError(
                f"JobSpec.args must be a mapping or None, not {type(self.args).__name__}"
            )
        check_options(self.queue, self.priority, self.max_attempts, "JobSpec.")
        if self.concurrency_key is not None:
            check_concurrency_key(self.concurrency_key, "JobSpec.concurrency_key")
        tracing.check_headers(self.headers, "JobSpec.headers")


def _items(value: Any, what: str, of: str) -> Iterable[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidArgumentError(
            f"{what} must be an iterable of {of}, not {type(value).__name__}"
        )
    return value


def _args_text(task: TaskSpec | str, args: Any, what: str) -> str:
    if isinstance(task, TaskSpec):
        if args is not None and not isinstance(args, Mapping):
            raise InvalidArgumentError(f"{what} must be a mapping, not {type(args).__name__}")
        return task.bind((), args or {}, what)[1]
    return args_json(args, what)


def _spec_rows(jobs: Iterable[JobSpec]) -> list[BulkJob]:
    settings = get_settings()
    options: dict[tuple[Any, ...], dict[str, Any]] = {}  # task options, looked up once
    specs: dict[str, TaskSpec | str] = {}
    rows: list[BulkJob] = []
    for i, j in enumerate(_items(jobs, "jobs", "JobSpec")):
        if not isinstance(j, JobSpec):
            raise InvalidArgumentError(f"jobs[{i}] must be a JobSpec, not {type(j).__name__}")
        where = f"jobs[{i}]."
        check_run_at(j.run_at, f"{where}run_at")
        if j.concurrency_key is not None:
            check_concurrency_key(j.concurrency_key, f"{where}concurrency_key")
        name = task_name(j.task, f"{where}task")
        spec = specs.get(name) or specs.setdefault(name, resolve(j.task, f"{where}task"))
        key = (name, j.queue, j.priority, j.max_attempts)
        o = options.get(key)
        if o is None:
            o = options[key] = job_options(spec, j.queue, j.priority, j.max_attempts,
                                            settings, where)  # fmt: skip
        rows.append(
            (o["queue"], o["task"], _args_text(spec, j.args, f"{where}args"), o["priority"],
             j.run_at, o["max_attempts"], o["backoff_base_s"], o["backoff_max_s"],
             o["backoff_jitter"], j.concurrency_key,
             tracing.check_headers(j.headers, f"{where}headers"))
        )  # fmt: skip
    return rows


def many_rows(
    task: TaskRef, args_list: Iterable[Mapping[str, Any]], queue: str | None = None,
    priority: int | None = None, max_attempts: int | None = None,
    concurrency_key: str | None = None, headers: Mapping[str, str] | None = None,
) -> list[BulkJob]:  # fmt: skip
    """The rows of :func:`enqueue_many`, checked (a bad item is named ``args_list[3]``)."""
    spec = resolve(task)
    o = job_options(spec, queue, priority, max_attempts, get_settings())
    if concurrency_key is not None:
        check_concurrency_key(concurrency_key)
    head = (o["queue"], o["task"])
    tail = (o["priority"], None, o["max_attempts"], o["backoff_base_s"], o["backoff_max_s"],
            o["backoff_jitter"], concurrency_key, tracing.check_headers(headers))  # fmt: skip
    items = _items(args_list, "args_list", "mappings")
    return [(*head, _args_text(spec, args, f"args_list[{i}]"), *tail)
            for i, args in enumerate(items)]  # fmt: skip


def insert_many(rows: list[BulkJob], connection: SyncConnection | None) -> list[int]:
    """Insert checked rows with one ``COPY``; returns the ids in order."""
    if inline_runner() is not None:
        raise InvalidArgumentError("bulk enqueue is not supported in inline mode")
    if connection is None:
        refuse_on_event_loop("enqueue_many")
    store = Store(get_settings().schema_name)
    counts = Counter((row[0], row[1]) for row in rows)
    with _sending(counts, len(rows)) as send:
        ids = list(on_connection(connection, get_settings(), store.insert_jobs_sync,
                                 _traced(rows, send.headers)))  # fmt: skip
        send.sent(ids)
    return _counted(counts, ids)


async def insert_many_async(rows: list[BulkJob], connection: AsyncConnection | None) -> list[int]:
    """:func:`insert_many` on an async connection or the default async pool."""
    if inline_runner() is not None:
        raise InvalidArgumentError("bulk enqueue is not supported in inline mode")
    store = Store(get_settings().schema_name)
    counts = Counter((row[0], row[1]) for row in rows)
    with _sending(counts, len(rows)) as send:
        ids = list(await on_async_connection(connection, get_settings(), store.insert_jobs,
                                             _traced(rows, send.headers)))  # fmt: skip
        send.sent(ids)
    return _counted(counts, ids)


def _sending(counts: Counter[tuple[str, str]], n: int) -> Any:
    """The ``send`` span of a bulk enqueue (:func:`scheduler.tracing.sending`)."""
    queues = {queue for queue, _ in counts}
    return tracing.sending({task for _, task in counts}, next(iter(queues)) if len(queues) == 1
                           else None, None, n)  # fmt: skip


def _traced(rows: list[BulkJob], trace: dict[str, str] | None) -> list[BulkJob]:
    """``rows`` with the trace context's headers (the same for every job of the call)."""
    if not trace:
        return rows
    return [(*row[:10], {**row[10], **trace} if row[10] else trace) for row in rows]


def _counted(counts: Counter[tuple[str, str]], ids: list[int]) -> list[int]:
    """Count the jobs inserted (``scheduler_jobs_enqueued_total``) once the COPY succeeded."""
    for (queue, task), n in counts.items():
        metrics.JOBS_ENQUEUED.labels(queue, task).inc(n)
    return ids


def schedule_many(
    jobs: Iterable[JobSpec], *, connection: SyncConnection | None = None
) -> list[int]:
    """Enqueue many jobs with one ``COPY`` (one notification per queue).

    Every job is validated before anything is written (same rules and errors as
    :func:`schedule_at`): one bad item writes none of the batch and leaves the caller's
    transaction usable. Idempotency keys are not supported in bulk. With ``connection`` (a
    psycopg connection, or an ORM's: :mod:`scheduler.adapters`) the rows join the caller's
    transaction; without, they are committed at once on the
    default pool. :func:`schedule_many_async` is the async twin.

    Returns:
        The job ids, in the order of ``jobs``.

    Raises:
        InvalidArgumentError: ``jobs`` is not an iterable of :class:`JobSpec`, or an item
            has a bad value; the message names it (``jobs[3].args.to: ...``).
        UnknownTaskError, DatabaseNotConfiguredError, DatabaseUnavailableError,
        SchemaNotMigratedError, psycopg.Error: as in :func:`schedule_at`.
    """
    check_connection(connection)
    return insert_many(_spec_rows(jobs), connection)


async def schedule_many_async(
    jobs: Iterable[JobSpec], *, connection: AsyncConnection | None = None
) -> list[int]:
    """:func:`schedule_many` for async code."""
    check_connection(connection, is_async=True)
    return await insert_many_async(_spec_rows(jobs), connection)


def enqueue_many(
    task: TaskRef,
    args_list: Iterable[Mapping[str, Any]],
    *,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    concurrency_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    connection: SyncConnection | None = None,
) -> list[int]:
    """Enqueue one job of ``task`` per item of ``args_list``, due now, in one ``COPY``; see
    :func:`schedule_many` (same errors; a bad item is named ``args_list[3]``). Returns the
    ids in order. ``concurrency_key`` and ``headers`` (as for :func:`schedule_at`): the same
    for every job (per-job values: a :class:`JobSpec` each)."""
    check_connection(connection)
    rows = many_rows(task, args_list, queue, priority, max_attempts, concurrency_key, headers)
    return insert_many(rows, connection)


async def enqueue_many_async(
    task: TaskRef,
    args_list: Iterable[Mapping[str, Any]],
    *,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    concurrency_key: str | None = None,
    headers: Mapping[str, str] | None = None,
    connection: AsyncConnection | None = None,
) -> list[int]:
    """:func:`enqueue_many` for async code."""
    check_connection(connection, is_async=True)
    rows = many_rows(task, args_list, queue, priority, max_attempts, concurrency_key, headers)
    return await insert_many_async(rows, connection)
