"""The task registry: ``@task`` turns a function into a named, schedulable task.

A task is looked up by name when a job runs, so the name (not the function object) is what the
jobs table stores. Schedules files name the modules to import (``imports:``) so that their
``@task`` decorators run before the schedules are validated.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

from .errors import DuplicateTaskError, UnknownTaskError


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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the handler directly (no job is created)."""
        return self.func(*args, **kwargs)


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
        DuplicateTaskError: another function is already registered under that name.
    """

    def register(f: Callable[..., Any]) -> Task:
        name = options.pop("name", None) or f.__name__
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified(existing.func) != _qualified(f):
            raise DuplicateTaskError(
                f"task name {name!r} is used by both {_qualified(existing.func)} and "
                f"{_qualified(f)}; pass @task(name=...) to tell them apart"
            )
        registered = Task(name=name, func=f, is_async=inspect.iscoroutinefunction(f), **options)
        _REGISTRY[name] = registered
        return registered

    if func is not None:
        return register(func)
    return register


def _qualified(f: Callable[..., Any]) -> str:
    return f"{f.__module__}.{f.__qualname__}"


def get_task(name: str) -> Task:
    """Return the task registered under ``name``; raises :class:`UnknownTaskError`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTaskError(f"no task named {name!r} is registered in this process") from None


def registered_tasks() -> dict[str, Task]:
    """A copy of the registry, name → Task."""
    return dict(_REGISTRY)


def task_name(t: Task | Callable[..., Any] | str) -> str:
    """The registry name for a Task, a registered function or a name string."""
    if isinstance(t, Task):
        return t.name
    if isinstance(t, str):
        return t
    for registered in _REGISTRY.values():
        if registered.func is t:
            return registered.name
    raise UnknownTaskError(f"{_qualified(t)} is not registered with @task")


def import_modules(modules: list[str]) -> None:
    """Import each module so its ``@task`` decorators register. ImportError propagates."""
    for module in modules:
        importlib.import_module(module)
