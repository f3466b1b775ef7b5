"""What an operator does to jobs and dead letters (``scheduler jobs ...``,
``scheduler dead-letters ...``); the CLI is a thin layer over these functions. The changes
(retry, cancel, purge) are :mod:`scheduler.job_changes`; this module reads, and runs every
command's session.

* **list** / **show**: jobs by state, queue, task or schedule; one job with every attempt
  (``job_runs``: outcome, error, traceback) and every operator action (``job_events``).
* **sessions**: :func:`session` runs one command's work the same way for every command:
  connect within ``connect_timeout_s``, check that the schema is migrated, run the work in a
  transaction whose statements time out after ``statement_timeout_s`` (:func:`bounded`), and
  turn every database failure into one error of :mod:`scheduler.errors`, with the URL's
  password redacted.

The other functions take an autocommit async connection and a
:class:`~scheduler.store.Store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import TypeAdapter, ValidationError

from . import flow
from .errors import DatabaseError, DatabaseUnavailableError, SchemaNotMigratedError
from .limits import shown
from .log import redact_text, redact_url
from .migrations import migrations
from .settings import Settings
from .store import Store

MAX_DURATION_S = 100 * 365 * 86400.0  # parse_duration: 100 years
_DURATION = TypeAdapter(timedelta)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def client_deadline_s(statement_timeout_s: float) -> float:
    """How long :func:`bounded` waits for the database before giving up on its own: twice the
    statement timeout plus 5 s (the server's ``statement_timeout`` ends a slow statement
    first; this ends the wait on a database that does not answer at all)."""
    return 2 * statement_timeout_s + 5


@contextlib.asynccontextmanager
async def bounded(
    conn: psycopg.AsyncConnection[Any], store: Store, statement_timeout_s: float
) -> AsyncIterator[None]:
    """A transaction whose statements time out after ``statement_timeout_s`` seconds
    (``SET LOCAL``: safe behind a transaction-mode pooler), waited for at most
    :func:`client_deadline_s` in all.

    Raises:
        psycopg.errors.QueryCanceled: a statement ran past ``statement_timeout_s``.
        TimeoutError: the database did not answer within the client deadline.
    """
    async with asyncio.timeout(client_deadline_s(statement_timeout_s)):
        async with conn.transaction():
            await conn.execute(
                store.q["statement_timeout_local"],
                {"statement_timeout_ms": str(max(1, int(statement_timeout_s * 1000)))},
            )
            yield


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``30d``, ``12h``, ``15m``, ``90s``, ``2w``, a number of seconds, or
    an ISO 8601 duration (``P7D``, ``PT12H``; parsed by pydantic).

    Raises:
        ValueError: ``text`` is none of these, is not positive, or is longer than
            :data:`MAX_DURATION_S` (100 years).
    """
    value = text.strip().lower()
    try:
        if value and value[-1] in _UNITS and value[:-1].replace(".", "", 1).isdigit():
            seconds = float(value[:-1]) * _UNITS[value[-1]]
        else:
            seconds = _DURATION.validate_python(text.strip()).total_seconds()
    except (ValidationError, OverflowError):
        raise ValueError(
            f"{shown(text)} is not a duration: use e.g. 30d, 12h, 15m, 90s, 2w, a number of "
            "seconds, or ISO 8601 such as P7D"
        ) from None
    if not seconds > 0:
        raise ValueError(f"{shown(text)}: the duration must be positive")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{shown(text)}: the duration must be at most 100 years")
    return seconds


async def list_jobs(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    state: str | None = None,
    queue: str | None = None,
    task: str | None = None,
    schedule: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Jobs matching every given filter, newest first, at most ``limit``."""
    params = {"state": state, "queue": queue, "task": task, "schedule": schedule}
    return await store.fetch(conn, "jobs_list", {**params, "limit": limit})


async def show_job(
    conn: psycopg.AsyncConnection[Any], store: Store, job_id: int
) -> dict[str, Any] | None:
    """The job's row with ``runs`` (every attempt, with error and traceback) and ``events``
    (operator actions), or ``None`` when there is no such job."""
    rows = await store.fetch(conn, "job_get", {"id": job_id})
    if not rows:
        return None
    job = rows[0]
    job["runs"] = await store.fetch(conn, "job_runs_of", {"id": job_id})
    job["events"] = await store.fetch(conn, "job_events_of", {"id": job_id})
    return job


async def status(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    leader_stale_s: float = 10.0,
    replica_stale_s: float = 30.0,
) -> dict[str, Any]:
    """What ``scheduler status`` shows.

    * ``leader``: ``holder, term, elected_at, heartbeat_at, config_hash``,
      ``heartbeat_age_s``, ``lock_held`` (a session of this database holds the leader's
      advisory lock), ``stale`` and ``stale_reason`` (``None`` when the leader is live): the
      lock is free (the holder exited; the next replica to start takes over) and/or its
      heartbeat is older than ``leader_stale_s`` seconds (hung). ``None``: never elected.
    * ``replicas``: every registered replica with ``heartbeat_age_s``, ``stuck_threads``
      (sync handler threads still running past their timeout), ``leader`` (it is the holder
      and the lock is held) and ``stale`` (silent for more than ``replica_stale_s``: the
      leader deletes such rows; without a live leader they stay).
    * ``queues``: depth by state and ``lag_s``, the age of the oldest due-but-unclaimed job.
    * ``queue_limits``: the queues with flow-control limits, as :func:`scheduler.flow.
      queue_overview` shows them (limits, source, running, pending, window_starts, ...).
    * ``schedules_in_trouble``: ``name, problem, fire_time, at, detail``; problems: ``dead``
      (the latest fire time's job is dead), ``missed: <reason>`` (fire times skipped) and
      ``materialisation failed`` (the leader cannot plan or insert its fire times;
      ``detail`` is the error).
    * ``incidents``: the open alert incidents (:mod:`scheduler.alerts`), oldest first: ``id,
      schedule, kind`` (``missed``, ``failing``, ``paused``), ``opened_at``, ``since`` (when
      the problem began), ``detail``.
    """
    key = {"key": store.leader_key}
    leaders = await store.fetch(conn, "status_leader", key)
    leader = leaders[0] if leaders else None
    if leader is not None:
        reasons = []
        if not leader["lock_held"]:
            reasons.append("no session holds the leader lock: the holder has exited")
        age = leader["heartbeat_age_s"]
        if age is not None and float(age) > leader_stale_s:
            reasons.append(f"its last heartbeat is {float(age):g} s old")
        leader["stale"] = bool(reasons)
        leader["stale_reason"] = "; ".join(reasons) or None
    replicas = await store.fetch(conn, "status_replicas", key)
    for replica in replicas:
        replica["stale"] = float(replica["heartbeat_age_s"]) > replica_stale_s
    return {
        "leader": leader,
        "replicas": replicas,
        "queues": await store.fetch(conn, "status_queues"),
        "queue_limits": [r for r in await flow.queue_overview(conn, store) if r["source"]],
        "schedules_in_trouble": await store.fetch(conn, "status_schedules_in_trouble"),
        "incidents": await store.fetch(conn, "status_incidents"),
    }


# ---- sessions -----------------------------------------------------------------------------


def _reason(exc: BaseException, url: str) -> str:
    return redact_text(" ".join(str(exc).split())[:500], url)


async def connect(url: str, settings: Settings) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection, giving up after ``settings.connect_timeout_s`` (unless the
    URL sets its own ``connect_timeout``).

    Raises:
        DatabaseUnavailableError: cannot connect (refused, timed out, authentication, no such
            database); the message has the URL with its password redacted.
    """
    params: dict[str, Any] = {}
    if "connect_timeout" not in conninfo_to_dict(url):
        params["connect_timeout"] = max(2, math.ceil(settings.connect_timeout_s))
    try:
        # no prepared statements: the URL may lead to a transaction pooler
        return await psycopg.AsyncConnection.connect(
            url, autocommit=True, prepare_threshold=None, **params
        )
    except psycopg.Error as exc:
        reason = _reason(exc, url)
        if "timeout" in reason and params:
            reason += f" (after SCHEDULER_CONNECT_TIMEOUT_S={settings.connect_timeout_s:g} s)"
        raise DatabaseUnavailableError(
            f"cannot connect to the database {redact_url(url)}: {reason}"
        ) from None


async def check_connection(url: str, settings: Settings) -> None:
    """Connect once and close: fail fast with a message (``migrate``, ``run``).

    Raises:
        DatabaseUnavailableError: as :func:`connect`.
    """
    conn = await connect(url, settings)
    await conn.close()


async def require_migrated(conn: psycopg.AsyncConnection[Any], store: Store) -> None:
    """Raise :class:`~scheduler.errors.SchemaNotMigratedError` (saying to run ``scheduler
    migrate``) when the schema has no scheduler tables or migrations are pending."""
    pending = await store.pending_migrations(conn)
    if not pending:
        return
    if len(pending) == len(migrations()):
        raise SchemaNotMigratedError(
            f"schema {store.schema!r} has no scheduler tables in this database: run "
            "`scheduler migrate` (with the same SCHEDULER_DATABASE_URL and SCHEDULER_SCHEMA)"
        )
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
    raise SchemaNotMigratedError(
        f"schema {store.schema!r} is behind this version of scheduler (migrations {names} are "
        "pending): run `scheduler migrate`"
    )


def database_error(exc: psycopg.Error, url: str, settings: Settings) -> DatabaseError:
    """The :mod:`scheduler.errors` error for a psycopg error met while talking to ``url``:
    a statement timeout or a lost connection is ``DatabaseUnavailableError``, a missing
    table ``SchemaNotMigratedError``, anything else ``DatabaseError``; one line, redacted."""
    reason = _reason(exc, url)
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return DatabaseUnavailableError(
            f"the database did not answer within SCHEDULER_STATEMENT_TIMEOUT_S="
            f"{settings.statement_timeout_s:g} s ({reason}): a lock held by another session, "
            "or an overloaded database"
        )
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return SchemaNotMigratedError(
            f"{reason}: schema {settings.schema_name!r} is not migrated: run `scheduler migrate`"
        )
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnavailableError(
            f"lost the connection to the database {redact_url(url)}: {reason}"
        )
    return DatabaseError(f"the database refused the command: {reason}")


async def session(
    url: str,
    settings: Settings,
    action: Callable[[psycopg.AsyncConnection[Any], Store], Awaitable[Any]],
    *,
    transaction: bool = True,
) -> Any:
    """Run ``action(conn, store)`` on a new connection to ``url`` and return its result.

    The connection is opened with :func:`connect`, the schema must be migrated, and
    ``action`` runs in one :func:`bounded` transaction (``transaction=False``: ``action``
    bounds its own transactions, e.g. purging in batches).

    Raises:
        DatabaseUnavailableError: cannot connect, the connection was lost, or no answer in time.
        SchemaNotMigratedError: the schema's tables are missing or behind this version.
        DatabaseError: the database refused a statement (e.g. permission denied).
    """
    timeout_s = settings.statement_timeout_s
    store = Store(settings.schema_name)
    try:
        async with await connect(url, settings) as conn:
            async with bounded(conn, store, timeout_s):
                await require_migrated(conn, store)
            if not transaction:
                return await action(conn, store)
            async with bounded(conn, store, timeout_s):
                return await action(conn, store)
    except psycopg.Error as exc:
        raise database_error(exc, url, settings) from None
    except TimeoutError:
        raise DatabaseUnavailableError(
            f"no answer from the database {redact_url(url)} within "
            f"{client_deadline_s(timeout_s):g} s (SCHEDULER_STATEMENT_TIMEOUT_S="
            f"{timeout_s:g}): is it hung or unreachable?"
        ) from None
