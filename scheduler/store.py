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
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, ClassVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .errors import DuplicateJobError, IdempotencyKeyBusyError, MigrationLockError

_BLOCK = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")


# One job of a bulk enqueue: (queue, task, args as JSON text, priority, run_at or None for
# "now", max_attempts, backoff_base_s, backoff_max_s, backoff_jitter, concurrency_key,
# headers: a dict of strings, or None for none).
BulkJob = tuple[
    str, str, str, int, datetime | None, int, float, float, float, str | None,
    dict[str, str] | None,
]  # fmt: skip


def _read(name: str) -> str:
    return resources.files("scheduler").joinpath("sql", name).read_text(encoding="utf-8")


def _compose(text: str, schema: str) -> sql.Composed:
    # {schema} is the only placeholder: other braces (jsonb '{}' literals) are escaped first.
    escaped = text.replace("{", "{{").replace("}", "}}").replace("{{schema}}", "{schema}")
    return sql.SQL(escaped).format(schema=sql.Identifier(schema))


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


@dataclass(frozen=True)
class Migration:
    """A forward-only migration file ``NNNN_name.sql`` shipped in the package."""

    version: int
    name: str
    text: str


@cache
def migrations() -> tuple[Migration, ...]:
    """The shipped migrations, ordered by version."""
    found = []
    for entry in resources.files("scheduler").joinpath("sql", "migrations").iterdir():
        m = _MIGRATION.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    return tuple(sorted(found, key=lambda m: m.version))


def leader_lock_key(schema: str) -> str:
    """Text hashed (``hashtextextended``) into the leader's advisory-lock key for ``schema``."""
    return f"scheduler.leader:{schema}"


def _migrations_lock_key(schema: str) -> str:
    return f"scheduler.migrate:{schema}"


MIGRATION_LOCK_TIMEOUT_S = 5.0  # lock_timeout of a migration's statements
MIGRATION_TRIES = 5  # a migration whose locks time out is tried again, 1, 2, 4, 8 s later

# Each miss means the live job holding the key finished between our INSERT and our SELECT:
# the system moves on, so trying again is safe; 3 tries failed under a real race.
IDEMPOTENT_TRIES = 100


def _key_busy(params: dict[str, Any]) -> IdempotencyKeyBusyError:
    return IdempotencyKeyBusyError(
        f"idempotency_key {params['idempotency_key']!r:.80}: the live job holding it finished "
        f"{IDEMPOTENT_TRIES} times between inserting and reading; nothing was enqueued"
    )


@dataclass(frozen=True)
class Enqueued:
    """What one enqueue did (the ``*_result`` calls of :mod:`scheduler.jobs` and
    :class:`scheduler.TaskCall`).

    Attributes:
        id: the job inserted, or the job found holding the ``idempotency_key``.
        created: True when a new job was inserted.
        existing_state: when not created, the state of the job found (``"pending"``,
            ``"running"``, ``"succeeded"``, ``"dead"``, ``"cancelled"``: a job whose
            ``unique_for_s`` window is still open blocks in any state); ``None`` when created.
        replaced: ``on_conflict="replace"`` gave that pending job the new arguments, due time
            and priority. False with ``created`` False: the job was running or finished (or
            of another task), so the call fell back to ``"return"``.
    """

    id: int
    created: bool
    existing_state: str | None = None
    replaced: bool = False


def _keyed(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a keyed insert, with the defaults of the unique-job options."""
    return {"unique_for_s": None, "on_conflict": "return", "concurrency_key": None,
            "headers": None, **params}  # fmt: skip


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``insert_job``: ``headers`` (JSON text of an object) default to
    none (``'{}'``)."""
    return params if "headers" in params else {**params, "headers": None}


def _replaces(params: dict[str, Any], job_id: int, state: str) -> bool:
    """Whether a conflict with ``job_id`` (in ``state``) is resolved by replacing it; raises
    :class:`DuplicateJobError` for ``on_conflict="raise"``."""
    if params["on_conflict"] == "raise":
        raise DuplicateJobError(params["idempotency_key"], job_id, state)
    return bool(params["on_conflict"] == "replace" and state == "pending")


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


class Store:
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

    # ---- migrations -------------------------------------------------------------------------

    async def migrate(self, conn: psycopg.AsyncConnection[Any]) -> list[Migration]:
        """Apply the shipped migrations not yet applied, each in its own transaction, under a
        transaction-level advisory lock (so concurrent ``migrate`` calls serialise). Idempotent.

        A migration's statements wait at most :data:`MIGRATION_LOCK_TIMEOUT_S` (5 s) for the
        locks they need (``lock_timeout``): a migration that rebuilds an index takes ``ACCESS
        EXCLUSIVE`` on its table, which would otherwise queue every reader behind a long
        transaction. It is tried :data:`MIGRATION_TRIES` times, waiting 1, 2, 4... s between.

        Returns the migrations applied by this call (empty when the schema is current).

        Raises:
            MigrationLockError: a migration could not take its locks in time, every try.
        """
        if not await self.pending_migrations(conn):
            return []  # read-only check: a least-privilege role may start when current
        applied_now: list[Migration] = []
        for migration in migrations():
            for attempt in range(MIGRATION_TRIES):
                try:
                    if await self._apply(conn, migration):
                        applied_now.append(migration)
                    break
                except psycopg.errors.LockNotAvailable:
                    if attempt + 1 == MIGRATION_TRIES:
                        raise MigrationLockError(
                            f"migration {migration.version:04d}_{migration.name} could not take "
                            f"its locks within {MIGRATION_LOCK_TIMEOUT_S:g} s, {MIGRATION_TRIES} "
                            "times (long transactions on the scheduler's tables?); nothing of it "
                            "was applied: run `scheduler migrate` again when they are done"
                        ) from None
                    await asyncio.sleep(2.0**attempt)
        return applied_now

    async def _apply(self, conn: psycopg.AsyncConnection[Any], migration: Migration) -> bool:
        """Apply one migration in one transaction; False if another process already did."""
        async with conn.transaction():
            await conn.execute(self.q["migrations_lock"], {"key": _migrations_lock_key(self.schema)})
            await conn.execute(self.q["migrations_table"])
            cur = await conn.execute(self.q["migrations_applied"])
            if migration.version in {row[0] for row in await cur.fetchall()}:
                return False
            await conn.execute(
                self.q["migration_lock_timeout"],
                {"ms": str(int(MIGRATION_LOCK_TIMEOUT_S * 1000))},
            )
            await conn.execute(_compose(migration.text, self.schema))
            await conn.execute(
                self.q["migration_record"], {"version": migration.version, "name": migration.name}
            )
        return True

    async def pending_migrations(self, conn: psycopg.AsyncConnection[Any]) -> list[Migration]:
        """Shipped migrations that the database has not applied yet."""
        cur = await conn.execute(
            self.q["migrations_table_exists"], {"table": f'"{self.schema}".migrations'}
        )
        row = await cur.fetchone()
        if not row or not row[0]:
            return list(migrations())
        cur = await conn.execute(self.q["migrations_applied"])
        done = {r[0] for r in await cur.fetchall()}
        return [m for m in migrations() if m.version not in done]

    def pending_migrations_sync(self, conn: psycopg.Connection[Any]) -> list[Migration]:
        """Sync twin of :meth:`pending_migrations` (for the readiness probe's thread)."""
        row = conn.execute(
            self.q["migrations_table_exists"], {"table": f'"{self.schema}".migrations'}
        ).fetchone()
        if not row or not row[0]:
            return list(migrations())
        done = {r[0] for r in conn.execute(self.q["migrations_applied"]).fetchall()}
        return [m for m in migrations() if m.version not in done]

    # ---- enqueue (sync and async: the caller's connection may be either) -----------------------

    def insert_job_sync(
        self, conn: psycopg.Connection[Any], params: dict[str, Any], prepare: bool | None = False
    ) -> int:
        """Insert one job on a sync connection, inside its current transaction if any; returns
        the id of the job inserted, or of the job holding its key (see
        :meth:`insert_job_result_sync` for the key's rules and the errors).

        ``prepare``: ``False`` (a caller's connection) never prepares; ``None`` follows the
        connection's ``prepare_threshold`` (the default enqueue pool, see
        :mod:`scheduler.connections`).
        """
        if params.get("idempotency_key") is not None:
            return self.insert_job_result_sync(conn, params, prepare).id
        with conn.cursor() as cur:
            cur.execute(self.q["insert_job"], _plain(params), prepare=prepare)
            return int(cur.fetchone()[0])  # type: ignore[index]

    def insert_job_result_sync(
        self, conn: psycopg.Connection[Any], params: dict[str, Any], prepare: bool | None = False
    ) -> Enqueued:
        """:meth:`insert_job_sync`, saying what it did.

        Without an ``idempotency_key``: one plain INSERT. With one, nothing is inserted while
        a live (pending/running) job holds the key, nor, when ``params["unique_for_s"]`` (s)
        is set, while the job whose window (``unique_until``) is still open holds it, in any
        state (both by unique indexes: race-free, see migration 0014). Then
        ``params["on_conflict"]``: ``"return"`` (default) returns that job; ``"replace"``
        gives it the new ``args``, due time and ``priority`` if it is pending and of the same
        task, else returns it; ``"raise"`` raises.

        Raises:
            DuplicateJobError: ``on_conflict="raise"`` and the key is held; nothing written.
            IdempotencyKeyBusyError: the key changed hands :data:`IDEMPOTENT_TRIES` times.
        """
        with conn.cursor() as cur:
            if params.get("idempotency_key") is None:
                cur.execute(self.q["insert_job"], _plain(params), prepare=prepare)
                return Enqueued(int(cur.fetchone()[0]), True)  # type: ignore[index]
            params = _keyed(params)
            for _ in range(IDEMPOTENT_TRIES):
                cur.execute(self.q["insert_job_idempotent"], params, prepare=prepare)
                row = cur.fetchone()
                if row:
                    return Enqueued(int(row[0]), True)
                cur.execute(self.q["job_holding_idempotency_key"], params, prepare=prepare)
                row = cur.fetchone()
                if row is None:  # finished, or its window passed, since our insert
                    if params["unique_for_s"] is not None:
                        cur.execute(self.q["release_unique_window"], params, prepare=prepare)
                    continue
                job_id, state = int(row[0]), str(row[1])
                if not _replaces(params, job_id, state):
                    return Enqueued(job_id, False, state)
                replacing = {**params, "id": job_id, "channel": self.notify_channel}
                cur.execute(self.q["replace_pending_job"], replacing, prepare=prepare)
                if cur.fetchone():
                    return Enqueued(job_id, False, state, replaced=True)
                cur.execute(self.q["job_state"], {"id": job_id}, prepare=prepare)
                row = cur.fetchone()  # claimed meanwhile, or of another task
                if row:
                    return Enqueued(job_id, False, str(row[0]))
        raise _key_busy(params)

    async def insert_job(
        self,
        conn: psycopg.AsyncConnection[Any],
        params: dict[str, Any],
        prepare: bool | None = False,
    ) -> int:
        """Async twin of :meth:`insert_job_sync`."""
        if params.get("idempotency_key") is not None:
            return (await self.insert_job_result(conn, params, prepare)).id
        async with conn.cursor() as cur:
            await cur.execute(self.q["insert_job"], _plain(params), prepare=prepare)
            return int((await cur.fetchone())[0])  # type: ignore[index]

    async def insert_job_result(
        self,
        conn: psycopg.AsyncConnection[Any],
        params: dict[str, Any],
        prepare: bool | None = False,
    ) -> Enqueued:
        """Async twin of :meth:`insert_job_result_sync`."""
        async with conn.cursor() as cur:
            if params.get("idempotency_key") is None:
                await cur.execute(self.q["insert_job"], _plain(params), prepare=prepare)
                return Enqueued(int((await cur.fetchone())[0]), True)  # type: ignore[index]
            params = _keyed(params)
            for _ in range(IDEMPOTENT_TRIES):
                await cur.execute(self.q["insert_job_idempotent"], params, prepare=prepare)
                row = await cur.fetchone()
                if row:
                    return Enqueued(int(row[0]), True)
                await cur.execute(self.q["job_holding_idempotency_key"], params, prepare=prepare)
                row = await cur.fetchone()
                if row is None:
                    if params["unique_for_s"] is not None:
                        await cur.execute(self.q["release_unique_window"], params, prepare=prepare)
                    continue
                job_id, state = int(row[0]), str(row[1])
                if not _replaces(params, job_id, state):
                    return Enqueued(job_id, False, state)
                replacing = {**params, "id": job_id, "channel": self.notify_channel}
                await cur.execute(self.q["replace_pending_job"], replacing, prepare=prepare)
                if await cur.fetchone():
                    return Enqueued(job_id, False, state, replaced=True)
                await cur.execute(self.q["job_state"], {"id": job_id}, prepare=prepare)
                row = await cur.fetchone()
                if row:
                    return Enqueued(job_id, False, str(row[0]))
        raise _key_busy(params)

    # COPY column types; args and headers are sent as JSON text and parsed by the server
    _COPY_TYPES: ClassVar[list[str]] = [
        "int8", "text", "text", "text", "int4", "timestamptz", "timestamptz", "int4",
        "float8", "float8", "float8", "text", "text",
    ]  # fmt: skip

    @staticmethod
    def _copy_rows(
        rows: list[BulkJob], reserved: list[tuple[int, datetime]]
    ) -> Iterator[tuple[Any, ...]]:
        last: dict[str, str] | None = None  # rows often share one headers dict: dumped once
        text = "{}"
        for (queue, task, args, priority, run_at, attempts, base, cap, jitter, key, headers), (
            job_id,
            now,
        ) in zip(rows, reserved, strict=True):
            at = run_at or now
            if headers is not last:
                last, text = headers, json.dumps(headers, separators=(",", ":")) if headers else "{}"
            yield (job_id, queue, task, args, priority, at, at, attempts, base, cap, jitter, key,
                   text)  # fmt: skip

    def insert_jobs_sync(
        self, conn: psycopg.Connection[Any], rows: list[BulkJob], prepare: bool | None = False
    ) -> list[int]:
        """Insert many jobs (:data:`BulkJob` tuples) on a sync connection, inside its current transaction if any (else
        autocommit, where the ``COPY`` is atomic by itself): ids reserved in one statement, rows
        sent with ``COPY``.
        Returns the ids in input order."""
        if not rows:
            return []
        with conn.cursor() as cur:  # no transaction block: the caller's, or autocommit
            cur.execute(self.q["reserve_job_ids"], {"table": self.jobs_table, "n": len(rows)}, prepare=prepare)
            reserved = cur.fetchall()
            with cur.copy(self.q["copy_jobs"]) as copy:
                copy.set_types(self._COPY_TYPES)
                for row in self._copy_rows(rows, reserved):
                    copy.write_row(row)
        return [job_id for job_id, _ in reserved]

    async def insert_jobs(
        self, conn: psycopg.AsyncConnection[Any], rows: list[BulkJob], prepare: bool | None = False
    ) -> list[int]:
        """Async twin of :meth:`insert_jobs_sync`."""
        if not rows:
            return []
        async with conn.cursor() as cur:
            await cur.execute(self.q["reserve_job_ids"], {"table": self.jobs_table, "n": len(rows)}, prepare=prepare)
            reserved = await cur.fetchall()
            async with cur.copy(self.q["copy_jobs"]) as copy:
                copy.set_types(self._COPY_TYPES)
                for row in self._copy_rows(rows, reserved):
                    await copy.write_row(row)
        return [job_id for job_id, _ in reserved]

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

    # ---- leader ------------------------------------------------------------------------------

    async def setup_session(
        self, conn: psycopg.AsyncConnection[Any], *, idle_session_timeout_s: float, name: str
    ) -> None:
        """Set ``idle_session_timeout`` (so a hung session frees its locks) and a name."""
        await conn.execute(
            self.q["session_settings"],
            {
                "idle_session_timeout_ms": str(int(idle_session_timeout_s * 1000)),
                "application_name": name[:63],
            },
        )

    async def wait_lock_leader(
        self, conn: psycopg.AsyncConnection[Any], timeout_s: float
    ) -> int | None:
        """Wait up to ``timeout_s`` seconds inside PostgreSQL for the session-level leader lock
        (``pg_advisory_lock`` under ``lock_timeout``; no ``statement_timeout`` for the wait).
        Returns the pid of the backend that took it, or ``None`` on timeout. Cancel with
        ``conn.cancel_safe()``.
        """
        try:
            async with conn.transaction():
                await conn.execute(
                    self.q["leader_wait_timeouts"],
                    {"lock_timeout_ms": str(max(1, int(timeout_s * 1000)))},
                )
                cur = await conn.execute(self.q["leader_wait_lock"], {"key": self.leader_key})
                row = await cur.fetchone()
            return int(row[1]) if row else None
        except psycopg.errors.LockNotAvailable:
            return None

    async def try_lock_leader(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """``pg_try_advisory_lock`` on the schema's leader key (session level, autocommit)."""
        cur = await conn.execute(self.q["leader_try_lock"], {"key": self.leader_key})
        row = await cur.fetchone()
        return bool(row and row[0])

    async def lock_held(self, conn: psycopg.AsyncConnection[Any], pid: int) -> bool:
        """True when this connection's backend is ``pid`` (the one that took the leader lock)
        and holds the lock (``pg_locks``); False behind a transaction pooler."""
        cur = await conn.execute(self.q["lock_held"], {"key": self.leader_key, "pid": pid})
        row = await cur.fetchone()
        return bool(row and row[0])

    async def release_pooled_lock(self, conn: psycopg.AsyncConnection[Any], pid: int) -> bool:
        """End backend ``pid``, which took the leader lock through a transaction pooler, the
        first time it is idle between transactions within about a second; True if it was."""
        for _ in range(20):
            cur = await conn.execute(self.q["release_pooled_lock"], {"pid": pid})
            if await cur.fetchone():
                return True
            await asyncio.sleep(0.05)
        return False

    async def unlock_leader(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(self.q["leader_unlock"], {"key": self.leader_key})

    async def elect(
        self, conn: psycopg.AsyncConnection[Any], holder: str, config_hash: str | None
    ) -> int:
        """Record a new term in the ``leader`` row; returns the term."""
        return (await self.elect_on_timeline(conn, holder, config_hash))[0]

    async def elect_on_timeline(
        self, conn: psycopg.AsyncConnection[Any], holder: str, config_hash: str | None
    ) -> tuple[int, int | None, int]:
        """Record a new term and the database's current timeline in the ``leader`` row;
        returns ``(term, timeline the previous leader recorded (None: none), timeline)``."""
        async with conn.transaction():
            cur = await conn.execute(
                self.q["leader_elect"], {"holder": holder, "config_hash": config_hash}
            )
            row = await cur.fetchone()
            assert row is not None
            return int(row[0]), row[1], int(row[2])

    async def fence(
        self,
        conn: psycopg.AsyncConnection[Any],
        holder: str,
        term: int,
        now: datetime | None = None,
    ) -> datetime | None:
        """Heartbeat, inside the caller's transaction when there is one.

        Returns the clock (``now``, or the database ``now()`` when ``now`` is None) when this
        session still holds the lock and ``term`` is current, else ``None`` (the caller must
        not commit anything as leader).
        """
        cur = await conn.execute(
            self.q["leader_heartbeat"],
            {"holder": holder, "term": term, "key": self.leader_key, "now": now, "ahead_s": 0},
        )
        row = await cur.fetchone()
        return row[0] if row else None

    async def heartbeat(
        self, conn: psycopg.AsyncConnection[Any], holder: str, term: int, *, ahead_s: float
    ) -> dict[str, Any] | None:
        """The idle leader's one statement (autocommit): heartbeat and fence, plus the next
        times work is due. Returns ``{"now", "materialise_at", "rescue_at"}`` (database
        clock; the last two ``None`` when nothing is scheduled / running), or ``None`` when
        this session no longer holds the lock or ``term`` is not current."""
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            self.q["leader_heartbeat"],
            {
                "holder": holder,
                "term": term,
                "key": self.leader_key,
                "ahead_s": ahead_s,
                "now": None,
            },
        )
        return await cur.fetchone()

    async def current_leader(self, conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(self.q["leader_current"])
        return await cur.fetchone()

    async def database_now(self, conn: psycopg.AsyncConnection[Any]) -> datetime:
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
