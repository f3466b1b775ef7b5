"""What a handler, a row or a slow write does to a worker: at most its own job.

Each test runs a real Worker against a real database and checks the rows afterwards.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from scheduler import enqueue, enqueue_async, maintenance, task
from scheduler.settings import Settings
from scheduler.store import Store
from scheduler.worker import Worker

STORE = Store("scheduler")
HANG = threading.Event()
ONCE = {"n": 0}


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ itself fails")


@task(name="hostile.nul", max_attempts=1)
def raises_nul() -> None:
    raise ValueError("a\x00b")


@task(name="hostile.surrogate", max_attempts=1)
def raises_surrogate() -> None:
    raise ValueError("bad file name: \udcff.txt")


@task(name="hostile.huge", max_attempts=1)
def raises_huge() -> None:
    raise ValueError("x" * 5_000_000)


@task(name="hostile.unprintable", max_attempts=1)
def raises_unprintable() -> None:
    raise UnprintableError()


@task(name="hostile.sys_exit", max_attempts=1)
def calls_sys_exit() -> None:
    sys.exit(1)


@task(name="hostile.keyboard_interrupt", max_attempts=1)
def raises_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


@task(name="hostile.async_system_exit", max_attempts=1)
async def async_system_exit() -> None:
    raise SystemExit(3)


@task(name="hostile.ok")
def ok() -> None:
    pass


@task(name="hostile.hangs", timeout_s=0.3, max_attempts=1)
def hangs() -> None:
    HANG.wait(30)


@task(name="hostile.quick", timeout_s=0.3, max_attempts=2, backoff_base_s=0.01)
def quick() -> None:
    pass


def _settings(**kw: Any) -> Settings:
    kw.setdefault("poll_interval_s", 0.1)
    kw.setdefault("concurrency", 4)
    return Settings(**kw)


async def _with_worker(
    db_url: str, body: Callable[[Worker, psycopg.AsyncConnection], Awaitable[None]], **kw: Any
) -> Worker:
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=4, open=False,
                               kwargs={"autocommit": True})  # fmt: skip
    await pool.open()
    worker = Worker(pool, db_url, STORE, _settings(**kw), "hostile-worker")
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await body(worker, conn)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)  # a graceful stop must not hang
        await pool.close()
    return worker


async def _until(conn: psycopg.AsyncConnection, sql: str, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not (await (await conn.execute(sql)).fetchone())[0]:
            await asyncio.sleep(0.05)


def _enqueue_all(db_url: str, tasks: list[Any]) -> list[int]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return [enqueue(t, connection=conn) for t in tasks]


def test_hostile_exceptions_are_failed_attempts_and_never_block_the_batch(db, db_url):
    """NUL, lone surrogates, 5 MB messages, an exception whose str() raises, sys.exit,
    KeyboardInterrupt and SystemExit: each is a failed attempt with a readable, storable
    error; the good jobs written in the same batches succeed; the worker keeps working."""
    hostile = [raises_nul, raises_surrogate, raises_huge, raises_unprintable, calls_sys_exit,
               raises_keyboard_interrupt, async_system_exit]  # fmt: skip
    ids = _enqueue_all(db_url, [*hostile, *[ok] * 20])

    async def body(worker: Worker, conn: psycopg.AsyncConnection) -> None:
        await _until(conn, "SELECT count(*) = 0 FROM scheduler.jobs "
                           "WHERE state IN ('pending', 'running')")  # fmt: skip
        # still alive: a job enqueued now runs
        late = await enqueue_async(ok, connection=conn)
        await _until(conn, f"SELECT state = 'succeeded' FROM scheduler.jobs WHERE id = {late}")

    asyncio.run(_with_worker(db_url, body))
    states = dict(db.execute("SELECT id, state FROM scheduler.jobs").fetchall())
    assert [states[i] for i in ids[: len(hostile)]] == ["dead"] * len(hostile)
    assert all(states[i] == "succeeded" for i in ids[len(hostile) :])
    errors = dict(
        db.execute("SELECT job_id, error FROM scheduler.job_runs WHERE outcome = 'failed'")
    )
    by_task = dict(
        zip([t.name for t in hostile], [errors[i] for i in ids[: len(hostile)]], strict=True)
    )
    assert by_task["hostile.nul"] == "ValueError: a\\x00b"
    assert by_task["hostile.surrogate"] == "ValueError: bad file name: \\udcff.txt"
    assert (
        by_task["hostile.huge"].startswith("ValueError: xxx")
        and len(by_task["hostile.huge"]) <= 2000
    )
    assert by_task["hostile.unprintable"].startswith("UnprintableError: <str() failed")
    assert by_task["hostile.sys_exit"] == "SystemExit: 1"
    assert by_task["hostile.keyboard_interrupt"].startswith("KeyboardInterrupt")
    assert by_task["hostile.async_system_exit"] == "SystemExit: 3"
    tracebacks = [r[0] for r in db.execute("SELECT traceback FROM scheduler.job_runs "
                                           "WHERE outcome = 'failed'")]  # fmt: skip
    assert all(tb and len(tb) <= 16_000 for tb in tracebacks)


def test_a_run_row_conflict_costs_only_its_own_run_record(db, db_url):
    """The attempt of a job was reset by hand (attempt = 0 while job_runs holds attempt 1):
    its completion cannot insert run 1 again. The job still gets its outcome, and the jobs
    completed in the same batch are written."""
    (reset,) = _enqueue_all(db_url, [ok])
    db.execute("UPDATE scheduler.jobs SET attempt = 1 WHERE id = %s", [reset])
    db.execute(
        "INSERT INTO scheduler.job_runs (job_id, attempt, worker_id, started_at, finished_at,"
        " outcome, error) VALUES (%s, 1, 'old', now(), now(), 'failed', 'earlier life')",
        [reset],
    )
    db.execute("UPDATE scheduler.jobs SET attempt = 0 WHERE id = %s", [reset])
    others = _enqueue_all(db_url, [ok] * 10)

    async def body(worker: Worker, conn: psycopg.AsyncConnection) -> None:
        await _until(conn, "SELECT count(*) = 11 FROM scheduler.jobs WHERE state = 'succeeded'")

    asyncio.run(_with_worker(db_url, body))
    assert (
        db.execute(
            "SELECT count(*) FROM scheduler.job_runs WHERE job_id = ANY(%s) AND outcome = 'succeeded'",
            [others],
        ).fetchone()[0]
        == 10
    )
    assert db.execute(
        "SELECT attempt, outcome, error FROM scheduler.job_runs WHERE job_id = %s", [reset]
    ).fetchall() == [(1, "failed", "earlier life")]


def test_the_lease_is_extended_until_the_outcome_is_written(db, db_url):
    """The completion write fails with a transient error for longer than the lease; the
    lease keeps being extended meanwhile, so the leader rescues nothing and the job, once
    written, ran exactly once."""
    db.execute("CREATE TABLE public.block_runs (on_ boolean)")
    db.execute("INSERT INTO public.block_runs VALUES (true)")
    db.execute(
        """CREATE FUNCTION public.refuse_runs() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM public.block_runs) THEN
                RAISE EXCEPTION 'job_runs blocked by the test' USING ERRCODE = '55P03';
            END IF;
            RETURN NEW;
        END $$"""
    )
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON scheduler.job_runs "
               "FOR EACH ROW EXECUTE FUNCTION public.refuse_runs()")  # fmt: skip
    (job_id,) = _enqueue_all(db_url, [ok])

    async def body(worker: Worker, conn: psycopg.AsyncConnection) -> None:
        await _until(conn, "SELECT count(*) = 1 FROM scheduler.jobs WHERE state = 'running'")
        assert await STORE.try_lock_leader(conn)
        term = await STORE.elect(conn, "L", None)
        # three leases long: the handler returned long ago, the outcome cannot be written
        for _ in range(9):
            await asyncio.sleep(0.2)
            assert await maintenance.rescue_expired_leases(conn, STORE, holder="L", term=term) == []
        await conn.execute("DELETE FROM public.block_runs")
        await _until(conn, "SELECT count(*) = 1 FROM scheduler.jobs WHERE state = 'succeeded'")

    asyncio.run(_with_worker(db_url, body, lease_s=0.6))
    assert db.execute(
        "SELECT attempt, outcome FROM scheduler.job_runs WHERE job_id = %s", [job_id]
    ).fetchall() == [(1, "succeeded")]


def test_a_hung_sync_handler_keeps_its_slot_and_starves_no_timeout_clock(db, db_url):
    """Concurrency 1, one sync handler hangs past its timeout_s: it is recorded as a
    timeout, its thread still holds the slot (reported as stuck), and the quick jobs behind
    it are not timed out while they wait: each runs once, when the thread frees the slot."""
    HANG.clear()
    (hung,) = _enqueue_all(db_url, [hangs])
    quick_ids: list[int] = []

    async def body(worker: Worker, conn: psycopg.AsyncConnection) -> None:
        await _until(conn, f"SELECT state = 'dead' FROM scheduler.jobs WHERE id = {hung}")
        quick_ids.extend([await enqueue_async(quick, connection=conn) for _ in range(3)])
        await asyncio.sleep(1.0)  # deliberate: three quick timeouts' worth, nothing may start
        assert worker.stuck_threads() == 1
        assert await (await conn.execute(
            "SELECT count(*) FROM scheduler.job_runs WHERE job_id = ANY(%s)", [quick_ids]
        )).fetchone() == (0,)  # fmt: skip
        HANG.set()
        await _until(conn, "SELECT count(*) = 3 FROM scheduler.jobs WHERE state = 'succeeded'")
        assert worker.stuck_threads() == 0

    try:
        asyncio.run(_with_worker(db_url, body, concurrency=1))
    finally:
        HANG.set()
    assert db.execute(
        "SELECT outcome, count(*) FROM scheduler.job_runs GROUP BY 1 ORDER BY 1"
    ).fetchall() == [("succeeded", 3), ("timeout", 1)]


def test_an_unknown_task_is_retried_before_it_is_dead_lettered(db, db_url):
    """During a rolling deploy a job may reach a replica that does not know its task yet:
    it is retried with backoff, and dead-lettered only after unknown_task_retry_s."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        newer = enqueue("from.a.newer.release", connection=conn)

    async def retried(worker: Worker, conn: psycopg.AsyncConnection) -> None:
        await _until(conn, "SELECT count(*) = 1 FROM scheduler.job_runs")

    asyncio.run(_with_worker(db_url, retried, unknown_task_retry_s=600))
    state, run_in_future, attempt = db.execute(
        "SELECT state, run_at > now(), attempt FROM scheduler.jobs WHERE id = %s", [newer]
    ).fetchone()
    assert (state, run_in_future, attempt) == ("pending", True, 1)
    error = db.execute("SELECT error FROM scheduler.job_runs").fetchone()[0]
    assert "from.a.newer.release" in error and "not registered" in error

    db.execute("UPDATE scheduler.jobs SET run_at = now() WHERE id = %s", [newer])

    async def dead(worker: Worker, conn: psycopg.AsyncConnection) -> None:
        await _until(conn, f"SELECT state = 'dead' FROM scheduler.jobs WHERE id = {newer}")

    asyncio.run(_with_worker(db_url, dead, unknown_task_retry_s=0))
