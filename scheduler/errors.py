"""Errors raised by scheduler.

Every error derives from :class:`SchedulerError`, so ``except SchedulerError`` catches them all::

    SchedulerError
    ├── ConfigError            a schedules file is invalid (carries every problem found, with file:line)
    ├── CronError              a cron expression or IANA time zone is invalid (also a ValueError)
    ├── TaskError
    │   ├── UnknownTaskError   no @task registered under that name (also a LookupError)
    │   └── DuplicateTaskError two different functions registered under one name
    ├── DatabaseNotConfiguredError  no connection given and SCHEDULER_DATABASE_URL unset
    ├── LeadershipLostError    the leader lost its lock session or term while committing
    ├── PoolerError            the lock session is not a real session (transaction-mode pooler)
    └── MigrationPrivilegeError migrations are pending and this role may not apply them

Bad *values* passed to the Python API (a naive ``run_at``, args that are not JSON) raise the
built-in ``ValueError`` / ``TypeError`` as Python users expect.
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


class TaskError(SchedulerError):
    """Problems with the task registry."""


class UnknownTaskError(TaskError, LookupError):
    """No task is registered under the given name in this process."""


class DuplicateTaskError(TaskError):
    """Two different functions were registered under the same task name."""


class DatabaseNotConfiguredError(SchedulerError):
    """No psycopg connection was passed and ``SCHEDULER_DATABASE_URL`` is not set."""


class LeadershipLostError(SchedulerError):
    """The leader's lock session died or its term is no longer current; nothing was committed."""


class PoolerError(SchedulerError):
    """The advisory lock is not held by this backend after taking it: the connection goes
    through a transaction-mode pooler. Set ``SCHEDULER_DIRECT_DATABASE_URL``."""


class MigrationPrivilegeError(SchedulerError):
    """Migrations are pending and the connecting role lacks the privileges to apply them
    (a least-privilege service role): run ``scheduler migrate`` as the schema's owner."""
