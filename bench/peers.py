"""The same workloads on the peer libraries, for ``bench/run.py`` to print next to ours.

Each function creates its own database (``peer_<peer>_<workload>``, dropped first), installs
the peer's schema through the peer's own API, and returns figures without printing anything.
The peers' loggers are set to WARNING. Everything is async on psycopg 3 (the peers' psycopg
drivers), run with ``asyncio.run`` from these synchronous functions.

Procrastinate (``App(PsycopgConnector(...))``, schema from ``schema_manager.apply_schema_async``):

* drain: n jobs of an ``async def noop()`` task inserted with ``Task.batch_defer_async`` in
  batches of 10,000 (its own bulk API; ANALYZE afterwards), then one worker
  ``run_worker_async(concurrency=100, wait=False)`` on the connector's default pool
  (psycopg_pool: 4 connections; 2, 6, 10 or 20 were no faster here, 40 slower). The worker
  fetches one job per query and finishes one job per query. Jobs/s from worker start until no
  job is ``todo``/``doing`` (SQL poll every 10 ms on another connection); the worker then
  stops by itself (``wait=False``) and is awaited.
* enqueue: ``Task.defer_async()`` one after another (each its own pool transaction), then
  ``Task.batch_defer_async`` in batches of 10,000.
* lateness: a worker with default polling: ``fetch_job_polling_interval=5`` s and
  ``listen_notify=True`` (the NOTIFY sent at insert does not help a job that is not yet due,
  so a scheduled job waits for the next poll), concurrency 100 as in the drain. Jobs are
  deferred one by one with ``configure(schedule_at=due)``; the task records ``time.time()``.

PgQueuer (``QueueManager(Queries(PsycopgDriver(conn)))`` on one autocommit connection, schema
from ``Queries.install()``, default "durable" tables):

* drain: n jobs inserted with the list form of ``Queries.enqueue`` (its bulk API) in batches of
  10,000 (ANALYZE afterwards), then ``QueueManager.run(batch_size=batch_size,
  max_concurrent_tasks=max(100, 2 * batch_size), mode=drain)`` (it refuses fewer than twice
  the batch) with an ``async def noop(job)`` entrypoint.
  Jobs/s from worker start until the ``pgqueuer`` table is empty (finished jobs are deleted
  and logged to ``pgqueuer_log`` in one statement); ``shutdown`` is then set and the worker
  awaited (a few seconds, not counted: see the note below).
* enqueue: ``Queries.enqueue(entrypoint, payload)`` one after another (autocommit), then the
  list form in batches of 10,000.
* lateness: ``QueueManager.run()`` with its defaults: ``dequeue_timeout=30`` s, shortened to the
  next deferred job's ETA (floor 0.1 s), NOTIFY on every change of the jobs table,
  ``batch_size=10``. Jobs are enqueued one by one with ``execute_after = due - now`` (relative
  to the server's ``NOW()``, so the stored due time is later than ``due`` by the client-server
  skew of a local round trip, well under 1 ms); the handler records ``time.time()``.

Note on ``PsycopgDriver`` (asyncpg is not used): the driver shares its one connection between
queries and its NOTIFY reader, which holds the connection lock in ``notifies(timeout=1.0)``
until a notification arrives or 1 s passes. An idle worker's queries (the ETA probes, the
dequeue of a job that just became due) therefore wait up to 1 s each for the lock: this, not
the ETA logic, dominates PgQueuer's lateness here (up to ~3 s; with the reader's timeout
patched to 20 ms it was p50 ~40 ms, max ~130 ms), and it makes an idle worker take up to
~4 s to stop. It is measured as shipped.

Lateness is (start in handler - due time passed) in ms, sorted; jobs are spread evenly over
``spread_s`` seconds starting 1 s after the worker has been idle for 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

PEERS = ("procrastinate", "pgqueuer")
NOOP = "noop"
CONCURRENCY = 100  # in-flight jobs, as ours
BULK_BATCH = 10_000
POLL_S = 0.01
TIMEOUT_S = 600.0


def available() -> dict[str, str]:
    """Name -> version of the peers that can be imported."""
    found: dict[str, str] = {}
    for name in PEERS:
        try:
            importlib.import_module(name)
            found[name] = metadata.version(name)
        except (ImportError, metadata.PackageNotFoundError):
            continue
    return found


def _quiet() -> None:
    for name in PEERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _fresh_db(admin_url: str, name: str) -> str:
    _quiet()
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(admin_url, dbname=name)


async def _wait_sql(url: str, query: str, worker: asyncio.Task[Any]) -> None:
    """Poll ``query`` (one boolean) every 10 ms on its own connection until it is true."""
    deadline = time.monotonic() + TIMEOUT_S
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            stopped = worker.done()
            row = await (await conn.execute(query)).fetchone()
            if row and row[0]:
                return
            if stopped:
                worker.result()  # re-raise the worker's error, if any
                raise RuntimeError("worker stopped before all jobs finished")
            if time.monotonic() > deadline:
                raise TimeoutError(query)
            await asyncio.sleep(POLL_S)


async def _wait_count(values: list[float], n: int, worker: asyncio.Task[Any]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while len(values) < n:
        if worker.done():
            worker.result()
            raise RuntimeError("worker stopped before all jobs ran")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(values)} of {n} jobs ran")
        await asyncio.sleep(POLL_S)


async def _analyze(url: str, table: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"ANALYZE {table}")


def _singles_stats(latencies: list[float], elapsed: float) -> tuple[float, float, float]:
    latencies = sorted(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, latencies[len(latencies) // 2], p99


async def _cancel(worker: asyncio.Task[Any]) -> None:
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker


# --- Procrastinate ---------------------------------------------------------------------------


def _procrastinate_app(url: str, late_ms: list[float] | None = None) -> tuple[Any, Any]:
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=url))

    @app.task(name=NOOP)
    async def noop(due: float | None = None) -> None:
        if late_ms is not None and due is not None:
            late_ms.append((time.time() - due) * 1000)

    return app, noop


def procrastinate_drain(admin_url: str, n: int) -> float:
    """Jobs/s for one worker (concurrency 100) draining n no-op jobs (batch_defer_async)."""
    url = _fresh_db(admin_url, "peer_procrastinate_w1")

    async def scenario() -> float:
        app, noop = _procrastinate_app(url)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            for start in range(0, n, BULK_BATCH):
                await noop.batch_defer_async(*([{}] * min(BULK_BATCH, n - start)))
            await _analyze(url, "procrastinate_jobs")
            started = time.perf_counter()
            worker = asyncio.create_task(
                app.run_worker_async(
                    concurrency=CONCURRENCY, wait=False, install_signal_handlers=False
                )
            )
            try:
                await _wait_sql(
                    url,
                    "SELECT NOT EXISTS (SELECT 1 FROM procrastinate_jobs"
                    " WHERE status IN ('todo', 'doing'))",
                    worker,
                )
                elapsed = time.perf_counter() - started
                await asyncio.wait_for(worker, 60)  # wait=False: stops once the queue is empty
            finally:
                await _cancel(worker)
        return n / elapsed

    return asyncio.run(scenario())


def procrastinate_enqueue(
    admin_url: str, singles: int, bulk: int
) -> tuple[float, float, float, float]:
    """(single jobs/s, p50 ms, p99 ms, bulk jobs/s): defer_async / batch_defer_async."""
    url = _fresh_db(admin_url, "peer_procrastinate_w2")

    async def scenario() -> tuple[float, float, float, float]:
        app, noop = _procrastinate_app(url)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            await noop.defer_async()  # warm the pool and the statement
            latencies: list[float] = []
            started = time.perf_counter()
            for _ in range(singles):
                t = time.perf_counter()
                await noop.defer_async()
                latencies.append((time.perf_counter() - t) * 1000)
            rate, p50, p99 = _singles_stats(latencies, time.perf_counter() - started)
            started = time.perf_counter()
            for start in range(0, bulk, BULK_BATCH):
                await noop.batch_defer_async(*([{}] * min(BULK_BATCH, bulk - start)))
            bulk_rate = bulk / (time.perf_counter() - started)
        return rate, p50, p99, bulk_rate

    return asyncio.run(scenario())


def procrastinate_lateness(admin_url: str, jobs: int, spread_s: float) -> list[float]:
    """Sorted start lateness (ms) of jobs deferred with schedule_at; default 5 s polling."""
    url = _fresh_db(admin_url, "peer_procrastinate_w3")
    late_ms: list[float] = []

    async def scenario() -> None:
        app, noop = _procrastinate_app(url, late_ms)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            worker = asyncio.create_task(
                app.run_worker_async(concurrency=CONCURRENCY, install_signal_handlers=False)
            )
            try:
                await asyncio.sleep(1.0)  # idle
                base = time.time() + 1.0
                for i in range(jobs):
                    due = base + spread_s * i / jobs
                    at = datetime.fromtimestamp(due, UTC)
                    await noop.configure(schedule_at=at).defer_async(due=due)
                await _wait_count(late_ms, jobs, worker)
            finally:
                await _cancel(worker)  # the worker's documented graceful stop

    asyncio.run(scenario())
    return sorted(late_ms)


# --- PgQueuer --------------------------------------------------------------------------------


async def _pgqueuer_install(url: str) -> None:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await Queries(PsycopgDriver(conn)).install()


async def _pgqueuer_bulk(queries: Any, n: int) -> None:
    for start in range(0, n, BULK_BATCH):
        k = min(BULK_BATCH, n - start)
        await queries.enqueue([NOOP] * k, [None] * k, [0] * k)


def _pgqueuer_worker(
    conn: psycopg.AsyncConnection[Any], handler: Callable[[Any], None] | None = None
) -> Any:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    qm = QueueManager(Queries(PsycopgDriver(conn)))

    @qm.entrypoint(NOOP)
    async def noop(job: Job) -> None:
        if handler is not None:
            handler(job)

    return qm


def pgqueuer_drain(admin_url: str, n: int, batch_size: int = 50) -> float:
    """Jobs/s for one QueueManager draining n no-op jobs (list enqueue): 100 in flight, or
    twice ``batch_size`` when that is more (PgQueuer refuses fewer)."""
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    url = _fresh_db(admin_url, "peer_pgqueuer_w1")

    async def scenario() -> float:
        await _pgqueuer_install(url)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await _pgqueuer_bulk(Queries(PsycopgDriver(conn)), n)
        await _analyze(url, "pgqueuer")
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            qm = _pgqueuer_worker(conn)
            started = time.perf_counter()
            worker = asyncio.create_task(
                qm.run(
                    batch_size=batch_size,
                    max_concurrent_tasks=max(CONCURRENCY, 2 * batch_size),
                    mode=QueueExecutionMode.drain,
                )
            )
            try:
                await _wait_sql(url, "SELECT NOT EXISTS (SELECT 1 FROM pgqueuer)", worker)
                elapsed = time.perf_counter() - started
                qm.shutdown.set()
                await asyncio.wait_for(worker, 60)
            finally:
                await _cancel(worker)
        return n / elapsed

    return asyncio.run(scenario())


def pgqueuer_enqueue(admin_url: str, singles: int, bulk: int) -> tuple[float, float, float, float]:
    """(single jobs/s, p50 ms, p99 ms, bulk jobs/s): Queries.enqueue, scalar then list form."""
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    url = _fresh_db(admin_url, "peer_pgqueuer_w2")

    async def scenario() -> tuple[float, float, float, float]:
        await _pgqueuer_install(url)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            queries = Queries(PsycopgDriver(conn))
            await queries.enqueue(NOOP, None)  # warm the statement
            latencies: list[float] = []
            started = time.perf_counter()
            for _ in range(singles):
                t = time.perf_counter()
                await queries.enqueue(NOOP, None)
                latencies.append((time.perf_counter() - t) * 1000)
            rate, p50, p99 = _singles_stats(latencies, time.perf_counter() - started)
            started = time.perf_counter()
            await _pgqueuer_bulk(queries, bulk)
            bulk_rate = bulk / (time.perf_counter() - started)
        return rate, p50, p99, bulk_rate

    return asyncio.run(scenario())


def pgqueuer_lateness(admin_url: str, jobs: int, spread_s: float) -> list[float]:
    """Sorted start lateness (ms) of jobs enqueued with execute_after; QueueManager defaults."""
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    url = _fresh_db(admin_url, "peer_pgqueuer_w3")
    late_ms: list[float] = []

    def record(job: Any) -> None:
        late_ms.append((time.time() - float(job.payload.decode())) * 1000)

    async def scenario() -> None:
        await _pgqueuer_install(url)
        async with (
            await psycopg.AsyncConnection.connect(url, autocommit=True) as worker_conn,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as client_conn,
        ):
            qm = _pgqueuer_worker(worker_conn, record)
            worker = asyncio.create_task(qm.run())
            try:
                await asyncio.sleep(1.0)  # idle
                queries = Queries(PsycopgDriver(client_conn))
                base = time.time() + 1.0
                for i in range(jobs):
                    due = base + spread_s * i / jobs
                    delay = timedelta(seconds=due - time.time())
                    await queries.enqueue(NOOP, repr(due).encode(), execute_after=delay)
                await _wait_count(late_ms, jobs, worker)
                qm.shutdown.set()
                await asyncio.wait_for(worker, 60)
            finally:
                await _cancel(worker)

    asyncio.run(scenario())
    return sorted(late_ms)
