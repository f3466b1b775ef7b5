"""Fast rescue of a dead replica's jobs: the liveness lock, the leader's queries, and the
safety rule (a live replica whose liveness session dropped never has its job run twice)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from scheduler import enqueue, maintenance, task
from scheduler.liveness import liveness_namespace
from scheduler.settings import Settings
from scheduler.store import Store
from tests.conftest import running_replica, wait_until_async

STORE = Store("scheduler")
NS = liveness_namespace("scheduler")
RUNS: dict[str, Any] = {"now": 0, "max": 0, "started": 0}


@task(name="test_fast_rescue.slow")
async def slow(seconds: float) -> None:
    """Counts the attempts running at once (across attempts of the one job of a test)."""
    RUNS["started"] += 1
    RUNS["now"] += 1
    RUNS["max"] = max(RUNS["max"], RUNS["now"])
    try:
        await asyncio.sleep(seconds)
    finally:
        RUNS["now"] -= 1


async def _register(conn: psycopg.AsyncConnection[Any], replica: str, key: int | None) -> None:
    """A replicas row for ``replica``; with a key: take the liveness lock on ``conn`` and
    record it as a LivenessLock does."""
    await conn.execute(STORE.q["replica_heartbeat"], {
        "id": replica, "host": "h", "pid": 1, "version": "t", "queues": ["default"],
        "concurrency": 1, "config_hash": None, "stuck_threads": 0})  # fmt: skip
    if key is not None:
        params = {"ns": NS, "key": key, "id": replica}
        assert (await STORE.fetch(conn, "liveness_lock", params))[0]["locked"]
        assert await STORE.fetch(conn, "liveness_register", params) == [{"id": replica}]


async def _connect(url: str, name: str = "test") -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True, application_name=name)


def _lock_holders(db: psycopg.Connection, key: int) -> int:
    """Backends of this database holding the liveness lock ``key``."""
    return db.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
        "AND granted AND classid::bigint = %s AND objid::bigint = %s "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        [NS, key],
    ).fetchone()[0]


def test_rescue_only_the_jobs_of_replicas_whose_sessions_are_all_gone(db, db_url):
    """No liveness key: untouched (lease only). Lock held: untouched. Lock gone but the
    replica's leader session alive: untouched. Registered on another timeline: untouched.
    Lock gone, no session left: rescued with a 'lost' run, after two sightings."""
    replicas = ["no-key", "held", "witnessed", "old-timeline", "gone"]
    jobs = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        for r in replicas:
            jobs[r] = enqueue(slow, args={"seconds": 0}, max_attempts=3, connection=conn)

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        leader = await _connect(db_url)
        holding = await _connect(db_url)  # keeps the lock of "held" for the whole test
        witness = await _connect(db_url, "scheduler leader witnessed")
        await _register(leader, "no-key", None)
        await _register(holding, "held", 101)
        for name, key in (("witnessed", 102), ("old-timeline", 103), ("gone", 104)):
            async with await _connect(db_url) as session:  # registers, then ends
                await _register(session, name, key)
        await leader.execute("UPDATE scheduler.replicas SET lock_timeline = lock_timeline + 1 "
                             "WHERE id = 'old-timeline'")  # fmt: skip
        for r in replicas:  # each replica claims the job enqueued for it
            claimed = await STORE.claim_jobs(
                leader, queues=["default"], limit=1, worker_id=r, lease_s=300
            )
            assert [c["id"] for c in claimed] == [jobs[r]]
        gone = await STORE.fetch(leader, "replicas_gone", {"ns": NS})
        assert [g["id"] for g in gone] == ["gone"]
        assert await STORE.try_lock_leader(leader)
        term = await STORE.elect(leader, "L", None)
        watch = maintenance.LostReplicas(NS, confirm_s=0.5)
        first = await watch.check(leader, STORE, holder="L", term=term, now=100.0)
        early = await watch.check(leader, STORE, holder="L", term=term, now=100.4)
        confirmed = await watch.check(leader, STORE, holder="L", term=term, now=100.5)
        again = await STORE.fetch(leader, "rescue_lost_replicas", {
            "replicas": replicas, "ns": NS, "limit": 10, "channel": STORE.notify_channel,
            "done_channel": STORE.done_channel})  # fmt: skip
        assert again == []  # the others are alive or not registered, even when asked by name
        for c in (leader, holding, witness):
            await c.close()
        return first, early, confirmed

    first, early, confirmed = asyncio.run(scenario())
    assert (first, early, confirmed) == ([], [], [jobs["gone"]])
    states = dict(db.execute("SELECT id, state FROM scheduler.jobs").fetchall())
    assert states == {j: ("pending" if r == "gone" else "running") for r, j in jobs.items()}
    runs = db.execute("SELECT job_id, attempt, outcome, worker_id, error FROM scheduler.job_runs")
    assert runs.fetchall() == [
        (jobs["gone"], 1, "lost", "gone", "replica gone is gone (its database session ended)")
    ]


def test_a_replica_holds_its_liveness_lock_and_takes_it_again_after_losing_its_session(
    db, db_url
):
    async def scenario() -> None:
        async with running_replica(db_url, Settings(poll_interval_s=0.2)) as replica:
            await wait_until_async(replica.liveness.registered.is_set, timeout=20)
            key = replica.liveness.key
            row = db.execute(
                "SELECT lock_key FROM scheduler.replicas WHERE id = %s", [replica.id]
            ).fetchone()
            assert row == (key,)
            killed = db.execute(
                "SELECT array_agg(pid), count(pg_terminate_backend(pid)) FROM pg_locks "
                "WHERE locktype = 'advisory' AND objsubid = 2 AND objid::bigint = %s "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                [key],
            ).fetchone()
            assert killed[1] == 1
            await wait_until_async(lambda: not replica.liveness.registered.is_set(), timeout=5)
            await wait_until_async(replica.liveness.registered.is_set, timeout=5)
            holders = db.execute(
                "SELECT array_agg(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND objsubid = 2 AND objid::bigint = %s AND granted",
                [key],
            ).fetchone()[0]
            assert holders and holders != killed[0] and replica.liveness.key == key
        # a graceful stop: the row is gone, and so is the lock (once the backend has exited)
        assert db.execute("SELECT count(*) FROM scheduler.replicas").fetchone()[0] == 0
        await wait_until_async(lambda: _lock_holders(db, key) == 0, timeout=5)

    asyncio.run(scenario())


def test_a_live_replica_whose_liveness_session_ended_does_not_run_its_job_twice(db, db_url):
    """Safety: the liveness session of a live replica ends (pg_terminate_backend) and cannot
    come back (its URL now leads nowhere): its lock stays absent for the rest of the job, but
    the replica's leader session is alive, so the leader (the replica itself) does not rescue
    the job; it runs once, to its end."""
    RUNS.update(now=0, max=0, started=0)
    with psycopg.connect(db_url, autocommit=True) as conn:
        job_id = enqueue(slow, args={"seconds": 4.0}, max_attempts=3, connection=conn)

    async def scenario() -> None:
        settings = Settings(poll_interval_s=0.2, lease_s=30)
        async with running_replica(db_url, settings) as replica:
            await wait_until_async(replica.elector.is_leader.is_set, timeout=20)
            await wait_until_async(replica.liveness.registered.is_set, timeout=20)
            await wait_until_async(lambda: RUNS["started"] == 1, timeout=20)
            replica.liveness.url = make_conninfo(db_url, host="127.0.0.1", port=1)
            killed = db.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = %s",
                [f"scheduler liveness {replica.id}"[:63]],
            ).fetchone()[0]
            assert killed == 1
            await wait_until_async(lambda: not replica.liveness.registered.is_set(), timeout=5)
            # the lock is gone for good: only the leader session is left
            await wait_until_async(lambda: _lock_holders(db, replica.liveness.key) == 0, 5)
            await wait_until_async(
                lambda: db.execute(
                    "SELECT state <> 'running' FROM scheduler.jobs WHERE id = %s", [job_id]
                ).fetchone()[0],
                timeout=20,
            )

    asyncio.run(scenario())
    runs = db.execute(
        "SELECT attempt, outcome FROM scheduler.job_runs WHERE job_id = %s ORDER BY attempt",
        [job_id],
    ).fetchall()
    assert runs == [(1, "succeeded")]
    assert (RUNS["started"], RUNS["max"]) == (1, 1)
