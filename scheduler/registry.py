"""The task registry: what a task is (:class:`TaskSpec`), how its arguments are bound to its
handler, and the :class:`JobContext` a handler may ask for.

A task is looked up by name when a job runs, so the name (not the function object) is what the
jobs table stores. Schedules files name the modules to import (``imports:``) so that their
``@task`` decorators run before the schedules are validated. The typed handle users call
(``send_receipt.defer(...)``) is :class:`scheduler.tasks.Task`, a :class:`TaskSpec`.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import inspect
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .arguments import args_json
from .errors import (
    DuplicateTaskError,
    InvalidArgumentError,
    TaskArgumentsError,
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

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class JobContext:
    """What a handler knows about the attempt it runs: declare a first parameter annotated
    ``JobContext`` (``def handler(ctx: JobContext, order_id: int)``) and the worker passes it;
    callers of ``defer`` never see it. :func:`current_job` returns it too. Read-only for
    handlers.

    Attributes:
        job_id: ``jobs.id`` (``0`` for a direct call of the task).
        task: the task's name.
        attempt: this attempt's number, from 1.
        max_attempts: attempts before the job is dead-lettered.
        queue: the job's queue.
        schedule_name: the schedule that made the job, ``None`` for ``defer`` / ``schedule_at``.
        fire_time: the schedule's fire time this job is for (UTC), ``None`` if not a cron job.
        run_at: when the job became due for this attempt (UTC).
        headers: the job's headers (``headers=`` of the enqueue call, and the trace context
            of the enqueuing code: ``traceparent``, ``tracestate``; see
            :mod:`scheduler.tracing`), a read-only mapping; empty for cron jobs.
    """

    job_id: int
    task: str
    attempt: int
    max_attempts: int
    queue: str
    schedule_name: str | None = None
    fire_time: datetime | None = None
    run_at: datetime | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)
    _cancelled: bool = field(default=False, repr=False, compare=False)

    @property
    def cancel_requested(self) -> bool:
        """True once the attempt should stop: an operator cancelled the job (``cancel_job``,
        ``scheduler jobs cancel``) or, for a sync handler, its ``timeout_s`` passed. An async
        handler is also cancelled at its next ``await``; a sync one can only look here."""
        return self._cancelled

    def request_cancel(self) -> None:
        """Set :attr:`cancel_requested` (the worker calls this)."""
        self._cancelled = True


_CURRENT: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "scheduler_current_job", default=None
)


def current_job() -> JobContext | None:
    """The :class:`JobContext` of the attempt running in this task or thread, else ``None``."""
    return _CURRENT.get()


def set_current_job(ctx: JobContext | None) -> contextvars.Token[JobContext | None]:
    """Make ``ctx`` what :func:`current_job` returns in this context (the worker's job task or
    handler thread); returns the token to reset it with."""
    return _CURRENT.set(ctx)


@dataclass(frozen=True)
class TaskSpec:
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

    @cached_property
    def _signature(self) -> inspect.Signature:
        try:
            return inspect.signature(self.func, eval_str=True)
        except NameError:  # an annotation that does not resolve: shown as written
            return inspect.signature(self.func)
        except (TypeError, ValueError):  # a builtin without a signature: anything goes
            return inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])

    @cached_property
    def takes_context(self) -> bool:
        """True when the handler's first parameter is annotated :class:`JobContext`."""
        params = list(self._signature.parameters.values())
        return bool(params) and _is_context(params[0].annotation, self.func)

    @cached_property
    def _parameters(self) -> inspect.Signature:
        """The signature callers bind against: without the JobContext parameter."""
        params = list(self._signature.parameters.values())[1 if self.takes_context else 0 :]
        for p in params:
            if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
                raise InvalidArgumentError(
                    f"@task {self.name!r}: parameter {p.name!r} is positional-only; a job's "
                    "arguments are stored by name, so every parameter must accept a keyword"
                )
        return self._signature.replace(parameters=params)

    @cached_property
    def _keywords(self) -> tuple[bool, frozenset[str] | None, frozenset[str]]:
        """Whether a call by keyword alone can skip :meth:`inspect.Signature.bind` (every
        parameter is an ordinary, keyword-only or ``**`` one), the names it may use (``None``
        with a ``**`` parameter: any name) and the names it must use."""
        params = self._parameters.parameters.values()
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        if any(p.kind not in (*kinds, p.VAR_KEYWORD) for p in params):
            return False, None, frozenset()
        required = frozenset(p.name for p in params if p.kind in kinds and p.default is p.empty)
        open_ = any(p.kind is p.VAR_KEYWORD for p in params)
        names = None if open_ else frozenset(p.name for p in params)
        return True, names, required

    @cached_property
    def _adapters(self) -> dict[str, TypeAdapter[Any]]:
        """A pydantic validator per annotated parameter whose annotation can be resolved."""
        try:
            hints = typing.get_type_hints(self.func)
        except Exception:  # noqa: BLE001 - an unresolvable forward reference: no type checks
            return {}
        adapters = {}
        for name in self._parameters.parameters:
            if name in hints and hints[name] is not Any:
                with contextlib.suppress(Exception):  # a type pydantic cannot validate: unchecked
                    adapters[name] = TypeAdapter(hints[name])
        return adapters

    @property
    def signature(self) -> str:
        """The handler's parameters as callers pass them (without the JobContext one), e.g.
        ``(order_id: int, email: str)``."""
        return str(self._parameters.replace(return_annotation=inspect.Signature.empty))

    def _bind_slowly(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], what: str, head: str
    ) -> dict[str, Any]:
        """:meth:`bind`'s arguments by name through :meth:`inspect.Signature.bind`, with the
        reason when they do not fit."""
        for key in kwargs:
            if not isinstance(key, str):
                raise TaskArgumentsError(
                    f"task {self.name!r}: {what}: key {key!r} is a {type(key).__name__}; "
                    "JSON keys must be strings"
                )
        params = self._parameters.parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            for key in kwargs:
                if key not in params:
                    near = difflib.get_close_matches(str(key), list(params), n=1)
                    hint = f"; did you mean {near[0]!r}?" if near else ""
                    raise TaskArgumentsError(
                        f"{head}unexpected argument {shown(key)}{hint} "
                        f"(its parameters: {self.signature})"
                    )
        try:
            bound = self._parameters.bind(*args, **kwargs)
        except TypeError as e:
            raise TaskArgumentsError(f"{head}{e} (its parameters: {self.signature})") from None
        values = dict(bound.arguments)
        for name, param in params.items():
            if param.kind is param.VAR_KEYWORD and name in values:
                values.update(values.pop(name))
            elif param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY) and name in values:
                raise TaskArgumentsError(
                    f"{head}{shown(values[name])} would be passed by position "
                    f"({param.name!r}); a job's arguments are stored by name"
                )
        return values

    def bind(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], what: str = "args"
    ) -> tuple[dict[str, Any], str]:
        """The job's arguments, by name, and their JSON text, from a call's ``args`` and
        ``kwargs`` bound against the handler's signature. Defaults are not stored (the
        handler applies its own when it runs). ``what`` names the arguments in messages
        (``args.to[0]: ...``).

        Raises:
            TaskArgumentsError: an unexpected, missing or repeated argument; a value that
                fails its annotation (pydantic strict mode: ``"5"`` for an ``int`` is refused);
                a value JSON cannot store. The message names the task and the argument.
        """
        head = f"task {self.name!r}: " + ("" if what == "args" else f"{what}: ")
        fast, names, required = self._keywords
        keys = kwargs.keys()
        if (fast and not args and required <= keys and (names is None or keys <= names)
                and all(type(k) is str for k in keys)):  # fmt: skip
            values = dict(kwargs)  # the common call, by keyword: no inspect.bind
        else:
            values = self._bind_slowly(args, kwargs, what, head)
        for name, adapter in self._adapters.items():
            if name in values:
                try:
                    adapter.validate_python(values[name], strict=True)
                except ValidationError as e:
                    reason = "; ".join(err["msg"] for err in e.errors()[:3])
                    raise TaskArgumentsError(
                        f"{head}argument {name!r}={shown(values[name])}: "
                        f"{reason} (its parameters: {self.signature})"
                    ) from None
        try:
            return values, args_json(values, what)
        except InvalidArgumentError as e:
            raise TaskArgumentsError(f"task {self.name!r}: {e}") from None


def _is_context(annotation: Any, func: Callable[..., Any]) -> bool:
    if annotation is JobContext:
        return True
    if isinstance(annotation, str):  # from __future__ import annotations
        try:
            return typing.get_type_hints(func).get(_first_name(func)) is JobContext
        except Exception:  # noqa: BLE001 - unresolvable: judge by the name
            return annotation.rsplit(".", 1)[-1] == "JobContext"
    return False


def _first_name(func: Callable[..., Any]) -> str:
    return next(iter(inspect.signature(func).parameters))


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
