"""A replica embedded in an ASGI application (scheduler.embedding): started by a Starlette
lifespan on the app's own event loop, a worker-only role that never campaigns for the leader
lock, a graceful stop when the lifespan ends, and start-up errors of the project's own
classes (an unreachable database, an unmigrated schema, bad arguments)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import scheduler.embedding
from scheduler import registry, task
from scheduler.errors import (
    DatabaseUnavailableError,
    InvalidArgumentError,
    SchemaNotMigratedError,
)
from scheduler.settings import Settings
from tests.conftest import wait_until, wait_until_async

LOOPS: dict[str, Any] = {}
FINISHED: list[int] = []


@task(name="test_embedding.note_loop")
async def note_loop(order: int) -> None:
    LOOPS[f"job {order}"] = asyncio.get_running_loop()


@task(name="test_embedding.slow")
async def slow(order: int) -> None:
    await asyncio.sleep(0.5)  # still running when the lifespan ends
    FINISHED.append(order)


def _settings(url: str, **kw: Any) -> Settings:
    kw.setdefault("concurrency", 2)
    return Settings(database_url=url, **kw)


def _states(db: psycopg.Connection, task_name: str) -> list[str]:
    rows = db.execute("SELECT state FROM scheduler.jobs WHERE task = %s ORDER BY id", [task_name])
    return [r[0] for r in rows.fetchall()]


def _leader_lock_sessions(db: psycopg.Connection) -> int:
    """Sessions holding or waiting for the leader's advisory lock of schema ``scheduler``."""
    return db.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND ((classid::bigint << 32) | objid::bigint) = "
        "hashtextextended('scheduler.leader:scheduler', 0)"
    ).fetchone()[0]


def _leaders(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) FROM scheduler.leader").fetchone()[0]


def test_a_starlette_lifespan_runs_the_replica_on_the_apps_loop(
    db: psycopg.Connection, db_url: str
) -> None:
    LOOPS.clear()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with scheduler.embedding.replica(_settings(db_url)) as replica:
            app.state.replica_id = replica.id
            yield

    async def order(request: Request) -> JSONResponse:
        LOOPS["request"] = asyncio.get_running_loop()
        job_id = await note_loop.defer_async(order=int(request.path_params["n"]))
        return JSONResponse({"job": job_id})

    app = Starlette(routes=[Route("/orders/{n}", order, methods=["POST"])], lifespan=lifespan)
    with TestClient(app) as client:
        job_id = client.post("/orders/7").json()["job"]
        wait_until(lambda: _states(db, "test_embedding.note_loop") == ["succeeded"], timeout=15)
        replica_id = app.state.replica_id
        assert db.execute("SELECT count(*) FROM scheduler.replicas WHERE id = %s",
                          [replica_id]).fetchone()[0] == 1  # fmt: skip
    assert LOOPS["job 7"] is LOOPS["request"]  # the handler ran on the app's event loop
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 1
    assert job_id > 0
    # stopped on lifespan exit: its registration is gone, no session of it is left
    assert db.execute("SELECT count(*) FROM scheduler.replicas").fetchone()[0] == 0


def test_the_worker_role_runs_jobs_and_never_takes_the_leader_lock(
    db: psycopg.Connection, db_url: str
) -> None:
    LOOPS.clear()

    async def scenario() -> None:
        async with scheduler.embedding.replica(_settings(db_url), role="worker"):
            await note_loop.defer_async(order=1)
            await wait_until_async(
                lambda: _states(db, "test_embedding.note_loop") == ["succeeded"], timeout=15
            )
            # it ran a job, so its loops had all the time to campaign: none did
            assert _leader_lock_sessions(db) == 0
            assert _leaders(db) == 0
            # the same check sees the lock of a replica that does lead
            async with scheduler.embedding.replica(_settings(db_url), role="all"):
                await wait_until_async(lambda: _leader_lock_sessions(db) == 1, timeout=15)
                await wait_until_async(lambda: _leaders(db) == 1, timeout=15)

    asyncio.run(scenario())


def test_leaving_the_block_lets_running_jobs_finish(db: psycopg.Connection, db_url: str) -> None:
    FINISHED.clear()

    async def scenario() -> None:
        async with scheduler.embedding.replica(_settings(db_url, shutdown_grace_s=10)):
            await slow.defer_async(order=3)
            await wait_until_async(
                lambda: _states(db, "test_embedding.slow") == ["running"], timeout=15
            )
        assert FINISHED == [3]  # the block ended only after the running job did

    asyncio.run(scenario())
    assert _states(db, "test_embedding.slow") == ["succeeded"]


def test_calls_without_a_connection_use_a_running_replicas_database_until_it_stops(
    db: psycopg.Connection, db_url: str, tmp_path: Any
) -> None:
    """A replica's URL is the default database only while it runs (it used to stay set for
    the rest of the process); two replicas overlap, and the first to stop leaves the other's."""
    from scheduler.connections import default_database_url
    from scheduler.errors import DatabaseNotConfiguredError

    nowhere = Settings(database_url=None, embedded_dir=str(tmp_path / "nowhere"))
    source = "the replica running in this process"

    async def scenario() -> None:
        async with scheduler.embedding.replica(_settings(db_url), role="worker"):
            assert default_database_url(nowhere) == (db_url, source)
            async with scheduler.embedding.replica(_settings(db_url), role="worker"):
                assert default_database_url(nowhere) == (db_url, source)
            assert default_database_url(nowhere) == (db_url, source)  # the other still runs
        with pytest.raises(DatabaseNotConfiguredError):
            default_database_url(nowhere)

    asyncio.run(scenario())


def test_an_unreachable_database_fails_at_start_up_with_a_redacted_message() -> None:
    url = "postgresql://app:s3cret@127.0.0.1:1/orders?connect_timeout=2"

    async def scenario() -> None:
        async with scheduler.embedding.replica(_settings(url)):
            pytest.fail("the block must not run")

    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as caught:
        asyncio.run(scenario())
    assert time.monotonic() - started < 10
    assert "cannot connect" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_an_app_whose_database_is_unreachable_does_not_start() -> None:
    app = Starlette(lifespan=scheduler.embedding.lifespan(_settings("postgresql://127.0.0.1:1/x")))
    with pytest.raises(DatabaseUnavailableError), TestClient(app):
        pytest.fail("the app must not serve")


def test_without_migrating_an_empty_database_is_refused(fresh_db_url: Any) -> None:
    url = fresh_db_url()

    async def scenario() -> None:
        async with scheduler.embedding.replica(_settings(url), migrate=False):
            pytest.fail("the block must not run")

    with pytest.raises(SchemaNotMigratedError, match="scheduler migrate"):
        asyncio.run(scenario())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "leader"}, "role must be one of all, worker, not 'leader'"),
        ({"role": "worker", "config": "schedules.yaml"}, "never leads"),
        ({"settings": {"database_url": "x"}}, "settings must be a scheduler Settings"),
        ({"config": 42}, "config must be a SchedulesConfig"),
    ],
)
def test_bad_arguments_are_refused_before_connecting(kwargs: dict[str, Any], message: str) -> None:
    async def scenario() -> None:
        kwargs.setdefault("settings", _settings("postgresql://127.0.0.1:1/x"))
        async with scheduler.embedding.replica(**kwargs):
            pytest.fail("the block must not run")

    with pytest.raises(InvalidArgumentError, match=message):
        asyncio.run(scenario())


def test_imports_mark_the_task_registry_complete_only_when_given() -> None:
    unreachable = _settings("postgresql://127.0.0.1:1/x")

    async def start(**kwargs: Any) -> None:
        async with scheduler.embedding.replica(unreachable, **kwargs):
            pytest.fail("the block must not run")

    with pytest.raises(DatabaseUnavailableError):
        asyncio.run(start())
    assert not registry.is_loaded()  # unknown task names are not refused because of us
    with pytest.raises(ModuleNotFoundError):
        asyncio.run(start(imports=["tests.integration.no_such_module"]))
    with pytest.raises(DatabaseUnavailableError):
        asyncio.run(start(imports=["tests.integration.test_embedding"]))
    assert registry.is_loaded()
