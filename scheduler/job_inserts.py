"""Enqueue statements: the :class:`~scheduler.store.Store` methods
(:class:`InsertStatements`, a base class of ``Store``) that insert jobs, sync and async (the
caller's connection may be either): one job (``insert_job*``: a plain INSERT, or the
idempotency-key and unique-window rules, ``on_conflict``), and many jobs in one ``COPY``
(``insert_jobs*``, :data:`BulkJob` rows). Statements on a caller's connection are never
prepared (``prepare=False``: the caller may sit behind a transaction pooler, see
:mod:`scheduler.pooler`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from .errors import DuplicateJobError, IdempotencyKeyBusyError

# One job of a bulk enqueue: (queue, task, args as JSON text, priority, run_at or None for
# "now", max_attempts, backoff_base_s, backoff_max_s, backoff_jitter, concurrency_key,
# headers: a dict of strings, or None for none).
BulkJob = tuple[
    str, str, str, int, datetime | None, int, float, float, float, str | None,
    dict[str, str] | None,
]  # fmt: skip


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


class InsertStatements:
    """The :class:`~scheduler.store.Store` methods that insert jobs."""

    q: dict[str, sql.Composed]
    notify_channel: str
    jobs_table: str

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
