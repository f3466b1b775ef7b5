"""Hostile input to the Python API, against the real database.

Every bad call raises a :class:`~scheduler.errors.SchedulerError` subclass naming the argument
(never a psycopg error, a bare TypeError or a RecursionError), runs no SQL on the caller's
connection, and leaves the jobs table as it was.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from scheduler import JobSpec, enqueue, enqueue_many, schedule_at, schedule_many, task
from scheduler.connections import set_default_database_url
from scheduler.errors import (
    InvalidArgumentError,
    SchedulerError,
    TaskArgumentsError,
    UnknownTaskError,
)
from scheduler.tasks import registered_tasks

SOON = datetime(2030, 1, 1, tzinfo=UTC)


@task(name="test_api_hostile.ok")
def ok(**_: object) -> None:
    pass


def not_registered(**_: object) -> None:
    pass


def _recursive_dict() -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["self"] = d
    return {"d": d}


def _recursive_list() -> dict[str, Any]:
    items: list[Any] = []
    items.append(items)
    return {"items": items}


def _deep(levels: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    cur = top
    for _ in range(levels):
        cur["a"] = {}
        cur = cur["a"]
    return top


def _late_bad_items() -> Any:
    for i in range(1000):
        yield {"n": i} if i < 999 else {"n": "late\x00"}


def _decorate(**options: Any) -> Callable[[Any], Any]:
    def call(_connection: Any) -> Any:
        @task(name="test_api_hostile.bad", **options)
        def bad() -> None:
            pass

    return call


# (id, call taking the connection to pass, error class, text the message must contain)
CASES: list[tuple[str, Callable[[Any], Any], type[SchedulerError], str]] = [
    # task
    ("task None", lambda c: enqueue(None, connection=c), InvalidArgumentError, "task must be"),
    ("task int", lambda c: enqueue(3, connection=c), InvalidArgumentError, "not int"),
    ("task bytes", lambda c: enqueue(b"t", connection=c), InvalidArgumentError, "not bytes"),
    ("task empty", lambda c: enqueue("", connection=c), InvalidArgumentError, "task is empty"),
    ("task NUL", lambda c: enqueue("a\x00b", connection=c), InvalidArgumentError, "NUL"),
    ("task surrogate", lambda c: enqueue("\udcff", connection=c), InvalidArgumentError, "task"),
    ("task long", lambda c: enqueue("t" * 201, connection=c), InvalidArgumentError, "too long"),
    ("task space", lambda c: enqueue("a b", connection=c), InvalidArgumentError, "whitespace"),
    (
        "task unregistered function",
        lambda c: enqueue(not_registered, connection=c),
        UnknownTaskError,
        "not registered",
    ),
    # run_at
    (
        "run_at str",
        lambda c: schedule_at(ok, "2030-01-01T00:00:00Z", connection=c),
        InvalidArgumentError,
        "run_at must be a datetime",
    ),
    (
        "run_at naive",
        lambda c: schedule_at(ok, datetime(2030, 1, 1), connection=c),
        InvalidArgumentError,
        "run_at=2030-01-01T00:00:00 is naive",
    ),
    (
        "run_at date",
        lambda c: schedule_at(ok, dt.date(2030, 1, 1), connection=c),
        InvalidArgumentError,
        "not date",
    ),
    (
        "run_at epoch",
        lambda c: schedule_at(ok, 1_900_000_000, connection=c),
        InvalidArgumentError,
        "not int",
    ),
    # args
    ("args list", lambda c: enqueue(ok, args=[1], connection=c), InvalidArgumentError, "args"),
    ("args str", lambda c: enqueue(ok, args="x=1", connection=c), InvalidArgumentError, "args"),
    (
        "args NaN",
        lambda c: enqueue(ok, args={"x": float("nan")}, connection=c),
        InvalidArgumentError,
        "args.x: nan",
    ),
    (
        "args Infinity",
        lambda c: enqueue(ok, args={"x": float("-inf")}, connection=c),
        InvalidArgumentError,
        "args.x",
    ),
    (
        "args int key",
        lambda c: enqueue(ok, args={1: "a"}, connection=c),
        InvalidArgumentError,
        "key 1 is a int",
    ),
    (
        "args NUL key",
        lambda c: enqueue(ok, args={"a\x00": 1}, connection=c),
        InvalidArgumentError,
        "key contains \\u0000",
    ),
    (
        "args surrogate",
        lambda c: enqueue(ok, args={"x": "\udcff"}, connection=c),
        InvalidArgumentError,
        "unpaired surrogate",
    ),
    (
        "args nested NUL",
        lambda c: enqueue(ok, args={"x": {"y": [1, "\x00"]}}, connection=c),
        InvalidArgumentError,
        "args.x.y[1]",
    ),
    (
        "args recursive dict",
        lambda c: enqueue(ok, args=_recursive_dict(), connection=c),
        InvalidArgumentError,
        "recursive",
    ),
    (
        "args recursive list",
        lambda c: enqueue(ok, args=_recursive_list(), connection=c),
        InvalidArgumentError,
        "recursive",
    ),
    (
        "args too deep",
        lambda c: enqueue(ok, args=_deep(100_000), connection=c),
        InvalidArgumentError,
        "args is nested too deeply",
    ),
    (
        "args object",
        lambda c: enqueue(ok, args={"x": object()}, connection=c),
        InvalidArgumentError,
        "a object is not JSON",
    ),
    (
        "args bytes",
        lambda c: enqueue(ok, args={"x": b"\xff"}, connection=c),
        InvalidArgumentError,
        "a bytes is not JSON",
    ),
    (
        "args set",
        lambda c: enqueue(ok, args={"x": {1, 2}}, connection=c),
        InvalidArgumentError,
        "a set is not JSON",
    ),
    (
        "args huge int",
        lambda c: enqueue(ok, args={"x": 10**5000}, connection=c),
        InvalidArgumentError,
        "too large",
    ),
    # queue
    ("queue empty", lambda c: enqueue(ok, queue="", connection=c), InvalidArgumentError, "queue"),
    (
        "queue comma",
        lambda c: enqueue(ok, queue="a,b", connection=c),
        InvalidArgumentError,
        "queue",
    ),
    (
        "queue long",
        lambda c: enqueue(ok, queue="q" * 101, connection=c),
        InvalidArgumentError,
        "queue",
    ),
    ("queue int", lambda c: enqueue(ok, queue=3, connection=c), InvalidArgumentError, "queue"),
    (
        "queue surrogate",
        lambda c: enqueue(ok, queue="\udcff", connection=c),
        InvalidArgumentError,
        "queue",
    ),
    # priority
    (
        "priority bool",
        lambda c: enqueue(ok, priority=True, connection=c),
        InvalidArgumentError,
        "priority must be an int, not bool",
    ),
    (
        "priority NaN",
        lambda c: enqueue(ok, priority=float("nan"), connection=c),
        InvalidArgumentError,
        "priority must be an int, not float",
    ),
    (
        "priority above int4",
        lambda c: enqueue(ok, priority=2**31, connection=c),
        InvalidArgumentError,
        "priority 2147483648 is out of range",
    ),
    (
        "priority below int4",
        lambda c: enqueue(ok, priority=-(2**31) - 1, connection=c),
        InvalidArgumentError,
        "out of range",
    ),
    (
        "priority str",
        lambda c: enqueue(ok, priority="1", connection=c),
        InvalidArgumentError,
        "not str",
    ),
    # max_attempts
    (
        "max_attempts 0",
        lambda c: enqueue(ok, max_attempts=0, connection=c),
        InvalidArgumentError,
        "max_attempts 0 is out of range",
    ),
    (
        "max_attempts above int4",
        lambda c: enqueue(ok, max_attempts=2**31, connection=c),
        InvalidArgumentError,
        "max_attempts",
    ),
    (
        "max_attempts bool",
        lambda c: enqueue(ok, max_attempts=True, connection=c),
        InvalidArgumentError,
        "not bool",
    ),
    (
        "max_attempts float",
        lambda c: enqueue(ok, max_attempts=3.0, connection=c),
        InvalidArgumentError,
        "not float",
    ),
    # idempotency_key
    (
        "key empty",
        lambda c: enqueue(ok, idempotency_key="", connection=c),
        InvalidArgumentError,
        "idempotency_key is empty",
    ),
    (
        "key bytes",
        lambda c: enqueue(ok, idempotency_key=b"k", connection=c),
        InvalidArgumentError,
        "idempotency_key must be a string",
    ),
    (
        "key surrogate",
        lambda c: enqueue(ok, idempotency_key="k\udcff", connection=c),
        InvalidArgumentError,
        "idempotency_key",
    ),
    (
        "key 513 characters",
        lambda c: enqueue(ok, idempotency_key="k" * 513, connection=c),
        InvalidArgumentError,
        "at most 512",
    ),
    # connection
    (
        "connection URL",
        lambda c: enqueue(ok, connection="postgresql://app:pw@localhost/app"),
        InvalidArgumentError,
        "connection must be a psycopg Connection",
    ),
    (
        "connection int",
        lambda c: enqueue_many(ok, [{}], connection=42),
        InvalidArgumentError,
        "not int",
    ),
    # enqueue_many
    (
        "args_list None",
        lambda c: enqueue_many(ok, None, connection=c),
        InvalidArgumentError,
        "args_list must be an iterable",
    ),
    (
        "args_list str",
        lambda c: enqueue_many(ok, "abc", connection=c),
        InvalidArgumentError,
        "args_list must be an iterable",
    ),
    (
        "args_list item int",
        lambda c: enqueue_many(ok, [{"n": 1}, 5], connection=c),
        InvalidArgumentError,
        "args_list[1] must be a mapping",
    ),
    (
        "args_list late NUL",
        lambda c: enqueue_many(ok, _late_bad_items(), connection=c),
        InvalidArgumentError,
        "args_list[999].n",
    ),
    (
        "enqueue_many priority",
        lambda c: enqueue_many(ok, [{}], priority="high", connection=c),
        InvalidArgumentError,
        "priority",
    ),
    # schedule_many and JobSpec
    (
        "jobs None",
        lambda c: schedule_many(None, connection=c),
        InvalidArgumentError,
        "jobs must be an iterable",
    ),
    (
        "jobs item dict",
        lambda c: schedule_many([JobSpec(ok), {"task": ok}], connection=c),
        InvalidArgumentError,
        "jobs[1] must be a JobSpec",
    ),
    (
        "jobs item args",
        lambda c: schedule_many(
            [JobSpec(ok, SOON), JobSpec(ok, SOON, {"x": [float("nan")]})], connection=c
        ),
        InvalidArgumentError,
        "jobs[1].args.x[0]",
    ),
    (
        "jobs item unregistered",
        lambda c: schedule_many([JobSpec(ok), JobSpec(not_registered)], connection=c),
        UnknownTaskError,
        "not registered",
    ),
    (
        "JobSpec priority",
        lambda c: schedule_many([JobSpec(ok, priority=10**12)], connection=c),
        InvalidArgumentError,
        "JobSpec.priority",
    ),
    (
        "JobSpec run_at",
        lambda c: schedule_many([JobSpec(ok, run_at="now")], connection=c),
        InvalidArgumentError,
        "JobSpec.run_at must be a datetime",
    ),
    # @task
    ("@task priority", _decorate(priority="high"), InvalidArgumentError, "@task priority"),
    ("@task jitter NaN", _decorate(backoff_jitter=float("nan")), InvalidArgumentError, "jitter"),
    ("@task timeout", _decorate(timeout_s=-1), InvalidArgumentError, "@task timeout_s"),
    ("@task backoff bool", _decorate(backoff_base_s=True), InvalidArgumentError, "not bool"),
    ("@task queue", _decorate(queue="\udcff"), InvalidArgumentError, "@task queue"),
    ("@task max_attempts", _decorate(max_attempts=0), InvalidArgumentError, "max_attempts"),
]


def _jobs(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute("SELECT * FROM scheduler.jobs ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def shared_db_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """One migrated database for the table (nothing may write to it), holding one job."""
    name = "scheduler_test_api_hostile"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = make_conninfo(pg_server_url, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        enqueue(ok, args={"n": 1}, connection=conn)
    yield url
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize(
    ("call", "error", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("via", ["caller", "default"])
def test_hostile_call_is_refused_before_any_sql(shared_db_url, via, call, error, fragment):
    with psycopg.connect(shared_db_url, autocommit=True) as db:
        before = _jobs(db)
    tasks_before = registered_tasks()
    with psycopg.connect(shared_db_url) as conn:
        set_default_database_url(shared_db_url)
        try:
            with pytest.raises(SchedulerError) as info:
                call(conn if via == "caller" else None)
        finally:
            set_default_database_url(None)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # no SQL ran
    # arguments that do not fit a registered task: TaskArgumentsError, an InvalidArgumentError
    fits = error is InvalidArgumentError and type(info.value) is TaskArgumentsError
    assert type(info.value) is error or fits, repr(info.value)
    assert fragment in str(info.value), str(info.value)
    assert info.value.__cause__ is None or not isinstance(info.value.__cause__, psycopg.Error)
    with psycopg.connect(shared_db_url, autocommit=True) as db:
        assert _jobs(db) == before and len(before) == 1
    assert registered_tasks() == tasks_before


def test_ten_megabyte_argument_is_stored_whole(db, db_url):
    """Accepted (PostgreSQL stores up to 255 MB in one jsonb string); with a NUL at its end it
    is refused before any SQL, quickly, without a psycopg error."""
    big = "x" * 10_000_000
    with psycopg.connect(db_url) as conn:
        with pytest.raises(InvalidArgumentError, match=r"args\.blob: contains \\u0000"):
            enqueue(ok, args={"blob": big + "\x00"}, connection=conn)
        with pytest.raises(InvalidArgumentError, match=r"args_list\[1\]\.blob"):
            enqueue_many(ok, [{"blob": big}, {"blob": [big + "\udcff"]}], connection=conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        job_id = enqueue(ok, args={"blob": big}, connection=conn)
        conn.commit()
    row = db.execute(
        "SELECT length(args->>'blob') FROM scheduler.jobs WHERE id = %s", [job_id]
    ).fetchone()
    assert row == (10_000_000,)
