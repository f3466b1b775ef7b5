"""A real PgBouncer (Debian's 1.18) in front of a dedicated PostgreSQL 15 (issue 11, item 1).

PgBouncer before 1.21 does not track protocol-level prepared statements, and in transaction
mode it gives each transaction whichever server connection is free: psycopg's prepared
statements (from a query's 6th execution on a connection), ``SET``, session advisory locks and
``LISTEN`` break or leak through it. The pools are small (3 server connections, 5 for the long
run) so that clients really share server connections. The scenarios:

* transaction pool + ``SCHEDULER_DIRECT_DATABASE_URL`` (the README's set-up), two ``scheduler
  run`` replicas, an every-second schedule and delayed jobs enqueued through the pool for
  ``RUN_S`` s: one job per fire time and no gap, no claim or completion error, every job
  succeeded at its first attempt, delayed-job start lateness p99 <= 10 ms;
* a session pool alone: the same, shorter, and nothing left on the pool's server connections;
* a transaction pool alone: each replica refuses to lead with one error naming the pooler and
  ``SCHEDULER_DIRECT_DATABASE_URL``, its worker still runs jobs (one warning that LISTEN cannot
  work), no leader, and the pool's other clients see none of our settings, locks or timeouts;
* the Python API and the operator functions on pooled connections, past the prepare threshold.

A scenario collects every problem and fails once with the list, so a failure shows all that
went wrong, not only the first thing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from scheduler import (
    JobSpec,
    enqueue,
    enqueue_async,
    enqueue_many,
    enqueue_many_async,
    operations,
    schedule_at,
    schedule_at_async,
    schedule_many,
    schedule_many_async,
)
from scheduler.connections import close_default_pools, set_default_database_url
from scheduler.errors import SchedulerError
from scheduler.service import migrate
from scheduler.settings import Settings, get_settings
from scheduler.store import Store
from tests import pooler, servers
from tests.acceptance.conftest import ROOT, Replica

# solo: run after the parallel part of the suite, alone (README's test command): these
# tests measure start lateness in milliseconds, which another test on the other core of a
# 2-core machine disturbs (CI saw 3 of 253 delayed jobs over 10 ms while running beside one)
pytestmark = [pytest.mark.timeout(300), pytest.mark.solo]

RUN_S = 60  # the 60 s of an every-second schedule (transaction pool + direct URL)
SESSION_RUN_S = 20
# Server connections of the run's transaction pool: its ~9 client connections (2 replicas'
# pools and the enqueuer) still share them. With 3, waits for a server connection alone put
# the lateness p99 at 6-10 ms (measured; 5: 2.8 ms, direct: 2.4 ms on a 2-core VM).
RUN_POOL = 5
SESSION_POOL = 30  # a session pool needs a server connection per client session
LATENESS_P99_S = 0.010
POLL_S = 5.0  # the default safety poll: the only wake-up left when LISTEN cannot work
TASK = "acceptance.echo"
TEMPLATE = "pgbouncer_template"
LOCK_KEY = "scheduler.leader:scheduler"
FAILURE_EVENTS = frozenset({
    "claim_failed", "complete_failed", "complete_refused", "completion_dropped",
    "lease_extension_failed", "loop_crashed", "leader_duty_failed", "materialise_batch_failed",
    "replica_heartbeat_failed", "listen_connection_lost", "leader_connection_lost",
    "leader_stepped_down",
})  # fmt: skip
TIMEOUTS = ("statement_timeout", "idle_session_timeout", "idle_in_transaction_session_timeout")
API_ERRORS = (SchedulerError, psycopg.Error)  # the Python API's own, or psycopg's on a caller's
SCHEDULES = """\
timezone: UTC
imports: [tests.acceptance.app_tasks]
schedules:
  - name: every_second
    cron: "* * * * * *"
    task: acceptance.tick
"""
_databases = itertools.count()


def _require(present: bool, what: str) -> None:
    if not present:
        (pytest.fail if servers.in_ci() else pytest.skip)(f"{what} is not installed")


@pytest.fixture(scope="module")
def pg15() -> Iterator[servers.Cluster]:
    """A PostgreSQL 15 cluster for this module, with a migrated template database."""
    _require(servers.bin_dir("15") is not None, "PostgreSQL 15 (/usr/lib/postgresql/15)")
    _require(pooler.installed(), f"PgBouncer ({pooler.PGBOUNCER})")
    with servers.cluster("15") as cluster:
        with psycopg.connect(cluster.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
        asyncio.run(migrate(cluster.url(TEMPLATE), Settings()))
        yield cluster


@pytest.fixture(scope="module")
def tx_bouncer(pg15: servers.Cluster) -> Iterator[pooler.PgBouncer]:
    with pooler.pgbouncer(pg15, "transaction") as bouncer:
        yield bouncer


@pytest.fixture(scope="module")
def tx_run_bouncer(pg15: servers.Cluster) -> Iterator[pooler.PgBouncer]:
    with pooler.pgbouncer(pg15, "transaction", pool_size=RUN_POOL) as bouncer:
        yield bouncer


@pytest.fixture(scope="module")
def session_bouncer(pg15: servers.Cluster) -> Iterator[pooler.PgBouncer]:
    with pooler.pgbouncer(pg15, "session", pool_size=SESSION_POOL) as bouncer:
        yield bouncer


@pytest.fixture
def dbname(pg15: servers.Cluster) -> Iterator[str]:
    """A fresh migrated database (a clone of the template) for this test."""
    name = f"pgbouncer_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(pg15.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    yield name
    with psycopg.connect(pg15.url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def start_replica(tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """``start(url, direct_url=None)``: ``scheduler run`` of the every-second schedule with
    JSON logs and default timings."""
    config = tmp_path / "schedules.yaml"
    config.write_text(SCHEDULES)
    started: list[Replica] = []

    def start(url: str, direct_url: str | None = None) -> Replica:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        env.update(
            SCHEDULER_DATABASE_URL=url,
            SCHEDULER_LOG_FORMAT="json",
            SCHEDULER_EMBEDDED_DIR=str(tmp_path / "embedded"),
            PYTHONPATH=str(ROOT),
        )
        if direct_url:
            env["SCHEDULER_DIRECT_DATABASE_URL"] = direct_url
        log = tmp_path / f"replica{len(started)}.log"
        started.append(Replica(["run", "--config", str(config)], env, log))
        return started[-1]

    yield start
    for replica in started:
        replica.kill()


# ---- evidence ---------------------------------------------------------------------------------


def _events(replica: Replica) -> list[dict[str, Any]]:
    """The replica's JSON log events, each with its ``_line``; other lines as ``<not json>``."""
    events = []
    for line in replica.output().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            event = {"event": "<not json>", "level": "raw"}
        events.append({**event, "_line": line})
    return events


def _refusals(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Error events refusing to lead: they name the pooler and the direct URL's setting."""
    return [e for e in events if e.get("level") == "error"
            and ("pooler" in e["_line"].lower() or "pgbouncer" in e["_line"].lower())
            and "SCHEDULER_DIRECT_DATABASE_URL" in e["_line"]]  # fmt: skip


def _log_problems(replicas: list[Replica], allowed_errors: int = 0) -> list[str]:
    """Failure events, prepared-statement errors and unexpected error events in the logs."""
    problems = []
    for i, events in enumerate(_events(r) for r in replicas):
        failures = [e for e in events if e["event"] in FAILURE_EVENTS]
        errors = [e for e in events if e.get("level") in ("error", "critical")]
        prepared = [e for e in events if "prepared statement" in e["_line"]]
        for what, found, allowed in (("failure events", failures, 0),
                                     ("prepared-statement errors", prepared, 0),
                                     ("error events", errors, allowed_errors)):  # fmt: skip
            if len(found) > allowed:
                counts = dict(Counter(e["event"] for e in found))
                problems.append(f"replica {i}: {what} {counts}, first: {found[0]['_line'][:300]}")
    return problems


def _wait(predicate: Callable[[], object], timeout: float) -> bool:
    """Poll ``predicate`` until truthy; False after ``timeout`` s (the caller records it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _job_problems(db: psycopg.Connection[Any], until: datetime) -> list[str]:
    """Every job due by ``until`` succeeded at its first attempt, with exactly one run."""
    rows = db.execute(
        "SELECT j.id, j.schedule_name, j.state, j.attempt, count(r.id) AS runs, j.last_error"
        " FROM scheduler.jobs j LEFT JOIN scheduler.job_runs r ON r.job_id = j.id"
        " WHERE j.first_run_at <= %s GROUP BY j.id"
        " HAVING j.state <> 'succeeded' OR j.attempt <> 1 OR count(r.id) <> 1 ORDER BY j.id",
        (until,),
    ).fetchall()
    if not rows:
        return []
    kinds = dict(Counter(f"{r[2]}, attempt {r[3]}, {r[4]} runs" for r in rows))
    return [f"{len(rows)} jobs did not succeed exactly once: {kinds}; e.g. {rows[0]}"]


def _fire_time_problems(db: psycopg.Connection[Any], start: datetime, end: datetime) -> list[str]:
    """Exactly one job per whole second of [start, end], none missing."""
    seconds = range(math.ceil(start.timestamp()), int(end.timestamp()) + 1)
    expected = {datetime.fromtimestamp(s, UTC) for s in seconds}
    rows = db.execute(
        "SELECT scheduled_for, count(*) FROM scheduler.jobs WHERE schedule_name = "
        "'every_second' AND scheduled_for BETWEEN %s AND %s GROUP BY 1",
        (start, end),
    ).fetchall()
    problems = []
    if missing := sorted(expected - {r[0] for r in rows}):
        problems.append(f"{len(missing)} of {len(expected)} fire times have no job, first "
                        f"{missing[0].isoformat()}")  # fmt: skip
    if doubled := [r for r in rows if r[1] != 1]:
        problems.append(f"{len(doubled)} fire times have several jobs: {doubled[:3]}")
    return problems


def _held_locks(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Advisory locks on the scheduler's leader key in this database, held or awaited."""
    return conn.execute(
        "SELECT l.pid, l.granted, a.application_name, a.client_port, left(a.query, 80)"
        " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.objsubid = 1"
        "   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "   AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(%s, 0)",
        (LOCK_KEY,),
    ).fetchall()


class LockWatch(threading.Thread):
    """Samples :func:`_held_locks` every 50 ms on a direct connection until ``stop()``."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.seen: set[tuple[Any, ...]] = set()
        self._done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._done.wait(0.05):
                self.seen.update(_held_locks(conn))

    def stop(self) -> list[tuple[Any, ...]]:
        self._done.set()
        self.join(10)
        return sorted(self.seen, key=str)


def _other_client_problems(pooled_url: str, direct_url: str, sleepers: int = 2) -> list[str]:
    """Another application on the pool: ``sleepers`` concurrent ``SELECT pg_sleep(6)`` must
    not be cancelled, and ``SHOW`` of the session timeouts on 3 connections, 12 times over
    3 s, must give the server's defaults (a pool of 3: every server connection is seen)."""
    with psycopg.connect(direct_url, autocommit=True) as conn:
        defaults = {name: _scalar(conn, f"SHOW {name}") for name in TIMEOUTS}
    errors: list[str] = []

    def sleep() -> None:
        try:
            with psycopg.connect(pooled_url, autocommit=True, prepare_threshold=None) as conn:
                conn.execute("SELECT pg_sleep(6)")
        except psycopg.Error as exc:
            errors.append(f"{type(exc).__name__}: {str(exc).strip()}")

    threads = [threading.Thread(target=sleep, daemon=True) for _ in range(sleepers)]
    for t in threads:
        t.start()
    seen: Counter[str] = Counter()
    conns = [psycopg.connect(pooled_url, autocommit=True, prepare_threshold=None)
             for _ in range(3)]  # fmt: skip
    try:
        for _ in range(12):
            for conn, name in itertools.product(conns, TIMEOUTS):
                if (value := _scalar(conn, f"SHOW {name}")) != defaults[name]:
                    seen[f"{name}={value}"] += 1
            time.sleep(0.25)  # sampling over a few seconds, not waiting for a condition
    finally:
        for conn in conns:
            conn.close()
    for t in threads:
        t.join(60)
    problems = [f"another client's SELECT pg_sleep(6) through the pool failed: {e}"
                for e in errors]  # fmt: skip
    if any(t.is_alive() for t in threads):
        problems.append("another client's SELECT pg_sleep(6) still running after 60 s")
    if seen:
        problems.append(f"settings seen by another client of the pool: {dict(seen)} "
                        f"(server defaults {defaults})")  # fmt: skip
    return problems


# ---- two replicas, an every-second schedule and delayed jobs ----------------------------------


def _enqueue_during(pooled_url: str, start: datetime, run_s: float) -> tuple[list[int], list[str]]:
    """schedule_at() on one pooled connection: run_s/2 jobs spread over the run, then one
    every 0.25 s due 0.5-3 s later, all due before the run ends. Returns (ids, errors)."""
    ids: list[int] = []
    errors: list[str] = []
    end = start + timedelta(seconds=run_s)
    with psycopg.connect(pooled_url, autocommit=True) as client:

        def put(run_at: datetime) -> None:
            try:
                ids.append(schedule_at(TASK, run_at, args={"message": "m"}, connection=client))
            except API_ERRORS as exc:  # recorded: reported with every other problem
                errors.append(f"{type(exc).__name__}: {str(exc).strip()[:200]}")

        for _ in range(int(run_s) // 2):
            put(start + timedelta(seconds=random.uniform(2, run_s - 2)))
        while datetime.now(UTC) < end - timedelta(seconds=3.5):
            put(datetime.now(UTC) + timedelta(seconds=random.uniform(0.5, 3.0)))
            time.sleep(0.25)  # the enqueue rate
    return ids, errors


def _lateness_problems(db: psycopg.Connection[Any], ids: list[int]) -> list[str]:
    """Start lateness of the delayed jobs (``run_history.start_lateness_s``): p99 <= 10 ms,
    read as "at most 1% of the jobs, and at least one, start more than 10 ms late" (with a
    few dozen jobs a single scheduling hiccup of the 2-core box would otherwise be the p99)."""
    rows = db.execute(
        "SELECT h.start_lateness_s, j.first_run_at FROM scheduler.run_history h"
        " JOIN scheduler.jobs j ON j.id = h.job_id WHERE h.job_id = ANY(%s) AND h.attempt = 1"
        " ORDER BY 1", (ids,)).fetchall()  # fmt: skip
    if not rows:
        return ["no delayed job started"] if ids else []
    late = [float(r[0]) for r in rows]
    p99 = statistics.quantiles(late, n=100, method="inclusive")[98] if len(late) > 1 else late[0]
    worst = ", ".join(f"{1000 * float(s):.1f} ms at {t:%H:%M:%S.%f}" for s, t in rows[-5:])
    figures = (f"{len(late)} delayed jobs started: lateness p50 {1000 * late[len(late) // 2]:.2f}"
               f" ms, p99 {1000 * p99:.2f} ms; the worst: {worst}")  # fmt: skip
    print(figures)
    over = sum(x > LATENESS_P99_S for x in late)
    if over <= max(1, len(late) // 100):
        return []
    return [f"{figures}: {over} over {1000 * LATENESS_P99_S:g} ms (p99 {1000 * p99:.2f} ms)"]


def _scenario(start_replica: Callable[..., Replica], pooled_url: str, direct_url: str | None,
              admin_url: str, run_s: float) -> list[str]:  # fmt: skip
    """Two replicas on ``pooled_url`` (and ``direct_url``) for ``run_s`` seconds of the
    every-second schedule and delayed jobs; returns the problems seen."""
    problems: list[str] = []
    replicas = [start_replica(pooled_url, direct_url) for _ in range(2)]
    with psycopg.connect(admin_url, autocommit=True) as db:
        if not _wait(lambda: _scalar(db, "SELECT count(*) FROM scheduler.leader"), 30):
            problems.append("no leader elected within 30 s")
        start = datetime.now(UTC)
        end = start + timedelta(seconds=run_s)
        ids, errors = _enqueue_during(pooled_url, start, run_s)
        time.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds()))  # the run's length
        if errors:
            problems.append(f"schedule_at through the pool failed {len(errors)} times of "
                            f"{len(ids) + len(errors)}: {dict(Counter(errors))}")  # fmt: skip
        unfinished = ("SELECT count(*) = 0 FROM scheduler.jobs"
                      " WHERE first_run_at <= %s AND state <> 'succeeded'")  # fmt: skip
        if not _wait(lambda: _scalar(db, unfinished, (end,)), 20):
            problems.append("jobs due during the run still unfinished 20 s after it")
        if (term := _scalar(db, "SELECT term FROM scheduler.leader")) != 1:
            problems.append(f"leader term {term} at the end of the run (want one election)")
        if (codes := [r.stop(30) for r in replicas]) != [0, 0]:
            problems.append(f"replica exit codes {codes} after SIGTERM")
        if stuck := _scalar(db, "SELECT count(*) FROM scheduler.jobs WHERE state = 'running'"):
            problems.append(f"{stuck} jobs left running after the replicas stopped")
        problems += _fire_time_problems(db, start, end) + _job_problems(db, end)
        stored = _scalar(db, "SELECT count(*) FROM scheduler.jobs WHERE id = ANY(%s)", (ids,))
        if stored != len(ids):
            problems.append(f"{len(ids) - stored} enqueued job ids are not in the table")
        problems += _lateness_problems(db, ids)
    return problems + _log_problems(replicas)


@pytest.mark.slow
def test_transaction_pool_with_direct_url(start_replica, tx_run_bouncer, pg15, dbname):
    """The README's set-up: claims, completions and enqueues through a transaction pool,
    the lock and LISTEN sessions on the direct URL; 60 s of an every-second schedule."""
    direct = pg15.url(dbname)
    problems = _scenario(start_replica, tx_run_bouncer.url(dbname), direct, direct, RUN_S)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_session_pool_alone(start_replica, session_bouncer, pg15, dbname):
    """A session pool gives every client a real session: the service works through it
    alone, and leaves no setting or lock on the server connections it gives back."""
    pooled, direct = session_bouncer.url(dbname), pg15.url(dbname)
    problems = _scenario(start_replica, pooled, None, direct, SESSION_RUN_S)
    with psycopg.connect(direct, autocommit=True) as db:
        if locks := _held_locks(db):
            problems.append(f"advisory lock on the leader key held after the stop: {locks}")
    problems += _other_client_problems(pooled, direct, sleepers=0)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_transaction_pool_alone_refuses_to_lead_and_leaks_nothing(
    start_replica, tx_bouncer, pg15, dbname
):
    """Only the pooled URL: no replica leads (one clear error each), the workers still run
    jobs (one warning each that LISTEN cannot work), and the pool's other clients see no
    setting, lock or timeout of ours."""
    pooled, direct = tx_bouncer.url(dbname), pg15.url(dbname)
    problems: list[str] = []
    watch = LockWatch(direct)
    watch.start()
    replicas = [start_replica(pooled) for _ in range(2)]
    logs = lambda: [_events(r) for r in replicas]
    if not _wait(lambda: all(any(e["event"] == "replica_started" for e in ev)
                             for ev in logs()), 30):  # fmt: skip
        problems.append("replicas not started within 30 s")
    if not _wait(lambda: all(_refusals(ev) for ev in logs()), 20):
        problems.append("not every replica refused to lead (an error naming the pooler and "
                        "SCHEDULER_DIRECT_DATABASE_URL) within 20 s")  # fmt: skip
    now = datetime.now(UTC)
    ids: list[int] = []
    errors: list[str] = []
    with psycopg.connect(pooled, autocommit=True) as client:
        for i in range(12):  # more than 5 on one connection: psycopg would prepare
            try:
                run_at = now + timedelta(seconds=1 + i / 3)
                ids.append(schedule_at(TASK, run_at, args={"message": "m"}, connection=client))
            except API_ERRORS as exc:  # recorded: reported with every other problem
                errors.append(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
    if errors:
        problems.append(f"schedule_at through the pool failed: {dict(Counter(errors))}")
    problems += _other_client_problems(pooled, direct)

    with psycopg.connect(direct, autocommit=True) as db:
        done = "SELECT count(*) FROM scheduler.jobs WHERE id = ANY(%s) AND state = 'succeeded'"
        due_by = now + timedelta(seconds=5)
        wait_s = (due_by - datetime.now(UTC)).total_seconds() + POLL_S + 5
        if not _wait(lambda: _scalar(db, done, (ids,)) == len(ids), wait_s):
            problems.append(
                f"{_scalar(db, done, (ids,))} of {len(ids)} delayed jobs succeeded "
                f"within {POLL_S:g} s (the safety poll) + 5 s of their due time"
            )
        problems += _job_problems(db, due_by)
        if leaders := db.execute("SELECT holder, term FROM scheduler.leader").fetchall():
            problems.append(f"a leader was elected through the transaction pool: {leaders}")
        if (codes := [r.stop(30) for r in replicas]) != [0, 0]:
            problems.append(f"replica exit codes {codes} after SIGTERM")
        if locks := watch.stop() + _held_locks(db):
            problems.append(f"advisory lock on the leader key taken through the pool (pid, "
                            f"granted, application, client port, query): {locks[:4]}")  # fmt: skip
    for i, events in enumerate(logs()):
        if len(refusals := _refusals(events)) != 1:
            problems.append(f"replica {i}: {len(refusals)} refusals to lead, want 1")
        listen = [e for e in events if e.get("level") == "warning" and "LISTEN" in e["_line"]]
        if len(listen) != 1:
            problems.append(f"replica {i}: {len(listen)} warnings about LISTEN, want 1: "
                            f"{[e['_line'][:200] for e in listen[:3]]}")  # fmt: skip
    problems += _log_problems(replicas, allowed_errors=1)  # the refusal
    assert not problems, "\n".join(problems)


# ---- the Python API and the operator functions through the transaction pool -------------------


def _enqueue_all(conn: psycopg.Connection[Any] | None, at: datetime) -> list[int]:
    """One call of each enqueue function (on ``conn``, or the default pool for None)."""
    return [
        schedule_at(TASK, at, args={"message": "a"}, connection=conn),
        enqueue(TASK, args={"message": "b"}, connection=conn),
        *schedule_many([JobSpec(TASK, at, {"message": "c"})] * 2, connection=conn),
        *enqueue_many(TASK, [{"message": "d"}] * 2, connection=conn),
    ]


async def _enqueue_all_async(conn: psycopg.AsyncConnection[Any], at: datetime) -> list[int]:
    return [
        await schedule_at_async(TASK, at, args={"message": "a"}, connection=conn),
        await enqueue_async(TASK, args={"message": "b"}, connection=conn),
        *await schedule_many_async([JobSpec(TASK, at, {"message": "c"})] * 2, connection=conn),
        *await enqueue_many_async(TASK, [{"message": "d"}] * 2, connection=conn),
    ]


def test_python_api_through_transaction_pool(tx_bouncer, pg15, dbname, monkeypatch):
    """schedule_at, enqueue, schedule_many and enqueue_many on callers' connections to the
    pool, 8 times each per connection (psycopg would prepare from the 6th), in autocommit,
    in the caller's transactions, async, and on the default pool of SCHEDULER_DATABASE_URL."""
    pooled = tx_bouncer.url(dbname)
    at = datetime.now(UTC) + timedelta(days=1)
    ids: list[int] = []
    errors: Counter[str] = Counter()

    def attempt(what: str, call: Callable[[], list[int]], conn: Any = None) -> None:
        try:
            done = call()
            if conn is not None:
                conn.commit()
            ids.extend(done)
        except API_ERRORS as exc:  # recorded: every failure is reported at the end
            errors[f"{what}: {type(exc).__name__}: {str(exc).strip()[:160]}"] += 1
            if conn is not None:
                conn.rollback()

    autocommit = [psycopg.connect(pooled, autocommit=True) for _ in range(3)]
    in_tx = [psycopg.connect(pooled) for _ in range(2)]
    try:
        for _ in range(8):  # clients taking turns on three server connections
            for conn in autocommit:
                attempt("autocommit", lambda c=conn: _enqueue_all(c, at))
            for conn in in_tx:
                attempt("caller's transaction", lambda c=conn: _enqueue_all(c, at), conn)
            try:
                with autocommit[0].transaction():
                    attempt("transaction block", lambda: _enqueue_all(autocommit[0], at))
            except psycopg.Error as exc:  # the block's COMMIT
                errors[f"transaction block: {type(exc).__name__}: {exc}"] += 1
    finally:
        for conn in autocommit + in_tx:
            conn.close()

    async def async_clients() -> None:
        conns = [await psycopg.AsyncConnection.connect(pooled, autocommit=True) for _ in range(2)]
        for _ in range(8):
            for conn in conns:
                try:
                    ids.extend(await _enqueue_all_async(conn, at))
                except API_ERRORS as exc:  # recorded
                    errors[f"async: {type(exc).__name__}: {str(exc).strip()[:160]}"] += 1
        for conn in conns:
            await conn.close()

    asyncio.run(async_clients())

    monkeypatch.setenv("SCHEDULER_DATABASE_URL", pooled)
    set_default_database_url(None)
    get_settings.cache_clear()
    try:
        threads = [threading.Thread(target=lambda: [
            attempt("default pool", lambda: _enqueue_all(None, at)) for _ in range(6)])
            for _ in range(4)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        close_default_pools()
        get_settings.cache_clear()

    with psycopg.connect(pg15.url(dbname), autocommit=True) as db:
        stored = _scalar(db, "SELECT count(*) FROM scheduler.jobs WHERE id = ANY(%s)", (ids,))
    assert not errors, f"{sum(errors.values())} rounds failed: {dict(errors)}"
    calls = 8 * (3 + 2 + 1) + 8 * 2 + 4 * 6  # sync clients, async clients, default pool
    assert stored == len(ids) == len(set(ids)) == 6 * calls


def test_operator_functions_through_transaction_pool(tx_bouncer, pg15, dbname):
    """scheduler.operations (what `scheduler status` and `scheduler jobs` run) 8 times on
    each of two connections to the pool, in bounded transactions and in autocommit."""
    pooled = tx_bouncer.url(dbname)
    with psycopg.connect(pg15.url(dbname), autocommit=True) as db:
        for i in range(3):
            schedule_at(TASK, None, args={"message": str(i)}, connection=db)
        job_id = _scalar(db, "SELECT min(id) FROM scheduler.jobs")
    settings = Settings()
    store = Store(settings.schema_name)
    errors: Counter[str] = Counter()

    async def command_round(conn: psycopg.AsyncConnection[Any], tag: str) -> None:
        try:
            async with operations.bounded(conn, store, settings.statement_timeout_s):
                await operations.require_migrated(conn, store)
                await operations.status(conn, store)
                assert len(await operations.list_jobs(conn, store, limit=10)) == 3
                assert await operations.show_job(conn, store, job_id) is not None
            await operations.list_jobs(conn, store, state="pending")
            await operations.status(conn, store)
        except psycopg.Error as exc:
            errors[f"{tag}: {type(exc).__name__}: {str(exc).strip()[:160]}"] += 1

    async def main() -> None:
        conns = [await operations.connect(pooled, settings) for _ in range(2)]
        try:
            for _ in range(6):  # the second client's statements in another order
                await operations.show_job(conns[1], store, job_id)
            for _ in range(8):  # taking turns, so both use the same server connection
                for i, conn in enumerate(conns):
                    await command_round(conn, f"connection {i}")
        finally:
            for conn in conns:
                await conn.close()

    asyncio.run(main())
    assert not errors, f"{sum(errors.values())} command rounds failed: {dict(errors)}"
