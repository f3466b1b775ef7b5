"""What flow control costs the claim: a W1-style drain (one in-process replica, concurrency
100, 20,000 no-op jobs) of an unlimited queue, of a queue with a global concurrency limit, of
a queue with a rate limit far above the drain's rate (10,000,000 per 60 s) and of one with a
per-key limit and no keys, interleaved in one run and reported as ratios to the unlimited
drain.

A global concurrency limit of 100 BINDS on a replica of concurrency 100: a job counts as
running until its outcome is written, and the worker frees a slot when the handler returns,
before the write (the next claim overlaps it), so an unlimited replica of concurrency 100
holds up to ~200 jobs in state 'running' in the database. Under a limit of 100 about 40 % of
its claims find the queue full and come back empty, and the claim no longer overlaps the
write: that is the limit doing its job, not the claim's cost. A limit of 200 never binds: it
measures what the limited claim itself costs.

``--compare-0020`` adds the limited variants again with ``claim_limited()`` as migration 0020
left it (re-created after migrating), interleaved with the others: before/after of 0021.

``--claims`` measures the claim statement alone instead (the drains are too noisy on a shared
machine to show a millisecond per claim): in steady state, 100 jobs running and claims of 100
(each followed by the completion of the 100 oldest running jobs), the median latency of
``claim_jobs`` (unlimited), of ``claim_jobs_limited`` (a concurrency limit of 200, which does
not bind) with 0020's and with the current ``claim_limited()``, and of the current function
called alone (what a worker all of whose queues are limited would need), interleaved.

    python -m bench.flow --pg 15|18 [--jobs 20000] [--reps 3] [--compare-0020] [--claims]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import psycopg

from scheduler import log
from scheduler.settings import Settings

from . import servers, workloads

VARIANTS: dict[str, dict[str, object]] = {
    "unlimited": {},
    "concurrency 100 (binds)": {"concurrency": 100},
    "concurrency 200": {"concurrency": 200},
    "rate 10M per 60 s": {"rate": 10_000_000, "per_s": 60.0},
    "key_concurrency 1, no keys": {"key_concurrency": 1},
}


MIGRATIONS = Path(__file__).resolve().parent.parent / "scheduler" / "sql" / "migrations"
BEFORE = " [0020]"  # suffix of the variants run with 0020's claim_limited()


def claim_limited_0020() -> str:
    """The CREATE OR REPLACE FUNCTION claim_limited() statement of migration 0020."""
    text = (MIGRATIONS / "0020_flow_tuning.sql").read_text()
    start = text.index("CREATE OR REPLACE FUNCTION {schema}.claim_limited(")
    return text[start:].replace("{schema}", "scheduler")


def drain(admin_url: str, n: int, limits: dict[str, object], function: str | None = None) -> float:
    """Jobs/s of one replica (concurrency 100) draining ``n`` no-op jobs of queue
    ``default`` with ``limits`` set on it (none: unlimited); ``function``: SQL run after
    migrating (another claim_limited())."""
    url = workloads.fresh_db(admin_url, "bench_flow")
    if function is not None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(function)
    workloads.insert_noops(url, n)
    if limits:
        params = {"queue": "default", "concurrency": None, "rate": None, "per_s": None,
                  "key_concurrency": None, "source": "api", **limits}  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(workloads.STORE.q["queue_limits_set"], params)

    async def all_done(conn: psycopg.AsyncConnection) -> bool:
        cur = await conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM scheduler.jobs WHERE state IN ('pending', 'running'))"
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    elapsed = asyncio.run(workloads.run_replica_until(url, Settings(concurrency=100), all_done))
    assert workloads.count(url, "state = 'succeeded'") == n
    return n / elapsed


BARE_CLAIM = """SELECT j.id, j.queue, j.task, j.args, j.priority, j.attempt, j.max_attempts,
       j.backoff_base_s, j.backoff_max_s, j.backoff_jitter, j.schedule_name, j.scheduled_for,
       j.run_at, extract(epoch FROM now() - j.run_at)::float8 AS lateness_s,
       extract(epoch FROM now() - j.first_run_at)::float8 AS age_s
FROM scheduler.claim_limited(%(queues)s, %(limit)s, %(worker_id)s, %(lease_s)s,
                             %(now)s::timestamptz) AS j"""
COMPLETE_OLDEST = """UPDATE scheduler.jobs SET state = 'succeeded', finished_at = now()
WHERE id IN (SELECT id FROM scheduler.jobs WHERE state = 'running' ORDER BY id LIMIT 100)"""


def claim_latencies(admin_url: str, rounds: int) -> dict[str, list[float]]:
    """Seconds per claim of 100 jobs (100 running) of each statement, ``rounds`` x 20 each."""
    plans = {  # name: (claim statement, claim_limited() to install, limited)
        "claim_jobs (unlimited)": (workloads.STORE.q["claim_jobs"], None, False),
        "claim_jobs_limited [0020]": (workloads.STORE.q["claim_jobs_limited"], claim_limited_0020(), True),
        "claim_jobs_limited": (workloads.STORE.q["claim_jobs_limited"], None, True),
        "claim_limited() alone": (BARE_CLAIM, None, True),
    }  # fmt: skip
    params = {"queues": ["default"], "limit": 100, "worker_id": "w", "lease_s": 30.0, "now": None}
    conns: dict[str, psycopg.Connection] = {}
    try:
        for i, (name, (_, function, limited)) in enumerate(plans.items()):
            url = workloads.fresh_db(admin_url, f"bench_flow_claims_{i}")
            workloads.insert_noops(url, 100 * (20 * rounds + 1))
            conn = conns[name] = psycopg.connect(url, autocommit=True)
            if function is not None:
                conn.execute(function)
            if limited:
                conn.execute(workloads.STORE.q["queue_limits_set"],
                             {"queue": "default", "concurrency": 200, "rate": None, "per_s": None,
                              "key_concurrency": None, "source": "api"})  # fmt: skip
            conn.execute(workloads.STORE.q["claim_jobs"], params)  # 100 running
        times: dict[str, list[float]] = {name: [] for name in plans}
        for _ in range(rounds):
            for name, (statement, _, _) in plans.items():
                for _ in range(20):
                    started = time.perf_counter()
                    n = len(conns[name].execute(statement, params).fetchall())
                    times[name].append(time.perf_counter() - started)
                    assert n == 100, (name, n)
                    conns[name].execute(COMPLETE_OLDEST)
        return times
    finally:
        for conn in conns.values():
            conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flow")
    parser.add_argument("--pg", choices=servers.MAJORS, default="18", help="PostgreSQL major")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--reps", type=int, default=3, help="interleaved runs per variant")
    parser.add_argument("--compare-0020", action="store_true",
                        help="also run the limited variants with 0020's claim_limited()")  # fmt: skip
    parser.add_argument("--claims", action="store_true",
                        help="claim latency alone (steady state), not drains")  # fmt: skip
    args = parser.parse_args()
    log.configure("json", Settings().log_level)
    if args.claims:
        with servers.server(args.pg) as dsn:
            times = claim_latencies(dsn, 2 * args.reps)
        base = statistics.median(times["claim_jobs (unlimited)"])
        print(f"# claims of 100 jobs, 100 running, {2 * args.reps} x 20 interleaved per statement")
        for name, ts in times.items():
            q1, q2, q3 = statistics.quantiles(ts, n=4)
            print(f"{name:<28} median {q2 * 1000:6.2f} ms (p25 {q1 * 1000:.2f}, p75 "
                  f"{q3 * 1000:.2f})  {q2 / base:6.1%} of unlimited")  # fmt: skip
        return 0
    variants = dict(VARIANTS)
    if args.compare_0020:
        variants.update({name + BEFORE: limits for name, limits in VARIANTS.items() if limits})
    results: dict[str, list[float]] = {name: [] for name in variants}
    with servers.server(args.pg) as dsn:
        with psycopg.connect(dsn) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        print(f"# PostgreSQL {version}: W1 drain of {args.jobs:,} no-op jobs, concurrency 100, "
              f"{args.reps} interleaved runs per variant (median, ratio to unlimited)")  # fmt: skip
        for _ in range(args.reps):
            for name, limits in variants.items():
                before = claim_limited_0020() if name.endswith(BEFORE) else None
                results[name].append(drain(dsn, args.jobs, limits, before))
    base = statistics.median(results["unlimited"])
    for name, rates in results.items():
        runs = " / ".join(f"{r:,.0f}" for r in rates)
        print(f"{name:<36} {statistics.median(rates):>9,.0f} jobs/s  "
              f"{statistics.median(rates) / base:>6.1%}   ({runs})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
