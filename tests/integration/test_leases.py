"""Leases, rescue, timeouts and graceful release, against a real database."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from scheduler import enqueue, job_changes, maintenance, task
from scheduler.settings import Settings
from scheduler.store import Store
from scheduler.worker import Worker

STORE = Store("scheduler")
RELEASE = threading.Event()


@task(name="test_leases.slow")
async def slow(seconds: float) -> None:
    await asyncio.sleep(seconds)


@task(
    name="test_leases.hangs", timeout_s=0.3, max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.01
)
async def hangs() -> None:
    await asyncio.sleep(60)


@task(name="test_leases.sync_hangs", timeout_s=0.3, max_attempts=1)
def sync_hangs() -> None:
    RELEASE.wait(10)


async def _worker(db_url: str, **kw: Any) -> tuple[Worker, AsyncConnectionPool]:
    settings = Settings(concurrency=2, poll_interval_s=0.1, **kw)
    pool = AsyncConnectionPool(
        db_url, min_size=1, max_size=3, open=False, kwargs={"autocommit": True}
    )
    await pool.open()
    return Worker(pool, db_url, STORE, settings, "w1"), pool


async def _until(db_url: str, sql: str, timeout: float = 15) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        async with asyncio.timeout(timeout):
            while not (await (await c.execute(sql)).fetchone())[0]:
                await asyncio.sleep(0.05)


def test_running_job_keeps_its_lease_beyond_lease_s(db, db_url):
    with psycopg.connect(db_url) as conn:
        job_id = enqueue(slow, args={"seconds": 2.0}, connection=conn)
        conn.commit()

    async def scenario() -> None:
        worker, pool = await _worker(db_url, lease_s=0.6)
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        await _until(db_url, "SELECT count(*) = 1 FROM scheduler.jobs WHERE state = 'running'")
        # the lease (0.6 s) is extended every 0.2 s: rescue finds nothing expired meanwhile
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as leader:
            assert await STORE.try_lock_leader(leader)
            term = await STORE.elect(leader, "L", None)
            for _ in range(6):
                await asyncio.sleep(0.25)
                assert (
                    await maintenance.rescue_expired_leases(leader, STORE, holder="L", term=term)
                    == []
                )
        await _until(db_url, "SELECT count(*) = 1 FROM scheduler.jobs WHERE state = 'succeeded'")
        stop.set()
        await run
        await pool.close()

    asyncio.run(scenario())
    assert db.execute(
        "SELECT outcome FROM scheduler.job_runs WHERE job_id = %s", [job_id]
    ).fetchall() == [("succeeded",)]


def test_expired_lease_is_rescued_with_a_lost_run_and_dead_at_max_attempts(db, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        retry = enqueue(slow, args={"seconds": 0}, max_attempts=3, connection=conn)
        last = enqueue(slow, args={"seconds": 0}, max_attempts=1, connection=conn)
        cancelled = enqueue(slow, args={"seconds": 0}, max_attempts=3, connection=conn)

    heard: list[tuple[str, str]] = []

    async def scenario() -> list[int]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c, \
                await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listener:
            for channel in (STORE.notify_channel, STORE.done_channel):
                await listener.execute(psycopg.sql.SQL("LISTEN {}").format(
                    psycopg.sql.Identifier(channel)))  # fmt: skip
            claimed = await STORE.claim_jobs(
                c, queues=["default"], limit=5, worker_id="dead-worker", lease_s=0.1
            )
            assert len(claimed) == 3
            assert await job_changes.cancel(c, STORE, cancelled) == "cancel_requested"
            await asyncio.sleep(0.3)  # the worker "died": nobody extends the leases
            assert await STORE.try_lock_leader(c)
            term = await STORE.elect(c, "L", None)
            rescued = await maintenance.rescue_expired_leases(c, STORE, holder="L", term=term)
            async for note in listener.notifies(timeout=1.0):  # the rescue's, then quiet
                heard.append((note.channel, note.payload))
            return rescued

    assert sorted(asyncio.run(scenario())) == sorted([retry, last, cancelled])
    # the queue is told a job is due again; wait_for_job is told which jobs ended
    assert [p.split()[0] for c, p in heard if c == STORE.notify_channel][-1] == "default"
    ended = [p for c, p in heard if c == STORE.done_channel]
    assert sorted(int(i) for i in ended[-1].split(",")) == sorted([last, cancelled])
    states = dict(db.execute("SELECT id, state FROM scheduler.jobs").fetchall())
    # a job an operator had asked to stop is not run again
    assert states == {retry: "pending", last: "dead", cancelled: "cancelled"}
    runs = db.execute(
        "SELECT job_id, attempt, outcome, worker_id FROM scheduler.job_runs ORDER BY job_id"
    ).fetchall()
    assert runs == [(j, 1, "lost", "dead-worker") for j in sorted([retry, last, cancelled])]


def test_async_timeout_is_recorded_and_retried(db, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        job_id = enqueue(hangs, connection=conn)

    async def scenario() -> None:
        worker, pool = await _worker(db_url)
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        await _until(db_url, "SELECT count(*) = 1 FROM scheduler.jobs WHERE state = 'dead'")
        stop.set()
        await run
        await pool.close()

    asyncio.run(scenario())
    runs = db.execute(
        "SELECT attempt, outcome, error FROM scheduler.job_runs WHERE job_id = %s ORDER BY attempt",
        [job_id],
    ).fetchall()
    assert [(a, o) for a, o, _ in runs] == [(1, "timeout"), (2, "timeout")]
    assert "timeout_s=0.3" in runs[0][2]


def test_sync_timeout_is_recorded_while_the_thread_runs_on(db, db_url):
    RELEASE.clear()
    with psycopg.connect(db_url, autocommit=True) as conn:
        job_id = enqueue(sync_hangs, connection=conn)

    async def scenario() -> None:
        worker, pool = await _worker(db_url)
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        await _until(db_url, "SELECT count(*) = 1 FROM scheduler.jobs WHERE state = 'dead'")
        RELEASE.set()
        stop.set()
        await run
        await pool.close()

    asyncio.run(scenario())
    assert db.execute(
        "SELECT outcome FROM scheduler.job_runs WHERE job_id = %s", [job_id]
    ).fetchall() == [("timeout",)]


def test_shutdown_releases_unfinished_jobs_without_burning_an_attempt(db, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        long_job = enqueue(slow, args={"seconds": 30}, connection=conn)
        quick = enqueue(slow, args={"seconds": 0.2}, connection=conn)

    async def scenario() -> None:
        worker, pool = await _worker(db_url, shutdown_grace_s=1.0)
        stop = asyncio.Event()
        run = asyncio.create_task(worker.run(stop))
        await _until(db_url, "SELECT count(*) = 2 FROM scheduler.jobs WHERE state = 'running'")
        stop.set()
        await asyncio.wait_for(run, 10)
        await pool.close()

    asyncio.run(scenario())
    rows = {
        (r[0]): r[1:]
        for r in db.execute("SELECT id, state, attempt, run_at <= now() FROM scheduler.jobs")
    }
    assert rows[quick] == ("succeeded", 1, True)  # finished within the grace period
    assert rows[long_job] == ("pending", 0, True)  # released: due now, attempt not burned
    assert (
        db.execute(
            "SELECT count(*) FROM scheduler.job_runs WHERE job_id = %s", [long_job]
        ).fetchone()[0]
        == 0
    )
