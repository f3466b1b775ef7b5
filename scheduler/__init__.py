"""scheduler: cron and delayed jobs on a PostgreSQL jobs table.

Public surface::

    from scheduler import task

    @task
    def send_email(to: str) -> None: ...

    send_email.schedule_in(timedelta(minutes=5), to="a@example.com")
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
    JobNotFoundError,
    JobWaitTimeoutError,
    LeadershipLostError,
    ReplicaFailedError,
    SchedulerError,
    SchemaNotMigratedError,
    SettingsError,
    TaskArgumentsError,
    UnknownTaskError,
)
from .jobs import (
    JobSpec,
    JobState,
    RunOutcome,
    enqueue,
    enqueue_async,
    enqueue_many,
    enqueue_many_async,
    schedule_at,
    schedule_at_async,
    schedule_many,
    schedule_many_async,
)
from .registry import JobContext, current_job, load_tasks
from .tasks import Task, TaskCall, task

__all__ = [
    "ConfigError",
    "CronError",
    "DatabaseError",
    "DatabaseNotConfiguredError",
    "DatabaseUnavailableError",
    "DuplicateTaskError",
    "IdempotencyKeyBusyError",
    "InvalidArgumentError",
    "JobContext",
    "JobNotFoundError",
    "JobSpec",
    "JobState",
    "JobWaitTimeoutError",
    "LeadershipLostError",
    "ReplicaFailedError",
    "RunOutcome",
    "SchedulerError",
    "SchemaNotMigratedError",
    "SettingsError",
    "Task",
    "TaskArgumentsError",
    "TaskCall",
    "UnknownTaskError",
    "current_job",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
    "load_tasks",
    "schedule_at",
    "schedule_at_async",
    "schedule_many",
    "schedule_many_async",
    "task",
]
__version__ = "0.1.0"
