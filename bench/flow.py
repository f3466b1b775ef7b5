"""What flow control costs the claim: a W1-style drain (one in-process replica, concurrency
100, 20,000 no-op jobs) of an unlimited queue, of a queue with a global concurrency limit of
100 (the replica's slots: it never binds), and of a queue with a rate limit far above the
drain's rate (10,000,000 per 60 s), interleaved in one run and reported as ratios to the
unlimited drain.

    python -m bench.flow --pg 15|18 [--jobs 20000] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

import psycopg

from scheduler import log
from scheduler.settings import Settings

from . import servers, workloads

VARIANTS: dict[str, dict[str, object]] = {
    "unlimited": {},
    "concurrency 100": {"concurrency": 100},
    "rate 10M per 60 s": {"rate": 10_000_000, "per_s": 60.0},
    "key_concurrency 1, no keys": {"key_concurrency": 1},
}


def drain(admin_url: str, n: int, limits: dict[str, object]) -> float:
    """Jobs/s of one replica (concurrency 100) draining ``n`` no-op jobs of queue
    ``default`` with ``limits`` set on it (none: unlimited)."""
    url = workloads.fresh_db(admin_url, "bench_flow")
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


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flow")
    parser.add_argument("--pg", choices=servers.MAJORS, default="18", help="PostgreSQL major")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain")
    parser.add_argument("--reps", type=int, default=3, help="interleaved runs per variant")
    args = parser.parse_args()
    log.configure("json", Settings().log_level)
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with servers.server(args.pg) as dsn:
        with psycopg.connect(dsn) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        print(f"# PostgreSQL {version}: W1 drain of {args.jobs:,} no-op jobs, concurrency 100, "
              f"{args.reps} interleaved runs per variant (median, ratio to unlimited)")  # fmt: skip
        for _ in range(args.reps):
            for name, limits in VARIANTS.items():
                results[name].append(drain(dsn, args.jobs, limits))
    base = statistics.median(results["unlimited"])
    for name, rates in results.items():
        runs = " / ".join(f"{r:,.0f}" for r in rates)
        print(f"{name:<28} {statistics.median(rates):>9,.0f} jobs/s  "
              f"{statistics.median(rates) / base:>6.1%}   ({runs})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
