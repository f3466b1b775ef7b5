"""The task registry: ``@task`` turns a function into a named, schedulable task.

A task is looked up by name when a job runs, so the name (not the function object) is what the
jobs table stores. Schedules files name the modules to import (``imports:``) so that their
``@task`` decorators run before the schedules are validated.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, overload

from .errors import DuplicateTaskError, InvalidArgumentError, UnknownTaskError
from .limits import (
    DURATION_MAX_S,
    check_max_attempts,
    check_priority,
    check_queue,
    check_task_name,
    shown,
)


@dataclass(frozen=True)
class Task:
    """A registered task.

    Attributes:
        name: registry key stored in ``jobs.task``.
        func: the handler; called with the job's ``args`` as keyword arguments.
        is_async: True for ``async def`` handlers (run on the event loop), False for plain
            functions (run in the replica's bounded thread pool).
        queue, priority, max_attempts, backoff_base_s, backoff_max_s, backoff_jitter:
            defaults for jobs of this task; ``None`` means "use the service settings".
        timeout_s: longest run of one attempt in seconds (``None``: no limit). An async
            handler is cancelled; a sync one cannot be stopped from outside its thread, so
            the attempt is recorded as ``timeout`` and retried while the thread runs on
            until the function returns (its result is then ignored).
    """

    name: str
    func: Callable[..., Any]
    is_async: bool
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    backoff_base_s: float | None = None
    backoff_max_s: float | None = None
    backoff_jitter: float | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        """Check every field (see :func:`task` for the rules); raises InvalidArgumentError."""
        check_task_name(self.name, "@task name")
        if not callable(self.func):
            raise InvalidArgumentError(f"@task needs a function, not {type(self.func).__name__}")
        for attr, check in (
            ("queue", check_queue),
            ("priority", check_priority),
            ("max_attempts", check_max_attempts),
        ):
            if getattr(self, attr) is not None:
                check(getattr(self, attr), f"@task {attr}")
        for attr in ("backoff_base_s", "backoff_max_s", "timeout_s"):
            _check_number(getattr(self, attr), f"@task {attr}", 0, DURATION_MAX_S, low_open=True)
        _check_number(self.backoff_jitter, "@task backoff_jitter", 0, 1)
        base, cap = self.backoff_base_s, self.backoff_max_s
        if base is not None and cap is not None and cap < base:
            raise InvalidArgumentError(
                f"@task backoff_max_s ({cap}) is smaller than backoff_base_s ({base})"
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the handler directly (no job is created)."""
        return self.func(*args, **kwargs)


def _check_number(value: Any, what: str, low: float, high: float, low_open: bool = False) -> None:
    """``None``, or an int or float (not a bool) in ``[low, high]`` (``(low, high]`` when
    ``low_open``), finite; else InvalidArgumentError."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(
            f"{what} must be a number, not {type(value).__name__} {shown(value)}"
        )
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number > high or number < low or (low_open and number == low):
        bounds = f"{'>' if low_open else '>='} {low:g} and <= {high:g}"
        raise InvalidArgumentError(f"{what} must be finite, {bounds}, not {shown(value)}")


_REGISTRY: dict[str, Task] = {}


@overload
def task(func: Callable[..., Any], /) -> Task: ...
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
) -> Callable[[Callable[..., Any]], Task]: ...


def task(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Register a function as a task, usable bare (``@task``) or with options (``@task(...)``).

    Args:
        name: registry name; defaults to the function's ``__name__``.
        queue, priority, max_attempts, backoff_base_s, backoff_max_s, backoff_jitter: job
            defaults for this task (seconds for the ``*_s`` ones); unset = service settings.
        timeout_s: longest run of one attempt, seconds (see :class:`Task`).

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
            the decorated object is not callable. Also a ``ValueError`` and a ``TypeError``.
        DuplicateTaskError: another function is already registered under that name.
    """
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise InvalidArgumentError(
            f"@task got unknown option(s) {', '.join(map(shown, unknown))}; the options are "
            + ", ".join(sorted(_OPTIONS))
        )

    def register(f: Callable[..., Any]) -> Task:
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
        registered = Task(name=name, func=f, is_async=inspect.iscoroutinefunction(f), **rest)
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified(existing.func) != _qualified(f):
            raise DuplicateTaskError(
                f"task name {name!r} is used by both {_qualified(existing.func)} and "
                f"{_qualified(f)}; pass @task(name=...) to tell them apart"
            )
        _REGISTRY[name] = registered
        return registered

    if func is not None:
        return register(func)
    return register


_OPTIONS = frozenset(f.name for f in fields(Task)) - {"func", "is_async"}


def _qualified(f: Callable[..., Any]) -> str:
    module = getattr(f, "__module__", None) or "?"
    return f"{module}.{getattr(f, '__qualname__', None) or repr(f)}"


def get_task(name: str) -> Task:
    """Return the task registered under ``name``; raises :class:`UnknownTaskError`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTaskError(f"no task named {name!r} is registered in this process") from None


def registered_tasks() -> dict[str, Task]:
    """A copy of the registry, name → Task."""
    return dict(_REGISTRY)


def task_name(t: Task | Callable[..., Any] | str, what: str = "task") -> str:
    """The registry name for a Task, a registered function or a name string.

    Raises:
        InvalidArgumentError: ``t`` is none of those, or a string that is not a valid task
            name (:func:`scheduler.limits.check_task_name`); ``what`` names it.
        UnknownTaskError: ``t`` is a function that was never registered with ``@task``.
    """
    if isinstance(t, Task):
        return t.name
    if isinstance(t, str):
        return check_task_name(t, what)
    if not callable(t):
        raise InvalidArgumentError(
            f"{what} must be a @task function, its Task, or a task name, not "
            f"{type(t).__name__} {shown(t)}"
        )
    for registered in _REGISTRY.values():
        if registered.func is t:
            return registered.name
    raise UnknownTaskError(f"{_qualified(t)} is not registered with @task")


def import_modules(modules: list[str]) -> None:
    """Import each module so its ``@task`` decorators register. ImportError propagates."""
    for module in modules:
        importlib.import_module(module)
