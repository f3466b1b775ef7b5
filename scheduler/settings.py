"""Runtime settings, read from the environment with the ``SCHEDULER_`` prefix.

Every duration is in seconds and its name ends in ``_s``. Example::

    SCHEDULER_DATABASE_URL=postgresql://app@db/app SCHEDULER_CONCURRENCY=20 scheduler run ...

When ``SCHEDULER_DATABASE_URL`` is unset, ``scheduler run`` starts an embedded PostgreSQL with
its data under ``SCHEDULER_EMBEDDED_DIR`` (default ``./.scheduler``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


class Settings(BaseSettings):
    """Service settings (pydantic-settings, env prefix ``SCHEDULER_``).

    Raises ``pydantic.ValidationError`` when a value is out of range or ``schema`` is not a
    plain lower-case SQL identifier (it is interpolated as an identifier, never as text).
    """

    model_config = SettingsConfigDict(
        env_prefix="SCHEDULER_", extra="ignore", populate_by_name=True
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
    concurrency: int = Field(default=10, ge=1, le=1000, description="jobs run at once per replica")
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
        description="dead jobs (dead letters), their runs and skipped-fire-time records are "
        "deleted this long after they finished (default 30 days)",
    )
    retention_interval_s: float = Field(
        default=60.0, gt=0, description="how often the leader prunes"
    )
    retention_batch: int = Field(
        default=1000, ge=1, le=100_000, description="rows deleted per pruning transaction"
    )

    # leader
    leader_retry_s: float = Field(
        default=0.5,
        gt=0,
        description="first delay before reconnecting a lost lock session (doubles up to 5 s); "
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
        description="idle_session_timeout of the lock session: a hung leader's lock is freed "
        "after this long",
    )
    max_catch_up: int = Field(
        default=100,
        ge=1,
        description="default of a schedule's max_catch_up: most fire times run per schedule "
        "and tick after an outage",
    )
    misfire_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="default of a schedule's misfire_grace_s: lateness that is not a misfire",
    )

    # retry defaults (a task or schedule may override them)
    max_attempts: int = Field(default=20, ge=1)
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

    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = Field(default="info")

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
                f"heartbeat_s ({self.heartbeat_s}) must be at most half of "
                f"leader_session_timeout_s ({self.leader_session_timeout_s}), or a healthy "
                "leader's lock session would be ended as idle"
            )
        return self

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, value: object) -> object:
        if isinstance(value, str):
            return [q.strip() for q in value.split(",") if q.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
