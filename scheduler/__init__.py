"""scheduler: cron and delayed jobs on a PostgreSQL jobs table.

Public surface::

    from scheduler import task, schedule_at, enqueue

    @task
    def send_email(to: str) -> None: ...

    schedule_at(send_email, datetime.now(timezone.utc) + timedelta(minutes=5), args={"to": "a@b"})
"""

from .errors import (
    ConfigError,
    CronError,
    DatabaseError,
    DatabaseNotConfiguredError,
    DatabaseUnavailableError,
    DuplicateTaskError,
    IdempotencyKeyBusyError,
    InvalidArgumentError,
    LeadershipLostError,
    ReplicaFailedError,
    SchedulerError,
    SchemaNotMigratedError,
    SettingsError,
    UnknownTaskError,
)
from .jobs import JobSpec, JobState, RunOutcome, enqueue, enqueue_many, schedule_at, schedule_many
from .tasks import Task, task

__all__ = [
    "ConfigError",
    "CronError",
    "DatabaseError",
    "DatabaseNotConfiguredError",
    "DatabaseUnavailableError",
    "DuplicateTaskError",
    "IdempotencyKeyBusyError",
    "InvalidArgumentError",
    "JobSpec",
    "JobState",
    "LeadershipLostError",
    "ReplicaFailedError",
    "RunOutcome",
    "SchedulerError",
    "SchemaNotMigratedError",
    "SettingsError",
    "Task",
    "UnknownTaskError",
    "enqueue",
    "enqueue_many",
    "schedule_at",
    "schedule_many",
    "task",
]
__version__ = "0.1.0"
