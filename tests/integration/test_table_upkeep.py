"""Migration 0010: per-table autovacuum settings, and which updates of a job are HOT.

An update is HOT (heap-only: no new index entries, the old version pruned within its page)
only when no column named by an index, in its keys or its predicate, changes. The claim and
the completion change ``state``, which the partial indexes name: never HOT. The lease
extension changes ``lease_expires_at`` only, which no index names since 0010: HOT.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import psycopg.sql

from scheduler import enqueue_many, task
from scheduler.store import Store

STORE = Store("scheduler")
WORKER = "test_table_upkeep:1"


@task(name="test_table_upkeep.noop")
async def noop() -> None:
    return None


def _reloptions(db: psycopg.Connection, table: str) -> dict[str, str]:
    row = db.execute(
        "SELECT reloptions FROM pg_class WHERE oid = %s::regclass", [f"scheduler.{table}"]
    ).fetchone()
    return dict(option.split("=", 1) for option in row[0] or [])


def test_the_autovacuum_settings_are_applied_to_jobs_and_job_runs(db):
    jobs = _reloptions(db, "jobs")
    assert jobs["autovacuum_vacuum_scale_factor"] == "0.01"
    assert jobs["autovacuum_vacuum_threshold"] == "1000"
    assert jobs["autovacuum_analyze_scale_factor"] == "0.02"
    assert jobs["autovacuum_vacuum_cost_limit"] == "2000"
    runs = _reloptions(db, "job_runs")
    assert runs["autovacuum_vacuum_scale_factor"] == "0.02"
    assert runs["autovacuum_vacuum_insert_scale_factor"] == "0.05"


async def _step(conn: psycopg.AsyncConnection[Any], name: str, params: dict) -> tuple[int, int]:
    """Run one named statement in its own transaction; (rows updated, of which HOT) in jobs,
    read from this backend's own counters (no wait for the statistics system)."""
    counters = (
        "SELECT pg_stat_get_xact_tuples_updated(c.oid), pg_stat_get_xact_tuples_hot_updated(c.oid) "
        "FROM pg_class AS c WHERE c.oid = 'scheduler.jobs'::regclass"
    )  # the backend's counts not yet sent to the statistics system: take the difference
    async with conn.transaction():
        before = await (await conn.execute(counters)).fetchone()
        await STORE.fetch(conn, name, params)
        after = await (await conn.execute(counters)).fetchone()
    return after[0] - before[0], after[1] - before[1]


def test_lease_extensions_are_hot_updates_and_claims_and_completions_cannot_be(db, db_url):
    n = 50
    with psycopg.connect(db_url) as conn:
        enqueue_many(noop, [{}] * n, connection=conn)
        conn.commit()

    async def scenario() -> dict[str, tuple[int, int]]:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await conn.set_autocommit(True)
            seen = {}
            base = {"worker_id": WORKER, "lease_s": 30.0, "now": None}
            seen["claim"] = await _step(
                conn, "claim_jobs", {**base, "queues": ["default"], "limit": n}
            )
            cur = await conn.execute("SELECT id, attempt FROM scheduler.jobs ORDER BY id")
            ids, attempts = map(list, zip(*await cur.fetchall(), strict=True))
            held = {**base, "ids": ids, "attempts": attempts}
            for round_ in range(3):
                seen[f"extension {round_ + 1}"] = await _step(conn, "extend_leases", held)
            done = {**held, "results": None, "done_channel": STORE.done_channel}
            seen["completion"] = await _step(conn, "complete_succeeded", done)
            return seen

    seen = asyncio.run(scenario())
    assert seen["claim"] == (n, 0), seen  # state changes: never HOT
    assert seen["completion"] == (n, 0), seen  # state changes: never HOT
    # lease_expires_at is in no index: HOT wherever the row's page has room for the new
    # version (the claim packed the running rows onto full pages; an extension that moves a
    # row leaves room behind, and page pruning frees the space of its dead versions)
    extensions = [seen[f"extension {r}"] for r in (1, 2, 3)]
    assert all(updated == n for updated, _ in extensions), seen
    assert extensions[0][1] > 0, seen
    assert extensions[2][1] >= extensions[0][1], seen
    assert sum(hot for _, hot in extensions) >= n, seen  # on average a third of them at least


def test_rescue_and_heartbeat_read_the_running_jobs_through_an_index(db):
    """With the lease index gone, the rescue and the leader's heartbeat must still find the
    running jobs without reading the finished ones (a realistic table: 20,000 finished jobs,
    100 running)."""
    db.execute(
        "INSERT INTO scheduler.jobs (task, state, finished_at) "
        "SELECT 'x', 'succeeded', now() FROM generate_series(1, 20000)"
    )
    db.execute(
        "INSERT INTO scheduler.jobs (task, state, locked_by, locked_at, lease_expires_at) "
        "SELECT 'x', 'running', 'w' || (i % 4), now(), now() + interval '30 s' "
        "FROM generate_series(1, 100) AS i"
    )
    db.execute("ANALYZE scheduler.jobs")
    for name, params in (
        ("rescue_expired_leases", {"limit": 1000, "channel": "c", "done_channel": "d"}),
        ("leader_heartbeat", {"holder": "h", "term": 1, "key": "k", "now": None, "ahead_s": 1.0}),
    ):
        explain = psycopg.sql.SQL("EXPLAIN ") + STORE.q[name]
        plan = "\n".join(r[0] for r in db.execute(explain, params).fetchall())
        # a partial index of running jobs only (by worker, or by queue since 0016)
        assert "jobs_running_worker" in plan or "jobs_running_queue" in plan, plan
        assert "Seq Scan on jobs" not in plan, plan
    db.rollback()


def test_runs_have_no_foreign_key_check_and_still_go_with_their_job(db, db_url):
    """0012: no per-row foreign-key check when a run is inserted (the completion's hot path),
    and every way of deleting jobs (the prune, an operator's plain SQL) deletes their runs."""
    fks = db.execute(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'scheduler.job_runs'::regclass "
        "AND contype = 'f'"
    ).fetchone()[0]
    assert fks == 0
    ids = enqueue_many(noop, [{}] * 6, connection=db)
    db.commit()

    async def run_all() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            jobs = await STORE.claim_jobs(
                conn, queues=["default"], limit=6, worker_id=WORKER, lease_s=30
            )
            outcomes = [{"id": j["id"], "attempt": j["attempt"], "state": "succeeded",
                         "outcome": "succeeded"} for j in jobs]  # fmt: skip
            await STORE.complete_jobs(conn, WORKER, outcomes)

    asyncio.run(run_all())
    runs = "SELECT count(*) FROM scheduler.job_runs WHERE job_id = ANY(%s)"
    assert db.execute(runs, [ids]).fetchone()[0] == 6
    db.execute("DELETE FROM scheduler.jobs WHERE id = ANY(%s)", [ids[:2]])
    db.commit()
    assert db.execute(runs, [ids[:2]]).fetchone()[0] == 0
    assert db.execute(runs, [ids[2:]]).fetchone()[0] == 4

    async def prune() -> None:
        from scheduler import maintenance

        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await conn.execute("UPDATE scheduler.jobs SET finished_at = now() - interval '1 day'")
            await maintenance.prune(conn, STORE, holder="t", term=1, succeeded_s=60, dead_s=60,
                                    batch=100, stale_replicas_s=60)  # fmt: skip

    asyncio.run(prune())
    assert db.execute(runs, [ids]).fetchone()[0] == 0
    left = db.execute("SELECT count(*) FROM scheduler.jobs WHERE id = ANY(%s)", [ids])
    assert left.fetchone()[0] == 0


def test_the_workers_connections_never_jit_compile_a_claim(db_url):
    """A claim of hundreds of rows is costed above jit_above_cost; on a server built with
    LLVM (Debian's PostgreSQL 15) compiling it took ~450 ms per claim. The worker's pool
    connects with ``-c jit=off`` (a startup option, kept with the URL's own options)."""
    from psycopg.conninfo import make_conninfo

    from scheduler.service import Replica
    from scheduler.settings import Settings

    url = make_conninfo(db_url, options="-c application_name=mine")

    async def scenario() -> tuple[str, str]:
        replica = Replica(url, Settings(), None)
        await replica._check_pooler()
        await replica.pool.open()
        try:
            async with replica.pool.connection() as conn:
                jit = await (await conn.execute("SHOW jit")).fetchone()
                name = await (await conn.execute("SHOW application_name")).fetchone()
                return jit[0], name[0]
        finally:
            await replica.pool.close()

    assert asyncio.run(scenario()) == ("off", "mine")
