"""Inline mode: every enqueue call runs its handler at once, in the caller, with no database
(like Celery's eager mode). For unit tests of code that enqueues jobs::

    from scheduler.testing import inline

    with inline() as runner:
        place_order(order_id=1)                  # calls send_receipt.defer(...) inside
    assert runner.jobs[0].task == "send_receipt"
    assert runner.jobs[0].result == "sent"

Under pytest, the ``scheduler_inline`` fixture does the same for one test.

What runs where:

* ``defer`` / ``schedule_at`` / ``schedule_in`` (and the module-level ``enqueue`` /
  ``schedule_at`` with a registered task) call the handler before they return, with the
  arguments a worker would pass: bound and checked exactly as in real mode (a bad argument
  raises :class:`~scheduler.errors.TaskArgumentsError`, nothing is recorded), then decoded
  from their JSON (the handler gets copies, never the caller's objects). A
  :class:`~scheduler.JobContext` (``attempt`` 1) is passed to handlers that declare it, and
  :func:`scheduler.current_job` returns it meanwhile.
* A sync handler is called in the caller's thread. An async handler is awaited by
  ``defer_async`` and the other ``*_async`` calls; from a sync call it runs with
  ``asyncio.run``, or on a helper thread (its own event loop) when this thread already runs
  one. Either way the caller waits for it.
* Whatever the handler raises is raised to the caller, unchanged (one attempt: no retries).
* Jobs scheduled for later (``schedule_at`` with a future instant, ``schedule_in`` with a
  delay > 0) also run at once by default; ``inline(run_scheduled=False)`` records them
  without running them (``ran`` False) and they never run.
* Each call returns a fake job id, 1, 2, 3... per :class:`InlineRunner`, and is recorded in
  :attr:`InlineRunner.jobs`. Bulk calls (``defer_many``, ``enqueue_many``, ``schedule_many``)
  raise :class:`~scheduler.errors.InvalidArgumentError` in inline mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .enqueueing import set_inline
from .errors import UnknownTaskError
from .hooks import attempt_scope, report_failure
from .job_context import JobContext, set_current_job
from .limits import shown
from .preparation import Prepared
from .registry import TaskSpec, task_name
from .tracing import frozen

__all__ = ["InlineJob", "InlineRunner", "inline"]


@dataclass
class InlineJob:
    """One enqueue call seen in inline mode.

    Attributes:
        id: the fake job id the call returned (1, 2, 3... per runner).
        task: the task's name.
        args: the arguments as the handler received them (decoded from JSON), by name.
        run_at: the instant given to ``schedule_at`` (``None`` otherwise).
        delay_s: the delay given to ``schedule_in``, seconds (0.0 otherwise).
        options: ``queue``, ``priority``, ``max_attempts`` (the task's or the defaults when
            the call gave none) and ``idempotency_key``.
        ran: True once the handler was called.
        result: what the handler returned (``None`` if it raised or did not run).
        error: what the handler raised (``None`` if it returned or did not run).
    """

    id: int
    task: str
    args: dict[str, Any]
    run_at: datetime | None
    delay_s: float
    options: dict[str, Any]
    ran: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass
class InlineRunner:
    """What :func:`inline` installs with :func:`scheduler.enqueueing.set_inline`; see the module
    docstring. ``run_scheduled``: run jobs due later at once too (default True)."""

    run_scheduled: bool = True
    jobs: list[InlineJob] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def for_task(self, task: TaskSpec | Any) -> list[InlineJob]:
        """The recorded jobs of ``task`` (a Task, a registered function or a name)."""
        name = task_name(task)
        return [j for j in self.jobs if j.task == name]

    def run(self, job: Prepared) -> int:
        """Record ``job`` and run its handler now (from a sync enqueue call); returns its id.

        Raises:
            UnknownTaskError: the task is not registered in this process.
            BaseException: whatever the handler raised.
        """
        record, spec = self._record(job)
        if spec is None:
            return record.id
        if spec.is_async:
            value = _run_coroutine_blocking(lambda: self._call(spec, record))
        else:
            value = self._call(spec, record)
        return self._finished(record, value)

    async def run_async(self, job: Prepared) -> int:
        """:meth:`run` from an async enqueue call: an async handler is awaited here."""
        record, spec = self._record(job)
        if spec is None:
            return record.id
        value = self._call(spec, record)
        if spec.is_async:
            value = await value
        return self._finished(record, value)

    def _record(self, job: Prepared) -> tuple[InlineJob, TaskSpec | None]:
        """The job's record, and the task to run now (``None``: recorded only)."""
        spec = job.task
        if not isinstance(spec, TaskSpec):
            raise UnknownTaskError(
                f"task {shown(spec)} is not registered in this process: inline mode runs "
                "handlers in the caller, so import the module that defines it"
            )
        p = job.params
        key = p.get("idempotency_key")
        with self._lock:
            for earlier in self.jobs if key is not None else ():
                if earlier.options["idempotency_key"] == key and not earlier.ran:
                    return earlier, None  # a live (not run) job holds the key: its id
            options = {k: p[k] for k in ("queue", "priority", "max_attempts", "idempotency_key")}
            options["headers"] = p.get("headers")
            record = InlineJob(len(self.jobs) + 1, spec.name, json.loads(p["args"]),
                               p["run_at"], float(p["delay_s"]), options)  # fmt: skip
            self.jobs.append(record)
        if not self.run_scheduled and not _due(record):
            return record, None
        record.ran = True
        return record, spec

    def _call(self, spec: TaskSpec, record: InlineJob) -> Any:
        """Call the handler as the current job (a coroutine for an async one: its context
        is the task or thread that runs it, see :func:`_run_coroutine_blocking`)."""
        ctx = JobContext(record.id, spec.name, 1, record.options["max_attempts"],
                         record.options["queue"], run_at=record.run_at,
                         headers=frozen(record.options.get("headers")))  # fmt: skip
        if spec.is_async:
            return _with_context(spec, record, ctx)
        token = set_current_job(ctx)
        try:
            with attempt_scope(ctx):  # the attempt hooks, as a worker runs them
                try:
                    return _invoke(spec, record, ctx)
                except BaseException as exc:
                    report_failure(ctx, exc)
                    raise
        except BaseException as exc:
            record.error = exc
            raise
        finally:
            token.var.reset(token)

    @staticmethod
    def _finished(record: InlineJob, value: Any) -> int:
        record.result = value
        return record.id


def _invoke(spec: TaskSpec, record: InlineJob, ctx: JobContext) -> Any:
    if spec.takes_context:
        return spec.func(ctx, **record.args)
    return spec.func(**record.args)


async def _with_context(spec: TaskSpec, record: InlineJob, ctx: JobContext) -> Any:
    token = set_current_job(ctx)
    try:
        with attempt_scope(ctx):
            try:
                return await _invoke(spec, record, ctx)
            except BaseException as exc:
                report_failure(ctx, exc)
                raise
    except BaseException as exc:
        record.error = exc
        raise
    finally:
        token.var.reset(token)


def _due(record: InlineJob) -> bool:
    if record.run_at is not None:
        return record.run_at <= datetime.now(UTC)
    return record.delay_s <= 0


def _run_coroutine_blocking(make: Any) -> Any:
    """Run the coroutine ``make()`` returns to its end and return its value: with
    ``asyncio.run`` in this thread, or on a helper thread when this thread runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    outcome: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = context.run(lambda: asyncio.run(make()))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="scheduler-inline", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@contextlib.contextmanager
def inline(*, run_scheduled: bool = True) -> Iterator[InlineRunner]:
    """Inline mode for the ``with`` block (see the module docstring); yields the
    :class:`InlineRunner` whose ``jobs`` records every call. Restores the previous mode
    (normally: the database) on exit, also when the block raises.

    Args:
        run_scheduled: run jobs due later at once too (default True); False records them
            without running them.
    """
    runner = InlineRunner(run_scheduled=run_scheduled)
    previous = set_inline(runner)
    try:
        yield runner
    finally:
        set_inline(previous)
