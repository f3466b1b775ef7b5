"""``connection=`` given a psycopg connection whose ``row_factory`` is not the default (an
application's ``dict_row`` or ``namedtuple_row`` connection): every call that reads rows on
the caller's connection reads them its own way, and leaves the connection's factory as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row, namedtuple_row

from scheduler import (
    JobSpec,
    backfill_schedule,
    backfill_schedule_async,
    cancel_job,
    cancel_job_async,
    enqueue_many,
    enqueue_many_async,
    enqueue_result,
    enqueue_result_async,
    get_job,
    get_job_async,
    list_jobs,
    list_jobs_async,
    pause_queue,
    pause_queue_async,
    pause_schedule,
    pause_schedule_async,
    put_schedule,
    put_schedule_async,
    remove_schedule,
    remove_schedule_async,
    retry_job,
    retry_job_async,
    schedule_many,
    schedule_many_async,
    set_queue_limits,
    set_queue_limits_async,
    task,
    trigger_schedule,
    trigger_schedule_async,
)

FACTORIES = {"dict_row": dict_row, "namedtuple_row": namedtuple_row}


@task(name="rows.note", queue="rows")
def note(n: int) -> None:
    pass


def _calls_sync(conn: psycopg.Connection[Any]) -> dict[str, Callable[[], Any]]:
    hour = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "defer": lambda: note.configure(connection=conn).defer(n=1),
        "enqueue_result": lambda: enqueue_result("rows.note", args={"n": 2}, connection=conn),
        "keyed twice": lambda: [
            enqueue_result("rows.note", args={"n": 3}, idempotency_key="k", connection=conn)
            for _ in range(2)
        ][-1],
        "enqueue_many": lambda: enqueue_many("rows.note", [{"n": 4}, {"n": 5}], connection=conn),
        "schedule_many": lambda: schedule_many(
            [JobSpec("rows.note", args={"n": 5})], connection=conn
        ),
        "get_job": lambda: get_job(note.configure(connection=conn).defer(n=6), connection=conn),
        "list_jobs": lambda: list_jobs(task="rows.note", connection=conn),
        "cancel_job": lambda: cancel_job(
            note.configure(connection=conn).defer(n=7), connection=conn
        ),
        "retry_job": lambda: retry_job(note.configure(connection=conn).defer(n=8), connection=conn),
        "put_schedule": lambda: put_schedule(
            "rows", note, cron="0 * * * *", args={"n": 9}, connection=conn
        ),
        "pause_schedule": lambda: pause_schedule("rows", connection=conn),
        "trigger_schedule": lambda: trigger_schedule("rows", connection=conn),
        "backfill_schedule": lambda: backfill_schedule(
            "rows", hour, hour + timedelta(hours=2), connection=conn
        ),
        "remove_schedule": lambda: remove_schedule("rows", connection=conn),
        "pause_queue": lambda: pause_queue("rows", connection=conn),
        "set_queue_limits": lambda: set_queue_limits("rows", concurrency=2, connection=conn),
    }


def _calls_async(conn: psycopg.AsyncConnection[Any]) -> dict[str, Callable[[], Any]]:
    hour = datetime(2026, 1, 1, tzinfo=UTC)

    async def twice() -> Any:
        await enqueue_result_async("rows.note", args={"n": 3}, idempotency_key="k", connection=conn)
        return await enqueue_result_async(
            "rows.note", args={"n": 3}, idempotency_key="k", connection=conn
        )

    async def then(call: Callable[..., Any], n: int) -> Any:
        return await call(await note.configure(connection=conn).defer_async(n=n), connection=conn)

    return {
        "defer": lambda: note.configure(connection=conn).defer_async(n=1),
        "enqueue_result": lambda: enqueue_result_async("rows.note", args={"n": 2}, connection=conn),
        "keyed twice": twice,
        "enqueue_many": lambda: enqueue_many_async(
            "rows.note", [{"n": 4}, {"n": 5}], connection=conn
        ),
        "schedule_many": lambda: schedule_many_async(
            [JobSpec("rows.note", args={"n": 5})], connection=conn
        ),
        "get_job": lambda: then(get_job_async, 6),
        "list_jobs": lambda: list_jobs_async(task="rows.note", connection=conn),
        "cancel_job": lambda: then(cancel_job_async, 7),
        "retry_job": lambda: then(retry_job_async, 8),
        "put_schedule": lambda: put_schedule_async(
            "rows", note, cron="0 * * * *", args={"n": 9}, connection=conn
        ),
        "pause_schedule": lambda: pause_schedule_async("rows", connection=conn),
        "trigger_schedule": lambda: trigger_schedule_async("rows", connection=conn),
        "backfill_schedule": lambda: backfill_schedule_async(
            "rows", hour, hour + timedelta(hours=2), connection=conn
        ),
        "remove_schedule": lambda: remove_schedule_async("rows", connection=conn),
        "pause_queue": lambda: pause_queue_async("rows", connection=conn),
        "set_queue_limits": lambda: set_queue_limits_async("rows", concurrency=2, connection=conn),
    }


def _jobs(db: psycopg.Connection[Any]) -> int:
    return db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0]  # type: ignore[index]


@pytest.mark.parametrize("factory", FACTORIES)
def test_sync_calls_on_a_connection_with_another_row_factory(
    db_url: str, db: psycopg.Connection[Any], factory: str
) -> None:
    with psycopg.connect(db_url, row_factory=FACTORIES[factory]) as conn:
        failed = {}
        for name, call in _calls_sync(conn).items():
            try:
                call()
                conn.commit()
            except Exception as e:  # noqa: BLE001 - every call is tried, the failures listed
                conn.rollback()
                failed[name] = f"{type(e).__name__}: {e}"
            assert conn.row_factory is FACTORIES[factory]
        assert failed == {}
    assert _jobs(db) >= 9


@pytest.mark.parametrize("factory", FACTORIES)
def test_async_calls_on_a_connection_with_another_row_factory(
    db_url: str, db: psycopg.Connection[Any], factory: str
) -> None:
    async def scenario() -> dict[str, str]:
        failed = {}
        conn = await psycopg.AsyncConnection.connect(db_url, row_factory=FACTORIES[factory])
        async with conn:
            for name, call in _calls_async(conn).items():
                try:
                    await call()
                    await conn.commit()
                except Exception as e:  # noqa: BLE001 - every call is tried, the failures listed
                    await conn.rollback()
                    failed[name] = f"{type(e).__name__}: {e}"
                assert conn.row_factory is FACTORIES[factory]
        return failed

    assert asyncio.run(scenario()) == {}
    assert _jobs(db) >= 9
