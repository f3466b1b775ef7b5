"""Catch-up after an outage (a script, not a test): ``python -m bench.outage``.

Starts its own embedded PostgreSQL (or uses ``SCHEDULER_BENCH_DSN``, a superuser URL), creates
``--schedules`` schedules (half every second, half every minute, every misfire and overlap
policy) whose ``next_run_at`` is ``--days`` in the past, starts one replica with the default
settings, and prints how long the leader took to catch up, how many elections that cost, and
what it wrote. Reference, in the same run: counting the skipped fire times of one
every-second schedule arithmetically against walking them one by one (what the leader did
before, inside its transaction).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.conninfo import make_conninfo

from scheduler import embedded
from scheduler.cron import Cron
from scheduler.cron_count import count
from scheduler.service import Replica, migrate
from scheduler.settings import Settings

POLICIES = [
    {"misfire_policy": "skip"},
    {"misfire_policy": "run_once"},
    {"misfire_policy": "run_all", "max_catch_up": 50},
    {"misfire_policy": "run_once", "starting_deadline_s": 3600},
    {"misfire_policy": "run_all", "overlap_policy": "skip"},
    {"misfire_policy": "run_all", "overlap_policy": "queue", "max_catch_up": 20},
]


def _create(url: str, schedules: int, days: float) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        now = db.execute("SELECT now()").fetchone()[0]
        combos = itertools.cycle(itertools.product(["* * * * * *", "* * * * *"], POLICIES))
        for i, (cron, policy) in enumerate(itertools.islice(combos, schedules)):
            values = {"name": f"late{i:04d}", "cron": cron, "timezone": "UTC", "task": "noop",
                      "queue": "outage", "max_attempts": 3, "backoff_base_s": 1,
                      "backoff_max_s": 10, "backoff_jitter": 0, "definition_hash": "h",
                      "next_run_at": Cron(cron).next_after(now - timedelta(days=days)),
                      **policy}  # fmt: skip
            columns = ", ".join(values)
            placeholders = ", ".join(f"%({k})s" for k in values)
            db.execute(f"INSERT INTO scheduler.schedules ({columns}) VALUES ({placeholders})",
                       values)  # fmt: skip


async def _catch_up(url: str, timeout: float) -> float:
    replica = Replica(url, Settings(queues=["default"]), None)  # nobody works "outage"
    stop = asyncio.Event()
    started = time.monotonic()
    runner = asyncio.create_task(replica.run(stop))
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            while time.monotonic() - started < timeout:
                cur = await c.execute("SELECT count(*) FROM scheduler.schedules "
                                      "WHERE next_run_at < now() - interval '2 seconds'")  # fmt: skip
                if (await cur.fetchone())[0] == 0:
                    return time.monotonic() - started
                await asyncio.sleep(0.05)
        return float("nan")
    finally:
        stop.set()
        await runner


def _reference(days: float) -> tuple[float, float]:
    """Seconds to count a day of an every-second schedule one by one, and a whole outage
    arithmetically."""
    cron = Cron("* * * * * *", "Europe/Berlin")
    after = datetime(2026, 10, 1, tzinfo=UTC)
    t0 = time.perf_counter()
    walked = len(cron.fire_times(after, after + timedelta(days=1), 100_000))
    t1 = time.perf_counter()
    counted = count(cron, after, after + timedelta(days=days))
    t2 = time.perf_counter()
    assert walked == 86_400 and counted == int(days * 86_400)
    return t1 - t0, t2 - t1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outage")
    parser.add_argument("--schedules", type=int, default=200)
    parser.add_argument("--days", type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scheduler-bench-") as tmp:
        server = os.environ.get("SCHEDULER_BENCH_DSN") or embedded.start(tmp)
        with psycopg.connect(server, autocommit=True) as admin:
            version = admin.execute("SHOW server_version").fetchone()[0]
            admin.execute("DROP DATABASE IF EXISTS bench_outage WITH (FORCE)")
            admin.execute("CREATE DATABASE bench_outage")
        url = make_conninfo(server, dbname="bench_outage")
        asyncio.run(migrate(url, Settings()))
        _create(url, args.schedules, args.days)
        elapsed = asyncio.run(_catch_up(url, timeout=120))
        with psycopg.connect(url) as db:
            term = db.execute("SELECT term FROM scheduler.leader").fetchone()[0]
            jobs = db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0]
            spans, skipped = db.execute(
                "SELECT count(*), sum(fire_times) FROM scheduler.skipped_fire_times"
            ).fetchone()
        walk_day, count_all = _reference(args.days)
        if not os.environ.get("SCHEDULER_BENCH_DSN"):
            embedded.stop(tmp)
    print(f"PostgreSQL {version}; {args.schedules} schedules {args.days:g} days late, one "
          "replica, default settings")  # fmt: skip
    print(f"  caught up in {elapsed:.2f} s, leader term {term} (1 = no re-election)")
    print(f"  jobs materialised {jobs:,}; skipped fire times {skipped:,} in {spans:,} spans")
    print(f"  reference: walking one day of an every-second schedule {walk_day * 1000:,.0f} ms;"
          f" counting {args.days:g} days {count_all * 1000:,.1f} ms "
          f"({walk_day * args.days / count_all:,.0f}x faster than walking them)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
