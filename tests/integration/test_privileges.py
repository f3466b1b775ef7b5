"""The service runs as a least-privilege role, with the GRANTs of docs/operations.md."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from scheduler import enqueue, task
from scheduler.errors import MigrationPrivilegeError
from scheduler.service import migrate
from scheduler.settings import Settings
from tests.conftest import running_replica, wait_until_async

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@task(name="test_privileges.ok")
async def ok() -> None:
    return None


def _grants() -> list[str]:
    """The service-role statements of docs/operations.md (after the migrate comment)."""
    sql = DOC.read_text().split("```sql", 1)[1].split("```", 1)[0]
    body = sql.split("scheduler migrate", 1)[1].split("\n", 1)[1]
    return [s.strip() for s in re.split(r";\s*", body) if s.strip()]


def test_a_replica_runs_as_the_documented_least_privilege_role(db, db_url):
    role = f"app_{conninfo_to_dict(db_url)['dbname']}"[:60]
    db.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        for statement in _grants():
            statement = statement.replace("scheduler_app", f'"{role}"')
            statement = statement.replace("FOR ROLE scheduler_owner ", "")
            db.execute(statement)
        app_url = make_conninfo(db_url, user=role)
        with psycopg.connect(app_url) as conn:
            job = enqueue(ok, connection=conn)
            conn.commit()

        async def scenario() -> None:
            assert await migrate(app_url, Settings()) == []  # current: no DDL needed
            async with running_replica(app_url, Settings()) as replica:
                await wait_until_async(
                    lambda: (
                        replica.elector.is_leader.is_set()
                        and db.execute(
                            "SELECT state FROM scheduler.jobs WHERE id = %s", [job]
                        ).fetchone()[0]
                        == "succeeded"
                    ),
                    timeout=20,
                )

        asyncio.run(scenario())
        # with a migration pending, the role gets a clear refusal, not a traceback
        db.execute("DELETE FROM scheduler.migrations WHERE version = 7")
        with pytest.raises(MigrationPrivilegeError, match="0007_replicas are pending"):
            asyncio.run(migrate(app_url, Settings()))
    finally:
        db.execute(f'DROP OWNED BY "{role}"')
        db.execute(f'DROP ROLE "{role}"')


def test_a_read_only_dashboard_runs_as_a_select_only_role(db, db_url):
    """docs/operations.md: a --read-only dashboard needs SELECT on the schema, nothing more."""
    from starlette.testclient import TestClient

    from scheduler.web import create_app

    role = f"ro_{conninfo_to_dict(db_url)['dbname']}"[:60]
    db.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        db.execute(f'GRANT USAGE ON SCHEMA scheduler TO "{role}"')
        db.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA scheduler TO "{role}"')
        job = enqueue(ok, connection=db)
        db.commit()
        app = create_app(Settings(), database_url=make_conninfo(db_url, user=role), read_only=True)
        with TestClient(app, client=("127.0.0.1", 40000)) as client:
            for path in ["/", "/jobs", f"/jobs/{job}", "/dead-letters", "/schedules", "/replicas"]:
                page = client.get(path)
                assert page.status_code == 200, (path, page.text[:500])
    finally:
        db.execute(f'DROP OWNED BY "{role}"')
        db.execute(f'DROP ROLE "{role}"')
