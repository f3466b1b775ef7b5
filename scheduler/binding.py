"""Binding a call's arguments to a task's handler: the signature callers bind against
(without the :class:`~scheduler.job_context.JobContext` parameter), by keyword without
``inspect`` for the common call, the annotations checked by pydantic in strict mode, and the
reasons a call does not fit (unexpected names with a did-you-mean, missing or repeated
arguments, values JSON cannot store). :class:`ArgumentBinding` is a base of
:class:`scheduler.registry.TaskSpec`.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import typing
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .arguments import args_json
from .errors import InvalidArgumentError, TaskArgumentsError
from .job_context import JobContext
from .limits import shown


class ArgumentBinding:
    """How a call's arguments bind to ``func`` (a base of :class:`~scheduler.registry.
    TaskSpec`, whose ``name`` and ``func`` fields it reads)."""

    name: str
    func: Callable[..., Any]

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
