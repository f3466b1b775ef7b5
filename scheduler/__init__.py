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
    InvalidScheduleError,
    JobNotFoundError,
    JobWaitTimeoutError,
    LeadershipLostError,
    ReplicaFailedError,
    ScheduleNotFoundError,
    SchedulerError,
    ScheduleSourceError,
    SchemaNotMigratedError,
    SettingsError,
    TaskArgumentsError,
    UnknownTaskError,
)
from .job_context import JobContext, current_job
from .job_inserts import Enqueued
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
from .queue_control import pause_queue, pause_queue_async, resume_queue, resume_queue_async
from .queue_limits import QueueLimits, set_queue_limits, set_queue_limits_async
from .registry import load_tasks
from .schedule_control import (
    backfill_schedule,
    backfill_schedule_async,
    pause_schedule,
    pause_schedule_async,
    put_schedule,
    put_schedule_async,
    remove_schedule,
    remove_schedule_async,
    resume_schedule,
    resume_schedule_async,
    trigger_schedule,
    trigger_schedule_async,
)
from .schedule_operations import Backfill
from .schedules import ScheduleWrite
from .tasks import Task, TaskCall, task

__all__ = [
    "Attempt",
    "Backfill",
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
    "InvalidScheduleError",
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
    "ScheduleNotFoundError",
    "ScheduleSourceError",
    "ScheduleWrite",
    "SchedulerError",
    "SchemaNotMigratedError",
    "SettingsError",
    "Task",
    "TaskArgumentsError",
    "TaskCall",
    "UnknownTaskError",
    "backfill_schedule",
    "backfill_schedule_async",
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
    "pause_queue",
    "pause_queue_async",
    "pause_schedule",
    "pause_schedule_async",
    "put_schedule",
    "put_schedule_async",
    "remove_schedule",
    "remove_schedule_async",
    "resume_queue",
    "resume_queue_async",
    "resume_schedule",
    "resume_schedule_async",
    "retry_job",
    "retry_job_async",
    "schedule_at",
    "schedule_at_async",
    "schedule_many",
    "schedule_many_async",
    "set_queue_limits",
    "set_queue_limits_async",
    "task",
    "trigger_schedule",
    "trigger_schedule_async",
    "wait_for_job",
    "wait_for_job_async",
]
__version__ = "0.1.0"
