"""Errors raised by scheduler.

Every error derives from :class:`SchedulerError`, so ``except SchedulerError`` catches them all::

    SchedulerError
    ├── ConfigError            a schedules file is invalid (carries every problem found, with file:line)
    ├── CronError              a cron expression or IANA time zone is invalid (also a ValueError)
    ├── InvalidArgumentError   a value passed to the Python API is wrong: type, range, length,
    │                          NUL or unpaired surrogate (also a ValueError and a TypeError)
    ├── IdempotencyKeyBusyError the live job holding an idempotency key kept finishing while
    │                          enqueue looked it up (a race, retried 100 times first)
    ├── DuplicateJobError      on_conflict="raise": the idempotency key is held (live job,
    │                          or unique_for_s window still open); nothing was written
    ├── SettingsError          SCHEDULER_* settings or command-line options are invalid
    ├── TaskError
    │   ├── UnknownTaskError   no @task registered under that name (also a LookupError)
    │   └── DuplicateTaskError two different functions registered under one name
    ├── DatabaseError          the database cannot be used as configured
    │   ├── DatabaseNotConfiguredError  no connection given and SCHEDULER_DATABASE_URL unset
    │   ├── DatabaseUnavailableError    cannot connect, or no answer in time (URL redacted)
    │   ├── SchemaNotMigratedError      the schema's tables are missing or behind the code
    │   ├── MigrationPrivilegeError     migrations are pending and this role may not apply them
    │   └── MigrationLockError          a migration could not take its table locks in time
    ├── LeadershipLostError    the leader lost its lock session or term while committing
    ├── PoolerError            the lock session is not a real session (transaction-mode pooler)
    └── ReplicaFailedError     an internal loop of a replica kept crashing; the replica stopped

Every value that reaches the database from the Python API is checked before any SQL runs
(:mod:`scheduler.limits`), so a bad value raises :class:`InvalidArgumentError`, never a psycopg
error. ``InvalidArgumentError`` is also a ``ValueError`` and a ``TypeError``, so code written
against the built-in exceptions keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass


class SchedulerError(Exception):
    """Root of every error raised by scheduler."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a schedules file.

    Attributes:
        file: path of the YAML file as given.
        line: 1-based line number of the offending node (0 when unknown).
        schedule: schedule name, or ``None`` for file-level problems.
        field: dotted field path (``"cron"``, ``"args.to"``), or ``None``.
        reason: human-readable explanation.
    """

    file: str
    line: int
    schedule: str | None
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [where]
        if self.schedule is not None:
            parts.append(f"schedule {self.schedule!r}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ": ".join(parts) + f": {self.reason}"


class ConfigError(SchedulerError):
    """A schedules file is invalid. ``issues`` lists every problem found, not only the first."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class CronError(SchedulerError, ValueError):
    """A cron expression or a time zone name is invalid; the message says why."""


class InvalidArgumentError(SchedulerError, ValueError, TypeError):
    """A value passed to the Python API (``enqueue``, ``schedule_at``, ``@task``...) is of the
    wrong type, out of range, too long, or holds text PostgreSQL cannot store (NUL, unpaired
    surrogates). The message names the argument and the reason; nothing was written."""


class IdempotencyKeyBusyError(SchedulerError):
    """Enqueuing with an ``idempotency_key`` found the key held, then free, over and over: the
    live job holding it kept finishing between the insert and the lookup. Nothing was
    enqueued; calling again is safe."""


class SettingsError(SchedulerError):
    """One or more ``SCHEDULER_*`` settings (or the command-line options that override them)
    are invalid. ``problems`` has one line per bad setting, naming it and the reason, with
    any secret (a password in a URL) redacted."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class TaskError(SchedulerError):
    """Problems with the task registry."""


class TaskArgumentsError(InvalidArgumentError):
    """The arguments given for a task do not fit its handler: an unexpected, missing or
    duplicated argument, a value of the wrong type for the parameter's annotation, or a value
    JSON cannot store. The message names the task and the argument; nothing was written."""


class JobNotFoundError(SchedulerError, LookupError):
    """No job has the given id (it never existed, or was pruned after its retention)."""


class JobWaitTimeoutError(SchedulerError, TimeoutError):
    """:func:`scheduler.wait_for_job` gave up: the job had not finished within its timeout."""


class UnknownTaskError(TaskError, LookupError):
    """No task is registered under the given name in this process."""


class DuplicateTaskError(TaskError):
    """Two different functions were registered under the same task name."""


class DatabaseError(SchedulerError):
    """The database cannot be used as configured; the message says why, without secrets."""


class DatabaseNotConfiguredError(DatabaseError):
    """No psycopg connection was passed and ``SCHEDULER_DATABASE_URL`` is not set."""


class DatabaseUnavailableError(DatabaseError):
    """The database could not be reached: a malformed URL, a refused or timed-out connection,
    authentication failure, or a missing database. The URL in the message is redacted."""


class SchemaNotMigratedError(DatabaseError):
    """The configured schema has no scheduler tables, or migrations are pending that this
    command will not apply: run ``scheduler migrate``."""


class LeadershipLostError(SchedulerError):
    """The leader's lock session died or its term is no longer current; nothing was committed."""


class PoolerError(SchedulerError):
    """The advisory lock is not held by this backend after taking it: the connection goes
    through a transaction-mode pooler. Set ``SCHEDULER_DIRECT_DATABASE_URL``."""


class MigrationPrivilegeError(DatabaseError):
    """Migrations are pending and the connecting role lacks the privileges to apply them
    (a least-privilege service role): run ``scheduler migrate`` as the schema's owner."""


class ReplicaFailedError(SchedulerError):
    """An internal loop of a replica crashed too often (see :mod:`scheduler.supervision`);
    the replica stopped gracefully and its process should exit non-zero."""


class MigrationLockError(DatabaseError):
    """A migration could not take the locks it needs within its ``lock_timeout``, on every
    try (long transactions on the scheduler's tables); nothing of it was applied."""


class DuplicateJobError(SchedulerError):
    """An enqueue with ``on_conflict="raise"`` found its ``idempotency_key`` held: by a live
    (pending or running) job, or, with ``unique_for_s``, by the job whose window is still open,
    whatever its state. Nothing of the job was written; the caller's transaction is usable.

    Attributes:
        key: the idempotency key.
        job_id: id of the job holding it.
        state: that job's state when it was found (``"pending"``, ``"succeeded"``...).
    """

    def __init__(self, key: str, job_id: int, state: str):
        super().__init__(key, job_id, state)  # args: picklable
        self.key, self.job_id, self.state = key, job_id, state

    def __str__(self) -> str:
        return (
            f"idempotency_key {self.key!r:.80} is held by job {self.job_id} ({self.state}): "
            "nothing was enqueued (on_conflict='raise')"
        )


class InvalidScheduleError(ConfigError, InvalidArgumentError):
    """A schedule given to the runtime schedule API (:func:`scheduler.put_schedule`,
    ``scheduler schedules create``) is invalid: the checks and messages of a schedules file's
    item (did-you-mean for unknown fields), every problem listed in ``issues``. Nothing was
    written."""


class ScheduleNotFoundError(SchedulerError, LookupError):
    """No schedule has the given name."""


class ScheduleSourceError(SchedulerError):
    """A schedule name is claimed by two sources: a runtime (API) schedule and a schedules
    file, or an API call tried to change or remove a schedule that a schedules file declares
    (change the file instead). The message names both sources; nothing was written."""
