"""Benchmarks that run real ``scheduler run`` processes: W4 (cron with 2 replicas, with and
without a SIGKILL of the leader) and W6 (idle queries per second, RSS while draining).

Each replica is ``python -m scheduler run --import bench.tasks`` with default settings
(log level ``info``, output to a file), on its own fresh database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg

from .workloads import fresh_db, insert_noops

ROOT = Path(__file__).resolve().parents[1]

CRON_CONFIG = """\
timezone: UTC
imports: [bench.tasks]
schedules:
  - name: every_second
    cron: "* * * * * *"
    task: bench.noop
"""

IDLE_CONFIG = """\
timezone: UTC
imports: [bench.tasks]
schedules:
  - name: yearly
    cron: "0 0 1 1 *"
    task: bench.noop
"""


def start_replica(url: str, config: str | None, log_dir: Path, **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    environ.update(
        SCHEDULER_DATABASE_URL=url,
        SCHEDULER_LOG_FORMAT="json",
        PYTHONPATH=str(ROOT),
        **env,
    )
    args = [sys.executable, "-m", "scheduler", "run", "--import", "bench.tasks"]
    if config is not None:
        path = log_dir / "schedules.yaml"
        path.write_text(config)
        args += ["--config", str(path)]
    log = open(log_dir / f"replica-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(args, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)


def stop_replicas(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for(url: str, sql: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while not conn.execute(sql).fetchone()[0]:
            if time.monotonic() > deadline:
                raise TimeoutError(sql)
            time.sleep(0.02)


@dataclass
class CronResult:
    expected: int
    missing: int
    duplicate: int
    lateness_ms: list[float]
    takeover_s: float | None  # SIGKILL of the leader -> new term recorded (polled every 2 ms)


def w4_cron(admin_url: str, duration_s: float, kill_leader_at_s: float | None) -> CronResult:
    """An every-second schedule, 2 replicas, ``duration_s`` seconds; optionally SIGKILL the
    leader process after ``kill_leader_at_s``. Counts the whole seconds of the window that
    have no succeeded run (missing) or more than one (duplicate), and the start lateness
    (claim time - fire time, database clock) of every run."""
    url = fresh_db(admin_url, "bench_w4")
    with tempfile.TemporaryDirectory(prefix="bench-w4-") as tmp:
        procs = [start_replica(url, CRON_CONFIG, Path(tmp)) for _ in range(2)]
        try:
            wait_for(url, "SELECT count(*) FROM scheduler.job_runs")  # both up, cron firing
            time.sleep(1.0)
            with psycopg.connect(url, autocommit=True) as conn:
                start = conn.execute("SELECT date_trunc('second', now())").fetchone()[0]
                takeover_s = None
                if kill_leader_at_s is not None:
                    time.sleep(kill_leader_at_s)
                    holder, term = conn.execute(
                        "SELECT holder, term FROM scheduler.leader"
                    ).fetchone()
                    os.kill(int(holder.split(":")[1]), signal.SIGKILL)
                    killed = time.monotonic()
                    while conn.execute("SELECT term FROM scheduler.leader").fetchone()[0] == term:
                        time.sleep(0.002)
                    takeover_s = time.monotonic() - killed
                    time.sleep(max(0.0, duration_s - kill_leader_at_s - takeover_s))
                else:
                    time.sleep(duration_s)
                end = start + timedelta(seconds=duration_s)
                time.sleep(1.0)  # let the last fire times run
                rows = conn.execute(
                    """SELECT j.scheduled_for, count(r.id) FILTER (WHERE r.outcome = 'succeeded'),
                              min(extract(epoch FROM r.started_at - j.scheduled_for)) * 1000
                       FROM scheduler.jobs AS j
                       LEFT JOIN scheduler.job_runs AS r ON r.job_id = j.id
                       WHERE j.schedule_name = 'every_second'
                         AND j.scheduled_for > %s AND j.scheduled_for <= %s
                       GROUP BY j.scheduled_for""",
                    [start, end],
                ).fetchall()
        finally:
            stop_replicas(procs)
    runs = {r[0]: r[1] for r in rows}
    expected = int(duration_s)
    return CronResult(
        expected=expected,
        missing=expected - sum(1 for n in runs.values() if n >= 1),
        duplicate=sum(1 for n in runs.values() if n > 1),
        lateness_ms=sorted(float(r[2]) for r in rows if r[2] is not None),
        takeover_s=takeover_s,
    )


def _server_log(admin: psycopg.Connection) -> Path | None:
    """The server's log file when this process can read it: ``<data_directory>/log`` (the
    embedded server) or ``<data_directory>/../log`` (bench/servers.py's clusters); ``None``
    for another server."""
    try:
        data_dir = Path(admin.execute("SHOW data_directory").fetchone()[0])
    except psycopg.Error:
        return None
    for path in (data_dir / "log", data_dir.parent / "log"):
        try:
            path.open("rb").close()
            return path
        except OSError:
            continue
    return None


def _count_logged_statements(log_path: Path, offset: int, start: str, end: str) -> int:
    """Statements logged (``log_statement = all``) between two marker statements."""
    with log_path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    window = text[text.index(start) : text.index(end)]
    return (
        sum(
            1
            for line in window.splitlines()
            if "LOG:  statement:" in line or ("LOG:  execute " in line and "</" not in line)
        )
        - 1
    )  # the start marker itself


def w6_idle(admin_url: str, replicas: int, window_s: float) -> tuple[float, str]:
    """Statements per second per replica of ``replicas`` idle replicas (one yearly schedule,
    no jobs) over ``window_s`` seconds, after a 3 s warm-up. Counted from the server log
    (``log_statement = all`` on the benchmark database: every statement, BEGIN and COMMIT
    included) when it is readable, else from ``pg_stat_database`` transaction deltas.
    Returns (rate, source)."""
    dbname = f"bench_w6_{replicas}"
    url = fresh_db(admin_url, dbname)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        log_path = _server_log(admin)
        if log_path:
            admin.execute(f"ALTER DATABASE \"{dbname}\" SET log_statement = 'all'")
    with tempfile.TemporaryDirectory(prefix="bench-w6-") as tmp:
        procs = [start_replica(url, IDLE_CONFIG, Path(tmp)) for _ in range(replicas)]
        try:
            wait_for(url, "SELECT count(*) FROM scheduler.leader")
            time.sleep(3.0)
            marker = f"w6-{replicas}-{time.monotonic_ns()}"
            offset = log_path.stat().st_size if log_path else 0
            with psycopg.connect(url, autocommit=True) as conn:
                before = _transactions(conn, dbname)
                conn.execute(f"SELECT '{marker}-start'")
                time.sleep(window_s)
                conn.execute(f"SELECT '{marker}-end'")
                after = _transactions(conn, dbname)
        finally:
            stop_replicas(procs)
    if log_path:
        count = _count_logged_statements(log_path, offset, f"{marker}-start", f"{marker}-end")
        return count / window_s / replicas, "statements (server log)"
    return (after - before - 3) / window_s / replicas, "transactions (pg_stat_database)"


def _transactions(conn: psycopg.Connection, dbname: str) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    return conn.execute(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", [dbname]
    ).fetchone()[0]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def w6_rss_under_drain(admin_url: str, n: int) -> tuple[float, float]:
    """Peak RSS (MB, sampled every 20 ms from /proc) of one replica (default settings) while
    it drains ``n`` no-op jobs; also returns its drain rate (jobs/s) as a cross-check."""
    url = fresh_db(admin_url, "bench_w6_rss")
    insert_noops(url, n)
    with tempfile.TemporaryDirectory(prefix="bench-w6-") as tmp:
        proc = start_replica(url, None, Path(tmp))
        peak = 0.0
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                started = time.monotonic()
                while (
                    conn.execute(
                        "SELECT count(*) FROM scheduler.jobs WHERE state = 'succeeded'"
                    ).fetchone()[0]
                    < n
                ):
                    peak = max(peak, _rss_mb(proc.pid))
                    time.sleep(0.02)
                elapsed = time.monotonic() - started
        finally:
            stop_replicas([proc])
    return peak, n / elapsed
