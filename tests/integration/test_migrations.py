import asyncio

import psycopg

from scheduler.store import Store, migrations


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
