"""W5: claim latency at scale, with ``EXPLAIN (ANALYZE, BUFFERS)`` of the claim.

Two shapes, each on a fresh database: ``due`` (N jobs all due now) and ``future`` (N jobs due
in 1-30 days, plus one due job inserted before each claim: a trickle). A claim is the
production ``claim_jobs`` statement with a batch of 10, timed from the client (one round
trip, committed); each claimed batch is completed before the next claim, as a worker would.

And the shape users feel (:func:`w5_trickle_lateness`): a real replica, default settings,
beside N future jobs, while one due job is enqueued every 50 ms: how late each one starts
(``run_history.start_lateness_s``, database clock).
"""

from __future__ import annotations

import asyncio
import time

import psycopg

from scheduler import enqueue_async
from scheduler.service import Replica
from scheduler.settings import Settings
from scheduler.store import Store

from .workloads import fresh_db

STORE = Store("scheduler")
CLAIMS = 500


def fill(url: str, size: int, shape: str) -> None:
    """Insert ``size`` jobs server-side (generate_series; the enqueue path is W2's)."""
    run_at = "now()" if shape == "due" else "now() + (1 + g %% 30) * interval '1 day'"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"""INSERT INTO scheduler.jobs (task, args, run_at, first_run_at)
                SELECT 'bench.noop', '{{}}', {run_at}, {run_at}
                FROM generate_series(1, %s) AS g""",
            [size],
        )
        conn.execute("VACUUM ANALYZE scheduler.jobs")


async def _claims(url: str, shape: str) -> list[float]:
    latencies = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(CLAIMS):
            if shape == "future":
                await conn.execute(
                    "INSERT INTO scheduler.jobs (task, args) VALUES ('bench.noop', '{}')"
                )
            started = time.perf_counter()
            jobs = await STORE.claim_jobs(
                conn, queues=["default"], limit=10, worker_id="w5", lease_s=30
            )
            latencies.append((time.perf_counter() - started) * 1000)
            assert jobs, "nothing claimed"
            await STORE.complete_jobs(
                conn,
                "w5",
                [
                    {
                        "id": j["id"],
                        "attempt": j["attempt"],
                        "state": "succeeded",
                        "outcome": "succeeded",
                    }
                    for j in jobs
                ],
            )
    return sorted(latencies)


def explain(url: str) -> str:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of one claim (rolled back)."""
    sql = STORE.q["claim_jobs"]
    with psycopg.connect(url) as conn:
        text = sql.as_string(conn)
        params = {"queues": ["default"], "limit": 10, "worker_id": "explain", "lease_s": 30,
                  "now": None}
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + text, params).fetchall()
        conn.rollback()
    return "\n".join(r[0] for r in rows)


def w5_claim_latency(admin_url: str, size: int, shape: str, show_plan: bool = False) -> list[float]:
    """Sorted claim latencies (ms) of ``CLAIMS`` claims of 10 jobs, with ``size`` jobs of the
    given ``shape`` in the table."""
    url = fresh_db(admin_url, f"bench_w5_{shape}")
    fill(url, size, shape)
    latencies = asyncio.run(_claims(url, shape))
    if show_plan:
        print(explain(url))
    return latencies


def w5_trickle_lateness(
    admin_url: str, size: int, jobs: int = 600, every_s: float = 0.05
) -> list[float]:
    """Sorted start lateness (ms) of ``jobs`` due jobs enqueued one every ``every_s`` seconds
    while a replica with default settings runs beside ``size`` future jobs."""
    url = fresh_db(admin_url, "bench_w5_trickle")
    fill(url, size, "future")

    async def scenario() -> None:
        replica = Replica(url, Settings(), None)
        stop = asyncio.Event()
        runner = asyncio.create_task(replica.run(stop))
        await asyncio.wait_for(replica.worker.listening.wait(), 30)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for _ in range(jobs):
                await enqueue_async("bench.noop", connection=conn)
                await asyncio.sleep(every_s)
            for _ in range(600):
                cur = await conn.execute("SELECT count(*) FROM scheduler.job_runs")
                if (await cur.fetchone())[0] >= jobs:
                    break
                await asyncio.sleep(0.05)
        stop.set()
        await runner

    asyncio.run(scenario())
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT start_lateness_s * 1000 FROM scheduler.run_history").fetchall()
    assert len(rows) == jobs, f"{len(rows)} of {jobs} trickle jobs ran"
    return sorted(float(r[0]) for r in rows)
