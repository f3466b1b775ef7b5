"""The only module that talks to PostgreSQL.

Statements live in ``sql/queries.sql`` (one ``-- name: x`` block each) and migrations in
``sql/migrations/NNNN_name.sql``. Both use ``{schema}`` for the configured schema, composed as a
quoted identifier with :mod:`psycopg.sql` (never string formatting of user input); values are
always bound parameters.

Connections: the service keeps an :class:`psycopg_pool.AsyncConnectionPool` for claims and
completions, and dedicated connections (outside the pool) for the leader lock session and for
LISTEN. ``schedule_at()`` may use the caller's connection, sync or async, so that its INSERT
is part of the caller's transaction; statements on a caller's connection are never prepared
(``prepare=False``: the caller may sit behind a transaction pooler, see
:mod:`scheduler.pooler`).

Every statement runs through :class:`Store`; its methods of three stages live in modules of
their own, as base classes of ``Store``: :mod:`scheduler.migrations` (schema migration),
:mod:`scheduler.job_inserts` (enqueue) and :mod:`scheduler.election` (leader election).
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .election import ElectionStatements, leader_lock_key
from .job_inserts import InsertStatements
from .migrations import MigrationStatements, _compose

_BLOCK = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _read(name: str) -> str:
    return resources.files("scheduler").joinpath("sql", name).read_text(encoding="utf-8")


# The files of named statements: the service's own, and the dashboard's reads (scheduler.web).
QUERY_FILES = ("queries.sql", "dashboard_jobs.sql", "dashboard_system.sql")


@cache
def _raw_queries() -> dict[str, str]:
    found: dict[str, str] = {}
    for file in QUERY_FILES:
        if not resources.files("scheduler").joinpath("sql", file).is_file():
            continue
        parts = _BLOCK.split(_read(file))
        for i in range(1, len(parts), 2):
            if parts[i] in found:
                raise RuntimeError(f"sql/{file}: query {parts[i]!r} is named twice")
            found[parts[i]] = parts[i + 1].strip()
    return found


@cache
def queries(schema: str) -> dict[str, sql.Composed]:
    """Every named statement of the files of :data:`QUERY_FILES` (``sql/queries.sql`` and the
    dashboard's), composed for ``schema``."""
    return {name: _compose(text, schema) for name, text in _raw_queries().items()}


def _outcome_arrays(worker_id: str, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """The array parameters of ``complete_jobs``."""
    return {
        "worker_id": worker_id,
        "ids": [o["id"] for o in outcomes],
        "attempts": [o["attempt"] for o in outcomes],
        "states": [o["state"] for o in outcomes],
        "delays_s": [float(o.get("delay_s") or 0.0) for o in outcomes],
        "outcomes": [o["outcome"] for o in outcomes],
        "errors": [o.get("error") for o in outcomes],
        "tracebacks": [o.get("traceback") for o in outcomes],
        "results": [o.get("result") for o in outcomes],
    }


def int_array(values: list[int]) -> str:
    """A PostgreSQL array literal of ints (``{1,2,3}``) for a ``%(x)s::bigint[]`` parameter:
    psycopg would scan a Python list of ints to choose their size, per statement (~7 % of a
    drain's loop in py-spy)."""
    return "{" + ",".join(map(str, values)) + "}"


class Store(MigrationStatements, InsertStatements, ElectionStatements):
    """Named statements for one schema, run on connections the caller provides.

    Every method takes an async psycopg connection (``psycopg.AsyncConnection``) unless it
    says otherwise; methods that need a transaction open one with ``conn.transaction()``,
    which nests as a savepoint inside a caller's transaction.
    """

    def __init__(self, schema: str):
        self.schema = schema
        self.q = queries(schema)
        self.leader_key = leader_lock_key(schema)
        self.notify_channel = f"{schema}.jobs"
        self.cancel_channel = f"{schema}.cancel"
        self.done_channel = f"{schema}.done"  # ids of jobs that finished (wait_for_job)
        self.limits_channel = f"{schema}.limits"  # a queue's limits changed (scheduler.flow)
        self.schedules_channel = f"{schema}.schedules"  # a schedule was written: wake the leader
        self.schedules_key = f"scheduler.schedules:{schema}"  # schedules_write_lock
        self.jobs_table = f'"{schema}".jobs'  # schema is a validated identifier

    # ---- workers ------------------------------------------------------------------------------

    async def claim_jobs(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        queues: list[str],
        limit: int,
        worker_id: str,
        lease_s: float,
        now: datetime | None = None,
        limited: bool = False,
    ) -> list[dict[str, Any]]:
        """Claim up to ``limit`` due pending jobs (``FOR UPDATE SKIP LOCKED``): one statement,
        which commits by itself on an autocommit connection (the worker's pool). A job is due
        when its ``run_at <= now`` (``None``: the database clock; tests pass a later instant).

        Returns the claimed rows as dicts (``id, queue, task, args, attempt, max_attempts,
        backoff_*, schedule_name, scheduled_for, run_at, headers``); ``attempt`` is already
        incremented.

        ``limited=False`` (default): ``claim_jobs``, which ignores flow control (lock-free,
        the hot path). ``limited=True``: ``claim_jobs_limited``, for a worker that knows one
        of ``queues`` has limits (a row in the ``queues`` table, :mod:`scheduler.flow`):
        those queues are claimed first, each under a lock of its row, at most what their
        global concurrency, starts per window and per-``concurrency_key`` limits allow at
        this instant, across every replica; the other queues take the slots left, lock-free.
        """
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            self.q["claim_jobs_limited" if limited else "claim_jobs"],
            {"queues": queues, "limit": limit, "worker_id": worker_id, "lease_s": lease_s,
             "now": now},
        )
        return await cur.fetchall()

    async def complete_jobs(
        self,
        conn: psycopg.AsyncConnection[Any],
        worker_id: str,
        outcomes: list[dict[str, Any]],
        *,
        succeeded_shortcut: bool = True,
    ) -> dict[int, bool]:
        """Record a batch of attempt outcomes in one fenced statement.

        Each outcome dict has ``id, attempt, state`` (``succeeded``, ``pending`` for a retry,
        ``dead``), ``delay_s`` (retry delay in seconds, ignored otherwise), ``outcome``
        (``succeeded``, ``failed``, ``timeout``, ...), ``error``, ``traceback`` and ``result``
        (the JSON text of a succeeded handler's return value, ``None`` for none).

        A batch in which every attempt succeeded is written by ``complete_succeeded`` (two
        arrays, a plain insert of the runs) unless ``succeeded_shortcut`` is False; else by
        ``complete_jobs``, which writes a job's transition even when ``job_runs`` already
        holds that attempt (an attempt number reset by hand).

        Returns ``{job id: run recorded}`` for the jobs that changed; a missing id was fenced
        off (the job moved on).

        Raises:
            psycopg.Error: the statement failed; nothing of the batch was written.
        """
        if not outcomes:
            return {}
        done = self.done_channel
        if succeeded_shortcut and all(
            o["outcome"] == "succeeded" and not o.get("error") for o in outcomes
        ):
            results = [o.get("result") for o in outcomes]
            cur = await conn.execute(
                self.q["complete_succeeded"],
                {
                    "worker_id": worker_id,
                    "ids": int_array([o["id"] for o in outcomes]),
                    "attempts": int_array([o["attempt"] for o in outcomes]),
                    "results": results if any(r is not None for r in results) else None,
                    "done_channel": done,
                },
            )
            return {row[0]: True for row in await cur.fetchall()}
        # one statement (autocommit on the worker's pool): no BEGIN/COMMIT round trips
        params = {**_outcome_arrays(worker_id, outcomes), "done_channel": done}
        cur = await conn.execute(self.q["complete_jobs"], params)
        return {row[0]: row[1] for row in await cur.fetchall()}

    async def database_now(self, conn: psycopg.AsyncConnection[Any]) -> datetime:
        """The database's clock (``now()``: the start of its transaction), timezone-aware."""
        cur = await conn.execute(self.q["database_now"])
        row = await cur.fetchone()
        assert row is not None
        now: datetime = row[0]
        return now

    async def fetch(
        self, conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Run the named statement and return its rows as dicts."""
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(self.q[name], params or {})
        return await cur.fetchall() if cur.description else []
