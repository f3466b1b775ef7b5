"""The task registry: what a task is (:class:`TaskSpec`) and its name resolution. How its
arguments are bound to its handler is :mod:`scheduler.binding` (a base of :class:`TaskSpec`),
the :class:`~scheduler.job_context.JobContext` a handler may ask for
:mod:`scheduler.job_context`.

A task is looked up by name when a job runs, so the name (not the function object) is what the
jobs table stores. Schedules files name the modules to import (``imports:``) so that their
``@task`` decorators run before the schedules are validated. The typed handle users call
(``send_receipt.defer(...)``) is :class:`scheduler.tasks.Task`, a :class:`TaskSpec`.
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .binding import ArgumentBinding
from .errors import (
    DuplicateTaskError,
    InvalidArgumentError,
    UnknownTaskError,
)
from .limits import (
    DURATION_MAX_S,
    check_max_attempts,
    check_priority,
    check_queue,
    check_task_name,
    shown,
)


@dataclass(frozen=True)
class TaskSpec(ArgumentBinding):
    """A registered task.

    Attributes:
        name: registry key stored in ``jobs.task``.
        func: the handler; called with the job's ``args`` as keyword arguments (and a
            :class:`JobContext` first when its first parameter is annotated so).
        is_async: True for ``async def`` handlers (run on the event loop), False for plain
            functions (run in the replica's bounded thread pool).
        queue, priority, max_attempts, backoff_base_s, backoff_max_s, backoff_jitter:
            defaults for jobs of this task; ``None`` means "use the service settings".
        timeout_s: longest run of one attempt in seconds (``None``: no limit). An async
            handler is cancelled; a sync one cannot be stopped from outside its thread, so
            the attempt is recorded as ``timeout`` and retried while the thread runs on
            until the function returns (its result is then ignored); its
            :attr:`JobContext.cancel_requested` turns true.
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
        """Check every field (see :func:`scheduler.task` for the rules); raises
        InvalidArgumentError."""
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
        self._parameters  # noqa: B018 - refuses positional-only parameters now


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


_REGISTRY: dict[str, TaskSpec] = {}
_loaded = False  # the registry is complete: set by load_tasks / import_modules


def register(spec: TaskSpec) -> None:
    """Add ``spec`` to the registry (the same function registered again replaces itself).

    Raises:
        DuplicateTaskError: another function is already registered under that name.
    """
    existing = _REGISTRY.get(spec.name)
    if existing is not None and qualified(existing.func) != qualified(spec.func):
        raise DuplicateTaskError(
            f"task name {spec.name!r} is used by both {qualified(existing.func)} and "
            f"{qualified(spec.func)}; pass @task(name=...) to tell them apart"
        )
    _REGISTRY[spec.name] = spec


def qualified(f: Callable[..., Any]) -> str:
    """``module.qualname`` of a function, for messages."""
    module = getattr(f, "__module__", None) or "?"
    return f"{module}.{getattr(f, '__qualname__', None) or repr(f)}"


def get_task(name: str) -> TaskSpec:
    """Return the task registered under ``name``; raises :class:`UnknownTaskError` (with
    the registered names closest to it)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownTaskError(
            f"no task named {shown(name)} is registered in this process{close_matches(name)}"
        ) from None


def close_matches(name: str) -> str:
    """``"; did you mean 'x'?"`` for the registered names closest to ``name``, else ``""``."""
    found = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    return f"; did you mean {' or '.join(map(repr, found))}?" if found else ""


def registered_tasks() -> dict[str, TaskSpec]:
    """A copy of the registry, name → task."""
    return dict(_REGISTRY)


def task_name(t: TaskSpec | Callable[..., Any] | str, what: str = "task") -> str:
    """The registry name for a task, a registered function or a name string.

    Raises:
        InvalidArgumentError: ``t`` is none of those, or a string that is not a valid task
            name (:func:`scheduler.limits.check_task_name`); ``what`` names it.
        UnknownTaskError: ``t`` is a function that was never registered with ``@task``.
    """
    if isinstance(t, TaskSpec):
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
    raise UnknownTaskError(f"{qualified(t)} is not registered with @task")


def resolve(t: TaskSpec | Callable[..., Any] | str, what: str = "task") -> TaskSpec | str:
    """The registered task ``t`` names, or the name alone when this process has not loaded
    its task registry (a producer that does not import the handlers: the name is not checked
    here, and a worker that does not know it dead-letters the job).

    Raises:
        UnknownTaskError: the registry is loaded (:func:`load_tasks`, a schedules file's
            ``imports:``, ``scheduler run``) and ``t`` names no task in it (a typo: the
            message lists close matches); or ``t`` is an unregistered function.
        InvalidArgumentError: as :func:`task_name`.
    """
    if isinstance(t, TaskSpec):
        return t
    name = task_name(t, what)
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    if _loaded:
        raise UnknownTaskError(
            f"{what} {shown(name)} is not a registered task{close_matches(name)} (the task "
            "registry of this process is loaded, so names are checked)"
        )
    return name


def import_modules(modules: list[str]) -> None:
    """Import each module so its ``@task`` decorators register, and mark the registry loaded
    (task names given to the enqueue calls are then checked). ImportError propagates."""
    global _loaded
    for module in modules:
        importlib.import_module(module)
    _loaded = True


def load_tasks(*modules: str) -> None:
    """Import the modules that define your tasks and mark the registry complete: from then
    on, ``enqueue("name")`` / ``schedule_at("name", ...)`` with a name no task has raises
    :class:`~scheduler.errors.UnknownTaskError` (with close matches) instead of enqueuing a
    job no worker can run. ``scheduler run`` and a schedules file's ``imports:`` do this.

    Raises:
        ImportError: a module could not be imported (also any error the module raises).
    """
    import_modules(list(modules))


def is_loaded() -> bool:
    """Whether this process's registry is complete (:func:`load_tasks`, a schedules file's
    ``imports:``, ``scheduler run``): task names are then checked where they are given."""
    return _loaded


def set_loaded(loaded: bool) -> None:
    """Mark the registry loaded or not (tests reset it between cases)."""
    global _loaded
    _loaded = loaded
