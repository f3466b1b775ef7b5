"""Task commands: the tasks this process knows, and importing the task modules (for
``tasks list`` and ``scheduler enqueue``, :mod:`.enqueue`).

    scheduler tasks list [--config FILE] [--import MODULE ...] [--json]

Task modules are imported as ``scheduler run`` imports them: every ``--import MODULE``, then
the ``imports:`` of ``--config FILE``. The file is validated without importing first (a bad
file is a :class:`~scheduler.errors.ConfigError`, exit 1, as for ``run``), so a schedule
naming a task that does not register does not hide the tasks that do. A module that cannot be
imported, or raises while importing, is one line on stderr and exit 2.

``tasks list`` needs no database.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable
from typing import Any

from .. import limits, tasks
from ..config import load_config
from ..errors import InvalidArgumentError
from ..registry import TaskSpec
from ..settings import Settings
from .common import one_line, settings_from, table

# (Task attribute, its fallback: the service default of preparation.py / settings.py, or None)
POLICIES: list[tuple[str, Callable[[Settings], Any]]] = [
    ("queue", lambda s: "default"),
    ("priority", lambda s: 0),
    ("max_attempts", lambda s: s.max_attempts),
    ("backoff_base_s", lambda s: s.backoff_base_s),
    ("backoff_max_s", lambda s: s.backoff_max_s),
    ("backoff_jitter", lambda s: s.backoff_jitter),
    ("timeout_s", lambda s: None),  # no limit
]
BACKOFF = ["backoff_base_s", "backoff_max_s", "backoff_jitter"]
COLUMNS = ["name", "queue", "priority", "max_attempts", "backoff base/max/jitter", "timeout_s",
           "kind", "signature"]  # fmt: skip


# ---- importing task modules ------------------------------------------------------------------


def import_task_modules(args: argparse.Namespace) -> list[str]:
    """Import the modules of ``--import`` (``args.imports``) then those of ``--config``'s
    ``imports:`` (``args.config``), and return their names in that order.

    Raises:
        InvalidArgumentError: a module cannot be imported or raised while importing (the
            message names it, where it was given, and the exception on one line).
        ConfigError: ``--config`` cannot be read or is invalid (every issue listed).
    """
    given = [(module, "--import") for module in args.imports or []]
    if args.config:
        config = load_config(args.config, import_tasks=False)  # ConfigError: exit 1 in main
        given += [(module, f"{args.config}: imports") for module in config.imports]
    for module, where in given:
        try:
            tasks.import_modules([module])
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any error of a user's module
            what = "cannot import it:" if isinstance(exc, ImportError) else "importing it raised"
            raise InvalidArgumentError(
                f"{where} {limits.shown(module)}: {what} {type(exc).__name__}: {one_line(exc)}"
            ) from None
    return [module for module, _ in given]


# ---- tasks list ------------------------------------------------------------------------------


class _Shown:
    """An annotation left as text (it could not be evaluated), shown without quotes."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def handler_signature(task: TaskSpec) -> str:
    """``str(inspect.signature(task.func))`` as callers of the task see it: without the
    first parameter when the worker fills it with the job's :class:`~scheduler.JobContext`
    (``task.takes_context``); annotations that cannot be evaluated are shown as written.
    ``"(?)"`` when the handler has no signature. Never raises."""
    try:
        try:
            sig = inspect.signature(task.func, eval_str=True)
        except Exception:  # noqa: BLE001 - a NameError of a TYPE_CHECKING import, and the like
            sig = inspect.signature(task.func)
        params = list(sig.parameters.values())[1 if task.takes_context else 0 :]
        params = [
            p.replace(annotation=_Shown(p.annotation)) if isinstance(p.annotation, str) else p
            for p in params
        ]
        returns = sig.return_annotation
        if isinstance(returns, str):
            returns = _Shown(returns)
        return str(sig.replace(parameters=params, return_annotation=returns))
    except Exception:  # noqa: BLE001 - no signature (a builtin), a hostile annotation's repr
        return "(?)"


def describe_task(task: TaskSpec, settings: Settings) -> dict[str, Any]:
    """``task`` as a JSON-able dict: ``name``, ``handler`` (module.qualname), the policies
    (``queue``, ``priority``, ``max_attempts``, ``backoff_base_s`` / ``backoff_max_s``
    seconds, ``backoff_jitter``, ``timeout_s`` seconds or ``None`` for no limit) with the
    service default of ``settings`` where the task sets none, ``defaults`` (the policies that
    are such defaults), ``kind`` (``"sync"`` or ``"async"``) and ``signature`` (see
    :func:`handler_signature`)."""
    func = task.func
    row: dict[str, Any] = {
        "name": task.name,
        "handler": f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', '?')}",
    }
    defaults = []
    for attr, fallback in POLICIES:
        value = getattr(task, attr)
        if value is None:
            defaults.append(attr)
            value = fallback(settings)
        row[attr] = value
    row.update(defaults=defaults, kind="async" if task.is_async else "sync")
    row["signature"] = handler_signature(task)
    return row


def _number(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _table_row(row: dict[str, Any]) -> dict[str, Any]:
    def marked(attr: str) -> str:
        text = _number(row[attr])
        return f"{text} (default)" if attr in row["defaults"] else text

    out = {c: row.get(c) for c in COLUMNS}
    out.update({attr: marked(attr) for attr in ("queue", "priority", "max_attempts", "timeout_s")})
    backoff = "/".join(_number(row[attr]) for attr in BACKOFF)
    defaulted = [attr.split("_")[1] for attr in BACKOFF if attr in row["defaults"]]
    if len(defaulted) == len(BACKOFF):
        backoff += " (default)"
    elif defaulted:
        backoff += f" (default {', '.join(defaulted)})"
    out["backoff base/max/jitter"] = backoff
    return out


def cmd_tasks(args: argparse.Namespace) -> int:
    settings = settings_from(args)  # the service defaults shown for unset policies
    modules = import_task_modules(args)
    rows = [describe_task(t, settings) for _, t in sorted(tasks.registered_tasks().items())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        where = f"by {', '.join(modules)}" if modules else "(give --import MODULE or --config FILE)"
        print(f"no tasks registered {where}", file=sys.stderr)
        return 0
    print(table([_table_row(r) for r in rows], COLUMNS))
    return 0


# ---- parsers ---------------------------------------------------------------------------------


def add_import_options(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``--import MODULE``: the task modules ``tasks list`` and
    ``enqueue`` import (see :func:`import_task_modules`)."""
    p.add_argument("--config", help="YAML schedules file whose `imports` are imported")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import MODULE so its @task functions register (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="JSON output for scripts")


def add_parsers(sub: Any) -> None:
    """Register ``tasks list`` on the ``scheduler`` parser (``enqueue``:
    :func:`.enqueue.add_parsers`)."""
    p = sub.add_parser("tasks", help="the tasks registered by the task modules")
    tsub = p.add_subparsers(dest="action", required=True)
    q = tsub.add_parser(
        "list", help="every registered task: policies ('(default)': the service's), signature"
    )
    add_import_options(q)
    p.set_defaults(func=cmd_tasks)
