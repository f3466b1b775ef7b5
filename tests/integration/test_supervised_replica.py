"""A replica's loops under supervision, in a real replica on a real database: a crash is
logged and the loop restarted without losing its work; a loop that keeps crashing turns
/healthz to 503 and stops the replica with ReplicaFailedError (the CLI exits non-zero).

The crashes are injected by patching the replica's own code (a bug we do not have yet),
never the database."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import psycopg
import pytest

from scheduler import enqueue_many, task
from scheduler.completion import CompletionWriter
from scheduler.errors import ReplicaFailedError
from scheduler.service import Replica
from scheduler.settings import Settings
from scheduler.worker import Worker

pytestmark = pytest.mark.timeout(60)


@task(name="supervised.ok")
def ok() -> None:
    pass


@task(name="supervised.slow")
async def slow() -> None:
    await asyncio.sleep(3)  # keeps the failed replica draining while /healthz is read


def test_a_crashed_completion_writer_is_restarted_and_writes_its_batch(db, db_url, monkeypatch):
    real_write = CompletionWriter._write
    crashes = {"left": 2}

    async def buggy_write(self, batch):  # the first two batches crash the writer's loop
        if crashes["left"]:
            crashes["left"] -= 1
            raise RuntimeError("a bug in the completion writer")
        await real_write(self, batch)

    monkeypatch.setattr(CompletionWriter, "_write", buggy_write)
    with psycopg.connect(db_url, autocommit=True) as conn:
        enqueue_many(ok, [{}] * 50, connection=conn)

    async def scenario() -> None:
        replica = Replica(db_url, Settings(poll_interval_s=0.2), None)
        stop = asyncio.Event()
        runner = asyncio.create_task(replica.run(stop))
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            async with asyncio.timeout(30):
                while (await (await c.execute(
                    "SELECT count(*) FROM scheduler.jobs WHERE state = 'succeeded'"
                )).fetchone())[0] < 50:  # fmt: skip
                    await asyncio.sleep(0.05)
        stop.set()
        await runner  # no ReplicaFailedError: two crashes are within the budget

    asyncio.run(scenario())
    assert crashes["left"] == 0
    runs = db.execute("SELECT count(*), count(DISTINCT job_id) FROM scheduler.job_runs").fetchone()
    assert runs == (50, 50)  # every outcome written once; no job lost or run again


def test_a_loop_that_keeps_crashing_fails_the_replica_visibly(db_url, monkeypatch):
    async def always_crashes(self):
        raise RuntimeError("the lease extender is broken")

    monkeypatch.setattr(Worker, "_extend_leases", always_crashes)
    with psycopg.connect(db_url, autocommit=True) as conn:
        enqueue_many(slow, [{}], connection=conn)

    async def scenario() -> tuple[int, str]:
        replica = Replica(db_url, Settings(metrics_port=0, shutdown_grace_s=10), None)
        stop = asyncio.Event()
        runner = asyncio.create_task(replica.run(stop))
        async with asyncio.timeout(30):
            while replica.supervisor is None or replica.supervisor.health() is None:
                await asyncio.sleep(0.05)
            # the server still answers while the replica lets its running job finish
            answer = await asyncio.to_thread(_get, f"http://127.0.0.1:{replica.health_port}/healthz")
            with pytest.raises(ReplicaFailedError, match="scheduler-leases crashed 5 times"):
                await runner
        assert stop.is_set()
        return answer

    status, body = asyncio.run(scenario())
    assert status == 503 and "scheduler-leases crashed" in body


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_failing_materialisation_does_not_stop_rescue(db, db_url, monkeypatch):
    """The leader's duties fail independently: with every materialisation raising (a bug),
    the leader still rescues an expired lease, and keeps its term."""
    from scheduler import materialiser
    from scheduler.store import Store

    async def broken_tick(*args, **kwargs):
        raise RuntimeError("a bug in the materialiser")

    monkeypatch.setattr(materialiser, "tick", broken_tick)
    db.execute(
        "INSERT INTO scheduler.schedules (name, cron, timezone, task, max_attempts, "
        "backoff_base_s, backoff_max_s, backoff_jitter, definition_hash, next_run_at) "
        "VALUES ('due', '* * * * *', 'UTC', 'supervised.ok', 3, 1, 10, 0, 'h', now())"
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        (job_id,) = enqueue_many(ok, [{}], connection=conn)

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
            claimed = await Store("scheduler").claim_jobs(  # by a worker that then dies
                c, queues=["default"], limit=1, worker_id="dead", lease_s=0.2
            )
            assert [j["id"] for j in claimed] == [job_id]
            replica = Replica(db_url, Settings(poll_interval_s=0.2), None)
            stop = asyncio.Event()
            runner = asyncio.create_task(replica.run(stop))
            async with asyncio.timeout(30):
                while (await (await c.execute(
                    "SELECT state FROM scheduler.jobs WHERE id = %s", [job_id]
                )).fetchone())[0] != "succeeded":  # fmt: skip
                    await asyncio.sleep(0.05)
            stop.set()
            await runner

    asyncio.run(scenario())
    runs = db.execute("SELECT attempt, outcome FROM scheduler.job_runs ORDER BY attempt").fetchall()
    assert runs == [(1, "lost"), (2, "succeeded")]
    assert db.execute("SELECT term FROM scheduler.leader").fetchone() == (1,)
