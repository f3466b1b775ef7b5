"""What a handler knows about the attempt it runs: the :class:`JobContext` a handler may ask
for (a first parameter annotated ``JobContext``), and :func:`current_job`, which returns it in
the attempt's task or thread (the worker sets it with :func:`set_current_job`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(slots=True)
class JobContext:
    """What a handler knows about the attempt it runs: declare a first parameter annotated
    ``JobContext`` (``def handler(ctx: JobContext, order_id: int)``) and the worker passes it;
    callers of ``defer`` never see it. :func:`current_job` returns it too. Read-only for
    handlers.

    Attributes:
        job_id: ``jobs.id`` (``0`` for a direct call of the task).
        task: the task's name.
        attempt: this attempt's number, from 1.
        max_attempts: attempts before the job is dead-lettered.
        queue: the job's queue.
        schedule_name: the schedule that made the job, ``None`` for ``defer`` / ``schedule_at``.
        fire_time: the schedule's fire time this job is for (UTC), ``None`` if not a cron job.
        run_at: when the job became due for this attempt (UTC).
        headers: the job's headers (``headers=`` of the enqueue call, and the trace context
            of the enqueuing code: ``traceparent``, ``tracestate``; see
            :mod:`scheduler.tracing`), a read-only mapping; empty for cron jobs.
    """

    job_id: int
    task: str
    attempt: int
    max_attempts: int
    queue: str
    schedule_name: str | None = None
    fire_time: datetime | None = None
    run_at: datetime | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)
    _cancelled: bool = field(default=False, repr=False, compare=False)

    @property
    def cancel_requested(self) -> bool:
        """True once the attempt should stop: an operator cancelled the job (``cancel_job``,
        ``scheduler jobs cancel``) or, for a sync handler, its ``timeout_s`` passed. An async
        handler is also cancelled at its next ``await``; a sync one can only look here."""
        return self._cancelled

    def request_cancel(self) -> None:
        """Set :attr:`cancel_requested` (the worker calls this)."""
        self._cancelled = True


_CURRENT: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "scheduler_current_job", default=None
)


def current_job() -> JobContext | None:
    """The :class:`JobContext` of the attempt running in this task or thread, else ``None``."""
    return _CURRENT.get()


def set_current_job(ctx: JobContext | None) -> contextvars.Token[JobContext | None]:
    """Make ``ctx`` what :func:`current_job` returns in this context (the worker's job task or
    handler thread); returns the token to reset it with."""
    return _CURRENT.set(ctx)
