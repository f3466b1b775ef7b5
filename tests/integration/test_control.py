"""Job control from code (scheduler.control) against a real database: get, list, cancel,
retry, and wait_for_job woken by the completion's notification."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from scheduler import (
    Attempt,
    DatabaseUnavailableError,
    InvalidArgumentError,
    JobNotFoundError,
    JobState,
    JobWaitTimeoutError,
    RunOutcome,
    SchemaNotMigratedError,
    cancel_job,
    cancel_job_async,
    control,
    enqueue,
    enqueue_many,
    get_job,
    get_job_async,
    list_jobs,
    list_jobs_async,
    retry_job,
    retry_job_async,
    task,
    wait_for_job,
    wait_for_job_async,
)
from scheduler.connections import set_default_database_url
from scheduler.settings import Settings
from scheduler.store import Store
from scheduler.worker import Worker
from tests.conftest import wait_until_async

ROOT = Path(__file__).resolve().parents[2]
STORE = Store("scheduler")
QUICK_S = 1.0  # a wake-up by notification, far below the 5 s safety poll


@task(name="test_control.work")
def work(x: int) -> dict[str, int]:
    return {"total": x * 3}


GATE: asyncio.Event | None = None  # test_control.gated returns once it is set


@task(name="test_control.gated")
async def gated(x: int) -> int:
    assert GATE is not None
    await GATE.wait()
    return x * 10


@task(name="test_control.other", queue="mail")
def other() -> None:
    pass


@pytest.fixture
def default_db(db_url: str):
    set_default_database_url(db_url)
    yield db_url
    set_default_database_url(None)


# ---- finishing jobs as a worker would (claim, then one completion statement) ----------------


async def _claim_async(db_url: str, queue: str = "default") -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        return await STORE.claim_jobs(c, queues=[queue], limit=10, worker_id="w1", lease_s=60)


async def _complete_async(db_url: str, job_id: int, state: str, **outcome: Any) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        attempt = (await (await c.execute(
            "SELECT attempt FROM scheduler.jobs WHERE id = %s", [job_id])).fetchone())[0]
        outcome.setdefault("outcome", "succeeded" if state == "succeeded" else "failed")
        done = await STORE.complete_jobs(
            c, "w1", [{"id": job_id, "attempt": attempt, "state": state, **outcome}]
        )  # fmt: skip
        assert job_id in done


def _claim(db_url: str, queue: str = "default") -> list[dict[str, Any]]:
    return asyncio.run(_claim_async(db_url, queue))


def _complete(db_url: str, job_id: int, state: str, **outcome: Any) -> None:
    asyncio.run(_complete_async(db_url, job_id, state, **outcome))


def _dead(db, db_url: str, queue: str = "dying", **enqueue_kw: Any) -> int:
    job_id = enqueue(work, args={"x": 1}, max_attempts=1, queue=queue, connection=db,
                     **enqueue_kw)  # fmt: skip
    assert [j["id"] for j in _claim(db_url, queue)] == [job_id]
    _complete(db_url, job_id, "dead", error="RuntimeError: no")
    return job_id


def _waiting(monkeypatch) -> threading.Event:
    """Set when wait_for_job has read the job and starts waiting for a notification."""
    event, real = threading.Event(), control._woken

    async def spy(*args: Any) -> None:
        event.set()
        await real(*args)

    monkeypatch.setattr(control, "_woken", spy)
    return event


# ---- get_job ---------------------------------------------------------------------------------


def test_get_job_has_every_attempt_with_errors_and_the_result(db, db_url, default_db):
    job_id = enqueue(work, args={"x": 1}, max_attempts=3, connection=db)
    _claim(db_url)
    _complete(db_url, job_id, "pending", error="RuntimeError: first",
              traceback="Traceback (most recent call last):\nRuntimeError: first")  # fmt: skip
    _claim(db_url)
    _complete(db_url, job_id, "succeeded", result='{"total": 3}')

    job = get_job(job_id)
    assert (job.id, job.task, job.queue, job.state) == (
        job_id, "test_control.work", "default", JobState.SUCCEEDED)  # fmt: skip
    assert (job.args, job.result, job.attempt, job.max_attempts) == ({"x": 1}, {"total": 3}, 2, 3)
    assert job.last_error is None and job.finished_at is not None and job.priority == 0
    assert job.schedule_name is None and job.fire_time is None and job.cancel_requested_at is None
    first, second = job.attempts
    assert isinstance(first, Attempt)
    assert (first.attempt, first.outcome, first.worker_id, first.error) == (
        1, RunOutcome.FAILED, "w1", "RuntimeError: first")  # fmt: skip
    assert first.traceback.endswith("RuntimeError: first")
    assert (second.attempt, second.outcome, second.error) == (2, RunOutcome.SUCCEEDED, None)
    assert first.started_at <= first.finished_at <= second.started_at
    assert asyncio.run(get_job_async(job_id)) == job


def test_get_job_of_no_such_job_raises_job_not_found(default_db):
    with pytest.raises(JobNotFoundError, match="no job 123456789") as info:
        get_job(123456789)
    assert info.value.__context__ is None and info.value.__cause__ is None  # a clean traceback
    with pytest.raises(JobNotFoundError):
        asyncio.run(get_job_async(2**63 - 1))


def test_jobs_show_prints_the_result(db, db_url):
    job_id = enqueue(work, args={"x": 2}, connection=db)
    _claim(db_url)
    _complete(db_url, job_id, "succeeded", result='{"total": 6, "note": "é"}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env.update(SCHEDULER_DATABASE_URL=db_url, PYTHONPATH=str(ROOT))

    def show(*extra: str) -> str:
        out = subprocess.run([sys.executable, "-m", "scheduler", "jobs", "show", str(job_id),
                              *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert 'result               {"note": "\\u00e9", "total": 6}' in show()  # jsonb key order
    assert json.loads(show("--json"))["result"] == {"total": 6, "note": "é"}


# ---- list_jobs -------------------------------------------------------------------------------


def test_list_jobs_filters_newest_first_without_attempts(db, db_url, default_db):
    a = enqueue(work, args={"x": 1}, connection=db)
    b = enqueue(other, connection=db)
    c = enqueue(work, args={"x": 2}, priority=5, connection=db)
    cron = db.execute(
        "INSERT INTO scheduler.jobs (task, schedule_name, scheduled_for) "
        "VALUES ('test_control.work', 'nightly', now()) RETURNING id"
    ).fetchone()[0]
    _claim(db_url, "mail")
    _complete(db_url, b, "succeeded")

    assert [j.id for j in list_jobs()] == [cron, c, b, a]
    assert [j.id for j in list_jobs(limit=2)] == [cron, c]
    assert [j.id for j in list_jobs(state=JobState.SUCCEEDED)] == [b]
    assert [j.id for j in list_jobs(state="pending", task=work)] == [cron, c, a]
    assert [j.id for j in list_jobs(task="test_control.work", queue="default")] == [cron, c, a]
    assert [j.id for j in list_jobs(queue="mail")] == [b]
    assert [j.id for j in list_jobs(schedule="nightly")] == [cron]
    assert list_jobs(schedule="nope") == [] and list_jobs(task="no.such.task") == []
    jobs = {j.id: j for j in list_jobs()}
    assert jobs[c].args == {"x": 2} and jobs[c].priority == 5 and jobs[c].attempts == []
    assert jobs[b].state is JobState.SUCCEEDED and jobs[b].attempts == []
    assert jobs[cron].fire_time is not None and jobs[cron].schedule_name == "nightly"
    assert asyncio.run(list_jobs_async(state="succeeded")) == list_jobs(state="succeeded")


# ---- cancel_job ------------------------------------------------------------------------------


def test_cancel_pending_running_and_finished_jobs(db, db_url, default_db):
    pending = enqueue(work, args={"x": 1}, queue="later", connection=db)
    assert cancel_job(pending) == "cancelled"
    job = get_job(pending)
    assert job.state is JobState.CANCELLED and job.finished_at is not None
    assert cancel_job(pending) == "cancelled"  # already: nothing changes

    running = enqueue(work, args={"x": 2}, connection=db)
    _claim(db_url)
    assert cancel_job(running) == "cancel_requested"
    job = get_job(running)
    assert job.state is JobState.RUNNING and job.cancel_requested_at is not None
    _complete(db_url, running, "cancelled", outcome="cancelled", error="cancelled by operator")
    assert get_job(running).state is JobState.CANCELLED

    done = enqueue(work, args={"x": 3}, connection=db)
    _claim(db_url)
    _complete(db_url, done, "succeeded")
    assert cancel_job(done) == "succeeded" and get_job(done).state is JobState.SUCCEEDED
    assert cancel_job(_dead(db, db_url)) == "dead"
    with pytest.raises(JobNotFoundError):
        cancel_job(987654321)
    assert asyncio.run(cancel_job_async(pending)) == "cancelled"


# ---- retry_job -------------------------------------------------------------------------------


def test_retry_a_dead_job_and_the_reasons_it_is_not(db, db_url, default_db):
    dead = _dead(db, db_url)
    outcome = retry_job(dead)
    assert outcome and outcome.retried and outcome.reason is None
    job = get_job(dead)
    assert (job.state, job.attempt, job.max_attempts) == (JobState.PENDING, 1, 2)

    again = retry_job(dead)
    assert not again and "it is pending" in again.reason
    with pytest.raises(JobNotFoundError):
        retry_job(987654321)

    keyed = _dead(db, db_url, "dying2", idempotency_key="order-7")
    live = enqueue(work, args={"x": 9}, idempotency_key="order-7", connection=db)
    skipped = asyncio.run(retry_job_async(keyed))
    assert not skipped and f"held by live job {live}" in skipped.reason
    assert get_job(keyed).state is JobState.DEAD


# ---- wait_for_job ----------------------------------------------------------------------------


def test_wait_for_job_wakes_on_the_completion_not_the_safety_poll(db, db_url, default_db,
                                                                  monkeypatch):  # fmt: skip
    job_id = enqueue(work, args={"x": 1}, connection=db)
    waiting = _waiting(monkeypatch)
    with ThreadPoolExecutor(1) as thread:
        waiter = thread.submit(wait_for_job, job_id, 30)
        assert waiting.wait(10), "wait_for_job never started waiting"
        _claim(db_url)
        _complete(db_url, job_id, "succeeded", result='"done"')
        completed = time.monotonic()
        job = waiter.result(timeout=30)
        woke_after = time.monotonic() - completed
    assert job.state is JobState.SUCCEEDED and job.result == "done" and len(job.attempts) == 1
    assert woke_after < QUICK_S, f"woke {woke_after:.2f} s after the completion"


def test_wait_for_job_wakes_on_a_cancel_and_on_a_dead_letter(db, db_url, default_db,
                                                             monkeypatch):  # fmt: skip
    pending = enqueue(work, args={"x": 1}, queue="later", connection=db)
    waiting = _waiting(monkeypatch)
    with ThreadPoolExecutor(1) as thread:
        waiter = thread.submit(wait_for_job, pending, 30)
        assert waiting.wait(10)
        assert cancel_job(pending) == "cancelled"
        cancelled = time.monotonic()
        assert waiter.result(timeout=30).state is JobState.CANCELLED
        assert time.monotonic() - cancelled < QUICK_S

        failing = enqueue(work, args={"x": 2}, max_attempts=1, connection=db)
        waiting.clear()
        waiter = thread.submit(wait_for_job, failing, 30)
        assert waiting.wait(10)
        _claim(db_url)
        _complete(db_url, failing, "dead", error="RuntimeError: no")
        died = time.monotonic()
        job = waiter.result(timeout=30)
        assert time.monotonic() - died < QUICK_S
    assert job.state is JobState.DEAD and job.last_error == "RuntimeError: no"


def test_wait_for_job_wakes_on_the_empty_notification_of_a_big_batch(db, db_url, default_db,
                                                                     monkeypatch):  # fmt: skip
    ids = enqueue_many(work, [{"x": i} for i in range(501)], queue="bulk", connection=db)
    waiting = _waiting(monkeypatch)

    async def finish_all() -> None:  # one completion statement: its payload is ''
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            claimed = await STORE.claim_jobs(c, queues=["bulk"], limit=600, worker_id="w1",
                                             lease_s=60)  # fmt: skip
            assert len(claimed) == 501
            outcomes = [{"id": j["id"], "attempt": 1, "state": "succeeded",
                         "outcome": "succeeded"} for j in claimed]  # fmt: skip
            assert len(await STORE.complete_jobs(c, "w1", outcomes)) == 501

    with ThreadPoolExecutor(1) as thread:
        waiter = thread.submit(wait_for_job, ids[250], 30)
        assert waiting.wait(10)
        asyncio.run(finish_all())
        finished = time.monotonic()
        assert waiter.result(timeout=30).state is JobState.SUCCEEDED
        assert time.monotonic() - finished < QUICK_S


def test_wait_for_job_times_out_and_returns_a_finished_job_at_once(db, db_url, default_db):
    job_id = enqueue(work, args={"x": 1}, queue="later", connection=db)
    started = time.monotonic()
    with pytest.raises(JobWaitTimeoutError, match=f"job {job_id} is still pending after 0.3 s"):
        wait_for_job(job_id, timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 3
    with pytest.raises(TimeoutError):  # also a TimeoutError
        asyncio.run(wait_for_job_async(job_id, 0.1))
    with pytest.raises(JobNotFoundError):
        wait_for_job(987654321, 5)
    cancel_job(job_id)
    started = time.monotonic()
    assert wait_for_job(job_id, 30).state is JobState.CANCELLED
    assert time.monotonic() - started < QUICK_S


def test_wait_for_job_async_with_a_real_worker_on_the_same_loop(db, db_url, default_db,
                                                                monkeypatch):  # fmt: skip
    waiting = _waiting(monkeypatch)

    async def run() -> tuple[control.Job, float]:
        global GATE
        GATE = asyncio.Event()
        settings = Settings(database_url=None, concurrency=2, poll_interval_s=30)
        pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False,
                                   kwargs={"autocommit": True})  # fmt: skip
        await pool.open()
        worker = Worker(pool, db_url, STORE, settings, "w-real")
        stop = asyncio.Event()
        runner = asyncio.create_task(worker.run(stop))
        try:
            job_id = enqueue(gated, args={"x": 5}, connection=db)
            waiter = asyncio.create_task(wait_for_job_async(job_id, 20))
            await wait_until_async(waiting.is_set, 10)
            opened = time.monotonic()
            GATE.set()  # the handler returns; the worker writes its outcome and notifies
            return await waiter, time.monotonic() - opened
        finally:
            stop.set()
            await runner
            await pool.close()

    job, took = asyncio.run(run())
    assert job.state is JobState.SUCCEEDED and job.result == 50
    assert job.attempts[0].worker_id.startswith("w-real")
    assert took < QUICK_S, f"woke {took:.2f} s after the handler returned"


# ---- the caller's connection -----------------------------------------------------------------


def test_calls_on_the_callers_connection_join_its_transaction(db, db_url):
    job_id = enqueue(work, args={"x": 1}, connection=db)
    with psycopg.connect(db_url) as conn:  # not autocommit: nothing commits until we do
        assert cancel_job(job_id, connection=conn) == "cancelled"
        assert [j.state for j in list_jobs(connection=conn)] == [JobState.CANCELLED]
        assert get_job(job_id, connection=db).state is JobState.PENDING  # not committed
        conn.rollback()  # the cancel is undone with the caller's transaction
        assert get_job(job_id, connection=conn).state is JobState.PENDING
        assert cancel_job(job_id, connection=conn) == "cancelled"
        conn.commit()
    assert get_job(job_id, connection=db).state is JobState.CANCELLED
    with psycopg.connect(db_url) as conn, pytest.raises(ZeroDivisionError), conn.transaction():
        assert retry_job(job_id, connection=conn)  # in a block of the caller's, rolled back
        1 / 0  # noqa: B018
    assert get_job(job_id, connection=db).state is JobState.CANCELLED
    assert retry_job(job_id, connection=db)  # autocommit: committed at once

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
            assert (await get_job_async(job_id, connection=aconn)).state is JobState.PENDING
            assert await cancel_job_async(job_id, connection=aconn) == "cancelled"
            assert await retry_job_async(job_id, connection=aconn)
            assert [j.id for j in await list_jobs_async(connection=aconn)] == [job_id]
            with pytest.raises(InvalidArgumentError, match="AsyncConnection"):
                get_job(job_id, connection=aconn)  # type: ignore[arg-type]
            assert get_job(job_id).state is JobState.PENDING  # a sync call inside a loop

    set_default_database_url(db_url)
    try:
        asyncio.run(run())
    finally:
        set_default_database_url(None)
    with pytest.raises(InvalidArgumentError, match="connection"):
        asyncio.run(get_job_async(job_id, connection=db))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="connection must be"):
        get_job(job_id, connection=db_url)  # type: ignore[arg-type]


def test_database_failures_are_scheduler_errors(db, fresh_db_url):
    empty = fresh_db_url()  # never migrated
    set_default_database_url(empty)
    try:
        with pytest.raises(SchemaNotMigratedError, match="scheduler migrate"):
            get_job(1)
        with pytest.raises(SchemaNotMigratedError):
            wait_for_job(1, 1)
    finally:
        set_default_database_url(None)
    refused = "postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=2"
    with pytest.raises(DatabaseUnavailableError) as info:
        wait_for_job(1, 1, database_url=refused)
    assert "secret" not in str(info.value)
    with psycopg.connect(empty) as conn, pytest.raises(SchemaNotMigratedError) as info:
        cancel_job(1, connection=conn)
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)


# ---- hostile input: refused before any SQL, naming the argument --------------------------------

BAD_IDS = [0, -1, 2**63, True, "1", 1.0, None, float("nan"), [1]]


@pytest.mark.parametrize("job_id", BAD_IDS, ids=repr)
def test_hostile_job_ids_are_refused_by_name(job_id):
    for call in (get_job, cancel_job, retry_job, wait_for_job):
        with pytest.raises(InvalidArgumentError, match="job_id"):
            call(job_id)
    for acall in (get_job_async, cancel_job_async, retry_job_async, wait_for_job_async):
        with pytest.raises(InvalidArgumentError, match="job_id"):
            asyncio.run(acall(job_id))


@pytest.mark.parametrize(
    "timeout_s",
    [0, -1, float("nan"), float("inf"), 10 * 365 * 86400 + 1, 10**400, "5", True, None],
    ids=repr,
)
def test_hostile_timeouts_are_refused_by_name(timeout_s):
    with pytest.raises(InvalidArgumentError, match="timeout_s"):
        wait_for_job(1, timeout_s)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"state": "bogus"}, "state"),
        ({"state": ["pending"]}, "state"),
        ({"queue": "a b"}, "queue"),
        ({"queue": "q" * 101}, "queue"),
        ({"task": "bad\x00name"}, "task"),
        ({"task": 5}, "task"),
        ({"schedule": "x" * 201}, "schedule"),
        ({"schedule": "\ud800"}, "schedule"),
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"limit": True}, "limit"),
    ],
    ids=repr,
)
def test_hostile_list_filters_are_refused_by_name(kwargs, named):
    with pytest.raises(InvalidArgumentError, match=named):
        list_jobs(**kwargs)
    with pytest.raises(InvalidArgumentError, match=named):
        asyncio.run(list_jobs_async(**kwargs))


@pytest.mark.parametrize("url", [5, "postgresql://a\x00b", "no equals sign here"], ids=repr)
def test_hostile_database_urls_are_refused(url):
    with pytest.raises(InvalidArgumentError, match="database_url"):
        wait_for_job(1, 1, database_url=url)
