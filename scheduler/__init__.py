"""scheduler: cron and delayed jobs on a PostgreSQL jobs table.

Public surface::

    from scheduler import task

    @task
    def send_email(to: str) -> None: ...

    send_email.schedule_in(timedelta(minutes=5), to="a@example.com")
"""

from .bulk import (
    JobSpec,
    enqueue_many,
    enqueue_many_async,
    schedule_many,
    schedule_many_async,
)
from .control import (
    Attempt,
    Job,
    RetryOutcome,
    cancel_job,
    cancel_job_async,
    get_job,
    get_job_async,
    list_jobs,
    list_jobs_async,
    retry_job,
    retry_job_async,
    wait_for_job,
    wait_for_job_async,
)
from .errors import (
    ConfigError,
    CronError,
    DatabaseError,
    DatabaseNotConfiguredError,
    DatabaseUnavailableError,
    DuplicateJobError,
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
from .flow import QueueLimits, set_queue_limits, set_queue_limits_async
from .jobs import (
    JobState,
    RunOutcome,
    enqueue,
    enqueue_async,
    enqueue_result,
    enqueue_result_async,
    schedule_at,
    schedule_at_async,
)
from .registry import JobContext, current_job, load_tasks
from .store import Enqueued
from .tasks import Task, TaskCall, task

__all__ = [
    "Attempt",
    "ConfigError",
    "CronError",
    "DatabaseError",
    "DatabaseNotConfiguredError",
    "DatabaseUnavailableError",
    "DuplicateJobError",
    "DuplicateTaskError",
    "Enqueued",
    "IdempotencyKeyBusyError",
    "InvalidArgumentError",
    "Job",
    "JobContext",
    "JobNotFoundError",
    "JobSpec",
    "JobState",
    "JobWaitTimeoutError",
    "LeadershipLostError",
    "QueueLimits",
    "ReplicaFailedError",
    "RetryOutcome",
    "RunOutcome",
    "SchedulerError",
    "SchemaNotMigratedError",
    "SettingsError",
    "Task",
    "TaskArgumentsError",
    "TaskCall",
    "UnknownTaskError",
    "cancel_job",
    "cancel_job_async",
    "current_job",
    "enqueue",
    "enqueue_async",
    "enqueue_many",
    "enqueue_many_async",
    "enqueue_result",
    "enqueue_result_async",
    "get_job",
    "get_job_async",
    "list_jobs",
    "list_jobs_async",
    "load_tasks",
    "retry_job",
    "retry_job_async",
    "schedule_at",
    "schedule_at_async",
    "schedule_many",
    "schedule_many_async",
    "set_queue_limits",
    "set_queue_limits_async",
    "task",
    "wait_for_job",
    "wait_for_job_async",
]
__version__ = "0.1.0"
