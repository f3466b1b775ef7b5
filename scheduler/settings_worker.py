"""The settings of the database a replica works on and of its worker (queues, concurrency,
leases, per-queue limits, unknown tasks, the replica's heartbeat), a base of
:class:`scheduler.settings.Settings`: read from the same ``SCHEDULER_`` environment, checked the
same way. They are the first fields of :class:`~scheduler.settings.Settings` after the
dashboard's, in the order of their problems in a :class:`~scheduler.errors.SettingsError`; the
URLs' own check is :class:`~scheduler.settings.Settings`'s, with ``direct_database_url``."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from .errors import InvalidArgumentError
from .limits import check_queue
from .settings_dashboard import DashboardSettings

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")


class WorkerSettings(DashboardSettings):
    """The database and worker fields; see :class:`scheduler.settings.Settings`."""

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

    @field_validator("schema_name")
    @classmethod
    def _schema_is_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(
                f"schema {value!r} must be a lower-case SQL identifier "
                "(letters, digits, underscore; at most 48 characters)"
            )
        return value

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
