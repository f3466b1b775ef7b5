"""Schema migration: the forward-only migration files ``sql/migrations/NNNN_name.sql`` shipped
in the package, and the :class:`~scheduler.store.Store` statements that apply them
(:class:`MigrationStatements`, a base class of ``Store``): each migration in its own
transaction, under a transaction-level advisory lock, its statements under a ``lock_timeout``.

Migrations use ``{schema}`` for the configured schema, composed as a quoted identifier with
:mod:`psycopg.sql` (:func:`_compose`, which also composes the named statements of
:mod:`scheduler.store`).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from .errors import MigrationLockError

_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")


def _compose(text: str, schema: str) -> sql.Composed:
    # {schema} is the only placeholder: other braces (jsonb '{}' literals) are escaped first.
    escaped = text.replace("{", "{{").replace("}", "}}").replace("{{schema}}", "{schema}")
    return sql.SQL(escaped).format(schema=sql.Identifier(schema))


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


def _migrations_lock_key(schema: str) -> str:
    return f"scheduler.migrate:{schema}"


MIGRATION_LOCK_TIMEOUT_S = 5.0  # lock_timeout of a migration's statements
MIGRATION_TRIES = 5  # a migration whose locks time out is tried again, 1, 2, 4, 8 s later


class MigrationStatements:
    """The :class:`~scheduler.store.Store` methods that migrate its schema."""

    schema: str
    q: dict[str, sql.Composed]

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
