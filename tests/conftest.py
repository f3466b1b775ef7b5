"""Shared fixtures: a real PostgreSQL server for the whole session, one fresh database per test.

The server is the embedded one (``scheduler.embedded``, the same mechanism as ``scheduler run``)
unless ``SCHEDULER_TEST_DSN`` names an existing server (its user must be allowed to CREATE
DATABASE). Each test gets a database cloned from a migrated template, so tests are isolated and
fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from scheduler import embedded, registry
from scheduler.store import Store
from tests import servers

TEMPLATE = "scheduler_test_template"
_counter = itertools.count()


def _server_params() -> list[str]:
    return ["dsn"] if os.environ.get("SCHEDULER_TEST_DSN") else servers.majors()


@pytest.fixture(autouse=True)
def _task_registry_not_loaded() -> Iterator[None]:
    """Each test starts with the task registry not marked loaded (a schedules file's
    ``imports:`` loaded by one test must not make task names checked in the next)."""
    registry.set_loaded(False)
    yield
    registry.set_loaded(False)


@pytest.fixture(scope="session", params=_server_params(), ids=lambda m: f"pg{m}")
def pg_server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """libpq URL of a PostgreSQL server for the session (admin database): every test that
    uses a database runs once per major of ``SCHEDULER_TEST_PG`` (default ``18,15``: the
    embedded 18 and Debian's 15), or on ``SCHEDULER_TEST_DSN`` alone when that is set."""
    major = request.param
    if major == "dsn":
        yield os.environ["SCHEDULER_TEST_DSN"]
        return
    if major == "18" and servers.bin_dir("18") is None:  # the embedded server is 18
        with tempfile.TemporaryDirectory(prefix="scheduler-test-pg-") as tmp:
            yield embedded.start(tmp)
            embedded.stop(tmp)
        return
    if servers.bin_dir(major) is None:
        message = f"PostgreSQL {major} is not installed (/usr/lib/postgresql/{major}/bin)"
        if servers.in_ci():
            pytest.fail(message)
        pytest.skip(message)
    with servers.cluster(major) as server:
        yield server.url()


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> str:
    """Name of a template database with every migration applied."""
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{TEMPLATE}"')

    async def migrate() -> None:
        url = make_conninfo(pg_server_url, dbname=TEMPLATE)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await Store("scheduler").migrate(conn)

    asyncio.run(migrate())
    return TEMPLATE


@pytest.fixture
def fresh_db_url(pg_server_url: str) -> Callable[..., str]:
    """Factory: a new database (empty, or cloned from ``template``) and its URL."""
    created: list[str] = []

    def make(template: str | None = None) -> str:
        name = f"scheduler_test_{os.getpid()}_{next(_counter)}"
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            tmpl = f' TEMPLATE "{template}"' if template else ""
            admin.execute(f'CREATE DATABASE "{name}"{tmpl}')
        created.append(name)
        return make_conninfo(pg_server_url, dbname=name)

    yield make
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        for name in created:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(fresh_db_url: Callable[..., str], template_db: str) -> str:
    """URL of a fresh, migrated database for this test."""
    return fresh_db_url(template_db)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit sync connection to the test's database, for setup and assertions."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate.__doc__ or predicate}")
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], object], timeout: float, interval: float = 0.05
) -> object:
    """:func:`wait_until` for a coroutine: polls without blocking the event loop (so a
    replica running on the same loop keeps working)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate.__doc__ or predicate}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running_replica(url: str, settings, config=None) -> AsyncIterator:
    """An in-process ``Replica`` running on this event loop; stopped gracefully on exit."""
    from scheduler.service import Replica

    replica = Replica(url, settings, config)
    stop = asyncio.Event()
    runner = asyncio.create_task(replica.run(stop))
    try:
        yield replica
    finally:
        stop.set()
        await runner
