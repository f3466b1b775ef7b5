"""The worker against a real database: claim, run, complete, retry, dead-letter."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from scheduler import enqueue, enqueue_async, enqueue_many, schedule_at_async, task
from scheduler.settings import Settings
from scheduler.store import Store
from scheduler.worker import CANCELLED_TEXT, Worker
from tests.conftest import wait_until_async

CALLS: list[tuple[str, Any]] = []
THREADS: set[str] = set()


@task(name="test_worker.ok")
def ok(n: int) -> None:
    CALLS.append(("ok", n))
    THREADS.add(threading.current_thread().name)


@task(name="test_worker.async_ok")
async def async_ok(n: int) -> None:
    await asyncio.sleep(0)
    CALLS.append(("async_ok", n))


@task(name="test_worker.boom", max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02)
def boom() -> None:
    raise RuntimeError("boom")


def _settings(**kw: Any) -> Settings:
    kw.setdefault("poll_interval_s", 0.2)
    return Settings(database_url=None, concurrency=kw.pop("concurrency", 4), **kw)


async def _run_worker_until(
    db_url: str,
    done: Callable[[psycopg.AsyncConnection], Awaitable[bool]],
    timeout: float = 20,
    **kw: Any,
) -> Worker:
    settings = _settings(**kw)
    pool = AsyncConnectionPool(
        db_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
    )
    await pool.open()
    worker = Worker(pool, db_url, Store("scheduler"), settings, "test-worker")
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as check:
            async with asyncio.timeout(timeout):
                while not await done(check):
                    await asyncio.sleep(0.05)
    finally:
        stop.set()
        await runner
        await pool.close()
    return worker


async def _count(conn: psycopg.AsyncConnection, where: str) -> int:
    cur = await conn.execute(f"SELECT count(*) FROM scheduler.jobs WHERE {where}")
    return (await cur.fetchone())[0]


async def _parked_worker_runs_one(db_url: str, enqueue_it, timeout: float) -> None:
    """Start a worker with a 30 s safety poll, let it park, call ``enqueue_it(conn)``, and
    wait until one job succeeded: only NOTIFY or a timer can start it in time."""
    settings = Settings(concurrency=2, poll_interval_s=30)
    pool = AsyncConnectionPool(
        db_url, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
    )
    await pool.open()
    worker = Worker(pool, db_url, Store("scheduler"), settings, "w")
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.listening.wait(), 10)
        # parked after the claim that followed LISTEN, and nothing about to wake it
        await wait_until_async(lambda: worker.parked.is_set() and not worker._wake.is_set(), 10)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            await enqueue_it(c)
            async with asyncio.timeout(timeout):
                while await _count(c, "state = 'succeeded'") != 1:
                    await asyncio.sleep(0.02)
    finally:
        stop.set()
        await runner
        await pool.close()


def test_runs_sync_and_async_handlers_and_records_runs(db, db_url):
    CALLS.clear()
    with psycopg.connect(db_url) as conn:
        for i in range(5):
            enqueue(ok, args={"n": i}, connection=conn)
            enqueue(async_ok, args={"n": i}, connection=conn)
        conn.commit()

    async def all_done(c):
        return await _count(c, "state = 'succeeded'") == 10

    asyncio.run(_run_worker_until(db_url, all_done))
    assert sorted(CALLS) == sorted(
        [("ok", i) for i in range(5)] + [("async_ok", i) for i in range(5)]
    )
    assert all(name.startswith("scheduler-job") for name in THREADS)
    runs = db.execute(
        "SELECT outcome, attempt, worker_id, finished_at >= started_at FROM scheduler.job_runs"
    ).fetchall()
    assert len(runs) == 10 and set(runs) == {("succeeded", 1, "test-worker", True)}
    assert (
        db.execute(
            "SELECT count(*) FROM scheduler.jobs WHERE finished_at IS NULL OR lease_expires_at IS NOT NULL"
        ).fetchone()[0]
        == 0
    )


def test_failing_job_retries_with_backoff_then_dead_letters(db, db_url):
    with psycopg.connect(db_url) as conn:
        job_id = enqueue(boom, connection=conn)
        conn.commit()

    async def dead(c):
        return await _count(c, "state = 'dead'") == 1

    asyncio.run(_run_worker_until(db_url, dead))
    runs = db.execute(
        "SELECT attempt, outcome, error, traceback FROM scheduler.job_runs WHERE job_id = %s ORDER BY attempt",
        [job_id],
    ).fetchall()
    assert [(r[0], r[1]) for r in runs] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert all(r[2] == "RuntimeError: boom" for r in runs)
    assert all('raise RuntimeError("boom")' in r[3] for r in runs)
    state, attempt, last_error = db.execute(
        "SELECT state, attempt, last_error FROM scheduler.jobs WHERE id = %s", [job_id]
    ).fetchone()
    assert (state, attempt, last_error) == ("dead", 3, "RuntimeError: boom")
    history = db.execute(
        "SELECT count(*) FROM scheduler.run_history WHERE job_id = %s AND job_state = 'dead'",
        [job_id],
    ).fetchone()[0]
    assert history == 3


def test_unknown_task_is_dead_lettered_with_reason_once_its_retry_time_is_spent(db, db_url):
    """(Retried before that: tests/integration/test_worker_hostile.py.)"""
    with psycopg.connect(db_url) as conn:
        job_id = enqueue("no.such.task", max_attempts=5, connection=conn)
        conn.commit()

    async def dead(c):
        return await _count(c, "state = 'dead'") == 1

    asyncio.run(_run_worker_until(db_url, dead, unknown_task_retry_s=0))
    attempt, error = db.execute(
        "SELECT attempt, error FROM scheduler.job_runs WHERE job_id = %s", [job_id]
    ).fetchone()
    assert attempt == 1 and "task 'no.such.task' is not registered" in error


def test_future_jobs_wait_and_other_queues_are_left_alone(db, db_url):
    with psycopg.connect(db_url) as conn:
        enqueue(ok, args={"n": 1}, queue="other", connection=conn)
        conn.execute(
            "INSERT INTO scheduler.jobs (task, args, run_at) VALUES ('test_worker.ok', '{\"n\": 2}', now() + interval '1 hour')"
        )
        enqueue(ok, args={"n": 3}, connection=conn)
        conn.commit()

    async def one_done(c):
        return await _count(c, "state = 'succeeded'") == 1

    asyncio.run(_run_worker_until(db_url, one_done))
    states = dict(db.execute("SELECT args->>'n', state FROM scheduler.jobs").fetchall())
    assert states == {"1": "pending", "2": "pending", "3": "succeeded"}


def test_notify_wakes_worker_without_waiting_for_poll(db_url):
    """With a 30 s safety poll, only NOTIFY can start the job within the timeout."""

    async def insert(c: psycopg.AsyncConnection) -> None:
        await enqueue_async(ok, args={"n": 9}, connection=c)

    asyncio.run(_parked_worker_runs_one(db_url, insert, timeout=5))


def test_concurrent_workers_never_run_a_job_twice(db, db_url):
    with psycopg.connect(db_url) as conn:
        for i in range(200):
            enqueue(ok, args={"n": i}, connection=conn)
        conn.commit()
    CALLS.clear()

    async def two_workers() -> None:
        async def done(c):
            return await _count(c, "state = 'succeeded'") == 200

        await asyncio.gather(
            _run_worker_until(db_url, done, concurrency=3),
            _run_worker_until(db_url, done, concurrency=5),
        )

    asyncio.run(two_workers())
    assert sorted(n for _, n in CALLS) == list(range(200))
    assert db.execute("SELECT count(*) FROM scheduler.job_runs").fetchone()[0] == 200


def test_fenced_completion_cannot_overwrite_newer_attempt(db, db_url):
    store = Store("scheduler")
    with psycopg.connect(db_url) as conn:
        job_id = enqueue(ok, args={"n": 1}, connection=conn)
        conn.commit()

    async def scenario() -> tuple[set[int], set[int]]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            (first,) = await store.claim_jobs(
                c, queues=["default"], limit=1, worker_id="old", lease_s=30
            )
            # the job is rescued and claimed again by another worker (attempt 2)
            await c.execute("UPDATE scheduler.jobs SET state = 'pending' WHERE id = %s", [job_id])
            (second,) = await store.claim_jobs(
                c, queues=["default"], limit=1, worker_id="new", lease_s=30
            )
            late = await store.complete_jobs(
                c,
                "old",
                [
                    {
                        "id": job_id,
                        "attempt": first["attempt"],
                        "state": "succeeded",
                        "outcome": "succeeded",
                    }
                ],
            )
            current = await store.complete_jobs(
                c,
                "new",
                [
                    {
                        "id": job_id,
                        "attempt": second["attempt"],
                        "state": "succeeded",
                        "outcome": "succeeded",
                    }
                ],
            )
            return late, current

    late, current = asyncio.run(scenario())
    assert late == {} and current == {job_id: True}
    assert db.execute("SELECT worker_id, attempt FROM scheduler.job_runs").fetchall() == [
        ("new", 2)
    ]


def test_delayed_job_starts_at_its_run_at_without_polling(db, db_url):
    """With a 30 s safety poll, only the timer set from the NOTIFY payload can start the
    job near its run_at."""
    from datetime import datetime, timedelta

    async def insert(c: psycopg.AsyncConnection) -> None:
        await schedule_at_async(
            ok, datetime.now(UTC) + timedelta(seconds=1.5), args={"n": 1}, connection=c
        )

    asyncio.run(_parked_worker_runs_one(db_url, insert, timeout=10))
    late = db.execute(
        "SELECT extract(epoch FROM r.started_at - j.first_run_at) FROM scheduler.job_runs r "
        "JOIN scheduler.jobs j ON j.id = r.job_id"
    ).fetchone()[0]
    assert 0 <= late < 1.0, f"started {late} s after run_at"


def test_retries_wake_the_worker_without_polling(db, db_url):
    """With a 30 s safety poll, three attempts 10-20 ms apart finish quickly only if the
    worker wakes itself for its retries."""
    with psycopg.connect(db_url) as conn:
        enqueue(boom, connection=conn)
        conn.commit()

    async def dead(c):
        return await _count(c, "state = 'dead'") == 1

    asyncio.run(_run_worker_until(db_url, dead, timeout=10, poll_interval_s=30))


ACTIVE = {"now": 0, "peak": 0}
FULL = asyncio.Event()  # set once `concurrency` (10) handlers run at the same time


@task(name="test_worker.tracked")
async def tracked() -> None:
    ACTIVE["now"] += 1
    ACTIVE["peak"] = max(ACTIVE["peak"], ACTIVE["now"])
    if ACTIVE["now"] == 10:
        FULL.set()
    await asyncio.wait_for(FULL.wait(), 10)  # the first ten wait until all ten run
    await asyncio.sleep(0.002)
    ACTIVE["now"] -= 1


def test_never_runs_more_handlers_than_concurrency_while_writes_overlap_claims(db, db_url):
    """Slots free before outcomes are written, yet at most `concurrency` handlers run at once
    and every job succeeds exactly once."""
    ACTIVE.update(now=0, peak=0)
    FULL.clear()
    with psycopg.connect(db_url) as conn:
        enqueue_many(tracked, [{}] * 300, connection=conn)
        conn.commit()

    async def all_done(c):
        return await _count(c, "state = 'succeeded'") == 300

    asyncio.run(_run_worker_until(db_url, all_done, concurrency=10))
    assert ACTIVE["peak"] == 10
    runs = db.execute(
        "SELECT count(*), count(DISTINCT job_id), min(outcome), max(outcome) "
        "FROM scheduler.job_runs"
    ).fetchone()
    assert runs == (300, 300, "succeeded", "succeeded")


@task(name="test_worker.forever")
async def forever() -> None:
    await asyncio.sleep(3600)


def test_cancel_stops_a_running_async_handler_at_once(db, db_url):
    """With a 30 s lease (extensions every 10 s), only the notification can stop it in time."""
    from scheduler import job_changes

    with psycopg.connect(db_url) as conn:
        job_id = enqueue(forever, connection=conn)
        conn.commit()

    async def cancelled(c):
        if await _count(c, "state = 'running' AND cancel_requested_at IS NULL") == 1:
            await job_changes.cancel(c, Store("scheduler"), job_id)
        return await _count(c, "state = 'cancelled'") == 1

    asyncio.run(_run_worker_until(db_url, cancelled, timeout=5, lease_s=30))
    assert db.execute(
        "SELECT outcome FROM scheduler.job_runs WHERE job_id = %s", [job_id]
    ).fetchall() == [("cancelled",)]


def test_cancel_stops_a_running_async_handler_at_the_next_lease_extension(db, db_url):

    with psycopg.connect(db_url) as conn:
        job_id = enqueue(forever, connection=conn)
        conn.commit()

    async def scenario() -> None:
        async def running(c):
            return await _count(c, "state = 'running'") == 1

        async def cancelled(c):
            if await _count(c, "state = 'running' AND cancel_requested_at IS NULL") == 1:
                # the request without its notification (as if the worker missed it)
                await Store("scheduler").fetch(c, "job_cancel", {"ids": [job_id], "actor": None})
            return await _count(c, "state = 'cancelled'") == 1

        # lease_s 0.3: leases are extended (and cancel requests seen) every 0.1 s
        await _run_worker_until(db_url, cancelled, timeout=10, lease_s=0.3)

    asyncio.run(scenario())
    run = db.execute(
        "SELECT outcome, error FROM scheduler.job_runs WHERE job_id = %s", [job_id]
    ).fetchall()
    assert run == [("cancelled", CANCELLED_TEXT)]
    events = db.execute(
        "SELECT event FROM scheduler.job_events WHERE job_id = %s", [job_id]
    ).fetchall()
    assert events == [("cancel_requested",)]
