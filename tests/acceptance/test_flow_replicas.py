"""Flow control across three real ``scheduler run`` replicas, one of them killed (SIGKILL)
while it runs jobs of every limited queue: no limit is exceeded, also while its jobs wait to
be rescued (they count as running until the leader puts them back) and when they run again.

The limits come from the schedules file's ``queues:`` section, applied before the replicas
start (as ``scheduler schedules apply`` does; the leader applies the same file again at its
election, a no-op): so no claim of any replica ever runs without them. The peak of running
jobs and the starts per sliding window are computed afterwards from ``job_runs`` (one row per
attempt, from its claim to its completion or its rescue as ``lost``).

``FLOW_REPLICAS_RUNS=10`` repeats the test ten times (the issue's "no limit exceeded in 10
runs"); each run prints one ``flow-replicas:`` line with what it measured (pytest ``-s``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import scheduler
from scheduler.config import load_config
from scheduler.queue_limits import apply_declared_limits
from scheduler.store import Store
from tests.acceptance import flow_tasks
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(120)

YAML = """\
imports: [tests.acceptance.flow_tasks]
queues:
  capped: {concurrency: 3}
  rated: {rate: 10, per_s: 1}
  keyed: {key_concurrency: 1}
schedules: []
"""
KEYS = ["a", "b", "c", "d"]
JOBS = {"capped": (45, 150), "rated": (40, 20), "keyed": (40, 120)}  # queue: (jobs, ms each)
RUNS = int(os.environ.get("FLOW_REPLICAS_RUNS", "1"))


def _peak(db: psycopg.Connection, queue: str, by: str = "'all'") -> dict[Any, int]:
    """Most attempts of ``queue`` running at one instant per ``by`` group (a finish at the
    same instant as a start counts first)."""
    rows = db.execute(f"""
        WITH runs AS (
            SELECT {by} AS g, r.started_at, r.finished_at
            FROM scheduler.job_runs AS r JOIN scheduler.jobs AS j ON j.id = r.job_id
            WHERE j.queue = %s
        ), events AS (
            SELECT g, started_at AS at, 1 AS d FROM runs
            UNION ALL SELECT g, finished_at, -1 FROM runs
        )
        SELECT g, max(running)::int FROM (
            SELECT g, sum(d) OVER (PARTITION BY g ORDER BY at, d) AS running FROM events
        ) AS s GROUP BY g""", (queue,)).fetchall()  # fmt: skip
    return dict(rows)


def _most_starts_in(db: psycopg.Connection, queue: str, window: timedelta) -> int:
    starts = [r[0] for r in db.execute(
        "SELECT r.started_at FROM scheduler.job_runs AS r JOIN scheduler.jobs AS j "
        "ON j.id = r.job_id WHERE j.queue = %s ORDER BY 1", (queue,))]  # fmt: skip
    return max(sum(1 for t in starts if s <= t < s + window) for s in starts)


def _enqueue(db: psycopg.Connection) -> None:
    for queue, (n, ms) in JOBS.items():
        for i in range(n):
            key = KEYS[i % len(KEYS)] if queue == "keyed" else None
            scheduler.enqueue(flow_tasks.nap, args={"ms": ms}, queue=queue, concurrency_key=key,
                              connection=db)  # fmt: skip
    db.commit()


async def _apply(url: str, path: Path) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await apply_declared_limits(conn, Store("scheduler"), load_config(path).queues)


def _running_on(db: psycopg.Connection, pid: int) -> set[str]:
    rows = db.execute("SELECT DISTINCT queue FROM scheduler.jobs WHERE state = 'running' "
                      "AND split_part(locked_by, ':', 2) = %s", (str(pid),))  # fmt: skip
    return {r[0] for r in rows}


@pytest.mark.parametrize("run", range(RUNS))
def test_no_limit_exceeded_across_three_replicas_one_killed(
    run: int, db: psycopg.Connection, db_url: str, tmp_path: Path, start_replica: Any
) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_text(YAML)
    asyncio.run(_apply(db_url, path))
    env = {"SCHEDULER_LEASE_S": "3", "SCHEDULER_POLL_INTERVAL_S": "0.2"}
    replicas = [start_replica("run", "--config", str(path), "--queues", ",".join(JOBS),
                              "--concurrency", "6", env=env) for _ in range(3)]  # fmt: skip
    # every replica is up before the jobs come, so the one to kill gets its share of them
    wait_until(lambda: db.execute("SELECT count(*) FROM scheduler.replicas").fetchone()[0] == 3,
               timeout=30)  # fmt: skip
    _enqueue(db)
    # the first replica seen running jobs that count against a limit is killed: they count
    # until they are rescued (a fixed victim sometimes never got one before the others
    # had taken them all). It is frozen (SIGSTOP) and checked again before the SIGKILL: a
    # 120 ms job seen running could otherwise finish before the kill (CI saw 0 rescued).
    victims: list[Any] = []

    def busy() -> bool:
        for r in replicas:
            if _running_on(db, r.pid) & {"capped", "keyed"}:
                os.kill(r.pid, signal.SIGSTOP)
                time.sleep(0.05)  # a completion already sent to the server commits
                if _running_on(db, r.pid) & {"capped", "keyed"}:
                    victims.append(r)
                    return True
                os.kill(r.pid, signal.SIGCONT)
        return False

    wait_until(busy, timeout=30, interval=0.005)
    victim = victims[0]
    victim.kill()
    replicas.remove(victim)
    total = sum(n for n, _ in JOBS.values())
    wait_until(lambda: db.execute("SELECT count(*) FROM scheduler.jobs WHERE state = "
                                  "'succeeded'").fetchone()[0] == total, timeout=60)  # fmt: skip
    for replica in replicas:
        assert replica.stop() == 0, replica.output()[-2000:]
    lost = db.execute("SELECT count(*) FROM scheduler.job_runs WHERE outcome = 'lost'").fetchone()
    capped = _peak(db, "capped")["all"]
    keyed = _peak(db, "keyed", "j.concurrency_key")
    rated = _most_starts_in(db, "rated", timedelta(seconds=1))
    print(f"flow-replicas: run {run}: capped peak {capped} (limit 3), keyed peak per key "
          f"{max(keyed.values())} (limit 1), rated most starts in 1 s {rated} (limit 10), "
          f"lost attempts rescued {lost[0]}")  # fmt: skip
    assert capped <= 3 and max(keyed.values()) <= 1 and rated <= 10
    assert lost[0] >= 1  # the killed replica's jobs were rescued and ran again
    assert capped == 3 and set(keyed) == set(KEYS) and rated >= 8  # the limits were used
