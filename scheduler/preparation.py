"""One job checked before any SQL: the checks of the enqueue calls' values (``run_at``, a
delay, ``queue`` / ``priority`` / ``max_attempts``, the unique-job options), the columns that
come from the task (:func:`job_options`, shared with :mod:`scheduler.bulk`), and
:func:`prepare`, which checks a whole job into a :class:`Prepared` one, ready to insert
(:mod:`scheduler.enqueueing`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from . import tracing
from .arguments import args_json
from .errors import InvalidArgumentError
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

TaskRef = TaskSpec | Callable[..., Any] | str
"""What the enqueue calls accept as a task: a ``@task`` handle, its function, or a name."""
OnConflict = Literal["return", "replace", "raise"]
"""What an enqueue does when its ``idempotency_key`` is held (see :func:`scheduler.jobs.schedule_at`)."""
ON_CONFLICT = ("return", "replace", "raise")


def check_run_at(run_at: datetime | None, what: str = "run_at") -> None:
    """Refuse a due time that is not ``None`` or a timezone-aware ``datetime``.

    Raises:
        InvalidArgumentError: another type, or a naive datetime; ``what`` names the input.
    """
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
    (:func:`scheduler.tracing.check_headers`). Errors as :func:`scheduler.jobs.schedule_at`."""
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
