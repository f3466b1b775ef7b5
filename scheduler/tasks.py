"""Typed task handles: ``@task`` turns a function into a :class:`Task` you call to enqueue it.

::

    @task(queue="mail", max_attempts=5)
    def send_receipt(order_id: int, email: str) -> None: ...

    job_id = send_receipt.defer(order_id=1, email="a@example.com")       # due now
    send_receipt.schedule_in(timedelta(minutes=5), order_id=1, email="a@example.com")
    await send_receipt.configure(connection=aconn).defer_async(order_id=1, email="...")

``Task[P, R]`` is generic over the handler's parameters (``ParamSpec``), so mypy checks every
call against the handler: a misspelt or missing argument is a type error, and at run time a
:class:`~scheduler.errors.TaskArgumentsError` before anything is written. Each call has a
sync and an async form with its own name (``defer`` / ``defer_async``), never a union
return type. A handler whose first parameter is a :class:`~scheduler.JobContext` gets it from
the worker; callers do not pass it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from . import bulk, enqueueing, job_inserts, preparation
from .connections import check_connection
from .errors import InvalidArgumentError
from .job_context import JobContext, set_current_job
from .limits import shown
from .registry import (
    TaskSpec,
    get_task,
    import_modules,
    load_tasks,
    register,
    registered_tasks,
    task_name,
)

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

__all__ = ["Task", "TaskCall", "get_task", "import_modules", "load_tasks", "registered_tasks",
           "task", "task_name"]  # fmt: skip


@dataclass(frozen=True)
class TaskCall(Generic[P, R]):
    """A task with per-call options (from :meth:`Task.configure`); the same calls as
    :class:`Task`. ``connection`` must suit the call: a ``psycopg.Connection``, SQLAlchemy
    ``Connection`` / ``Session`` or Django's connection for the sync ones, a
    ``psycopg.AsyncConnection``, SQLAlchemy ``AsyncConnection`` / ``AsyncSession`` for the
    ``*_async`` ones (:mod:`scheduler.adapters`; else InvalidArgumentError).
    """

    task: Task[P, R]
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None
    connection: Any = None
    unique_for_s: float | None = None
    on_conflict: preparation.OnConflict = "return"
    concurrency_key: str | None = None
    headers: Mapping[str, str] | None = None

    def _prepare(self, args: Any, kwargs: Any, run_at: datetime | None = None,
                 delay_s: float = 0.0) -> preparation.Prepared:  # fmt: skip
        return preparation.prepare(self.task, args, kwargs, run_at=run_at, delay_s=delay_s,
                                   queue=self.queue, priority=self.priority,
                                   max_attempts=self.max_attempts,
                                   idempotency_key=self.idempotency_key,
                                   unique_for_s=self.unique_for_s,
                                   on_conflict=self.on_conflict,
                                   concurrency_key=self.concurrency_key,
                                   headers=self.headers)  # fmt: skip

    def _refuse_keys(self, call: str) -> None:
        if self.idempotency_key is not None or self.unique_for_s is not None or (
            self.on_conflict != "return"
        ):
            raise InvalidArgumentError(
                f"{call} does not take an idempotency_key, unique_for_s or on_conflict"
            )

    def _sync(self) -> Any:
        check_connection(self.connection)
        return self.connection

    def _async(self) -> Any:
        check_connection(self.connection, is_async=True)
        return self.connection

    def defer(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue a job due now; returns its id. Errors as :func:`scheduler.schedule_at`
        (:class:`~scheduler.errors.TaskArgumentsError` for arguments that do not fit)."""
        return enqueueing.insert(self._prepare(args, kwargs), self._sync())

    async def defer_async(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """:meth:`defer` for async code (an async pool or ``AsyncConnection``)."""
        return await enqueueing.insert_async(self._prepare(args, kwargs), self._async())

    def defer_result(self, *args: P.args, **kwargs: P.kwargs) -> job_inserts.Enqueued:
        """:meth:`defer` saying what it did: a :class:`~scheduler.jobs.Enqueued` with the id,
        ``created`` (False: a job holding the ``idempotency_key`` was found, see
        ``unique_for_s`` and ``on_conflict`` in :meth:`Task.configure`), that job's
        ``existing_state`` and ``replaced``. Errors as :meth:`defer`."""
        return enqueueing.insert_result(self._prepare(args, kwargs), self._sync())

    async def defer_result_async(self, *args: P.args, **kwargs: P.kwargs) -> job_inserts.Enqueued:
        """:meth:`defer_result` for async code."""
        return await enqueueing.insert_result_async(self._prepare(args, kwargs), self._async())

    def schedule_at_result(self, when: datetime, /, *args: P.args,
                           **kwargs: P.kwargs) -> job_inserts.Enqueued:  # fmt: skip
        """:meth:`schedule_at` saying what it did (see :meth:`defer_result`)."""
        job = self._prepare(args, kwargs, run_at=_aware(when))
        return enqueueing.insert_result(job, self._sync())

    async def schedule_at_result_async(self, when: datetime, /, *args: P.args,
                                       **kwargs: P.kwargs) -> job_inserts.Enqueued:  # fmt: skip
        """:meth:`schedule_at_result` for async code."""
        job = self._prepare(args, kwargs, run_at=_aware(when))
        return await enqueueing.insert_result_async(job, self._async())

    def schedule_at(self, when: datetime, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue a job due at ``when`` (timezone-aware; past: at once); returns its id."""
        return enqueueing.insert(self._prepare(args, kwargs, run_at=_aware(when)), self._sync())

    async def schedule_at_async(self, when: datetime, /, *args: P.args,
                                **kwargs: P.kwargs) -> int:  # fmt: skip
        """:meth:`schedule_at` for async code."""
        job = self._prepare(args, kwargs, run_at=_aware(when))
        return await enqueueing.insert_async(job, self._async())

    def schedule_in(self, delay: timedelta | float, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue a job due ``delay`` (a timedelta or seconds, 0 to 10 years) after the
        database's clock reads now; returns its id."""
        job = self._prepare(args, kwargs, delay_s=preparation.delay_seconds(delay))
        return enqueueing.insert(job, self._sync())

    async def schedule_in_async(self, delay: timedelta | float, /, *args: P.args,
                                **kwargs: P.kwargs) -> int:  # fmt: skip
        """:meth:`schedule_in` for async code."""
        job = self._prepare(args, kwargs, delay_s=preparation.delay_seconds(delay))
        return await enqueueing.insert_async(job, self._async())

    def defer_many(self, calls: Iterable[Mapping[str, Any]], /) -> list[int]:
        """Enqueue one job per mapping of keyword arguments, due now, in one ``COPY``;
        returns the ids in order. Every item is bound before anything is written (a bad one
        is named ``args_list[3]``). Idempotency keys (and unique jobs) are not supported in
        bulk: InvalidArgumentError."""
        self._refuse_keys("defer_many")
        rows = bulk.many_rows(self.task, calls, self.queue, self.priority, self.max_attempts,
                              self.concurrency_key, self.headers)  # fmt: skip
        return bulk.insert_many(rows, self._sync())

    async def defer_many_async(self, calls: Iterable[Mapping[str, Any]], /) -> list[int]:
        """:meth:`defer_many` for async code."""
        self._refuse_keys("defer_many_async")
        rows = bulk.many_rows(self.task, calls, self.queue, self.priority, self.max_attempts,
                              self.concurrency_key, self.headers)  # fmt: skip
        return await bulk.insert_many_async(rows, self._async())


def _aware(when: Any) -> datetime:
    if not isinstance(when, datetime):
        raise InvalidArgumentError(f"when must be a datetime, not {type(when).__name__}")
    return when


@dataclass(frozen=True)
class Task(TaskSpec, Generic[P, R]):
    """A registered task (see :class:`~scheduler.registry.TaskSpec` for its fields), and the
    typed way to enqueue it: :meth:`defer`, :meth:`schedule_at`, :meth:`schedule_in`,
    :meth:`defer_many`, each with an ``*_async`` twin, and :meth:`configure` for per-call
    options. Calling the task runs the handler directly (no job; a ``JobContext`` parameter
    gets a context with ``job_id`` 0)."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if not self.takes_context:
            result: R = self.func(*args, **kwargs)
            return result
        ctx = JobContext(job_id=0, task=self.name, attempt=1, max_attempts=1,
                         queue=self.queue or "default")  # fmt: skip
        token = set_current_job(ctx)
        try:
            direct: R = self.func(ctx, *args, **kwargs)
            return direct
        finally:
            token.var.reset(token)

    def configure(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        connection: Any = None,
        unique_for_s: float | None = None,
        on_conflict: preparation.OnConflict = "return",
        concurrency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> TaskCall[P, R]:
        """Per-call options; values are checked when a call is made (InvalidArgumentError
        naming the option, before any SQL).

        Args:
            queue, priority, max_attempts, idempotency_key: as for :func:`scheduler.schedule_at`.
            connection: a ``psycopg.Connection`` (for the sync calls) or
                ``psycopg.AsyncConnection`` (for the ``*_async`` calls), or an ORM's
                connection or session (SQLAlchemy 2 on psycopg, Django: see
                :mod:`scheduler.adapters`): the INSERT joins its transaction and is not
                committed. ``None``: the default pool, committed.
            unique_for_s: seconds (> 0, at most 10 years) after the first job with this
                ``idempotency_key`` was created during which no second one is inserted,
                whatever the first one's state; ``None``: only while one is live. Needs an
                ``idempotency_key``.
            on_conflict: when the key is held: ``"return"`` (default) the existing job's id;
                ``"replace"`` its arguments, due time and priority if it is pending (else as
                ``"return"``); ``"raise"``: :class:`~scheduler.errors.DuplicateJobError`,
                nothing written. The ``*_result`` calls (:meth:`TaskCall.defer_result`) say
                which happened; :meth:`TaskCall.defer` and the others return the id only.
            concurrency_key: the job's key for its queue's ``key_concurrency`` limit
                (:mod:`scheduler.flow`), e.g. a customer id; as for
                :func:`scheduler.schedule_at`. Also applies to :meth:`TaskCall.defer_many`.
            headers: string metadata stored with the job and given to the handler as
                :attr:`JobContext.headers`; bounds as for :func:`scheduler.schedule_at`
                (checked when a call is made). Also applies to :meth:`TaskCall.defer_many`.
        """
        return TaskCall(self, queue, priority, max_attempts, idempotency_key, connection,
                        unique_for_s, on_conflict, concurrency_key, headers)  # fmt: skip

    def defer(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue a job due now; returns its id (see :meth:`TaskCall.defer`)."""
        return TaskCall(self).defer(*args, **kwargs)

    async def defer_async(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """:meth:`defer` for async code."""
        return await TaskCall(self).defer_async(*args, **kwargs)

    def schedule_at(self, when: datetime, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue a job due at ``when``; see :meth:`TaskCall.schedule_at`."""
        return TaskCall(self).schedule_at(when, *args, **kwargs)

    async def schedule_at_async(self, when: datetime, /, *args: P.args,
                                **kwargs: P.kwargs) -> int:  # fmt: skip
        """:meth:`schedule_at` for async code."""
        return await TaskCall(self).schedule_at_async(when, *args, **kwargs)

    def schedule_in(self, delay: timedelta | float, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """Enqueue a job due after ``delay``; see :meth:`TaskCall.schedule_in`."""
        return TaskCall(self).schedule_in(delay, *args, **kwargs)

    async def schedule_in_async(self, delay: timedelta | float, /, *args: P.args,
                                **kwargs: P.kwargs) -> int:  # fmt: skip
        """:meth:`schedule_in` for async code."""
        return await TaskCall(self).schedule_in_async(delay, *args, **kwargs)

    def defer_many(self, calls: Iterable[Mapping[str, Any]], /) -> list[int]:
        """One job per mapping of arguments; see :meth:`TaskCall.defer_many`."""
        return TaskCall(self).defer_many(calls)

    async def defer_many_async(self, calls: Iterable[Mapping[str, Any]], /) -> list[int]:
        """:meth:`defer_many` for async code."""
        return await TaskCall(self).defer_many_async(calls)


class TaskDecorator(Protocol):
    """What ``@task(...)`` with options returns."""

    @overload
    def __call__(self, func: Callable[Concatenate[JobContext, P], R], /) -> Task[P, R]: ...
    @overload
    def __call__(self, func: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(func: Callable[Concatenate[JobContext, P], R], /) -> Task[P, R]: ...
@overload
def task(func: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    *,
    name: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    backoff_base_s: float | None = None,
    backoff_max_s: float | None = None,
    backoff_jitter: float | None = None,
    timeout_s: float | None = None,
) -> TaskDecorator: ...


def task(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Register a function as a task, usable bare (``@task``) or with options (``@task(...)``).

    Args:
        name: registry name; defaults to the function's ``__name__``.
        queue, priority, max_attempts, backoff_base_s, backoff_max_s, backoff_jitter: job
            defaults for this task (seconds for the ``*_s`` ones); unset = service settings.
        timeout_s: longest run of one attempt, seconds (see :class:`TaskSpec`).

    Returns:
        The :class:`Task` (callable like the original function).

    Raises:
        InvalidArgumentError: when the decorator runs (nothing is registered), an unknown
            option, or a bad value: ``name`` not 1-200 characters without whitespace, control
            characters, NUL or unpaired surrogates; ``queue``, ``priority``, ``max_attempts``
            outside the bounds of :mod:`scheduler.limits` (as for :func:`schedule_at`);
            ``backoff_base_s``, ``backoff_max_s``, ``timeout_s`` not a number > 0, finite, at
            most 10 years (:data:`DURATION_MAX_S`), or ``backoff_max_s`` < ``backoff_base_s``;
            ``backoff_jitter`` not a number in [0, 1]; a bool where a number is expected;
            the decorated object is not callable; a positional-only or ``*args`` parameter
            (arguments are stored by name). Also a ``ValueError`` and a ``TypeError``.
        DuplicateTaskError: another function is already registered under that name.
    """
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise InvalidArgumentError(
            f"@task got unknown option(s) {', '.join(map(shown, unknown))}; the options are "
            + ", ".join(sorted(_OPTIONS))
        )

    def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
        if not callable(f):
            raise InvalidArgumentError(
                f"@task decorates a function, not {type(f).__name__} {shown(f)}; "
                "to name a task, write @task(name=...)"
            )
        given = options.get("name")
        name = given if given is not None else getattr(f, "__name__", None)
        if name is None:
            raise InvalidArgumentError(f"{shown(f)} has no __name__: pass @task(name=...)")
        rest = {k: v for k, v in options.items() if k != "name"}
        is_async = inspect.iscoroutinefunction(f)
        registered: Task[Any, Any] = Task(name=name, func=f, is_async=is_async, **rest)
        register(registered)
        return registered

    if func is not None:
        return decorate(func)
    return decorate


_OPTIONS = frozenset(f.name for f in fields(TaskSpec)) - {"func", "is_async"}

