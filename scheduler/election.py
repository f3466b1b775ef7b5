"""Leader election's statements: the :class:`~scheduler.store.Store` methods
(:class:`ElectionStatements`, a base class of ``Store``) that :mod:`scheduler.leader` runs on
its dedicated session: session settings, the session-level advisory lock on the schema's
leader key (wait, try, check, release, unlock), the term in the ``leader`` row, and the
heartbeat that fences every write of a leader.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row


def leader_lock_key(schema: str) -> str:
    """Text hashed (``hashtextextended``) into the leader's advisory-lock key for ``schema``."""
    return f"scheduler.leader:{schema}"


class ElectionStatements:
    """The :class:`~scheduler.store.Store` methods of leader election."""

    q: dict[str, sql.Composed]
    leader_key: str

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
        """The ``leader`` row (holder, term, heartbeat...) as a dict, or ``None`` before any
        election."""
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(self.q["leader_current"])
        return await cur.fetchone()
