"""``connection=`` given an ORM's transaction (issue 16, part 1; :mod:`scheduler.adapters`):
SQLAlchemy 2 ``Session`` / ``Connection`` and their async twins on ``postgresql+psycopg``, and
Django's connection. In each, the application's rollback leaves no job (nor the control call's
write) and its commit leaves them; values read back (``get_job``) have psycopg's types, not the
ORM's loaders'. Wrong kinds give InvalidArgumentError naming ``connection``."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from scheduler import (
    InvalidArgumentError,
    enqueue,
    enqueue_async,
    enqueue_many,
    enqueue_many_async,
    get_job,
    get_job_async,
    pause_queue,
    pause_queue_async,
    task,
)

sqlalchemy = pytest.importorskip("sqlalchemy")
pytest.importorskip("greenlet")  # SQLAlchemy's asyncio extension
django = pytest.importorskip("django")

from django.conf import settings as django_settings
from django.db import connection as django_connection
from django.db import connections, transaction
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool


@task(name="orm.note", queue="orm")
def note(n: int) -> None:
    pass


class Rollback(Exception):
    """Raised inside the application's transaction to roll it back."""


def _count(db: psycopg.Connection[Any]) -> tuple[int, int]:
    """(jobs, paused queues named 'orm')."""
    jobs = db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()
    paused = db.execute("SELECT count(*) FROM scheduler.queue_pauses WHERE queue = 'orm'")
    return jobs[0], paused.fetchone()[0]  # type: ignore[index]


def _engine(db_url: str) -> Any:
    # the test database's conninfo (a Unix socket), as psycopg.connect's keywords
    return sqlalchemy.create_engine("postgresql+psycopg://", poolclass=NullPool,
                                    connect_args=conninfo_to_dict(db_url))  # fmt: skip


def _async_engine(db_url: str) -> Any:
    return create_async_engine("postgresql+psycopg://", poolclass=NullPool,
                               connect_args=conninfo_to_dict(db_url))  # fmt: skip


def _enqueue_all(connection: Any) -> int:
    """Every sync write through ``connection``: 4 jobs and one paused queue; checks a job
    read back on it. Returns the first job's id."""
    first = enqueue(note, args={"n": 1}, connection=connection)
    assert len(enqueue_many(note, [{"n": 2}, {"n": 3}], connection=connection)) == 2
    note.configure(connection=connection).defer(n=4)
    assert pause_queue("orm", connection=connection) is True
    job = get_job(first, connection=connection)  # in the transaction: seen before commit
    assert job.args == {"n": 1} and isinstance(job.created_at, datetime)
    assert job.created_at.tzinfo is not None
    return first


async def _enqueue_all_async(connection: Any) -> int:
    first = await enqueue_async(note, args={"n": 1}, connection=connection)
    assert len(await enqueue_many_async(note, [{"n": 2}, {"n": 3}], connection=connection)) == 2
    await note.configure(connection=connection).defer_async(n=4)
    assert await pause_queue_async("orm", connection=connection) is True
    job = await get_job_async(first, connection=connection)
    assert job.args == {"n": 1} and job.created_at.tzinfo is not None
    return first


# ---- SQLAlchemy, sync ------------------------------------------------------------------------


@contextlib.contextmanager
def _sa_session(db_url: str, commit: bool) -> Iterator[Any]:
    engine = _engine(db_url)
    try:
        with Session(engine) as session:
            yield session
            session.commit() if commit else session.rollback()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _sa_connection(db_url: str, commit: bool) -> Iterator[Any]:
    engine = _engine(db_url)
    try:
        with engine.connect() as conn:  # no transaction yet: the first call begins one
            yield conn
            conn.commit() if commit else conn.rollback()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _sa_session_in_use(db_url: str, commit: bool) -> Iterator[Any]:
    """A Session whose transaction the application began (and a JSON loader of its own)."""
    engine = sqlalchemy.create_engine("postgresql+psycopg://", poolclass=NullPool,
                                      connect_args=conninfo_to_dict(db_url),
                                      json_deserializer=lambda s: "not psycopg's")  # fmt: skip
    try:
        with Session(engine) as session, session.begin():
            assert session.execute(text("SELECT 1")).scalar() == 1
            yield session
            if not commit:
                raise Rollback
    except Rollback:
        pass
    finally:
        engine.dispose()


# ---- Django ----------------------------------------------------------------------------------


def _django_for(db_url: str) -> None:
    """Point Django's default database at the test's database (settings once per process)."""
    params = conninfo_to_dict(db_url)
    database = {"ENGINE": "django.db.backends.postgresql", "NAME": params.get("dbname", ""),
                "USER": params.get("user", ""), "PASSWORD": params.get("password", ""),
                "HOST": params.get("host", ""), "PORT": str(params.get("port", ""))}  # fmt: skip
    if not django_settings.configured:
        django_settings.configure(DATABASES={"default": dict(database)}, USE_TZ=True)
        django.setup()
    connections["default"].close()
    connections["default"].settings_dict.update(database)


@contextlib.contextmanager
def _django(db_url: str, commit: bool) -> Iterator[Any]:
    _django_for(db_url)
    try:
        with transaction.atomic():
            yield django_connection
            if not commit:
                raise Rollback
    except Rollback:
        pass
    finally:
        connections["default"].close()


SYNC: dict[str, Callable[[str, bool], contextlib.AbstractContextManager[Any]]] = {
    "sa_session": _sa_session,
    "sa_connection": _sa_connection,
    "sa_session_begun": _sa_session_in_use,
    "django": _django,
}


@pytest.mark.parametrize("kind", SYNC)
def test_sync_orm_transaction(db_url: str, db: psycopg.Connection[Any], kind: str) -> None:
    """The application rolls back (no job, queue not paused), then does it again and commits."""
    for commit in (False, True):
        with SYNC[kind](db_url, commit) as connection:
            _enqueue_all(connection)
            assert _count(db) == (0, 0)  # not committed yet: another session sees nothing
        assert _count(db) == ((4, 1) if commit else (0, 0))


# ---- SQLAlchemy, async -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _sa_async_session(db_url: str, commit: bool) -> AsyncIterator[Any]:
    engine = _async_engine(db_url)
    try:
        async with AsyncSession(engine) as session:
            yield session
            await (session.commit() if commit else session.rollback())
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _sa_async_connection(db_url: str, commit: bool) -> AsyncIterator[Any]:
    engine = _async_engine(db_url)
    try:
        async with engine.connect() as conn:
            yield conn
            await (conn.commit() if commit else conn.rollback())
    finally:
        await engine.dispose()


ASYNC = {"sa_async_session": _sa_async_session, "sa_async_connection": _sa_async_connection}


@pytest.mark.parametrize("kind", ASYNC)
def test_async_orm_transaction(db_url: str, db: psycopg.Connection[Any], kind: str) -> None:
    async def run(commit: bool) -> None:
        async with ASYNC[kind](db_url, commit) as connection:
            await _enqueue_all_async(connection)
            assert _count(db) == (0, 0)

    for commit in (False, True):
        asyncio.run(run(commit))
        assert _count(db) == ((4, 1) if commit else (0, 0))


# ---- wrong kinds -----------------------------------------------------------------------------


def _refused(call: Callable[[], Any], *words: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        call()
    message = str(caught.value)
    assert message.startswith("connection ")
    for word in words:
        assert word in message, message


async def _refused_async(call: Callable[[], Any], *words: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await call()
    for word in ("connection", *words):
        assert word in str(caught.value), str(caught.value)


def test_wrong_kinds(db_url: str, db: psycopg.Connection[Any]) -> None:
    asyncio.run(_wrong_kinds(db_url))
    assert _count(db) == (0, 0)


async def _wrong_kinds(db_url: str) -> None:
    engine, async_engine = _engine(db_url), _async_engine(db_url)
    sqlite = sqlalchemy.create_engine("sqlite://")
    fake = types.SimpleNamespace(paramstyle="format", __version__="1.31")
    pg8000 = sqlalchemy.create_engine("postgresql+pg8000://u@h/d", module=fake)
    asyncpg = create_async_engine("postgresql+asyncpg://u@h/d", module=fake)
    try:
        with Session(engine) as session:
            await _refused_async(lambda: enqueue_async(note, connection=session), "sync call")
            await _refused_async(lambda: note.configure(connection=session).defer_async(n=1),
                                 "sync call")  # fmt: skip
            await _refused_async(lambda: pause_queue_async("orm", connection=session))
        async with AsyncSession(async_engine) as asession:
            # (a thread: the sync calls refuse a running loop without a connection only)
            _refused(lambda: enqueue_many(note, [{"n": 1}], connection=asession), "_async")
            _refused(lambda: pause_queue("orm", connection=asession), "_async")
        _refused(lambda: enqueue(note, args={"n": 1}, connection=engine), "engine.begin()")
        _refused(lambda: note.configure(connection=text("SELECT 1")).defer(n=1), "Session")
        for other in (sqlite, pg8000):
            with Session(other) as session:
                _refused(lambda: enqueue(note, args={"n": 1}, connection=session),
                         "postgresql+psycopg://")  # fmt: skip
        async with AsyncSession(asyncpg) as asession:
            await _refused_async(lambda: enqueue_async(note, connection=asession), "asyncpg")
        conn = engine.connect()
        conn.close()
        _refused(lambda: enqueue(note, args={"n": 1}, connection=conn), "closed")
        not_started = async_engine.connect()  # never awaited
        await _refused_async(lambda: enqueue_async(note, connection=not_started), "not started")
    finally:
        engine.dispose()
        await async_engine.dispose()


def test_django_outside_atomic_and_wrong_uses(db_url: str, db: psycopg.Connection[Any]) -> None:
    """Outside ``atomic`` Django runs in autocommit, and so do the statements; a broken
    ``atomic`` block, an async call and a non-connection are refused."""
    _django_for(db_url)
    try:
        with pytest.raises(InvalidArgumentError, match="connection is Django's.*sync call"):
            asyncio.run(enqueue_async(note, connection=django_connection))
        with transaction.atomic():
            transaction.set_rollback(True)  # Django refuses queries until the block ends
            _refused(lambda: enqueue(note, args={"n": 1}, connection=django_connection),
                     "broken atomic")  # fmt: skip
        _refused(lambda: enqueue(note, args={"n": 1}, connection=django_settings), "Django")
        assert _count(db) == (0, 0)
        enqueue(note, args={"n": 1}, connection=connections["default"])
        assert _count(db) == (1, 0)
    finally:
        connections["default"].close()
