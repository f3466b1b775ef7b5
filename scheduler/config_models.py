"""The validated shape of a schedules file: :class:`ScheduleConfig` (one schedule),
:class:`SchedulesConfig` (the file), the policy enums and their hashes. Loading and checking
YAML (every problem with its line) is :mod:`scheduler.config`, which re-exports these.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import hashlib
import json
import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .arguments import dotted_path as _dotted
from .arguments import json_problems
from .config_yaml import (
    short,
)
from .cron import Cron, validate_timezone
from .cron_count import CronTimes, FireTimes
from .errors import CronError
from .interval import Interval, parse_duration, parse_start_at
from .limits import (
    DURATION_MAX_S,
    check_queue,
    check_schedule_name,
    check_task_name,
)
from .queue_limits import QueueLimits

MAX_FILE_BYTES = 10 * 1024 * 1024  # a schedules file of 20,000 schedules is about 2 MB
MAX_ISSUES = 1_000  # issues listed in one ConfigError; one more says how many were left out
_CRON_MAX, _ZONE_MAX, _MODULE_MAX = 1_000, 100, 255
_IMPORTS_MAX = 1_000  # modules in imports: each failed import searches sys.path (~0.1 ms)
_REASON_MAX, _FIELD_MAX = 2_000, 200
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", re.ASCII)
_INT32 = 2**31 - 1  # priority and max_attempts end up in PostgreSQL integer columns
ALERT_FAILURES_MAX = 1_000  # alert_on_failures / pause_on_failures: runs read per evaluation
_FILE_KEYS = ["imports", "queues", "schedules", "timezone"]
Path = tuple[str | int, ...]


@functools.lru_cache(maxsize=4096)
def _cron_check(value: str) -> tuple[str, str | None]:
    """``(normalised expression, None)`` or ``("", reason)``; validity is zone-independent.
    Cached: thousands of schedules share a few expressions, and croniter's search is slow."""
    try:
        return Cron(value).expression, None
    except CronError as exc:
        return "", str(exc)


def _bounded(value: str, what: str, maximum: int) -> str:
    """``value`` unless it is longer than ``maximum`` characters (``ValueError``)."""
    if len(value) > maximum:
        raise ValueError(
            f"{what} {short(value)} is too long: {len(value):,} characters, at most {maximum:,}"
        )
    return value


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
    """What to do with a fire time whose schedule still has a pending or running job
    (Temporal's names): ``allow`` runs it anyway; ``skip`` drops it; ``queue`` (Temporal's
    buffer_all) runs it after the older ones, one at a time; ``buffer_one`` keeps at most one
    waiting behind the running one and drops the others; ``cancel_previous`` asks the older
    ones to stop and runs it when they have. Enforced in the database (see
    :mod:`scheduler.planning`)."""

    ALLOW = "allow"
    SKIP = "skip"
    QUEUE = "queue"
    BUFFER_ONE = "buffer_one"
    CANCEL_PREVIOUS = "cancel_previous"


# In definition_hash() only when set: a schedule that does not use them keeps the hash it had
# before they existed, so replicas of both releases agree on config_hash.
_POLICY_FIELDS = [
    "misfire_policy",
    "overlap_policy",
    "max_catch_up",
    "misfire_grace_s",
    "starting_deadline_s",
    # alerts (scheduler.alerts)
    "alert_after_s",
    "alert_on_failures",
    "pause_on_failures",
    "on_alert",
]
# Likewise the timing fields: a cron schedule has no every/start_at, an interval no cron.
_TIMING_FIELDS = ["cron", "every", "start_at"]
_ONE_TIMING = "give exactly one of cron (a cron expression) or every (an interval, e.g. 90s)"
_START_CRON = "start_at applies to interval schedules (every:) only, not to cron"


class ScheduleConfig(BaseModel):
    """One declared schedule (frozen; strict types; unknown fields forbidden).

    ``timezone`` is the effective IANA zone (the schedule's own, else the file default, else
    ``"UTC"``; irrelevant to an interval schedule's fire times). Exactly one of ``cron`` and
    ``every`` is set; ``every`` is in seconds (YAML: any form of
    :func:`~scheduler.interval.parse_duration`), ``start_at`` (interval only) an aware UTC
    datetime. ``None`` in an optional field (all but name/task/args/enabled) means
    "not set here". Durations (``*_s``) are seconds. Raises ``pydantic.ValidationError`` on
    invalid values (every check of the module docstring except task registration and
    signature).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str
    cron: str | None = None
    every: float | None = None
    start_at: datetime | None = None
    task: str
    args: dict[str, Any] = Field(default_factory=dict)
    timezone: str = "UTC"
    queue: str | None = None
    priority: int | None = Field(default=None, ge=-_INT32 - 1, le=_INT32)
    max_attempts: int | None = Field(default=None, ge=1, le=_INT32)
    backoff_base_s: float | None = Field(default=None, gt=0, le=DURATION_MAX_S, allow_inf_nan=False)
    backoff_max_s: float | None = Field(default=None, gt=0, le=DURATION_MAX_S, allow_inf_nan=False)
    backoff_jitter: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    enabled: bool = True
    misfire_policy: MisfirePolicy | None = Field(default=None, strict=False)
    overlap_policy: OverlapPolicy | None = Field(default=None, strict=False)
    max_catch_up: int | None = Field(default=None, ge=1, le=_INT32)
    misfire_grace_s: float | None = Field(
        default=None, ge=0, le=DURATION_MAX_S, allow_inf_nan=False
    )
    starting_deadline_s: float | None = Field(
        default=None, gt=0, le=DURATION_MAX_S, allow_inf_nan=False
    )
    # alerts (scheduler.alerts): seconds, like the other *_s fields; counts of runs
    alert_after_s: float | None = Field(default=None, gt=0, le=DURATION_MAX_S, allow_inf_nan=False)
    alert_on_failures: int | None = Field(default=None, ge=1, le=ALERT_FAILURES_MAX)
    pause_on_failures: int | None = Field(default=None, ge=1, le=ALERT_FAILURES_MAX)
    on_alert: str | None = None

    # limits.check_* raise InvalidArgumentError, a ValueError: pydantic reports it as the
    # field's problem, and the YAML file gets exactly the bounds of the Python API.
    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_schedule_name(value)

    @field_validator("task")
    @classmethod
    def _check_task(cls, value: str) -> str:
        return check_task_name(value)

    @field_validator("on_alert")
    @classmethod
    def _check_on_alert(cls, value: str | None) -> str | None:
        return None if value is None else check_task_name(value, "on_alert")

    @field_validator("queue")
    @classmethod
    def _check_queue(cls, value: str | None) -> str | None:
        return None if value is None else check_queue(value)

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        expression, problem = _cron_check(_bounded(value, "cron expression", _CRON_MAX))
        if problem is not None:
            raise CronError(problem)  # a ValueError
        return expression

    @field_validator("every", mode="before")
    @classmethod
    def _check_every(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("start_at", mode="before")
    @classmethod
    def _check_start_at(cls, value: Any) -> Any:
        return None if value is None else parse_start_at(value)

    @model_validator(mode="after")
    def _check_timing(self) -> ScheduleConfig:
        if (self.cron is None) == (self.every is None):
            raise ValueError(_ONE_TIMING)
        if self.cron is not None and self.start_at is not None:
            raise ValueError(_START_CRON)
        return self

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        validate_timezone(_bounded(value, "time zone", _ZONE_MAX))
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
        raise ValueError(f"{short(value)} is not one of {', '.join(allowed)}{hint}")

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
        for key in _POLICY_FIELDS + _TIMING_FIELDS:
            if data[key] is None:
                del data[key]
        return _canonical_hash(["scheduler.schedule/1", data])

    def cron_obj(self) -> Cron:
        """The :class:`~scheduler.cron.Cron` of this schedule in its effective time zone.
        Raises :class:`~scheduler.errors.CronError` for an interval schedule (see
        :meth:`fire_times`)."""
        if self.cron is None:
            raise CronError(f"schedule {self.name!r} is an interval schedule (every:), not cron")
        return Cron(self.cron, self.timezone)

    def fire_times(self, stored_at: datetime) -> FireTimes:
        """This schedule's fire times: its cron expression in its zone, or its interval from
        ``start_at``, else from one interval after ``stored_at`` (aware; the instant the
        schedule is first stored, see :mod:`scheduler.schedules`)."""
        if self.every is None:
            return CronTimes(self.cron_obj())
        start = self.start_at or stored_at + timedelta(seconds=self.every)
        return Interval(self.every, start, self.timezone)


class SchedulesConfig(BaseModel):
    """A whole validated schedules file (frozen): ``path`` as given, the file's default
    ``timezone`` (``"UTC"`` when unset), the ``imports`` and the ``schedules`` in file order
    (names unique, else ``pydantic.ValidationError``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    path: str
    timezone: str = "UTC"
    imports: list[str] = Field(default_factory=list)
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    #: the ``queues:`` section: queue -> its flow-control limits (:mod:`scheduler.flow`)
    queues: dict[str, QueueLimits] = Field(default_factory=dict)

    @field_validator("schedules")
    @classmethod
    def _unique_names(cls, value: list[ScheduleConfig]) -> list[ScheduleConfig]:
        counts = Counter(s.name for s in value)  # not names.count(n) per name: quadratic
        duplicates = sorted(n for n, count in counts.items() if count > 1)
        if duplicates:
            raise ValueError(f"duplicate schedule names: {', '.join(duplicates)}")
        return value

    def config_hash(self) -> str:
        """SHA-256 hex over the schedules' definition hashes, independent of their order in
        the file; replicas started with different schedules disagree on it."""
        pairs = sorted([s.name, s.definition_hash()] for s in self.schedules)
        if not self.queues:  # a file without a queues: section keeps its earlier hash
            return _canonical_hash(["scheduler.config/1", pairs])
        queues = sorted([n, dataclasses.asdict(q)] for n, q in self.queues.items())
        return _canonical_hash(["scheduler.config/1", pairs, queues])
