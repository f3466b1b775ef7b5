import asyncio

import psycopg

from scheduler.migrations import migrations
from scheduler.store import Store


def _tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'scheduler'"
    ).fetchall()
    return {r[0] for r in rows}


def test_migrate_creates_schema_and_is_idempotent(fresh_db_url):
    url = fresh_db_url()

    async def run() -> tuple[list, list]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            first = await Store("scheduler").migrate(conn)
            second = await Store("scheduler").migrate(conn)
            return first, second

    first, second = asyncio.run(run())
    assert [m.version for m in first] == [m.version for m in migrations()]
    assert second == []
    with psycopg.connect(url) as conn:
        assert {"schedules", "jobs", "job_runs", "leader", "migrations", "run_history"} <= _tables(
            conn
        )
        versions = [r[0] for r in conn.execute("SELECT version FROM scheduler.migrations")]
        assert versions == [m.version for m in migrations()]


def test_concurrent_migrate_applies_each_migration_once(fresh_db_url):
    url = fresh_db_url()

    async def one() -> list:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await Store("scheduler").migrate(conn)

    async def run() -> list[list]:
        return await asyncio.gather(one(), one(), one())

    results = asyncio.run(run())
    assert sum(len(r) for r in results) == len(migrations())


def test_custom_schema_name(fresh_db_url):
    url = fresh_db_url()

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await Store("other_schema").migrate(conn)

    asyncio.run(run())
    with psycopg.connect(url) as conn:
        n = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'other_schema'"
        ).fetchone()[0]
        assert n >= 5


def test_a_migration_waits_a_bounded_time_for_its_locks(fresh_db_url, monkeypatch):
    """A pending migration behind a long transaction gives up (lock_timeout) instead of
    queueing every reader of the table behind it for as long as that transaction lasts, and
    applies once the way is clear."""
    import pytest

    from scheduler import migrations as migrations_module
    from scheduler.errors import MigrationLockError

    monkeypatch.setattr(migrations_module, "MIGRATION_LOCK_TIMEOUT_S", 0.2)
    monkeypatch.setattr(migrations_module, "MIGRATION_TRIES", 2)
    url = fresh_db_url()
    # the newest migration that locks a table (one that only replaces a function takes none)
    last = [m for m in migrations() if "ALTER TABLE" in m.text or "CREATE INDEX" in m.text][-1]
    store = Store("scheduler")

    async def up_to_all_but_last() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for m in migrations():
                if m.version < last.version:
                    assert await store._apply(conn, m)

    async def migrate() -> list:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await store.migrate(conn)

    asyncio.run(up_to_all_but_last())
    with psycopg.connect(url) as blocker:  # a long transaction reading every table
        for (table,) in blocker.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'scheduler'"
        ).fetchall():
            blocker.execute(f"LOCK TABLE scheduler.{table} IN ACCESS SHARE MODE")
        with pytest.raises(MigrationLockError, match=f"{last.version:04d}_{last.name}"):
            asyncio.run(migrate())
        blocker.rollback()
    later = [m.version for m in migrations() if m.version >= last.version]
    assert [m.version for m in asyncio.run(migrate())] == later
