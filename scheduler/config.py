"""Schedules file (YAML) → validated, frozen pydantic models, with every problem reported at once.

File format::

    timezone: Europe/Berlin                 # optional default zone of the schedules, else UTC
    imports: [examples.newsletter.tasks]    # modules whose @task functions register
    schedules:
      - name: weekly_digest                 # required, unique, [A-Za-z0-9_.:-]+, <= 200 chars
        cron: "0 9 * * MON"                 # cron or every (exactly one), see scheduler.cron
        # every: 90s                        # interval: 90s 15m 2h 1d 1h30m PT90S or seconds (>= 1)
        # start_at: 2025-01-01T09:00:00Z    # every only: first fire time, with offset
        task: weekly_digest                 # required, a registered task after the imports
        args: {edition: weekly}             # optional keyword arguments, JSON values only
        timezone: UTC                       # optional, overrides the file default
        queue: default                      # optional, [A-Za-z0-9_.:/-]+, <= 100 chars
        priority: 0                         # optional int, lower runs first
        max_attempts: 5                     # optional int >= 1
        backoff_base_s: 2                   # optional seconds > 0
        backoff_max_s: 600                  # optional seconds > 0, >= backoff_base_s
        backoff_jitter: 0.1                 # optional, in [0, 1]
        misfire_policy: run_once            # optional: skip | run_once | run_all
        overlap_policy: allow               # optional: allow|skip|queue|buffer_one|cancel_previous
        max_catch_up: 100                   # optional int >= 1: most missed runs (run_all)
        starting_deadline_s: 3600           # optional seconds > 0: later is missed, not run
        misfire_grace_s: 60                 # optional seconds >= 0: lateness that is no misfire
        alert_after_s: 900                  # optional seconds > 0: dead-man (scheduler.alerts)
        alert_on_failures: 3                # optional int 1-1000: consecutive failed runs
        pause_on_failures: 10               # optional int 1-1000: ... that pause the schedule
        on_alert: notify_ops                # optional task enqueued per incident opened/closed
        enabled: true                       # optional, default true

:func:`load_config` never writes anything. It parses the YAML with a loader that remembers the
line of every key, imports the ``imports`` modules, and checks everything: YAML syntax,
duplicate keys (PyYAML would silently keep the last), unknown keys, types, duplicate schedule
names, cron expressions and time zones (:mod:`scheduler.cron`), intervals and start instants
(:mod:`scheduler.interval`; exactly one of ``cron`` / ``every``), registered task names, args
that PostgreSQL ``jsonb`` would reject (dates, sets, NaN/Infinity, ``\\u0000``) and args that do
not fit the task's signature. It then raises one :class:`~scheduler.errors.ConfigError` whose
``issues`` list every :class:`~scheduler.errors.ConfigIssue` (file, line, schedule, field,
reason), sorted by line; only a fully valid file yields a :class:`SchedulesConfig`. Issues of
an unnamed schedule use ``schedules[<index>]`` as the schedule name. Types are strict, strings
are never coerced (``max_attempts: "5"``, ``enabled: "yes"`` are errors). An empty file, or one
with only comments, is valid and schedules nothing. Schedule, task and queue names follow the
bounds of :mod:`scheduler.limits`, the same as the Python API's.

Hostile files are refused quickly, before anything is built from them:

* a file larger than :data:`MAX_FILE_BYTES` (10 MiB) is refused without reading the rest
  (:func:`load_config_text`: text longer than that many characters); bytes that are not UTF-8
  and characters YAML does not allow (NUL and other control characters, unpaired surrogates)
  are refused with their line;
* a document with more than :data:`MAX_VALUES` (1,000,000) values (keys, values, lists and
  mappings), or nested deeper than :data:`MAX_DEPTH` (100) lists and mappings, counting what
  aliases (``*name``) expand to: YAML shares an anchored value between its aliases, but every
  check after parsing, the database and the tasks see it expanded, so a few hundred bytes of
  nested aliases ("billion laughs") would cost minutes and gigabytes. The node graph is
  measured once per distinct node (linear in the file), then built. An alias used inside its
  own anchor (a recursive value) is refused too: JSON cannot hold it. Ordinary anchors and
  merge keys (``<<: *defaults``) are unaffected;
* integer literals longer than 1,000 characters, cron expressions longer than 1,000, time
  zone names longer than 100, module names longer than 255 characters and more than 1,000
  ``imports`` (each is an import attempt); values YAML cannot build (``!!int abc``, the date
  ``2025-13-45``) are issues with their line, never a traceback.

At most :data:`MAX_ISSUES` (1,000) issues are listed, then one saying how many more there are;
reasons are cut to 2,000 characters and never hold NUL or unpaired surrogates (they print).

Unset optional fields stay ``None``: the caller resolves queue/priority/max_attempts/backoff_*
from the task's ``@task(...)`` defaults, then from the service settings, and the policy fields
(misfire_policy ... misfire_grace_s) from the service settings.

The checks of one schedule, shared with :func:`check_schedule`, are
:mod:`scheduler.config_checks`; the models :mod:`scheduler.config_models`; the YAML loader and
its bounds :mod:`scheduler.config_yaml`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from . import registry as _tasks
from .arguments import dotted_path as _dotted
from .config_checks import ScheduleChecker, _problem, _unknown_key, _valid
from .config_models import (
    _FILE_KEYS,
    _IMPORTS_MAX,
    _MODULE,
    _MODULE_MAX,
    _REASON_MAX,
    _ZONE_MAX,
    MAX_FILE_BYTES,
    MAX_ISSUES,
    MisfirePolicy,
    OverlapPolicy,
    ScheduleConfig,
    SchedulesConfig,
    _bounded,
)
from .config_yaml import (
    MAX_DEPTH,
    MAX_VALUES,
    LineMapping,
    LineSequence,
    Loader,
    measure,
    prescan,
    short,
)
from .cron import validate_timezone
from .errors import ConfigError, ConfigIssue, CronError, InvalidArgumentError, InvalidScheduleError
from .limits import check_queue, storable_text
from .queue_limits import LIMIT_FIELDS, QUEUES_MAX, QueueLimits, check_limit, check_queue_limits

__all__ = ["MisfirePolicy", "OverlapPolicy", "ScheduleConfig", "SchedulesConfig"]
__all__ += ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_ISSUES", "MAX_VALUES"]
__all__ += ["load_config", "load_config_text"]


# -- loading ---------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], *, import_tasks: bool = True) -> SchedulesConfig:
    """Read, parse and validate the UTF-8 YAML file ``path`` (see the module docstring).

    ``import_tasks=True`` imports the ``imports`` modules and checks that every ``task`` is
    registered and accepts its ``args``; with False nothing is imported and tasks are not
    checked (for linting where the task code is not importable). Returns the validated
    :class:`SchedulesConfig`; raises :class:`ConfigError` listing every problem (line 0 when
    the file cannot be read, or is larger than :data:`MAX_FILE_BYTES`: then no more than that
    is read, so a device or a runaway file cannot exhaust memory). Never touches a database.
    """
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        reason = storable_text(f"cannot read file: {exc}", _REASON_MAX)
        raise ConfigError([ConfigIssue(filename, 0, None, None, reason)]) from None
    if len(raw) > MAX_FILE_BYTES:
        reason = f"the file is larger than {MAX_FILE_BYTES:,} bytes (10 MiB); not read"
        raise ConfigError([ConfigIssue(filename, 0, None, None, reason)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        reason = f"the file is not UTF-8 text: byte 0x{raw[exc.start]:02x} cannot be decoded"
        raise ConfigError([ConfigIssue(filename, line, None, None, reason)]) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it
    return load_config_text(text, filename, import_tasks=import_tasks)


def load_config_text(
    text: str, filename: str = "<string>", *, import_tasks: bool = True
) -> SchedulesConfig:
    """Like :func:`load_config` for YAML already in memory; ``filename`` labels the issues.
    Text longer than :data:`MAX_FILE_BYTES` characters is refused unparsed."""
    return _Checker(filename, import_tasks).load(text)


def check_schedule(
    fields: Mapping[str, Any], *, source: str, import_tasks: bool | None = None
) -> ScheduleConfig:
    """Validate one schedule given as a mapping (the runtime schedule API and
    ``scheduler schedules create``): exactly the checks and messages of an item of a
    schedules file's ``schedules:`` list (did-you-mean for unknown fields, hostile values),
    with ``source`` where a file's ``path:line`` would be. ``timezone`` defaults to UTC.

    ``import_tasks``: check that ``task`` is registered and accepts ``args``; default: when
    this process's task registry is loaded (:func:`scheduler.load_tasks`).

    Raises:
        InvalidScheduleError: listing every problem (a :class:`ConfigError` and an
            :class:`InvalidArgumentError`).
    """
    loaded = _tasks.is_loaded() if import_tasks is None else import_tasks
    checker = ScheduleChecker(source, loaded)
    item = LineMapping(fields)
    item.line, item.key_lines, item.duplicates = 0, dict.fromkeys(item, 0), []
    checker.registered = _tasks.registered_tasks()
    model = checker.schedule(item, "<invalid name>", 0)
    if checker.issues or model is None:
        raise InvalidScheduleError(checker.error().issues)
    return model


class _Checker(ScheduleChecker):
    """A whole schedules file: its text parsed within the bounds, the top-level keys
    (``timezone``, ``imports``, ``queues``), then each schedule (:class:`ScheduleChecker`)."""

    def load(self, text: str) -> SchedulesConfig:
        data = self.parse(text)
        if data is None:  # empty, or only comments: nothing scheduled
            return SchedulesConfig(path=self.filename)
        for key in data:
            if key not in _FILE_KEYS:
                self.issue(data.key_lines[key], None, str(key), _unknown_key(key, _FILE_KEYS))
        self.duplicates(data, (), None)
        self.default_tz = default_tz = self.file_timezone(data)
        imports = self.imports(data)
        queues = self.queues(data)
        schedules = data.get("schedules")
        if "schedules" not in data:
            reason = "required key 'schedules' is missing (a list; use [] for none)"
            self.issue(data.line, None, "schedules", reason)
        elif schedules is not None and not isinstance(schedules, LineSequence):
            reason = f"must be a list of schedules, not {short(schedules)}"
            self.issue(data.key_lines["schedules"], None, "schedules", reason)
        models: list[ScheduleConfig] = []
        if isinstance(schedules, LineSequence):
            self.registered, self.seen = _tasks.registered_tasks(), {}
            for index, item in enumerate(schedules):
                label, line = f"schedules[{index}]", schedules.item_lines[index]
                if not isinstance(item, LineMapping):
                    reason = "each schedule must be a mapping with name, cron or every, and task"
                    self.issue(line, label, None, f"{reason}, not {short(item)}")
                    continue
                model = self.schedule(item, label, line)
                models += [model] if model is not None else []
        if self.issues:
            raise self.error()
        return SchedulesConfig(
            path=self.filename,
            timezone=default_tz,
            imports=imports,
            schedules=models,
            queues=queues,
        )

    def parse(self, text: str) -> LineMapping | None:
        if len(text) > MAX_FILE_BYTES:
            self.issue(0, None, None, f"the text is longer than {MAX_FILE_BYTES:,} characters")
            raise self.error()
        bad = yaml.reader.Reader.NON_PRINTABLE.search(text)  # what YAML does not allow
        if bad is not None:
            line = text.count("\n", 0, bad.start()) + 1
            column = bad.start() - text.rfind("\n", 0, bad.start())
            char = bad.group()
            kind = "an unpaired surrogate" if "\ud800" <= char <= "\udfff" else "a control"
            reason = f"character U+{ord(char):04X} ({kind} character) at column {column}"
            self.issue(line, None, None, reason + " is not allowed in YAML")
            raise self.error()
        try:
            data = self.compose_and_construct(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            syntax = not isinstance(exc, ConstructorError)
            reason = f"{'YAML syntax error' if syntax else 'invalid YAML value'}: {exc.problem}"
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
        if data is not None and not isinstance(data, LineMapping):
            kind = "list" if isinstance(data, list) else type(data).__name__
            reason = f"the top level is a {kind}; expected a mapping with keys "
            self.issue(getattr(data, "line", 0), None, None, reason + ", ".join(_FILE_KEYS))
            raise self.error()
        return data

    def compose_and_construct(self, text: str) -> Any:
        """The document built by the line-remembering loader, after :func:`prescan` and
        :func:`measure` found it within MAX_VALUES and MAX_DEPTH (else an issue and the
        ConfigError); YAML errors propagate."""
        refused = prescan(text, Loader)
        if refused is None:
            loader = Loader(text)
            try:
                node = loader.get_single_node()
                if node is None:
                    return None
                refused = measure(node)
                if refused is None:
                    return loader.construct_document(node)
            finally:
                loader.dispose()
        self.issue(refused[0], None, None, refused[1])
        raise self.error()

    def file_timezone(self, data: LineMapping) -> str:
        value = data.get("timezone")
        if value is None:
            return "UTC"
        try:
            if not isinstance(value, str):
                raise CronError(f"must be an IANA time zone name, not {short(value)}")
            validate_timezone(_bounded(value, "time zone", _ZONE_MAX))
        except ValueError as exc:  # CronError is one
            self.issue(data.key_lines["timezone"], None, "timezone", str(exc))
            return "UTC"  # placeholder so the schedules are still checked
        return value

    def imports(self, data: LineMapping) -> list[str]:
        raw = data.get("imports")
        if raw is not None and not isinstance(raw, LineSequence):
            reason = f"must be a list of module names, not {short(raw)}"
            self.issue(data.key_lines["imports"], None, "imports", reason)
        if not isinstance(raw, LineSequence):
            return []
        if len(raw) > _IMPORTS_MAX:
            reason = f"lists {len(raw):,} modules, at most {_IMPORTS_MAX:,}; none imported"
            self.issue(data.key_lines["imports"], None, "imports", reason)
            return []
        modules: list[str] = []
        for module, line in zip(raw, raw.item_lines, strict=True):
            if not isinstance(module, str) or not _MODULE.match(module):
                self.issue(line, None, "imports", f"{short(module)} is not a dotted module name")
                continue
            if len(module) > _MODULE_MAX:
                reason = f"module name {short(module)} is longer than {_MODULE_MAX} characters"
                self.issue(line, None, "imports", reason)
                continue
            modules.append(module)
            try:
                if self.import_tasks:
                    _tasks.import_modules([module])
            except Exception as exc:  # noqa: BLE001 - ImportError, or a broken task module
                reason = f"cannot import module {module!r}: {type(exc).__name__}: {exc}"
                self.issue(line, None, "imports", reason)
        return modules

    def queues(self, data: LineMapping) -> dict[str, QueueLimits]:
        """The ``queues:`` section (queue name -> limits, the vocabulary and bounds of
        ``SCHEDULER_QUEUE_LIMITS``), each problem at the line of its key."""
        raw = data.get("queues")
        if raw is None:
            return {}
        if not isinstance(raw, LineMapping) or len(raw) > QUEUES_MAX:
            reason = (f"names {len(raw):,} queues, at most {QUEUES_MAX:,}"
                      if isinstance(raw, LineMapping) else "must be a mapping of queue name to "
                      f"limits, e.g. {{mail: {{concurrency: 5}}}}, not {short(raw)}")  # fmt: skip
            self.issue(data.key_lines["queues"], None, "queues", reason)
            return {}
        out: dict[str, QueueLimits] = {}
        for name, fields in raw.items():
            line, field = raw.key_lines[name], _dotted(("queues", str(name)))
            if not _valid(check_queue, name):
                self.issue(line, None, "queues", f"queue name: {_problem(check_queue, name)}")
            elif not isinstance(fields, LineMapping):
                reason = f"must be a mapping of limits ({', '.join(LIMIT_FIELDS)}), not "
                self.issue(line, None, field, reason + short(fields))
            elif self.limit_fields(name, fields, field):
                try:
                    limits = check_queue_limits(name, **fields)[1]
                    if limits.unlimited:
                        raise InvalidArgumentError(
                            f"queue {name!r} declares no limit (give concurrency, rate with "
                            "per_s, or key_concurrency; leave the queue out for no limit)"
                        )
                    out[name] = limits
                except InvalidArgumentError as exc:
                    self.issue(line, None, field, str(exc))
        return out

    def limit_fields(self, name: str, fields: LineMapping, where: str) -> bool:
        """Report unknown keys and bad values of one queue's limits; True if there are none."""
        fine = True
        for key, value in fields.items():
            line = fields.key_lines[key]
            if key not in LIMIT_FIELDS:
                self.issue(line, None, f"{where}.{key}",
                           _unknown_key(key, list(LIMIT_FIELDS)))  # fmt: skip
                fine = False
                continue
            problem = _problem(functools.partial(check_limit, name, str(key)), value)
            if problem:
                self.issue(line, None, f"{where}.{key}", problem)
                fine = False
        return fine
