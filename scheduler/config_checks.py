"""One schedule's checks, the same for an item of a schedules file's ``schedules:`` list and
for a schedule given at runtime (:func:`scheduler.config.check_schedule`): its fields against
:class:`~scheduler.config_models.ScheduleConfig` (strict types, reasons that say how to fix
them), exactly one of ``cron`` / ``every``, duplicate names and keys, its ``task`` and
``on_alert`` registered, its ``args`` JSON values bound as the API binds a call
(:meth:`~scheduler.binding.ArgumentBinding.bind`: a ``JobContext`` parameter is no argument,
annotations are checked in pydantic strict mode, a misspelt name gets a did-you-mean). Every problem
is collected as a :class:`~scheduler.errors.ConfigIssue` with its line, and raised at once as
one :class:`~scheduler.errors.ConfigError` (:mod:`scheduler.config` checks the rest of a file).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from . import registry as _tasks
from .arguments import dotted_path as _dotted
from .arguments import json_problems
from .config_models import (
    _FIELD_MAX,
    _ONE_TIMING,
    _REASON_MAX,
    _START_CRON,
    _TIMING_FIELDS,
    MAX_ISSUES,
    Path,
    ScheduleConfig,
)
from .config_yaml import LineMapping, LineSequence, line_of, short
from .errors import ConfigError, ConfigIssue, TaskArgumentsError
from .limits import check_schedule_name, check_task_name, storable_text


def _valid(check: Callable[[Any], Any], value: Any) -> bool:
    try:
        check(value)
    except ValueError:
        return False
    return True


def _problem(check: Callable[[Any], Any], value: Any) -> str:
    """What ``check`` says is wrong with ``value`` (``""``: nothing)."""
    try:
        check(value)
    except ValueError as exc:
        return str(exc)
    return ""


def _unknown_key(key: Any, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(key)[:100], allowed, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {short(str(key))}{hint}; allowed: {', '.join(allowed)}"


class ScheduleChecker:
    """Collects the issues of one file or runtime schedule (``filename`` labels them) and
    checks schedules; :mod:`scheduler.config` adds the file-level checks."""

    def __init__(self, filename: str, import_tasks: bool):
        self.filename, self.import_tasks = filename, import_tasks
        self.issues: list[ConfigIssue] = []
        self.default_tz = "UTC"
        self.registered: dict[str, _tasks.TaskSpec] = {}
        self.seen: dict[str, int] = {}  # schedule name -> line of its first definition
        self.walked: set[int] = set()  # ids of the mappings and lists checked for duplicates

    def issue(self, line: int, schedule: str | None, field: str | None, reason: str) -> None:
        """Record a problem; field and reason may quote the file: bounded and printable."""
        field = None if field is None else storable_text(field, _FIELD_MAX)
        reason = storable_text(reason, _REASON_MAX)
        self.issues.append(ConfigIssue(self.filename, line, schedule, field, reason))

    def error(self) -> ConfigError:
        issues = sorted(self.issues, key=lambda i: i.line)
        if len(issues) > MAX_ISSUES:
            more = f"... and {len(issues) - MAX_ISSUES:,} more problems not listed"
            issues = [*issues[:MAX_ISSUES], ConfigIssue(self.filename, 0, None, None, more)]
        return ConfigError(issues)

    def schedule(self, item: LineMapping, label: str, item_line: int) -> ScheduleConfig | None:
        registered, seen = self.registered, self.seen
        name = item.get("name")
        schedule = name if _valid(check_schedule_name, name) else label  # printable, short
        self.duplicates(item, (), schedule)
        if isinstance(name, str) and name in seen:
            reason = f"duplicate schedule name {short(name)} (first defined at line {seen[name]})"
            self.issue(item.key_lines["name"], schedule, "name", reason)
        elif isinstance(name, str):
            seen[name] = item.key_lines["name"]
        fields = ScheduleConfig.model_fields  # unknown keys here: pydantic chokes on odd ones
        unknown = [key for key in item if key not in fields]
        for key in unknown:
            self.issue(item.key_lines[key], schedule, str(key), _unknown_key(key, list(fields)))
        payload = {"timezone": self.default_tz, **{k: v for k, v in item.items() if k in fields}}
        if isinstance(item.get("args"), dict):
            problems = list(json_problems(item["args"], ("args",)))
            for path, reason in problems:
                self.issue(line_of(item, path, item_line), schedule, _dotted(path), reason)
            payload["args"] = {} if problems else item["args"]  # reported precisely above
        task = item.get("task")
        if self.import_tasks and isinstance(task, str) and task and task not in registered:
            known = ", ".join(sorted(registered)) or "none (list their modules under 'imports:')"
            reason = f"task {short(task)} is not registered; registered tasks: {known}"
            self.issue(item.key_lines["task"], schedule, "task", reason)
        on_alert = item.get("on_alert")  # a task too (scheduler.alerts): checked the same way
        if (
            self.import_tasks
            and isinstance(on_alert, str)
            and on_alert not in registered
            and _valid(check_task_name, on_alert)  # else the model's own check reports it
        ):
            hint = _tasks.close_matches(on_alert) or (
                "; registered tasks: "
                + (", ".join(sorted(registered)) or "none (list their modules under 'imports:')")
            )
            reason = f"on_alert task {short(on_alert)} is not registered{hint}"
            self.issue(item.key_lines["on_alert"], schedule, "on_alert", reason)
        timing = self.timing(item, schedule, item_line)
        try:
            model = ScheduleConfig.model_validate(payload)
        except ValidationError as exc:
            for error in exc.errors():
                loc = tuple(error["loc"])
                if not loc and timing:
                    continue  # _check_timing's problem, reported with its field by timing()
                line = line_of(item, loc, item_line)
                self.issue(line, schedule, _dotted(loc) or None, self.reason(error))
            return None
        if self.import_tasks and model.task in registered:
            spec = registered[model.task]
            try:
                spec.bind((), model.args)  # as the API binds a call: the same rules and words
            except TaskArgumentsError as exc:
                detail = str(exc).removeprefix(f"task {spec.name!r}: ")
                reason = f"args do not fit {model.task}: {detail}"
                self.issue(item.key_lines.get("args", item_line), schedule, "args", reason)
        return model

    def timing(self, item: LineMapping, schedule: str | None, item_line: int) -> bool:
        """Report a schedule with both or neither of cron / every, or a start_at with cron,
        at the line of the field concerned; True if there was such a problem."""
        has = {key: item.get(key) is not None for key in _TIMING_FIELDS}
        lines = {key: item.key_lines.get(key, item_line) for key in _TIMING_FIELDS}
        if has["cron"] and has["every"]:
            where = f" (cron is at line {lines['cron']})" if lines["cron"] else ""
            reason = f"{_ONE_TIMING}, not both{where}"
            self.issue(lines["every"], schedule, "every", reason)
        elif not (has["cron"] or has["every"]):
            key = "every" if "every" in item and "cron" not in item else "cron"  # every: null
            self.issue(lines[key], schedule, key, f"required field is missing: {_ONE_TIMING}")
        elif has["start_at"] and not has["every"]:
            self.issue(lines["start_at"], schedule, "start_at", _START_CRON)
        else:
            return False
        return True

    @staticmethod
    def reason(error: Any) -> str:
        kind, loc = error["type"], tuple(error["loc"])
        if kind == "missing":
            return "required field is missing"
        if kind == "value_error":
            return str(error["ctx"]["error"])
        if kind == "dict_type" and loc == ("args",):
            return f"args must be a mapping of keyword arguments, not {short(error['input'])}"
        value = short(error["input"])
        if kind in ("int_type", "float_type", "bool_type") and isinstance(error["input"], str):
            fix = "true or false" if kind == "bool_type" else "a number"
            return f"{error['msg']}, not the string {value} (write {fix} without quotes)"
        return f"{error['msg']} (got {value})"

    def duplicates(self, node: Any, path: Path, schedule: str | None) -> None:
        """Report duplicate keys anywhere below ``node`` (not descending into the top-level
        ``schedules``, whose items are walked with their own names). Each mapping is walked
        once, however many aliases share it: linear in the file, each duplicate reported once."""
        if id(node) in self.walked or not isinstance(node, (LineMapping, LineSequence)):
            return
        self.walked.add(id(node))
        if isinstance(node, LineMapping):
            for key, line, first in node.duplicates:
                reason = f"duplicate key {short(key)} (first at line {first}); YAML would keep"
                self.issue(line, schedule, _dotted((*path, str(key))), reason + " only the last")
            for key, value in node.items():
                if not (path == () and schedule is None and key == "schedules"):
                    self.duplicates(value, (*path, str(key)), schedule)
        else:
            for index, value in enumerate(node):
                self.duplicates(value, (*path, index), schedule)
