"""Benchmarks (a script, not a test): ``python -m bench.run [--quick]`` from the repo root.

Starts its own embedded PostgreSQL (or uses ``SCHEDULER_BENCH_DSN``), and prints one table:

* W1 drain: 20,000 no-op jobs inserted, one replica started, time until all succeeded
  (jobs/s; 3 repetitions, median and range). Reference measured in the same run: the same
  claim + complete statements driven by a bare loop in batches of 100 (no handlers).
* W2 enqueue: 5,000 single ``enqueue()`` calls (jobs/s, p50/p99 ms); bulk ``enqueue_many``
  of 100,000 jobs (jobs/s).
* W3 delayed lateness: 200 ``schedule_at`` jobs spread over 10 s, an idle replica running:
  p50/p95/p99/max of (start - due) in ms, default settings.

Peers (Procrastinate, PgQueuer) are not run by this version; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.conninfo import make_conninfo

from scheduler import embedded, enqueue, enqueue_many, log, schedule_at
from scheduler.jobs import close_default_pools, set_default_database_url
from scheduler.service import Replica, migrate
from scheduler.settings import Settings
from scheduler.store import Store

from . import tasks  # noqa: F401  (registers bench.noop)

STORE = Store("scheduler")


def fresh_db(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(admin_url, dbname=name)
    asyncio.run(migrate(url, Settings()))
    return url


def insert_noops(url: str, n: int) -> None:
    with psycopg.connect(url) as conn:
        for start in range(0, n, 10_000):
            enqueue_many("bench.noop", [{}] * min(10_000, n - start), connection=conn)
        conn.commit()
        conn.execute("ANALYZE scheduler.jobs")
        conn.commit()


def count(url: str, where: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM scheduler.jobs WHERE {where}").fetchone()[0]


async def run_replica_until(url: str, settings: Settings, done) -> float:
    replica = Replica(url, settings, None)
    stop = asyncio.Event()
    started = time.perf_counter()
    runner = asyncio.create_task(replica.run(stop))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while not await done(conn):
            await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    await runner
    return elapsed


def w1_drain(admin_url: str, n: int, concurrency: int) -> float:
    url = fresh_db(admin_url, "bench_w1")
    insert_noops(url, n)

    async def all_done(conn) -> bool:
        cur = await conn.execute("SELECT count(*) FROM scheduler.jobs WHERE state = 'succeeded'")
        return (await cur.fetchone())[0] >= n

    settings = Settings(concurrency=concurrency, log_level="warning")
    elapsed = asyncio.run(run_replica_until(url, settings, all_done))
    return n / elapsed


def w1_reference(admin_url: str, n: int, batch: int = 100) -> float:
    """The same claim + complete statements in a bare loop: the ceiling for W1."""
    url = fresh_db(admin_url, "bench_w1_ref")
    insert_noops(url, n)

    async def drain() -> float:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            started = time.perf_counter()
            done = 0
            while done < n:
                jobs = await STORE.claim_jobs(
                    conn, queues=["default"], limit=batch, worker_id="ref", lease_s=30
                )
                outcomes = [
                    {
                        "id": j["id"],
                        "attempt": j["attempt"],
                        "state": "succeeded",
                        "outcome": "succeeded",
                    }
                    for j in jobs
                ]
                done += len(await STORE.complete_jobs(conn, "ref", outcomes))
            return n / (time.perf_counter() - started)

    return asyncio.run(drain())


def w2_enqueue(admin_url: str, singles: int, bulk: int) -> tuple[float, float, float, float]:
    url = fresh_db(admin_url, "bench_w2")
    set_default_database_url(url)
    enqueue("bench.noop")  # open the pool
    latencies = []
    started = time.perf_counter()
    for _ in range(singles):
        t = time.perf_counter()
        enqueue("bench.noop")
        latencies.append((time.perf_counter() - t) * 1000)
    single_rate = singles / (time.perf_counter() - started)
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        for start in range(0, bulk, 10_000):
            enqueue_many("bench.noop", [{}] * min(10_000, bulk - start), connection=conn)
        conn.commit()
    bulk_rate = bulk / (time.perf_counter() - started)
    close_default_pools()
    set_default_database_url(None)
    return single_rate, p50, p99, bulk_rate


def w3_lateness(admin_url: str, jobs: int, spread_s: float) -> list[float]:
    url = fresh_db(admin_url, "bench_w3")

    async def scenario() -> None:
        replica = Replica(url, Settings(log_level="warning"), None)
        stop = asyncio.Event()
        runner = asyncio.create_task(replica.run(stop))
        await asyncio.wait_for(replica.worker.listening.wait(), 10)
        await asyncio.sleep(0.5)  # idle
        base = datetime.now(UTC) + timedelta(seconds=1)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for i in range(jobs):
                await schedule_at(
                    "bench.noop", base + timedelta(seconds=spread_s * i / jobs), connection=conn
                )
            while True:
                cur = await conn.execute("SELECT count(*) FROM scheduler.job_runs")
                if (await cur.fetchone())[0] >= jobs:
                    break
                await asyncio.sleep(0.05)
        stop.set()
        await runner

    asyncio.run(scenario())
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT start_lateness_s * 1000 FROM scheduler.run_history").fetchall()
    return sorted(float(r[0]) for r in rows)


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a smoke run)")
    args = parser.parse_args()
    log.configure("json", "warning")  # as in production at level warning: no per-job lines
    n, reps, singles, bulk, w3_jobs = (
        (2_000, 1, 500, 10_000, 50) if args.quick else (20_000, 3, 5_000, 100_000, 200)
    )
    dsn = os.environ.get("SCHEDULER_BENCH_DSN")
    tmp = None
    if not dsn:
        tmp = tempfile.mkdtemp(prefix="scheduler-bench-")
        dsn = embedded.start(tmp)
    try:
        with psycopg.connect(dsn) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        print(f"# PostgreSQL {version}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        ref = [w1_reference(dsn, n) for _ in range(reps)]
        ours = [w1_drain(dsn, n, concurrency=100) for _ in range(reps)]
        single, p50, p99, bulk_rate = w2_enqueue(dsn, singles, bulk)
        late = w3_lateness(dsn, w3_jobs, 10.0)
        med_ref, med_ours = statistics.median(ref), statistics.median(ours)
        print(f"{'workload':<44} {'result':>30}")
        print(
            f"{'W1 reference: bare claim+complete, batch 100':<44} {med_ref:>12,.0f} jobs/s  [{min(ref):,.0f}-{max(ref):,.0f}]"
        )
        print(
            f"{'W1 drain: one replica, concurrency 100':<44} {med_ours:>12,.0f} jobs/s  [{min(ours):,.0f}-{max(ours):,.0f}]  = {med_ours / med_ref:.0%} of reference"
        )
        print(
            f"{'W2 single enqueue()':<44} {single:>12,.0f} jobs/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms"
        )
        print(f"{'W2 bulk enqueue_many()':<44} {bulk_rate:>12,.0f} jobs/s")
        print(
            f"{'W3 delayed lateness (start - due)':<44} p50 {pct(late, 0.5):.1f} ms  p95 {pct(late, 0.95):.1f} ms  "
            f"p99 {pct(late, 0.99):.1f} ms  max {late[-1]:.1f} ms"
        )
    finally:
        if tmp:
            embedded.stop(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
