"""Schedules file (YAML) → validated, frozen pydantic models, with every problem reported at once.

File format::

    timezone: Europe/Berlin                 # optional default zone of the schedules, else UTC
    imports: [examples.newsletter.tasks]    # modules whose @task functions register
    schedules:
      - name: weekly_digest                 # required, unique, [A-Za-z0-9_.:-]+, <= 200 chars
        cron: "0 9 * * MON"                 # required, see scheduler.cron (quote it!)
        task: weekly_digest                 # required, a registered task after the imports
        args: {edition: weekly}             # optional keyword arguments, JSON values only
        timezone: UTC                       # optional, overrides the file default
        queue: default                      # optional
        priority: 0                         # optional int, lower runs first
        max_attempts: 5                     # optional int >= 1
        backoff_base_s: 2                   # optional seconds > 0
        backoff_max_s: 600                  # optional seconds > 0, >= backoff_base_s
        backoff_jitter: 0.1                 # optional, in [0, 1]
        misfire_policy: run_once            # optional: skip | run_once | run_all
        overlap_policy: allow               # optional: allow | skip | queue
        max_catch_up: 100                   # optional int >= 1: most missed runs (run_all)
        starting_deadline_s: 3600           # optional seconds > 0: later is missed, not run
        misfire_grace_s: 60                 # optional seconds >= 0: lateness that is no misfire
        enabled: true                       # optional, default true

:func:`load_config` never writes anything. It parses the YAML with a loader that remembers the
line of every key, imports the ``imports`` modules, and checks everything: YAML syntax,
duplicate keys (PyYAML would silently keep the last), unknown keys, types, duplicate schedule
names, cron expressions and time zones (:mod:`scheduler.cron`), registered task names, args
that PostgreSQL ``jsonb`` would reject (dates, sets, NaN/Infinity, ``\\u0000``) and args that do
not fit the task's signature. It then raises one :class:`~scheduler.errors.ConfigError` whose
``issues`` list every :class:`~scheduler.errors.ConfigIssue` (file, line, schedule, field,
reason), sorted by line; only a fully valid file yields a :class:`SchedulesConfig`. Issues of
an unnamed schedule use ``schedules[<index>]`` as the schedule name. Types are strict, strings
are never coerced (``max_attempts: "5"``, ``enabled: "yes"`` are errors). An empty file, or one
with only comments, is valid and schedules nothing.

Unset optional fields stay ``None``: the caller resolves queue/priority/max_attempts/backoff_*
from the task's ``@task(...)`` defaults, then from the service settings, and the policy fields
(misfire_policy ... misfire_grace_s) from the service settings.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import inspect
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from yaml.constructor import ConstructorError

from . import tasks as _tasks
from .cron import Cron, validate_timezone
from .errors import ConfigError, ConfigIssue, CronError
from .jobs import dotted_path as _dotted
from .jobs import json_problems

__all__ = ["MisfirePolicy", "OverlapPolicy", "ScheduleConfig", "SchedulesConfig"]
__all__ += ["load_config", "load_config_text"]

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", re.ASCII)
_INT32 = 2**31 - 1  # priority and max_attempts end up in PostgreSQL integer columns
_FILE_KEYS = ["imports", "schedules", "timezone"]
Path = tuple[str | int, ...]


def _canonical_hash(payload: Any) -> str:
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class MisfirePolicy(str, enum.Enum):
    """What to do with fire times missed by more than ``misfire_grace_s`` (see
    :mod:`scheduler.materialiser`): run none, the most recent one, or all (up to
    ``max_catch_up``)."""

    SKIP = "skip"
    RUN_ONCE = "run_once"
    RUN_ALL = "run_all"


class OverlapPolicy(str, enum.Enum):
    """What to do with a fire time whose schedule still has a pending or running job."""

    ALLOW = "allow"
    SKIP = "skip"
    QUEUE = "queue"


# In definition_hash() only when set: a schedule that does not use them keeps the hash it had
# before they existed, so replicas of both releases agree on config_hash.
_POLICY_FIELDS = [
    "misfire_policy",
    "overlap_policy",
    "max_catch_up",
    "misfire_grace_s",
    "starting_deadline_s",
]


class ScheduleConfig(BaseModel):
    """One declared schedule (frozen; strict types; unknown fields forbidden).

    ``timezone`` is the effective IANA zone (the schedule's own, else the file default, else
    ``"UTC"``). ``None`` in an optional field (all but name/cron/task/args/enabled) means
    "not set here". Durations (``*_s``) are seconds. Raises ``pydantic.ValidationError`` on
    invalid values (every check of the module docstring except task registration and
    signature).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str
    cron: str
    task: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)
    timezone: str = "UTC"
    queue: str | None = Field(default=None, min_length=1)
    priority: int | None = Field(default=None, ge=-_INT32 - 1, le=_INT32)
    max_attempts: int | None = Field(default=None, ge=1, le=_INT32)
    backoff_base_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    backoff_max_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    backoff_jitter: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    enabled: bool = True
    misfire_policy: MisfirePolicy | None = Field(default=None, strict=False)
    overlap_policy: OverlapPolicy | None = Field(default=None, strict=False)
    max_catch_up: int | None = Field(default=None, ge=1, le=_INT32)
    misfire_grace_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    starting_deadline_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"schedule name {value!r} must be 1-200 characters from letters, digits and _ . : -"
            )
        return value

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        return Cron(value).expression  # CronError is a ValueError; validity is zone-independent

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        validate_timezone(value)
        return value

    @field_validator("args", mode="before")
    @classmethod
    def _check_args(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, dict):
            problems = [f"{_dotted(p)}: {r}" for p, r in json_problems(value, ("args",))]
            if problems:
                raise ValueError("; ".join(problems))
            return json.loads(json.dumps(value))  # plain, detached JSON values
        return value

    @field_validator("misfire_policy", "overlap_policy", mode="before")
    @classmethod
    def _check_policy(cls, value: Any, info: ValidationInfo) -> Any:
        kind = MisfirePolicy if info.field_name == "misfire_policy" else OverlapPolicy
        allowed = [m.value for m in kind]
        if value is None or isinstance(value, kind):
            return value
        if isinstance(value, str) and value in allowed:
            return kind(value)
        close = difflib.get_close_matches(str(value).lower(), allowed, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{_short(value)} is not one of {', '.join(allowed)}{hint}")

    @field_validator("backoff_max_s")
    @classmethod
    def _check_backoff_order(cls, value: float | None, info: ValidationInfo) -> float | None:
        base = info.data.get("backoff_base_s")
        if value is not None and base is not None and base > value:
            raise ValueError(f"backoff_max_s ({value}) is smaller than backoff_base_s ({base})")
        return value

    def definition_hash(self) -> str:
        """SHA-256 hex of the canonical JSON (sorted keys, no whitespace) of every field, the
        policy fields only when set; stable across runs and processes, different whenever
        any field differs."""
        data = self.model_dump(mode="json")
        for key in _POLICY_FIELDS:
            if data[key] is None:
                del data[key]
        return _canonical_hash(["scheduler.schedule/1", data])

    def cron_obj(self) -> Cron:
        """The :class:`~scheduler.cron.Cron` of this schedule in its effective time zone."""
        return Cron(self.cron, self.timezone)


class SchedulesConfig(BaseModel):
    """A whole validated schedules file (frozen): ``path`` as given, the file's default
    ``timezone`` (``"UTC"`` when unset), the ``imports`` and the ``schedules`` in file order
    (names unique, else ``pydantic.ValidationError``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    path: str
    timezone: str = "UTC"
    imports: list[str] = Field(default_factory=list)
    schedules: list[ScheduleConfig] = Field(default_factory=list)

    @field_validator("schedules")
    @classmethod
    def _unique_names(cls, value: list[ScheduleConfig]) -> list[ScheduleConfig]:
        names = [s.name for s in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate schedule names: {', '.join(duplicates)}")
        return value

    def config_hash(self) -> str:
        """SHA-256 hex over the schedules' definition hashes, independent of their order in
        the file; replicas started with different schedules disagree on it."""
        pairs = sorted([s.name, s.definition_hash()] for s in self.schedules)
        return _canonical_hash(["scheduler.config/1", pairs])


# -- YAML with line numbers ------------------------------------------------------------------


class _Mapping(dict):  # type: ignore[type-arg]
    line: int  # 1-based, like every line below
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int, int]]  # (key, line, line of the first occurrence)


class _Sequence(list):  # type: ignore[type-arg]
    line: int
    item_lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences remember their line numbers."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> Iterator[_Mapping]:
    data = _Mapping()
    data.line, data.key_lines, data.duplicates = node.start_mark.line + 1, {}, []
    yield data
    explicit = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # '<<' merges: merged pairs come first and may be overridden
    merged = len(node.value) - explicit
    from_merge: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            context, problem = "while constructing a mapping", "found unhashable key"
            raise ConstructorError(context, node.start_mark, problem, key_node.start_mark) from None
        line = key_node.start_mark.line + 1
        if index < merged:
            from_merge.add(key)
        else:
            if key in data and key not in from_merge:
                data.duplicates.append((key, line, data.key_lines[key]))
            from_merge.discard(key)
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = line


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> Iterator[_Sequence]:
    data = _Sequence()
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_sequence(node))


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _line_of(node: Any, path: tuple[Any, ...], default: int) -> int:
    """Line of the deepest key or item along ``path`` that the loader recorded."""
    line = default
    for part in path:
        if isinstance(node, _Mapping) and part in node.key_lines:
            line, node = node.key_lines[part], node[part]
        elif isinstance(node, _Sequence) and isinstance(part, int) and 0 <= part < len(node):
            line, node = node.item_lines[part], node[part]
        else:
            break
    return line


def _unknown_key(key: Any, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {str(key)!r}{hint}; allowed: {', '.join(allowed)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- loading ---------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], *, import_tasks: bool = True) -> SchedulesConfig:
    """Read, parse and validate the UTF-8 YAML file ``path`` (see the module docstring).

    ``import_tasks=True`` imports the ``imports`` modules and checks that every ``task`` is
    registered and accepts its ``args``; with False nothing is imported and tasks are not
    checked (for linting where the task code is not importable). Returns the validated
    :class:`SchedulesConfig`; raises :class:`ConfigError` listing every problem (line 0 when
    the file cannot be read).
    """
    filename = os.fspath(path)
    try:
        with open(filename, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [ConfigIssue(filename, 0, None, None, f"cannot read file: {exc}")]
        ) from None
    return load_config_text(text, filename, import_tasks=import_tasks)


def load_config_text(
    text: str, filename: str = "<string>", *, import_tasks: bool = True
) -> SchedulesConfig:
    """Like :func:`load_config` for YAML already in memory; ``filename`` labels the issues."""
    return _Checker(filename, import_tasks).load(text)


class _Checker:
    def __init__(self, filename: str, import_tasks: bool):
        self.filename, self.import_tasks = filename, import_tasks
        self.issues: list[ConfigIssue] = []
        self.default_tz = "UTC"
        self.registered: dict[str, _tasks.Task] = {}
        self.seen: dict[str, int] = {}  # schedule name -> line of its first definition

    def issue(self, line: int, schedule: str | None, field: str | None, reason: str) -> None:
        self.issues.append(ConfigIssue(self.filename, line, schedule, field, reason))

    def error(self) -> ConfigError:
        return ConfigError(sorted(self.issues, key=lambda i: i.line))

    def load(self, text: str) -> SchedulesConfig:
        data = self.parse(text)
        if data is None:  # empty, or only comments: nothing scheduled
            return SchedulesConfig(path=self.filename)
        for key in data:
            if key not in _FILE_KEYS:
                self.issue(data.key_lines[key], None, str(key), _unknown_key(key, _FILE_KEYS))
        self.duplicates(data, (), None, set())
        self.default_tz = default_tz = self.file_timezone(data)
        imports = self.imports(data)
        schedules = data.get("schedules")
        if "schedules" not in data:
            reason = "required key 'schedules' is missing (a list; use [] for none)"
            self.issue(data.line, None, "schedules", reason)
        elif schedules is not None and not isinstance(schedules, _Sequence):
            reason = f"must be a list of schedules, not {_short(schedules)}"
            self.issue(data.key_lines["schedules"], None, "schedules", reason)
        models: list[ScheduleConfig] = []
        if isinstance(schedules, _Sequence):
            self.registered, self.seen = _tasks.registered_tasks(), {}
            for index, item in enumerate(schedules):
                label, line = f"schedules[{index}]", schedules.item_lines[index]
                if not isinstance(item, _Mapping):
                    reason = "each schedule must be a mapping with at least name, cron and task"
                    self.issue(line, label, None, f"{reason}, not {_short(item)}")
                    continue
                model = self.schedule(item, label, line)
                models += [model] if model is not None else []
        if self.issues:
            raise self.error()
        return SchedulesConfig(
            path=self.filename, timezone=default_tz, imports=imports, schedules=models
        )

    def parse(self, text: str) -> _Mapping | None:
        try:
            data = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            reason = f"YAML syntax error: {exc.problem}"
            reason += f" ({exc.context})" if exc.context else ""
            if "alias" in reason:
                reason += "; a value starting with '*' must be quoted, e.g. cron: \"*/5 * * * *\""
            self.issue(mark.line + 1 if mark else 0, None, None, reason)
            raise self.error() from None
        except yaml.YAMLError as exc:  # ReaderError: control characters in the file
            position = getattr(exc, "position", None)
            line = text.count("\n", 0, position) + 1 if isinstance(position, int) else 0
            self.issue(line, None, None, f"YAML error: {exc}")
            raise self.error() from None
        if data is not None and not isinstance(data, _Mapping):
            kind = "list" if isinstance(data, list) else type(data).__name__
            reason = f"the top level is a {kind}; expected a mapping with keys "
            self.issue(getattr(data, "line", 0), None, None, reason + ", ".join(_FILE_KEYS))
            raise self.error()
        return data

    def file_timezone(self, data: _Mapping) -> str:
        value = data.get("timezone")
        if value is None:
            return "UTC"
        try:
            if not isinstance(value, str):
                raise CronError(f"must be an IANA time zone name, not {_short(value)}")
            validate_timezone(value)
        except CronError as exc:
            self.issue(data.key_lines["timezone"], None, "timezone", str(exc))
            return "UTC"  # placeholder so the schedules are still checked
        return value

    def imports(self, data: _Mapping) -> list[str]:
        raw = data.get("imports")
        if raw is not None and not isinstance(raw, _Sequence):
            reason = f"must be a list of module names, not {_short(raw)}"
            self.issue(data.key_lines["imports"], None, "imports", reason)
        if not isinstance(raw, _Sequence):
            return []
        modules: list[str] = []
        for module, line in zip(raw, raw.item_lines, strict=True):
            if not isinstance(module, str) or not _MODULE.match(module):
                self.issue(line, None, "imports", f"{_short(module)} is not a dotted module name")
                continue
            modules.append(module)
            try:
                if self.import_tasks:
                    _tasks.import_modules([module])
            except Exception as exc:  # noqa: BLE001 - ImportError, or a broken task module
                reason = f"cannot import module {module!r}: {type(exc).__name__}: {exc}"
                self.issue(line, None, "imports", reason)
        return modules

    def schedule(self, item: _Mapping, label: str, item_line: int) -> ScheduleConfig | None:
        registered, seen = self.registered, self.seen
        name = item.get("name")
        schedule = name if isinstance(name, str) and name else label
        self.duplicates(item, (), schedule, set())
        if isinstance(name, str) and name in seen:
            reason = f"duplicate schedule name {name!r} (first defined at line {seen[name]})"
            self.issue(item.key_lines["name"], schedule, "name", reason)
        elif isinstance(name, str):
            seen[name] = item.key_lines["name"]
        payload = {"timezone": self.default_tz, **item}
        if isinstance(item.get("args"), dict):
            problems = list(json_problems(item["args"], ("args",)))
            for path, reason in problems:
                self.issue(_line_of(item, path, item_line), schedule, _dotted(path), reason)
            payload["args"] = {} if problems else item["args"]  # reported precisely above
        task = item.get("task")
        if self.import_tasks and isinstance(task, str) and task and task not in registered:
            known = ", ".join(sorted(registered)) or "none (list their modules under 'imports:')"
            reason = f"task {task!r} is not registered; registered tasks: {known}"
            self.issue(item.key_lines["task"], schedule, "task", reason)
        try:
            model = ScheduleConfig.model_validate(payload)
        except ValidationError as exc:
            for error in exc.errors():
                loc = tuple(error["loc"])
                line = _line_of(item, loc, item_line)
                self.issue(line, schedule, _dotted(loc) or None, self.reason(error))
            return None
        if self.import_tasks and model.task in registered:
            func = registered[model.task].func
            try:
                inspect.signature(func).bind(**model.args)
            except TypeError as exc:
                reason = f"args do not fit {model.task}{inspect.signature(func)}: {exc}"
                self.issue(item.key_lines.get("args", item_line), schedule, "args", reason)
        return model

    @staticmethod
    def reason(error: Any) -> str:
        kind, loc = error["type"], tuple(error["loc"])
        if kind == "missing":
            return "required field is missing"
        if kind == "extra_forbidden":
            return _unknown_key(loc[-1], list(ScheduleConfig.model_fields))
        if kind == "value_error":
            return str(error["ctx"]["error"])
        if kind == "dict_type" and loc == ("args",):
            return f"args must be a mapping of keyword arguments, not {_short(error['input'])}"
        value = _short(error["input"])
        if kind in ("int_type", "float_type", "bool_type") and isinstance(error["input"], str):
            fix = "true or false" if kind == "bool_type" else "a number"
            return f"{error['msg']}, not the string {value} (write {fix} without quotes)"
        return f"{error['msg']} (got {value})"

    def duplicates(self, node: Any, path: Path, schedule: str | None, active: set[int]) -> None:
        """Report duplicate keys anywhere below ``node`` (not descending into the top-level
        ``schedules``, whose items are walked with their own names)."""
        if id(node) in active or not isinstance(node, (_Mapping, _Sequence)):
            return
        active.add(id(node))
        if isinstance(node, _Mapping):
            for key, line, first in node.duplicates:
                reason = (
                    f"duplicate key {key!r} (first at line {first}); YAML would keep only the last"
                )
                self.issue(line, schedule, _dotted((*path, str(key))), reason)
            for key, value in node.items():
                if not (path == () and schedule is None and key == "schedules"):
                    self.duplicates(value, (*path, str(key)), schedule, active)
        else:
            for index, value in enumerate(node):
                self.duplicates(value, (*path, index), schedule, active)
        active.discard(id(node))
