"""Flow control per queue (scheduler.flow, migration 0016) against the real database.

Three replicas (Workers with their own pools and ids) run in-process on one event loop; the
peak of concurrently running jobs is computed afterwards from job_runs (started_at = the
claim, finished_at = the completion), and starts per sliding window from started_at.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

import scheduler
from scheduler import InvalidArgumentError, SettingsError, set_queue_limits, task
from scheduler.flow import list_queue_limits
from scheduler.queue_limits import apply_settings_limits, set_queue_limits_async
from scheduler.settings import Settings, load_settings
from scheduler.store import Store
from scheduler.worker import Worker
from tests.conftest import running_replica, wait_until_async

STORE = Store("scheduler")


@task(name="test_flow.nap")
async def nap(ms: int) -> None:
    await asyncio.sleep(ms / 1000)


async def _enqueue(conn: psycopg.AsyncConnection, queue: str, n: int, ms: int = 0,
                   keys: list[str | None] | None = None) -> None:  # fmt: skip
    for i in range(n):
        await STORE.insert_job(conn, {
            "queue": queue, "task": "test_flow.nap", "args": Jsonb({"ms": ms}), "priority": 0,
            "run_at": None, "delay_s": 0.0, "max_attempts": 3, "backoff_base_s": 0.01,
            "backoff_max_s": 0.02, "backoff_jitter": 0.0, "idempotency_key": None,
            "concurrency_key": keys[i % len(keys)] if keys else None})  # fmt: skip


async def _replicas(url: str, queues: list[str], conn: psycopg.AsyncConnection,
                    total: int, replicas: int = 3, concurrency: int = 6,
                    timeout: float = 60) -> None:  # fmt: skip
    """Run ``replicas`` workers until ``total`` jobs succeeded (or fail after ``timeout``)."""
    settings = Settings(queues=queues, concurrency=concurrency, poll_interval_s=0.05)
    stop = asyncio.Event()
    pools, runners = [], []
    for r in range(replicas):
        pool = AsyncConnectionPool(url, min_size=1, max_size=4, open=False,
                                   kwargs={"autocommit": True})  # fmt: skip
        await pool.open()
        pools.append(pool)
        worker = Worker(pool, url, STORE, settings, f"replica-{r}")
        runners.append(asyncio.create_task(worker.run(stop)))
    try:
        async with asyncio.timeout(timeout):
            while await _scalar(conn, "SELECT count(*) FROM scheduler.jobs "
                                "WHERE state = 'succeeded'") < total:  # fmt: skip
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*runners)
        for pool in pools:
            await pool.close()


async def _scalar(conn: psycopg.AsyncConnection, query: str, params: Any = None) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def _peak(conn: psycopg.AsyncConnection, where: str = "true",
                by: str = "'all'") -> dict[str, int]:  # fmt: skip
    """Most attempts running at one instant, per ``by`` group, from job_runs intervals
    (a finish at the same instant as a start is counted first)."""
    cur = await conn.execute(f"""
        WITH runs AS (
            SELECT {by} AS g, r.started_at, r.finished_at
            FROM scheduler.job_runs AS r JOIN scheduler.jobs AS j ON j.id = r.job_id
            WHERE {where}
        ), events AS (
            SELECT g, started_at AS at, 1 AS d FROM runs
            UNION ALL SELECT g, finished_at, -1 FROM runs
        )
        SELECT g, max(running)::int FROM (
            SELECT g, sum(d) OVER (PARTITION BY g ORDER BY at, d) AS running FROM events
        ) AS s GROUP BY g""")
    return dict(await cur.fetchall())


def test_global_concurrency_across_replicas(db_url: str) -> None:
    asyncio.run(_global_concurrency_across_replicas(db_url))


async def _global_concurrency_across_replicas(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await set_queue_limits_async("flow", concurrency=5, connection=conn)
        await _enqueue(conn, "flow", 80, ms=40)
        await _replicas(db_url, ["flow"], conn, 80)  # 3 x 6 slots for a limit of 5
        peak = (await _peak(conn))["all"]
    assert peak <= 5, f"{peak} jobs ran at once with a limit of 5"
    assert peak >= 4  # the limit is used, not just respected


def test_concurrent_claims_never_exceed_the_limit(db_url: str) -> None:
    asyncio.run(_concurrent_claims_never_exceed_the_limit(db_url))


async def _concurrent_claims_never_exceed_the_limit(db_url: str) -> None:
    """12 claims at the same instant, each for up to 3 jobs, against a limit of 5: without the
    row lock (or with counts from the statement's own snapshot) they all see 0 running."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await set_queue_limits_async("flow", concurrency=5, connection=conn)
        await _enqueue(conn, "flow", 200)
        conns = [await psycopg.AsyncConnection.connect(db_url, autocommit=True)
                 for _ in range(12)]  # fmt: skip
        try:
            for round_ in range(10):
                claimed = await asyncio.gather(*(
                    STORE.claim_jobs(c, queues=["flow"], limit=3, worker_id=f"w{i}", lease_s=30,
                                     limited=True)
                    for i, c in enumerate(conns)))  # fmt: skip
                running = await _scalar(
                    conn, "SELECT count(*) FROM scheduler.jobs WHERE state = 'running'")
                assert running <= 5, f"round {round_}: {running} running, limit 5"
                assert sum(map(len, claimed)) == running == 5
                await conn.execute(
                    "UPDATE scheduler.jobs SET state = 'succeeded', lease_expires_at = NULL "
                    "WHERE state = 'running'")
        finally:
            for c in conns:
                await c.close()


def test_rate_limit_sliding_window(db_url: str) -> None:
    asyncio.run(_rate_limit_sliding_window(db_url))


async def _rate_limit_sliding_window(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await set_queue_limits_async("flow", rate=8, per_s=1.0, connection=conn)
        await _enqueue(conn, "flow", 26)
        await _replicas(db_url, ["flow"], conn, 26, timeout=30)
        cur = await conn.execute("SELECT started_at FROM scheduler.job_runs ORDER BY 1")
        starts = [r[0] for r in await cur.fetchall()]
    worst = max(sum(1 for t in starts if s <= t < s + timedelta(seconds=1)) for s in starts)
    assert worst <= 8, f"{worst} starts within 1 s, rate 8 per 1 s"
    assert starts[-1] - starts[0] >= timedelta(seconds=3)  # 26 starts need 4 windows
    assert starts[-1] - starts[0] < timedelta(seconds=8)  # ...and not many more


def test_key_concurrency(db_url: str) -> None:
    asyncio.run(_key_concurrency(db_url))


async def _key_concurrency(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await set_queue_limits_async("flow", key_concurrency=1, connection=conn)
        await _enqueue(conn, "flow", 45, ms=100, keys=["a", "b", "c", None, None])
        await _replicas(db_url, ["flow"], conn, 45)
        per_key = await _peak(conn, "j.concurrency_key IS NOT NULL", "j.concurrency_key")
        unkeyed = await _peak(conn, "j.concurrency_key IS NULL")
        total = (await _peak(conn))["all"]
    assert per_key == {"a": 1, "b": 1, "c": 1}
    assert unkeyed["all"] >= 2  # jobs without a key are not limited per key
    assert total >= 3  # different keys run at once


def test_unlimited_queue_unaffected(db_url: str) -> None:
    asyncio.run(_unlimited_queue_unaffected(db_url))


async def _unlimited_queue_unaffected(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await set_queue_limits_async("slow", concurrency=1, connection=conn)
        await _enqueue(conn, "slow", 10, ms=30)
        await _enqueue(conn, "fast", 60, ms=30)
        await _replicas(db_url, ["slow", "fast"], conn, 70)
        peaks = await _peak(conn, by="j.queue")
    assert peaks["slow"] == 1
    assert peaks["fast"] >= 8  # 18 slots, of which the limited queue takes at most 1


def test_jobs_of_a_dead_replica_count_until_rescued(db_url: str) -> None:
    asyncio.run(_jobs_of_a_dead_replica_count_until_rescued(db_url))


async def _jobs_of_a_dead_replica_count_until_rescued(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await set_queue_limits_async("flow", concurrency=2, connection=conn)
        await _enqueue(conn, "flow", 5)
        dead = await STORE.claim_jobs(conn, queues=["flow"], limit=5, worker_id="dead", lease_s=30,
                                       limited=True)
        assert len(dead) == 2
        assert await STORE.claim_jobs(conn, queues=["flow"], limit=5, worker_id="b", lease_s=30,
                                      limited=True) == []
        # the leader rescues the dead replica's expired leases: back to pending, then claimable
        await conn.execute("UPDATE scheduler.jobs SET lease_expires_at = now() - interval '1 s' "
                           "WHERE locked_by = 'dead'")  # fmt: skip
        await conn.execute("UPDATE scheduler.jobs SET state = 'pending', lease_expires_at = NULL "
                           "WHERE locked_by = 'dead' AND lease_expires_at < now()")  # fmt: skip
        again = await STORE.claim_jobs(conn, queues=["flow"], limit=5, worker_id="b", lease_s=30,
                                       limited=True)
        assert len(again) == 2


def test_limits_written_replaced_and_removed(db_url: str) -> None:
    asyncio.run(_limits_written_replaced_and_removed(db_url))


async def _limits_written_replaced_and_removed(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await set_queue_limits_async("a", concurrency=3, rate=10, per_s=60, connection=conn)
        await set_queue_limits_async("b", key_concurrency=1, connection=conn)
        await set_queue_limits_async("a", concurrency=4, connection=conn)  # replaces all
        limits = await list_queue_limits(conn, STORE)
        assert (limits["a"].concurrency, limits["a"].rate, limits["b"].key_concurrency) == (
            4, None, 1)  # fmt: skip
        await set_queue_limits_async("b", connection=conn)  # no limit: row deleted
        settings = load_settings({"queue_limits": json.dumps({"c": {"concurrency": 2}})})
        await apply_settings_limits(conn, STORE, settings.queue_limits)
        assert set(await list_queue_limits(conn, STORE)) == {"a", "c"}
        await apply_settings_limits(conn, STORE, {})  # c left the setting; a came from the API
        assert set(await list_queue_limits(conn, STORE)) == {"a"}


@pytest.mark.parametrize("listen", [True, False], ids=["notify", "safety-poll"])
def test_a_limit_set_while_the_worker_runs_binds_once_seen(db_url: str, listen: bool) -> None:
    asyncio.run(_limit_set_while_running(db_url, listen))


async def _limit_set_while_running(db_url: str, listen: bool) -> None:
    """The worker starts with no limit (the lock-free claim); a limit set afterwards reaches
    it by NOTIFY, or at its safety poll without LISTEN (behind a transaction pooler), and
    binds every claim after that. Removing it goes back to the lock-free claim."""
    # with LISTEN, a safety poll too long to be what made the worker see the limit
    settings = Settings(queues=["flow"], concurrency=8, poll_interval_s=60 if listen else 0.3)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn, \
            AsyncConnectionPool(db_url, min_size=1, max_size=4,
                                kwargs={"autocommit": True}) as pool:  # fmt: skip
        worker = Worker(pool, db_url if listen else None, STORE, settings, "w")
        stop = asyncio.Event()
        runner = asyncio.create_task(worker.run(stop))
        try:
            await wait_until_async(lambda: worker.parked.is_set(), timeout=10)
            assert worker.limits.names == frozenset()
            await set_queue_limits_async("flow", concurrency=2, connection=conn)
            await wait_until_async(lambda: "flow" in worker.limits.names, timeout=10)
            await _enqueue(conn, "flow", 30, ms=30)
            async with asyncio.timeout(30):
                while await _scalar(conn, "SELECT count(*) FROM scheduler.jobs "
                                    "WHERE state = 'succeeded'") < 30:  # fmt: skip
                    await asyncio.sleep(0.05)
            await set_queue_limits_async("flow", connection=conn)  # removed
            await wait_until_async(lambda: not worker.limits.names, timeout=10)
        finally:
            stop.set()
            await runner
        peak = (await _peak(conn))["all"]
    assert peak == 2, f"{peak} jobs ran at once with a limit of 2 the worker had seen"


def test_a_full_rate_window_wakes_the_worker_when_it_frees(db_url: str) -> None:
    asyncio.run(_rate_window_wakes(db_url))


async def _rate_window_wakes(db_url: str) -> None:
    """rate 10 per 1 s with a 5 s safety poll: the worker sets a timer for the moment the
    oldest counted start leaves the window, so 35 jobs start in ~3 s (10 per second), not
    one window per safety poll (~15 s)."""
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await set_queue_limits_async("flow", rate=10, per_s=1.0, connection=conn)
        await _enqueue(conn, "flow", 35)
        settings = Settings(queues=["flow"], concurrency=20, poll_interval_s=5.0)
        async with AsyncConnectionPool(db_url, min_size=1, max_size=4,
                                       kwargs={"autocommit": True}) as pool:  # fmt: skip
            worker = Worker(pool, db_url, STORE, settings, "w")
            stop = asyncio.Event()
            runner = asyncio.create_task(worker.run(stop))
            try:
                await wait_until_async(lambda: worker.listening.is_set(), timeout=10)
                await _enqueue(conn, "flow", 0)
                async with asyncio.timeout(20):
                    while await _scalar(conn, "SELECT count(*) FROM scheduler.job_runs") < 35:
                        await asyncio.sleep(0.05)
            finally:
                stop.set()
                await runner
        cur = await conn.execute("SELECT started_at FROM scheduler.job_runs ORDER BY 1")
        starts = [r[0] for r in await cur.fetchall()]
    worst = max(sum(1 for t in starts if s <= t < s + timedelta(seconds=1)) for s in starts)
    assert worst <= 10, f"{worst} starts within 1 s, rate 10 per 1 s"
    span = (starts[-1] - starts[0]).total_seconds()
    assert 2.9 <= span < 4.5, f"35 starts at 10 per 1 s took {span:.2f} s (about 3 expected)"


def test_the_replica_applies_the_setting_at_start(db_url: str) -> None:
    asyncio.run(_replica_applies_setting(db_url))


async def _replica_applies_setting(db_url: str) -> None:
    settings = load_settings({"queues": "flow", "queue_limits": '{"flow": {"concurrency": 3}}'})
    async with running_replica(db_url, settings) as replica:
        await wait_until_async(lambda: "flow" in replica.worker.limits.names, timeout=20)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        limits = await list_queue_limits(conn, STORE)
    assert limits == {"flow": limits["flow"]} and limits["flow"].concurrency == 3


def test_a_role_that_may_not_write_limits_warns_once_and_runs(db: psycopg.Connection,
                                                              db_url: str) -> None:  # fmt: skip
    from structlog.testing import capture_logs

    role = f"ro_{conninfo_to_dict(db_url)['dbname']}"[:60]
    db.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        db.execute(f'GRANT USAGE ON SCHEMA scheduler TO "{role}"')
        db.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA scheduler '
                   f'TO "{role}"')  # fmt: skip
        db.execute(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA scheduler TO "{role}"')
        db.execute(f'REVOKE INSERT, DELETE ON scheduler.queues FROM "{role}"')
        settings = load_settings({"queues": "flow",
                                  "queue_limits": '{"flow": {"concurrency": 3}}'})  # fmt: skip
        with capture_logs() as logs:
            async def scenario() -> None:
                async with running_replica(make_conninfo(db_url, user=role), settings) as r:
                    await wait_until_async(lambda: r.worker.parked.is_set(), timeout=20)

            asyncio.run(scenario())
        warned = [e for e in logs if e["event"] == "queue_limits_not_applied"]
        assert len(warned) == 1 and "may not write the queues table" in warned[0]["detail"]
        assert db.execute("SELECT count(*) FROM scheduler.queues").fetchone() == (0,)
    finally:
        db.execute(f'DROP OWNED BY "{role}"')
        db.execute(f'DROP ROLE "{role}"')


def _keys(db: psycopg.Connection) -> list[str | None]:
    return [r[0] for r in db.execute("SELECT concurrency_key FROM scheduler.jobs ORDER BY id")]


def test_concurrency_key_through_every_enqueue_path(db: psycopg.Connection) -> None:
    scheduler.enqueue(nap, args={"ms": 1}, concurrency_key="e", connection=db)
    scheduler.schedule_at(nap, None, args={"ms": 1}, concurrency_key="s", connection=db)
    nap.configure(concurrency_key="c", connection=db).defer(ms=1)
    nap.configure(concurrency_key="i", idempotency_key="k1", connection=db).defer(ms=1)
    scheduler.enqueue_result(nap, args={"ms": 1}, concurrency_key="u", idempotency_key="k2",
                             unique_for_s=60, connection=db)  # fmt: skip
    scheduler.schedule_many([scheduler.JobSpec(nap, args={"ms": 1}, concurrency_key="b1"),
                             scheduler.JobSpec(nap, args={"ms": 1})], connection=db)  # fmt: skip
    nap.configure(concurrency_key="m", connection=db).defer_many([{"ms": 1}])
    scheduler.enqueue(nap, args={"ms": 1}, connection=db)
    assert _keys(db) == ["e", "s", "c", "i", "u", "b1", None, "m", None]


def test_concurrency_key_async(db_url: str) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await scheduler.enqueue_async(nap, args={"ms": 1}, concurrency_key="a",
                                          connection=conn)  # fmt: skip
            await scheduler.schedule_at_async(nap, None, args={"ms": 1}, concurrency_key="b",
                                              connection=conn)  # fmt: skip
            await nap.configure(concurrency_key="c", connection=conn).defer_async(ms=1)
            await scheduler.enqueue_many_async(nap, [{"ms": 1}], concurrency_key="d",
                                               connection=conn)  # fmt: skip

    asyncio.run(scenario())
    with psycopg.connect(db_url) as db:
        assert _keys(db) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("key", ["", "k" * 513, "a\x00b", "\ud800", 5, b"x"])
def test_hostile_concurrency_keys_refused(db: psycopg.Connection, key: Any) -> None:
    calls = [
        lambda: scheduler.enqueue(nap, args={"ms": 1}, concurrency_key=key, connection=db),
        lambda: nap.configure(concurrency_key=key, connection=db).defer(ms=1),
        lambda: scheduler.JobSpec(nap, args={"ms": 1}, concurrency_key=key),
        lambda: scheduler.enqueue_many(nap, [{"ms": 1}], concurrency_key=key, connection=db),
    ]
    for call in calls:
        with pytest.raises(InvalidArgumentError, match="concurrency_key"):
            call()
    assert _keys(db) == []


def test_cli_enqueue_concurrency_key(db: psycopg.Connection, db_url: str,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from scheduler.cli.main import main

    monkeypatch.setenv("SCHEDULER_DATABASE_URL", db_url)
    assert main(["enqueue", "test_flow.nap", "--args", '{"ms": 1}',
                 "--concurrency-key", "cust-7"]) == 0  # fmt: skip
    assert _keys(db) == ["cust-7"]
    assert main(["enqueue", "test_flow.nap", "--args", '{"ms": 1}',
                 "--concurrency-key", "k" * 513]) == 2  # fmt: skip
    assert "--concurrency-key" in capsys.readouterr().err
    assert _keys(db) == ["cust-7"]


def test_sync_api_on_a_connection(db: psycopg.Connection) -> None:
    set_queue_limits("mail", concurrency=2, connection=db)
    assert db.execute("SELECT concurrency FROM scheduler.queues").fetchall() == [(2,)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "queue 'q': concurrency 0 is out of range"),
        ({"concurrency": -1}, "concurrency -1 is out of range"),
        ({"concurrency": 2**31}, "out of range"),
        ({"concurrency": True}, "concurrency must be an int, not bool"),
        ({"concurrency": "5"}, "concurrency must be an int, not str"),
        ({"key_concurrency": 1.5}, "key_concurrency must be an int, not float"),
        ({"rate": 10}, "rate and per_s go together"),
        ({"per_s": 10}, "rate and per_s go together"),
        ({"rate": 10, "per_s": float("nan")}, "per_s nan is out of range"),
        ({"rate": 10, "per_s": float("inf")}, "per_s inf is out of range"),
        ({"rate": 10, "per_s": 0}, "per_s 0 is out of range"),
        ({"rate": 10, "per_s": 1e12}, "out of range"),
        ({"rate": 10, "per_s": "60"}, "per_s must be a number of seconds, not str"),
    ],
)
def test_hostile_limits_refused(db: psycopg.Connection, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(")):
        set_queue_limits("q", connection=db, **kwargs)
    assert db.execute("SELECT count(*) FROM scheduler.queues").fetchone() == (0,)


@pytest.mark.parametrize("queue", ["", "a b", "x\x00", "\ud800", "q" * 101, 5, None])
def test_hostile_queue_names_refused(db: psycopg.Connection, queue: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="queue"):
        set_queue_limits(queue, concurrency=1, connection=db)
    assert db.execute("SELECT count(*) FROM scheduler.queues").fetchone() == (0,)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{", "is not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"q": 5}', "queue 'q' must map to an object"),
        ('{"q": {}}', "queue 'q' declares no limit"),
        ('{"q": {"concurency": 5}}', "unknown field 'concurency'"),
        ('{"q": {"concurrency": 0}}', "concurrency 0 is out of range"),
        ('{"q": {"rate": 5, "per_s": NaN}}', "per_s nan is out of range"),
        ('{"q": {"concurrency": 1}, "q": {"concurrency": 2}}', "'q' is given twice"),
        ('{"a,b": {"concurrency": 1}}', "may only contain"),
        ("[" * 100_000, "is not JSON"),
    ],
)
def test_hostile_setting_refused(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match="SCHEDULER_QUEUE_LIMITS") as info:
        load_settings({"queue_limits": value}, options={"queue_limits": "SCHEDULER_QUEUE_LIMITS"})
    assert message in str(info.value)


# ---- declared in the schedules file (queues:), scheduler queues, scheduler status ----------


def test_declared_limits_written_replaced_pruned_and_overridden(db_url: str) -> None:
    asyncio.run(_declared_limits(db_url))


async def _declared_limits(db_url: str) -> None:
    """The file's limits replace an API write (the leader's file wins at each election),
    leave a queue the setting declares alone (the setting wins), and drop what the file no
    longer declares; nothing is written when nothing differs."""
    from scheduler.queue_limits import QueueLimits, apply_declared_limits

    file_a = QueueLimits(concurrency=2)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        done = await apply_declared_limits(conn, STORE, {"a": file_a, "b": QueueLimits(rate=5, per_s=1.0)})
        assert (done.written, done.removed, done.overridden) == (["a", "b"], [], [])
        await set_queue_limits_async("a", concurrency=9, connection=conn)  # an operator's change
        await apply_settings_limits(conn, STORE, {"c": QueueLimits(concurrency=7)})
        done = await apply_declared_limits(conn, STORE, {"a": file_a, "c": QueueLimits(concurrency=1)})
        assert (done.written, done.removed, done.overridden) == (["a"], ["b"], ["c"])
        limits = await list_queue_limits(conn, STORE)
        assert limits == {"a": file_a, "c": QueueLimits(concurrency=7)}
        cur = await conn.execute("SELECT name, source FROM scheduler.queues")
        sources = dict(await cur.fetchall())
        assert sources == {"a": "config", "c": "settings"}
        again = await apply_declared_limits(conn, STORE, {"a": file_a, "c": QueueLimits(concurrency=1)})
        assert (again.written, again.removed) == ([], [])
        await apply_declared_limits(conn, STORE, {})
        assert set(await list_queue_limits(conn, STORE)) == {"c"}  # the setting's stays


def test_the_leader_applies_the_files_queues_at_election(db_url: str, tmp_path: Any) -> None:
    from scheduler.config import load_config_text

    config = load_config_text("queues:\n  flow: {concurrency: 2, key_concurrency: 1}\n"
                              "schedules: []\n", str(tmp_path / "s.yaml"))  # fmt: skip

    async def scenario() -> None:
        settings = load_settings({"queues": "flow"})
        async with running_replica(db_url, settings, config) as replica:
            # the worker reads the limits at start, then on the leader's NOTIFY
            await wait_until_async(lambda: "flow" in replica.worker.limits.names, timeout=20)
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            limits = await list_queue_limits(conn, STORE)
            assert limits == {"flow": config.queues["flow"]}

    asyncio.run(scenario())


def test_cli_queues_and_status_show_the_limits(db: psycopg.Connection, db_url: str,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from scheduler.cli.main import main

    monkeypatch.setenv("SCHEDULER_DATABASE_URL", db_url)
    set_queue_limits("mail", rate=100, per_s=60, key_concurrency=2, connection=db)
    set_queue_limits("idle", concurrency=3, connection=db)
    for key in ["k1", "k1", "k2", None]:
        scheduler.enqueue(nap, args={"ms": 1}, queue="mail", concurrency_key=key, connection=db)
    scheduler.enqueue(nap, args={"ms": 1}, queue="other", connection=db)
    assert _claim_sync(db_url, "mail", 3) == 3  # k1 twice (its limit: 2), k2
    assert main(["queues", "--json"]) == 0
    rows = {r["queue"]: r for r in json.loads(capsys.readouterr().out)}
    assert {k: rows["mail"][k] for k in ("rate", "per_s", "key_concurrency", "source", "running",
                                        "pending", "window_starts", "busiest_key_running")} == {
        "rate": 100, "per_s": 60.0, "key_concurrency": 2, "source": "api", "running": 3,
        "pending": 1, "window_starts": 3, "busiest_key_running": 2}  # fmt: skip
    assert (rows["idle"]["running"], rows["idle"]["window_starts"]) == (0, None)
    assert (rows["other"]["source"], rows["other"]["pending"]) == (None, 1)
    assert main(["queues"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[:4] == ["queue", "paused", "concurrency", "rate"]
    assert "mail" in text
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [r["queue"] for r in status["queue_limits"]] == ["idle", "mail"]
    assert main(["status"]) == 0
    assert "queue limits:" in capsys.readouterr().out


def _claim_sync(db_url: str, queue: str, limit: int) -> int:
    async def claim() -> int:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return len(await STORE.claim_jobs(conn, queues=[queue], limit=limit, worker_id="w",
                                              lease_s=30, limited=True))  # fmt: skip

    return asyncio.run(claim())
