"""Primary failover: a PostgreSQL primary, a streaming standby (``pg_basebackup -R``), two
``scheduler run`` replicas on a multi-host URL with ``target_session_attrs=read-write``.

The primary is stopped (``immediate``: a crash) and the standby promoted at once; the replicas
must find the new primary by themselves. What ran is recorded outside the database (the
``failover.record`` task appends its key to a file), and at the end, the replicas stopped, the
old primary is started again so its timeline-1 history can be compared with the new
primary's: nothing else tells exactly what was acknowledged and what ran.

* **Synchronous replication** (``synchronous_standby_names = '*'``, ``synchronous_commit =
  on``), the supported set-up: a leader again within 2 s of ``pg_ctl promote`` returning,
  every acknowledged delayed job run once, every fire time once, no job left running, no id
  reused. A second run is accepted only where the new primary records a ``lost`` attempt
  (at-least-once: a job whose completion had not committed at the crash runs again after
  its lease).
* **Asynchronous replication with lag**, unsupported: acknowledged commits are not on the
  standby. The test prints what was lost (acknowledged delayed jobs gone, fire times and
  delayed jobs run twice, ids reused) and fails only when the replicas do not detect the
  timeline change (``database_failover_detected`` at error level with both timelines, and
  ``scheduler_database_failovers_total``). The lag is a cut WAL stream (``primary_conninfo =
  ''`` on the standby): pausing replay (``pg_wal_replay_pause()``) or
  ``recovery_min_apply_delay`` loses nothing, because promotion replays every WAL record the
  standby has received (measured on PostgreSQL 15).

Timings are the defaults (leader_retry_s 0.5 doubling to 5 s, heartbeat_s 2) but the lease
(2 s), so a job caught running by the crash is rescued quickly.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from scheduler import schedule_at
from tests import servers
from tests.acceptance.conftest import ROOT, Replica
from tests.conftest import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MAJOR = "15"  # Debian's package (.ci/run installs it): pg_basebackup and pg_ctl promote
DB = "scheduler_failover"
RUNS_FILE = "FAILOVER_RUNS_FILE"  # not SCHEDULER_*: the settings would warn about it
DELAYED = 100  # one-off jobs per batch, due over the next SPREAD_S seconds
SPREAD_S = 15.0
SYNC = {"synchronous_standby_names": "'*'", "synchronous_commit": "on"}
ASYNC = {"synchronous_commit": "on"}  # durable on the primary: every loss is replication's
REPLICA_ENV = {"SCHEDULER_LEASE_S": "2", "SCHEDULER_LEADER_RETRY_S": "0.5"}
DETECTED = "database_failover_detected"
SCHEDULES = """\
timezone: UTC
imports: [tests.acceptance.app_tasks]
schedules:
  - name: every_second
    cron: "* * * * * *"
    task: acceptance.tick
"""


# ---- servers -------------------------------------------------------------------------------


def sql(cluster: servers.Cluster, query: str, params=(), db: str = DB) -> list[tuple]:
    with psycopg.connect(cluster.url(db), autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def primary_and_standby(conf: dict[str, str]) -> Iterator[tuple[servers.Cluster, servers.Cluster]]:
    """A primary with ``conf`` and its standby, streaming (removed on exit)."""
    if servers.bin_dir(MAJOR) is None:
        message = f"PostgreSQL {MAJOR} is not installed (/usr/lib/postgresql/{MAJOR}/bin)"
        if servers.in_ci():
            pytest.fail(message)
        pytest.skip(message)
    primary = servers.start_cluster(MAJOR, conf=conf)
    standby = None
    try:
        standby = servers.start_standby(primary)
        # The standby copied the primary's postgresql.conf: promoted, with nothing streaming
        # from it, synchronous_standby_names = '*' would make every commit wait for ever.
        sql(standby, "ALTER SYSTEM SET synchronous_standby_names = ''", db="postgres")
        sql(standby, "SELECT pg_reload_conf()", db="postgres")
        wait_until(
            lambda: sql(primary, "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'",
                        db="postgres"),
            timeout=30,
        )  # fmt: skip
        yield primary, standby
    finally:
        if standby is not None:
            standby.remove()
        primary.remove()


def multi_host_url(primary: servers.Cluster, standby: servers.Cluster) -> str:
    return (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/{DB}"
        "?target_session_attrs=read-write"
    )


def cut_replication(primary: servers.Cluster, standby: servers.Cluster) -> None:
    """Let the standby replay everything so far, then end its WAL stream: from now on the
    primary's commits are acknowledged (asynchronous replication) and not on the standby."""
    lsn = sql(primary, "SELECT pg_current_wal_lsn()")[0][0]
    wait_until(
        lambda: sql(standby, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn])[0][0],
        timeout=30,
    )
    sql(standby, "ALTER SYSTEM SET primary_conninfo = ''")
    sql(standby, "SELECT pg_reload_conf()")
    wait_until(lambda: not sql(standby, "SELECT 1 FROM pg_stat_wal_receiver"), timeout=10)
    wait_until(lambda: not sql(primary, "SELECT 1 FROM pg_stat_replication"), timeout=10)


def fired(cluster: servers.Cluster) -> int:
    return sql(
        cluster,
        "SELECT count(*) FROM scheduler.jobs "
        "WHERE schedule_name = 'every_second' AND state = 'succeeded'",
    )[0][0]


def poll(predicate: Callable[[], object], timeout: float) -> object:
    """:func:`wait_until` returning a false value instead of failing (for the documented
    loss of asynchronous replication, which must not fail the test)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def settled(cluster: servers.Cluster, last_due: datetime) -> bool:
    """Every delayed job due, no job running, none overdue (lease rescues included)."""
    return sql(
        cluster,
        "SELECT now() > %s + interval '1 second' AND NOT EXISTS ("
        "  SELECT 1 FROM scheduler.jobs WHERE state = 'running'"
        "  OR (state = 'pending' AND run_at < now() - interval '1 second'))",
        [last_due],
    )[0][0]


# ---- the replicas --------------------------------------------------------------------------


@dataclass
class Run:
    """Two replicas on the multi-host URL, and what the test asked of them."""

    tmp_path: Path
    primary: servers.Cluster
    standby: servers.Cluster
    replicas: list[Replica] = field(default_factory=list)
    metrics_ports: list[int] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # delayed job key -> id returned
    last_due: datetime | None = None
    promoting_at: datetime | None = None  # wall clock: the primary dead, no server writable

    @property
    def runs_file(self) -> Path:
        return self.tmp_path / "runs.txt"

    def start(self) -> None:
        """Create and migrate the database on the primary, start two replicas, wait for
        three fire times."""
        sql(self.primary, f'CREATE DATABASE "{DB}"', db="postgres")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        env.update(REPLICA_ENV, PYTHONPATH=str(ROOT), SCHEDULER_LOG_FORMAT="json")
        env.update({"SCHEDULER_DATABASE_URL": multi_host_url(self.primary, self.standby),
                    RUNS_FILE: str(self.runs_file)})  # fmt: skip
        migrated = subprocess.run(
            [sys.executable, "-m", "scheduler", "migrate"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert migrated.returncode == 0, migrated.stderr
        config = self.tmp_path / "schedules.yaml"
        config.write_text(SCHEDULES)
        for i in range(2):
            self.metrics_ports.append(servers.free_port())
            replica_env = {**env, "SCHEDULER_METRICS_PORT": str(self.metrics_ports[-1])}
            log = self.tmp_path / f"replica{i}.log"
            self.replicas.append(Replica(["run", "--config", str(config)], replica_env, log))
        wait_until(lambda: fired(self.primary) >= 3, timeout=30)

    def schedule_delayed(self, prefix: str) -> None:
        """DELAYED one-off jobs due over the next SPREAD_S s, each committed (acknowledged)
        on the primary by its own ``schedule_at``."""
        with psycopg.connect(self.primary.url(DB), autocommit=True) as conn:
            now = conn.execute("SELECT now()").fetchone()[0]
            for i in range(DELAYED):
                due = now + timedelta(seconds=0.5 + i * SPREAD_S / DELAYED)
                key = f"{prefix}{i}"
                self.acked[key] = schedule_at("failover.record", due, args={"key": key}, connection=conn)
                self.last_due = due

    def failover(self) -> float | None:
        """Let four more fire times run, crash the primary, promote the standby. Returns the
        seconds from ``pg_ctl promote`` returning to a leader elected on the new primary
        (None: none within 20 s)."""
        start = fired(self.primary)
        wait_until(lambda: fired(self.primary) >= start + 4, timeout=15)
        self.primary.stop("immediate")
        self.promoting_at = datetime.now(UTC)
        self.standby.promote()
        promoted = time.monotonic()
        query = "SELECT 1 FROM scheduler.leader WHERE elected_at > %s"
        if poll(lambda: sql(self.standby, query, [self.promoting_at]), timeout=20):
            return time.monotonic() - promoted
        return None

    def log_events(self, name: str) -> list[dict]:
        events = []
        for replica in self.replicas:
            for line in replica.output().splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict) and event.get("event") == name:
                        events.append(event)
        return events

    def failovers_counted(self) -> float:
        """Sum of ``scheduler_database_failovers_total`` over the replicas' /metrics."""
        total = 0.0
        for port in self.metrics_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            pattern = r"^scheduler_database_failovers_total(?:\{.*\})? (\S+)$"
            total += sum(float(m[1]) for m in re.finditer(pattern, text, re.MULTILINE))
        return total

    def executions(self) -> collections.Counter[str]:
        text = self.runs_file.read_text() if self.runs_file.exists() else ""
        return collections.Counter(text.split())

    def finish(self) -> tuple[History, History, list[int | None]]:
        """Stop the replicas (their exit codes), read the new primary, then start the old
        one again, alone, and read its timeline-1 history."""
        codes: list[int | None] = []
        for replica in self.replicas:
            try:
                codes.append(replica.stop())
            except subprocess.TimeoutExpired:
                codes.append(None)
        new = History.read(self.standby)
        self.primary.start()  # nothing may connect to it now: it would be a split brain
        self.primary.wait_ready()
        return History.read(self.primary), new, codes

    def kill(self) -> None:
        for replica in self.replicas:
            replica.kill()


# ---- the two timelines compared -----------------------------------------------------------


@dataclass
class History:
    """One server's jobs, id -> identity (``("cron", fire time)`` or ``("delayed", key)``),
    and runs, id -> [(outcome, started_at)]."""

    jobs: dict[int, tuple]
    runs: dict[int, list[tuple[str, datetime]]]
    states: collections.Counter[str]
    skipped: int

    @classmethod
    def read(cls, cluster: servers.Cluster) -> History:
        rows = sql(cluster, "SELECT id, scheduled_for, args->>'key' FROM scheduler.jobs")
        jobs = {i: ("cron", fire) if fire else ("delayed", key) for i, fire, key in rows}
        runs: dict[int, list] = collections.defaultdict(list)
        query = "SELECT job_id, outcome, started_at FROM scheduler.job_runs ORDER BY 1, 3"
        for job_id, outcome, started in sql(cluster, query):
            runs[job_id].append((outcome, started))
        states = sql(cluster, "SELECT state, count(*) FROM scheduler.jobs GROUP BY 1")
        skipped = sql(cluster, "SELECT count(*) FROM scheduler.skipped_fire_times")[0][0]
        return cls(jobs, dict(runs), collections.Counter(dict(states)), skipped)

    def id_of(self) -> dict[tuple, int]:
        return {identity: i for i, identity in self.jobs.items()}

    def succeeded(self, job_id: int, since: datetime | None = None) -> int:
        runs = self.runs.get(job_id, [])
        return sum(o == "succeeded" and (since is None or s >= since) for o, s in runs)

    def lost_attempt(self, job_id: int) -> bool:
        return any(o == "lost" for o, _ in self.runs.get(job_id, []))


def compare(run: Run, old: History, new: History) -> dict[str, list]:
    """What the failover cost, from the old timeline, the new one and the runs file. Items
    named "... (at-least-once)" are second runs after a recorded lost attempt: allowed."""
    executions = run.executions()
    new_id = new.id_of()
    lost_attempt = {identity for identity, i in new_id.items() if new.lost_attempt(i)}
    twice = [("delayed", k) for k in run.acked if executions[k] > 1]
    doubled = [  # ran on the old primary, and on the new one after the promotion
        identity
        for i, identity in old.jobs.items()
        if identity[0] == "cron" and old.succeeded(i) and identity in new_id
        and new.succeeded(new_id[identity], since=run.promoting_at)
    ]  # fmt: skip
    fire_times = sorted(f for kind, f in new_id if kind == "cron")
    expected_last = run.last_due.replace(microsecond=0)
    acked_ids = set(run.acked.values())
    return {
        "acknowledged delayed jobs missing on the new primary": [
            k for k in run.acked if ("delayed", k) not in new_id],
        "acknowledged delayed jobs never run": [k for k in run.acked if not executions[k]],
        "delayed jobs run twice": [i[1] for i in twice if i not in lost_attempt],
        "delayed jobs run twice (at-least-once)": [i[1] for i in twice if i in lost_attempt],
        "fire times run twice": [f"{i[1]:%T}" for i in doubled if i not in lost_attempt],
        "fire times run twice (at-least-once)": [f"{i[1]:%T}" for i in doubled
                                                 if i in lost_attempt],
        "ids acknowledged or run, reused for another job": sorted(
            i for i, identity in old.jobs.items()
            if (i in acked_ids or i in old.runs) and new.jobs.get(i, identity) != identity),
        "fire times missing (gaps)": [
            f"{a:%T}-{b:%T}" for a, b in itertools.pairwise(fire_times)
            if b - a != timedelta(seconds=1)],
        "fire times missing after the failover": [
            f"until {expected_last:%T}"] if not fire_times or fire_times[-1] < expected_last
            else [],
        "skipped fire times recorded": [new.skipped] if new.skipped else [],
        "jobs neither succeeded nor pending": [
            f"{s}: {n}" for s, n in new.states.items() if s not in ("succeeded", "pending")],
    }  # fmt: skip


def report(title: str, elapsed: float | None, run: Run, losses: dict[str, list]) -> None:
    took = "none within 20 s" if elapsed is None else f"{elapsed:.2f} s"
    print(f"\n{title}: a leader {took} after pg_ctl promote returned")
    for what, items in losses.items():
        print(f"  {what}: {len(items)}" + (f", e.g. {items[:5]}" if items else ""))
    print(f"  {DETECTED} events logged: {len(run.log_events(DETECTED))}")


# ---- the scenarios -------------------------------------------------------------------------


def test_synchronous_replication_failover_loses_nothing(tmp_path):
    with primary_and_standby(SYNC) as (primary, standby):
        sync_state = sql(primary, "SELECT sync_state FROM pg_stat_replication", db="postgres")
        assert sync_state == [("sync",)]
        run = Run(tmp_path, primary, standby)
        try:
            run.start()
            run.schedule_delayed("sync-")
            elapsed = run.failover()
            wait_until(lambda: settled(standby, run.last_due), timeout=40)
            old, new, codes = run.finish()
        finally:
            run.kill()
    losses = compare(run, old, new)
    report("synchronous replication", elapsed, run, losses)
    assert elapsed is not None and elapsed < 2.0, f"leader {elapsed} s after the promotion"
    assert {k: v for k, v in losses.items() if v and "at-least-once" not in k} == {}
    assert codes == [0, 0], [r.output()[-3000:] for r in run.replicas]


def test_asynchronous_replication_failover_is_detected(tmp_path):
    with primary_and_standby(ASYNC) as (primary, standby):
        run = Run(tmp_path, primary, standby)
        try:
            run.start()
            run.schedule_delayed("replicated-")
            cut_replication(primary, standby)
            run.schedule_delayed("primary-only-")
            elapsed = run.failover()
            poll(lambda: run.log_events(DETECTED), timeout=15)
            poll(lambda: settled(standby, run.last_due), timeout=30)
            counted = run.failovers_counted()
            old, new, _ = run.finish()
        finally:
            run.kill()
    report("asynchronous replication, standby cut off", elapsed, run, compare(run, old, new))
    detected = run.log_events(DETECTED)
    print(f"  first {DETECTED}: {detected[:1]}; failovers counted: {counted}")
    assert detected, f"no replica logged {DETECTED}"
    for event in detected:
        assert event.get("level") == "error", event
        timelines = {str(v) for k, v in event.items() if "timeline" in k}
        assert {"1", "2"} <= timelines, f"old and new timeline (1, 2) not in {event}"
    assert counted >= 1, "scheduler_database_failovers_total was not incremented"
