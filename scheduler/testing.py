"""Helpers for your test suite: a pytest plugin (loaded automatically once ``scheduler`` is
installed; disable it with ``-p no:scheduler``) and the same helpers without pytest.

Fixtures:

* ``scheduler_db``: a fresh migrated database for the test, cloned from a template made once
  per session, on the server of ``SCHEDULER_TEST_DSN`` (its user may ``CREATE DATABASE``) or
  else on an embedded server started once per session. It is the default database of the
  code under test (``defer()`` without a connection enqueues there) and gives a
  :class:`SchedulerDB`: run due jobs in-process, move the due-time horizon, look at what is
  enqueued::

      def test_receipt_follows_order(scheduler_db):
          place_order(order_id=1)            # send_receipt.schedule_in(timedelta(minutes=5))
          assert scheduler_db.run_jobs().succeeded == 0           # not due yet
          assert scheduler_db.run_jobs(until=timedelta(minutes=6)).succeeded == 1

* ``scheduler_inline``: inline mode (no database; see :mod:`scheduler.testing_inline`):
  every enqueue call runs its handler at once; ``with inline():`` does the same anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from . import control, embedded, testing_run
from .arguments import args_json
from .connections import close_default_pools, set_default_database_url
from .control import Job
from .errors import DatabaseError, DatabaseUnavailableError, InvalidArgumentError
from .jobs import JobState
from .limits import shown
from .log import redact_url
from .preparation import TaskRef, delay_seconds
from .registry import task_name
from .settings import get_settings
from .store import Store
from .testing_inline import InlineJob, InlineRunner, inline
from .testing_run import RunReport, Until

__all__ = ["InlineJob", "InlineRunner", "Job", "RunReport", "SchedulerDB", "inline"]

_SHOWN = 20  # jobs listed in an assertion's message


class SchedulerDB:
    """A migrated database for a test (the ``scheduler_db`` fixture gives one), in the
    schema of the ``SCHEDULER_SCHEMA`` setting.

    Args:
        url: libpq URL of the database (``url`` attribute).
    """

    def __init__(self, url: str):
        self.url = url
        self._store = Store(get_settings().schema_name)

    # ---- running due jobs (scheduler.testing_run) ------------------------------------------

    def run_jobs(self, until: Until = None, queues: list[str] | None = None,
                 max_jobs: int = 10_000) -> RunReport:  # fmt: skip
        """Run due jobs one at a time in this thread until none is due; returns what ran.

        A job is due when its ``run_at`` <= the horizon ``until``. Each is claimed and
        completed with the worker's statements: a success is ``succeeded`` (its return value
        stored), a failure is retried after its backoff as the worker does (it runs again in
        this call when the retry's ``run_at`` is still within the horizon), and dead once it
        has used ``max_attempts``; a job whose task is not registered in this process is
        dead-lettered at once, with the reason. Jobs the handlers enqueue run too when due.
        Sync handlers are called in this thread (no event loop running, as in a worker's
        thread); async ones run on this call's own event loop (``asyncio.Runner``). The
        handler gets its ``JobContext`` if it takes one, and :func:`scheduler.current_job`
        returns it; ``timeout_s`` applies to async handlers only. KeyboardInterrupt
        propagates; anything else a handler raises is a failed attempt (``RunReport.errors``).

        Args:
            until: ``None`` (default): the database clock at each claim. A timezone-aware
                datetime; or a timedelta or seconds (0 to 10 years) added to the database's
                ``now()`` once, when the call starts ("6 minutes from now").
            queues: the queues to run; default every queue with a pending job.
            max_jobs: stop after this many attempts (``RunReport.limit_reached``); >= 1.

        Raises:
            InvalidArgumentError: a bad ``until`` (naive, negative, not a datetime,
                timedelta or number), ``queues`` or ``max_jobs``.
            SchedulerError: called while this thread runs an event loop (use
                :meth:`run_jobs_async`).
            DatabaseUnavailableError: the database cannot be reached.
        """
        return testing_run.run_jobs(self.url, self._store, until, queues, max_jobs)

    async def run_jobs_async(self, until: Until = None, queues: list[str] | None = None,
                             max_jobs: int = 10_000) -> RunReport:  # fmt: skip
        """:meth:`run_jobs` for async tests: async handlers run on the caller's event loop;
        sync handlers on a thread (``asyncio.to_thread``, as the worker runs them), one job
        at a time. Same arguments, result and errors (but never the running-loop one)."""
        return await testing_run.run_jobs_async(self.url, self._store, until, queues, max_jobs)

    # ---- looking at jobs (scheduler.control) -----------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            conn = psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as e:
            raise DatabaseUnavailableError(f"scheduler_db: cannot connect to "
                                           f"{redact_url(self.url)}: {redact_url(str(e))}"
                                           ) from None  # fmt: skip
        with conn:
            yield conn

    def now(self) -> datetime:
        """The database's clock (``now()``, UTC)."""
        with self._connection() as conn:
            row = conn.execute(self._store.q["database_now"]).fetchone()
        assert row is not None
        now: datetime = row[0]
        return now

    def enqueued_jobs(self, task: TaskRef | None = None, args: Mapping[str, Any] | None = None,
                      state: JobState | str | None = "pending") -> list[Job]:  # fmt: skip
        """Jobs in ``state`` (default ``"pending"``; ``None``: any), oldest first, as
        :class:`scheduler.control.Job` (``id``, ``task``, ``args``, ``run_at``, ``queue``,
        ``state``, ``result``, ...). Looks at the newest 10,000 jobs of that state.

        Args:
            task: a Task, a registered function or a task name; ``None``: every task.
            args: keyword arguments every returned job has, with these values (other
                arguments may be there too); compared after JSON (a tuple equals a list).

        Raises:
            InvalidArgumentError: ``task`` is not a task or valid name, ``args`` is not a
                mapping of JSON values, ``state`` is not a job state.
            UnknownTaskError: ``task`` is a function never registered with ``@task``.
        """
        wanted = _json_args(args)
        with self._connection() as conn:
            listed = control.list_jobs(state, task=task, limit=control.LIST_LIMIT_MAX,
                                       connection=conn)  # fmt: skip
        return [j for j in reversed(listed) if wanted.items() <= (j.args or {}).items()]

    def assert_enqueued(self, task: TaskRef, args: Mapping[str, Any] | None = None,
                        count: int | None = None, within: timedelta | float | None = None,
                        state: JobState | str = "pending") -> list[Job]:  # fmt: skip
        """Assert that jobs of ``task`` with ``args`` (a subset, see :meth:`enqueued_jobs`)
        are enqueued: ``count`` of them exactly (default: at least one), due within
        ``within`` (a timedelta or seconds from the database's now; default: whenever).
        Returns the matching jobs.

        Raises:
            AssertionError: they are not; the message lists the jobs in ``state`` there are.
            InvalidArgumentError, UnknownTaskError: as :meth:`enqueued_jobs`, or a bad
                ``count`` or ``within``.
        """
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 0):  # fmt: skip
            raise InvalidArgumentError(f"count must be an int >= 0 or None, not {shown(count)}")
        found, now = self._matching(task, args, within, state)
        if (len(found) == count) if count is not None else found:
            return found
        wanted = "at least one job" if count is None else f"{count} job(s)"
        raise AssertionError(self._message(f"expected {wanted}", task, args, within, state,
                                           len(found), now))  # fmt: skip

    def assert_not_enqueued(self, task: TaskRef, args: Mapping[str, Any] | None = None,
                            within: timedelta | float | None = None,
                            state: JobState | str = "pending") -> None:  # fmt: skip
        """Assert that no job of ``task`` with ``args`` is enqueued (due within ``within``);
        arguments and errors as :meth:`assert_enqueued`."""
        found, now = self._matching(task, args, within, state)
        if found:
            raise AssertionError(self._message("expected no job", task, args, within, state,
                                               len(found), now))  # fmt: skip

    def _matching(self, task: Any, args: Any, within: Any,
                  state: Any) -> tuple[list[Job], datetime]:  # fmt: skip
        limit = None if within is None else timedelta(seconds=delay_seconds(within, "within"))
        found = self.enqueued_jobs(task, args, state)
        now = self.now()
        if limit is not None:
            found = [j for j in found if j.run_at <= now + limit]
        return found, now

    def _message(self, expected: str, task: Any, args: Any, within: Any, state: Any,
                 matched: int, now: datetime) -> str:  # fmt: skip
        state = JobState(state).value
        what = f"{expected} of task {task_name(task)!r} in state {state!r}"
        if args:
            what += f" with args including {dict(args)!r}"
        if within is not None:
            what += f" due within {delay_seconds(within, 'within'):g} s"
        there = self.enqueued_jobs(None, None, state)
        lines = [_describe(j, now) for j in there[:_SHOWN]]
        if len(there) > _SHOWN:
            lines.append(f"... and {len(there) - _SHOWN} more")
        listing = "\n  ".join(lines) if lines else "(none)"
        return f"{what}; {matched} matched. Jobs {state} now:\n  {listing}"

    def get_result(self, job_id: int) -> Any:
        """The value the handler of a succeeded job returned (JSON-decoded; ``None`` for
        ``None``, or for a value that could not be stored).

        Raises:
            JobNotFoundError: no job has this id.
            AssertionError: the job has not succeeded (the message has its state and error).
            InvalidArgumentError: ``job_id`` is not an int from 1 to 2**63-1.
        """
        with self._connection() as conn:
            job = control.get_job(job_id, connection=conn)
        if job.state is not JobState.SUCCEEDED:
            raise AssertionError(f"job {job_id} ({job.task}) has not succeeded: it is "
                                 f"{job.state.value} (attempt {job.attempt} of "
                                 f"{job.max_attempts}), last error: {job.last_error}")  # fmt: skip
        return job.result


def _describe(job: Job, now: datetime) -> str:
    """``#3 send_receipt(order_id=1) queue=mail, due in 300 s`` (relative to ``now``)."""
    args = ", ".join(f"{k}={shown(v, 60)}" for k, v in (job.args or {}).items())
    due = (job.run_at - now).total_seconds()
    when = f"due in {due:.0f} s" if due > 0 else "due now"
    return f"#{job.id} {job.task}({args}) queue={job.queue}, {when}"


def _json_args(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise InvalidArgumentError(f"args must be a mapping, not {type(args).__name__}")
    decoded: dict[str, Any] = json.loads(args_json(args, "args"))
    return decoded


# ---- the pytest plugin ---------------------------------------------------------------------

try:
    import pytest
except ImportError:  # inline() and SchedulerDB work without pytest
    pytest = None  # type: ignore[assignment]

_counter = itertools.count()


def _admin(server_url: str, statement: str, *names: str) -> None:
    """Run ``statement`` (``{}`` placeholders for the database ``names``) on the server."""
    query = sql.SQL(statement).format(*map(sql.Identifier, names))
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(query)
    except psycopg.Error as e:
        raise DatabaseError(f"scheduler_db: {statement.format(*names)!r} failed on "
                            f"{redact_url(server_url)} (SCHEDULER_TEST_DSN, or the embedded "
                            f"server): {redact_url(str(e))}") from None  # fmt: skip


if pytest is not None:

    @pytest.fixture(scope="session")
    def scheduler_pg_url() -> Iterator[str]:
        """libpq URL of the server for ``scheduler_db`` (its admin database):
        ``SCHEDULER_TEST_DSN``, else an embedded server started once for the session."""
        dsn = os.environ.get("SCHEDULER_TEST_DSN")
        if dsn:
            yield dsn
            return
        with tempfile.TemporaryDirectory(prefix="scheduler-pytest-pg-") as tmp:
            yield embedded.start(tmp)
            embedded.stop(tmp)

    @pytest.fixture(scope="session")
    def scheduler_template_db(scheduler_pg_url: str) -> Iterator[str]:
        """Name of a migrated template database, made once per session and dropped after."""
        name = f"scheduler_plugin_template_{os.getpid()}"
        _admin(scheduler_pg_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
        _admin(scheduler_pg_url, "CREATE DATABASE {}", name)

        async def migrate() -> None:
            url = make_conninfo(scheduler_pg_url, dbname=name)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await Store(get_settings().schema_name).migrate(conn)

        asyncio.run(migrate())
        yield name
        _admin(scheduler_pg_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    @pytest.fixture
    def scheduler_db(scheduler_pg_url: str, scheduler_template_db: str) -> Iterator[SchedulerDB]:
        """A fresh migrated database for this test, made the default database of the code
        under test (:func:`scheduler.connections.set_default_database_url`); dropped after."""
        name = f"scheduler_plugin_{os.getpid()}_{next(_counter)}"
        _admin(scheduler_pg_url, "CREATE DATABASE {} TEMPLATE {}", name, scheduler_template_db)
        url = make_conninfo(scheduler_pg_url, dbname=name)
        set_default_database_url(url)
        try:
            yield SchedulerDB(url)
        finally:
            set_default_database_url(None)
            close_default_pools()
            _admin(scheduler_pg_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)

    @pytest.fixture
    def scheduler_inline() -> Iterator[InlineRunner]:
        """Inline mode for this test (:func:`scheduler.testing_inline.inline`): enqueue calls
        run their handlers at once; the runner's ``jobs`` records them."""
        with inline() as runner:
            yield runner
