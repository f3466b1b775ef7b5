"""Runtime settings, read from the environment with the ``SCHEDULER_`` prefix.

Every duration is in seconds and its name ends in ``_s``. Example::

    SCHEDULER_DATABASE_URL=postgresql://app@db/app SCHEDULER_CONCURRENCY=20 scheduler run ...

When ``SCHEDULER_DATABASE_URL`` is unset, ``scheduler run`` starts an embedded PostgreSQL with
its data under ``SCHEDULER_EMBEDDED_DIR`` (default ``./.scheduler``).

Build settings with :func:`load_settings` (the CLI) or :func:`get_settings` (the Python API):
both raise :class:`~scheduler.errors.SettingsError`, one line per bad setting naming the
``SCHEDULER_*`` variable (or the command-line option that set it) and the reason, with any
password redacted, instead of pydantic's ``ValidationError``. A ``SCHEDULER_*`` variable that
is not a setting (``SCHEDULER_CONCURENCY``) is ignored with a warning on stderr that names
the closest real setting, once per process.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from functools import lru_cache
from typing import Annotated, Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict, timeout_from_conninfo
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import NoDecode, SettingsConfigDict

from .errors import InvalidArgumentError, SettingsError
from .limits import DURATION_MAX_S, INT32_MAX, check_queue, shown
from .log import redact_text
from .settings_dashboard import DashboardSettings

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
# SCHEDULER_* variables read by the test suite and the benchmark, not by Settings
_OTHER_VARIABLES = frozenset({"SCHEDULER_TEST_DSN", "SCHEDULER_BENCH_DSN"})
_SECRET_FIELDS = frozenset({"database_url", "direct_database_url"})
# never shown at all, not even redacted (a password or token has no parts worth showing)
_HIDDEN_FIELDS = frozenset(
    {
        "dashboard_password",
        "dashboard_readonly_password",
        "dashboard_token",
        "dashboard_readonly_token",
        "dashboard_secret",
    }
)


class Settings(DashboardSettings):
    """Service settings (pydantic-settings, env prefix ``SCHEDULER_``).

    Constructed directly, raises ``pydantic.ValidationError`` when a value is out of range
    (durations: at most :data:`DURATION_MAX_S`; no NaN or infinity), ``schema`` is not a
    plain lower-case SQL identifier (it is interpolated as an identifier, never as text), a
    URL does not parse, or a queue name breaks :func:`scheduler.limits.check_queue`. Use
    :func:`load_settings` for :class:`~scheduler.errors.SettingsError` instead.
    """

    model_config = SettingsConfigDict(
        env_prefix="SCHEDULER_", extra="ignore", populate_by_name=True, allow_inf_nan=False
    )

    database_url: str | None = Field(
        default=None, description="libpq URL or key=value DSN; unset = embedded PostgreSQL"
    )
    schema_name: str = Field(
        default="scheduler",
        validation_alias="SCHEDULER_SCHEMA",
        description="PostgreSQL schema holding the tables",
    )
    embedded_dir: str = Field(default=".scheduler", description="data dir of the embedded server")

    # workers
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["default"],
        description="queues this replica works (comma-separated)",
    )
    # 100 (River's default; Oban's queues are usually 10, Procrastinate's worker 1): a no-op
    # drain at 10 reaches about half of what it does at 100, a handler that waits 50 ms on
    # I/O gets 200 jobs/s out of 10 slots; threads for sync handlers start on demand
    concurrency: int = Field(default=100, ge=1, le=1000, description="jobs run at once per replica")
    poll_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="safety poll; inserts wake workers by NOTIFY (at once, or on a timer at "
        "their run_at) and a worker wakes itself for its own retries",
    )
    lease_s: float = Field(
        default=30.0,
        gt=0,
        description="lease of a claimed job, extended every lease_s/3 while it runs; a job "
        "whose worker died runs again elsewhere after at most this long (+ heartbeat_s)",
    )
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="time to finish running jobs")
    queue_limits: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description='flow control per queue, a JSON object: {"mail": {"concurrency": 5, '
        '"rate": 100, "per_s": 60, "key_concurrency": 1}} (scheduler.flow); queue -> '
        "scheduler.flow.QueueLimits once validated",
    )

    unknown_task_retry_s: float = Field(
        default=600.0,
        ge=0,
        description="a job whose task this replica does not know is retried with backoff "
        "(another replica, e.g. a newer release in a rolling deploy, may know it) until it "
        "has been due this long, then dead-lettered; 0 dead-letters it at once",
    )

    replica_heartbeat_s: float = Field(
        default=10.0,
        gt=0,
        description="how often a replica refreshes its row in the replicas table; rows silent "
        "for 3x this long age out",
    )

    # retention (the leader prunes)
    retention_succeeded_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="succeeded and cancelled jobs (and their runs) are deleted this long after "
        "they finished (default 7 days)",
    )
    retention_dead_s: float = Field(
        default=30 * 86400.0,
        gt=0,
        description="dead jobs (dead letters), their runs, skipped-fire-time records and "
        "closed alert incidents are deleted this long after they finished (default 30 days)",
    )
    retention_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="how often the leader prunes (10 s: at 1,000 jobs/s a prune deletes 10,000 "
        "rows, not the 60,000 a minute's wait would pile up)",
    )
    retention_batch: int = Field(
        default=1000, ge=1, le=100_000, description="rows deleted per pruning transaction"
    )

    # leader
    leader_retry_s: float = Field(
        default=0.5,
        gt=0,
        description="first delay before reconnecting a lost lock session (doubles up to 1 s); "
        "followers wait for the lock inside PostgreSQL and do not poll",
    )
    heartbeat_s: float = Field(
        default=2.0,
        gt=0,
        description="leader heartbeat period: one statement that also tells when to "
        "materialise and rescue next",
    )
    materialise_ahead_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="look-ahead: fire times are materialised this long before they are due "
        "(run_at = the fire time), so workers start them on a timer at the second; "
        "overlap_policy skip is decided at the fire time",
    )
    direct_database_url: str | None = Field(
        default=None,
        description="direct (not pooled) URL for the leader lock and LISTEN sessions, when "
        "database_url goes through a transaction-mode pooler such as PgBouncer",
    )
    leader_session_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=86_400,
        description="idle_session_timeout of the lock session: a hung leader's lock is freed "
        "after this long",
    )
    max_catch_up: int = Field(
        default=100,
        ge=1,
        le=INT32_MAX,
        description="default of a schedule's max_catch_up: most fire times run per schedule "
        "and tick after an outage",
    )
    misfire_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="default of a schedule's misfire_grace_s: lateness that is not a misfire",
    )

    # retry defaults (a task or schedule may override them)
    max_attempts: int = Field(default=20, ge=1, le=INT32_MAX)
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=3600.0, gt=0)
    backoff_jitter: float = Field(default=0.1, ge=0, le=1)

    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="port of /metrics, /healthz and /readyz (unset: no HTTP server)",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="address the metrics/health port binds to (0.0.0.0 in a container)",
    )
    metrics_registry: Literal["own", "default"] = Field(
        default="own",
        description="registry of the scheduler_* metrics: own (the service's, served on "
        "the metrics port) or default (also prometheus_client's default registry)",
    )

    # operator commands (status, jobs, dead-letters, schedules, migrate)
    connect_timeout_s: float = Field(
        default=10.0,
        ge=1,
        le=3600,
        description="operator commands give up connecting after this long (libpq's "
        "connect_timeout, rounded up to whole seconds, at least 2; a connect_timeout in the "
        "URL wins)",
    )
    statement_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="an operator command's statement is cancelled after this long (a "
        "transaction-local statement_timeout, safe behind poolers), so a lock wait or a "
        "hung database ends in a message, not a hang",
    )

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("schema_name")
    @classmethod
    def _schema_is_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(
                f"schema {value!r} must be a lower-case SQL identifier "
                "(letters, digits, underscore; at most 48 characters)"
            )
        return value

    @model_validator(mode="after")
    def _heartbeat_inside_session_timeout(self) -> Settings:
        if self.heartbeat_s * 2 > self.leader_session_timeout_s:
            raise ValueError(
                f"SCHEDULER_HEARTBEAT_S (heartbeat_s={self.heartbeat_s}) must be at most half "
                "of SCHEDULER_LEADER_SESSION_TIMEOUT_S (leader_session_timeout_s="
                f"{self.leader_session_timeout_s}), or a healthy leader's lock session would "
                "be ended as idle"
            )
        return self

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, value: object) -> object:
        if isinstance(value, str):
            return [q.strip() for q in value.split(",")]
        return value

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, value: list[str]) -> list[str]:
        if not [q for q in value if q]:
            raise ValueError("no queue name: give comma-separated names, e.g. default,mail")
        for i, name in enumerate(value, 1):
            try:
                check_queue(name, "queue" if len(value) == 1 else f"queue {i} of {len(value)}")
            except InvalidArgumentError as exc:
                raise ValueError(str(exc)) from None
        return list(dict.fromkeys(value))  # a name given twice is worked once

    @field_validator("queue_limits", mode="before")
    @classmethod
    def _queue_limits(cls, value: object) -> object:
        from .queue_limits import parse_queue_limits  # it imports settings (the default pool)

        try:
            return parse_queue_limits(value)
        except InvalidArgumentError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("database_url", "direct_database_url")
    @classmethod
    def _url_parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError(
                "is empty: unset it to use the embedded PostgreSQL"
                if info.field_name == "database_url"
                else "is empty: unset it to use SCHEDULER_DATABASE_URL for every session"
            )
        if "\x00" in value or re.search("[\ud800-\udfff]", value):
            raise ValueError("contains NUL or bytes that are not UTF-8")
        try:
            params = conninfo_to_dict(value)
            timeout_from_conninfo(params)
        except psycopg.Error as exc:
            reason = redact_text(" ".join(str(exc).split()), value)
            raise ValueError(
                "is not a libpq URL (postgresql://user:password@host:port/dbname) or "
                f"key=value string: {reason}"
            ) from None
        for port in str(params.get("port") or "").split(","):
            if port and not (port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError(f"port {shown(port)} is not a number from 1 to 65535")
        return value

    @field_validator("*")
    @classmethod
    def _durations_bounded(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        if name.endswith("_s") and isinstance(value, float) and value > DURATION_MAX_S:
            raise ValueError(f"at most {DURATION_MAX_S:,.0f} seconds (10 years)")
        return value


def env_name(field: str) -> str:
    """The environment variable of setting ``field`` (``SCHEDULER_SCHEMA`` for
    ``schema_name``, else ``SCHEDULER_`` + the upper-case name)."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"SCHEDULER_{field.upper()}"


_warned: set[str] = set()


def warn_unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """Print to stderr, once per process and variable, a warning for every ``SCHEDULER_*``
    variable of ``environ`` (default ``os.environ``) that is not a setting, naming the
    closest setting (difflib). Returns the warnings printed by this call."""
    env = os.environ if environ is None else environ
    settings = sorted(env_name(f) for f in Settings.model_fields)
    printed = []
    for key in sorted(env):
        upper = key.upper()
        if not upper.startswith("SCHEDULER_") or upper in _warned:
            continue
        if upper in settings or upper in _OTHER_VARIABLES:
            continue
        _warned.add(upper)
        close = difflib.get_close_matches(
            upper.removeprefix("SCHEDULER_"),
            [s.removeprefix("SCHEDULER_") for s in settings],
            n=1,
            cutoff=0.6,
        )
        hint = f"; did you mean SCHEDULER_{close[0]}?" if close else ""
        line = f"warning: {key} is not a scheduler setting and is ignored{hint}"
        print(line, file=sys.stderr)
        printed.append(line)
    return printed


def _problem(error: ErrorDetails, overrides: dict[str, Any], options: dict[str, str]) -> str:
    reason = error["msg"].removeprefix("Value error, ")
    if reason.startswith("Input "):  # pydantic's own messages
        reason = "i" + reason[1:]
    if not error["loc"]:  # a rule between settings: the message names them
        return reason
    field = str(error["loc"][0])
    by_alias = {env_name(f): f for f in Settings.model_fields}
    field = by_alias.get(field, field)
    if field in overrides:
        name = options.get(field, field)
        value = overrides[field]
    else:
        name = env_name(field) if field in Settings.model_fields else field
        value = error.get("input")
    if field in _HIDDEN_FIELDS:
        value_text = "***"
    elif field in _SECRET_FIELDS and isinstance(value, str):
        value_text = shown(redact_text(value, value), 100)
    else:
        value_text = shown(value)
    return f"{name}={value_text}: {reason}"


def load_settings(
    overrides: dict[str, Any] | None = None, *, options: dict[str, str] | None = None
) -> Settings:
    """Settings from the ``SCHEDULER_*`` environment, with ``overrides`` (field name to
    value, e.g. from command-line options) taking precedence.

    Args:
        overrides: values that win over the environment (``{"concurrency": 4}``).
        options: the name to show for an overridden field in errors (``{"concurrency":
            "--concurrency"}``); default the field name.

    Raises:
        SettingsError: one or more settings are invalid; ``problems`` has one line per bad
            setting: ``SCHEDULER_CONCURRENCY='0': input should be greater than or equal
            to 1`` (passwords in URLs redacted, no pydantic links).
    """
    warn_unknown_variables()
    overrides = dict(overrides or {})
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [_problem(e, overrides, options or {}) for e in exc.errors()]
        raise SettingsError(list(dict.fromkeys(problems))) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment (:func:`load_settings`).

    Raises:
        SettingsError: a ``SCHEDULER_*`` variable is invalid (not cached: the next call
            reads the environment again).
    """
    return load_settings()
