"""High availability under real faults: real `scheduler run` processes, a real PostgreSQL.

Leader timings use the default settings (heartbeat_s 2, followers waiting inside PostgreSQL,
leader_session_timeout_s 5); worker leases are short (2 s) to keep the tests quick. After each
fault the SQL invariants are checked: one job per fire time, no fire time missing, no job left
running, every job finished or pending.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from scheduler import embedded, enqueue
from scheduler.settings import Settings
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(120)

SCHEDULES = """\
timezone: UTC
imports: [tests.acceptance.app_tasks]
schedules:
  - name: every_second
    cron: "* * * * * *"
    task: acceptance.tick
"""
# Real Settings fields only (test_fault_timings_are_real_settings checks it: Settings ignores
# unknown SCHEDULER_ variables). Rescue has no interval of its own: the leader's heartbeat
# (every heartbeat_s at most) says when the earliest lease expires and rescues then.
DEFAULT_LEADER_TIMINGS = {
    "SCHEDULER_LEADER_RETRY_S": "0.5",
    "SCHEDULER_LEASE_S": "2",
}


def _setting_of_variable() -> dict[str, str]:
    """Environment variable -> Settings field, as pydantic-settings reads them."""
    names = {}
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        names[alias if isinstance(alias, str) else f"SCHEDULER_{field.upper()}"] = field
    return names


def test_fault_timings_are_real_settings(cli_env, monkeypatch):
    """Settings ignores unknown SCHEDULER_ variables, so a misspelt or invented timing would
    leave the default in place unnoticed: every SCHEDULER_ variable the replicas of these
    tests get must be a setting and be read with the value given, and the leader timings the
    module docstring relies on must be the ones in force."""
    env = {**cli_env, **DEFAULT_LEADER_TIMINGS}
    fields = _setting_of_variable()
    unknown = sorted(k for k in env if k.startswith("SCHEDULER_") and k not in fields)
    assert unknown == [], f"not settings (ignored by the replicas): {unknown}"
    for name in os.environ:
        if name.startswith("SCHEDULER_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("SCHEDULER_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    for name, value in DEFAULT_LEADER_TIMINGS.items():
        assert getattr(settings, fields[name]) == float(value), name
    assert (settings.heartbeat_s, settings.leader_session_timeout_s) == (2.0, 5.0)


def _config(tmp_path: Path) -> str:
    path = tmp_path / "schedules.yaml"
    path.write_text(SCHEDULES)
    return str(path)


def _leader(db: psycopg.Connection) -> tuple[int, int] | None:
    """(pid, term) of the current leader row (None before the replicas have migrated)."""
    if not db.execute("SELECT to_regclass('scheduler.leader') IS NOT NULL").fetchone()[0]:
        return None
    row = db.execute("SELECT holder, term FROM scheduler.leader").fetchone()
    return (int(row[0].split(":")[1]), row[1]) if row else None


def _fired(db: psycopg.Connection) -> int:
    return db.execute(
        "SELECT count(*) FROM scheduler.jobs WHERE schedule_name = 'every_second'"
    ).fetchone()[0]


def _wait_fired(db: psycopg.Connection, more: int, timeout: float = 30) -> None:
    target = _fired(db) + more
    wait_until(lambda: _fired(db) >= target, timeout=timeout)


def _wait_new_leader(db: psycopg.Connection, old_term: int, timeout: float) -> tuple[float, int]:
    start = time.monotonic()
    pid_term = wait_until(lambda: (lt := _leader(db)) and lt[1] > old_term and lt, timeout=timeout)
    return time.monotonic() - start, pid_term[0]


def _jobs_of_term(db: psycopg.Connection, term: int) -> set[int]:
    """Ids of the committed jobs materialised in ``term``.

    Taken right after the next election is visible, this set is exact: the old leader's
    session had ended (its lock was free) before that election committed, so whatever it
    committed is in the set, and any id of ``term`` that appears later is a late commit,
    whenever its transaction began (jobs.created_at is the transaction's start time, so a
    created_at comparison misses a transaction begun before the election)."""
    return {r[0] for r in db.execute("SELECT id FROM scheduler.jobs WHERE term = %s", [term])}


def _settle(db: psycopg.Connection) -> None:
    """Wait until no job is running and none is overdue (rescues included)."""
    wait_until(
        lambda: db.execute(
            "SELECT count(*) = 0 FROM scheduler.jobs WHERE state = 'running' "
            "OR (state = 'pending' AND run_at < now() - interval '1 second')"
        ).fetchone()[0],
        timeout=30,
    )


def _assert_invariants(db: psycopg.Connection) -> None:
    fire_times = [
        r[0]
        for r in db.execute(
            "SELECT scheduled_for FROM scheduler.jobs WHERE schedule_name = 'every_second' "
            "ORDER BY scheduled_for"
        )
    ]
    assert len(fire_times) == len(set(fire_times)), "a fire time was materialised twice"
    gaps = [(a, b) for a, b in itertools.pairwise(fire_times) if b - a != timedelta(seconds=1)]
    assert gaps == [], f"fire times missing between {gaps}"
    assert db.execute("SELECT count(*) FROM scheduler.skipped_fire_times").fetchone()[0] == 0, (
        "a fire time was skipped although every outage was within the grace"
    )
    states = dict(db.execute("SELECT state, count(*) FROM scheduler.jobs GROUP BY 1").fetchall())
    assert set(states) <= {"succeeded", "pending"}, states
    twice = db.execute(
        "SELECT job_id FROM scheduler.job_runs WHERE outcome = 'succeeded' "
        "GROUP BY job_id HAVING count(*) > 1"
    ).fetchall()
    assert twice == [], "a job succeeded twice"


def _two_replicas(start_replica, tmp_path):
    config = _config(tmp_path)
    return [start_replica("run", "--config", config, env=DEFAULT_LEADER_TIMINGS) for _ in range(2)]


def _split(replicas, leader_pid):
    leader = next(r for r in replicas if r.pid == leader_pid)
    return leader, next(r for r in replicas if r is not leader)


def test_leader_sigkill_follower_leads_within_2s(db, tmp_path, start_replica):
    replicas = _two_replicas(start_replica, tmp_path)
    pid, term = wait_until(lambda: _leader(db), timeout=30)
    _wait_fired(db, 3)
    leader, follower = _split(replicas, pid)
    os.kill(leader.pid, signal.SIGKILL)
    elapsed, new_pid = _wait_new_leader(db, term, timeout=10)
    assert new_pid == follower.pid
    print(f"\nSIGKILL failover: {elapsed:.2f} s")
    assert elapsed < 2.0, f"failover took {elapsed:.2f} s"
    _wait_fired(db, 3)
    _settle(db)
    assert follower.stop() == 0, follower.output()
    _assert_invariants(db)


def test_leader_sigstop_is_replaced_within_10s_and_commits_nothing_when_resumed(
    db, tmp_path, start_replica
):
    replicas = _two_replicas(start_replica, tmp_path)
    pid, old_term = wait_until(lambda: _leader(db), timeout=30)
    _wait_fired(db, 3)
    leader, follower = _split(replicas, pid)
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        elapsed, new_pid = _wait_new_leader(db, old_term, timeout=15)
        old_term_jobs = _jobs_of_term(db, old_term)  # everything the old leader committed
        assert old_term_jobs, "the old leader's jobs do not carry its term: the check below is void"
        assert new_pid == follower.pid
        print(f"\nSIGSTOP failover: {elapsed:.2f} s")
        assert elapsed < 10.0, f"hung leader replaced after {elapsed:.2f} s"
        _wait_fired(db, 2)
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    # the old leader notices its dead session and steps down; it rejoins as a follower
    wait_until(lambda: "leader_stepped_down" in leader.output(), timeout=15)
    _wait_fired(db, 2)
    late = _jobs_of_term(db, old_term) - old_term_jobs
    assert late == set(), f"the deposed leader committed jobs {late} after the new election"
    assert _leader(db)[0] == follower.pid
    _settle(db)
    for r in replicas:
        assert r.stop() == 0, r.output()
    _assert_invariants(db)


def test_leader_sigterm_hands_over_within_1s(db, tmp_path, start_replica):
    replicas = _two_replicas(start_replica, tmp_path)
    pid, term = wait_until(lambda: _leader(db), timeout=30)
    _wait_fired(db, 2)
    leader, follower = _split(replicas, pid)
    start = time.monotonic()
    leader.terminate()
    _, new_pid = _wait_new_leader(db, term, timeout=10)
    elapsed = time.monotonic() - start
    print(f"\nSIGTERM handover: {elapsed:.2f} s")
    assert new_pid == follower.pid and elapsed < 1.0, f"handover took {elapsed:.2f} s"
    assert leader.stop() == 0, leader.output()
    _wait_fired(db, 2)
    _settle(db)
    assert follower.stop() == 0, follower.output()
    _assert_invariants(db)


def test_worker_sigkill_mid_job_runs_again_elsewhere_after_the_lease(
    db, db_url, tmp_path, start_replica
):
    marker = tmp_path / "attempt1-started"
    first = start_replica(
        "run", "--import", "tests.acceptance.app_tasks", env=DEFAULT_LEADER_TIMINGS
    )
    wait_until(lambda: _leader(db), timeout=30)
    with psycopg.connect(db_url, autocommit=True) as conn:
        job_id = enqueue("acceptance.slow_once", args={"marker": str(marker)}, connection=conn)
    wait_until(marker.exists, timeout=30)
    lease_left_s = db.execute(
        "SELECT extract(epoch FROM lease_expires_at - now())::float8 FROM scheduler.jobs "
        "WHERE id = %s AND state = 'running'",
        [job_id],
    ).fetchone()[0]
    assert 0 < lease_left_s <= 2.0, f"lease {lease_left_s} s: SCHEDULER_LEASE_S=2 not in force"
    os.kill(first.pid, signal.SIGKILL)
    second = start_replica(
        "run", "--import", "tests.acceptance.app_tasks", env=DEFAULT_LEADER_TIMINGS
    )
    wait_until(
        lambda: db.execute(
            "SELECT state = 'succeeded' FROM scheduler.jobs WHERE id = %s", [job_id]
        ).fetchone()[0],
        timeout=30,
    )
    assert second.stop() == 0, second.output()
    runs = db.execute(
        "SELECT attempt, outcome FROM scheduler.job_runs WHERE job_id = %s ORDER BY attempt",
        [job_id],
    ).fetchall()
    assert runs == [(1, "lost"), (2, "succeeded")]


def test_postgres_restart_one_leader_again_within_10s(tmp_path, start_replica):
    data_dir = tmp_path / "pg"
    url = make_conninfo(embedded.start(data_dir), dbname="postgres")
    try:
        config = _config(tmp_path)
        env = {**DEFAULT_LEADER_TIMINGS, "SCHEDULER_DATABASE_URL": url}
        replicas = [start_replica("run", "--config", config, env=env) for _ in range(2)]
        with psycopg.connect(url, autocommit=True) as db:
            _, term = wait_until(lambda: _leader(db), timeout=30)
            _wait_fired(db, 3)
        embedded.restart_immediate(data_dir)
        accepting = time.monotonic()
        with psycopg.connect(url, autocommit=True) as db:
            _, _ = _wait_new_leader(db, term, timeout=20)
            elapsed = time.monotonic() - accepting
            print(f"\nleader after PostgreSQL restart: {elapsed:.2f} s")
            assert elapsed < 10.0, f"no leader {elapsed:.2f} s after the restart"
            holders = db.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objsubid = 1"  # a bigint key; liveness locks are objsubid 2
                # the leader's key only: the schedules write lock (a transaction-level lock
                # taken while a new leader reconciles) is a bigint key too
                " AND ((classid::bigint << 32) | objid::bigint)"
                "     = hashtextextended('scheduler.leader:scheduler', 0)"
            ).fetchone()[0]
            assert holders == 1
            _wait_fired(db, 3)
            _settle(db)
            for r in replicas:
                assert r.stop() == 0, r.output()
            _assert_invariants(db)
    finally:
        embedded.stop(data_dir)
        embedded.shutdown(data_dir)  # the restarted server is no longer the package's to stop


def test_lock_session_killed_repeatedly_mid_materialisation(db, tmp_path, start_replica):
    """pg_terminate_backend of the leader's lock session, five times, at random points of
    its ticks (every second, several statements each): nothing lost, nothing twice."""
    replicas = _two_replicas(start_replica, tmp_path)
    _, term = wait_until(lambda: _leader(db), timeout=30)
    _wait_fired(db, 2)
    for _ in range(5):
        killed = db.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name LIKE 'scheduler leader %%' AND pid IN ("
            "  SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)"
        ).fetchone()[0]
        assert killed == 1
        _, _ = _wait_new_leader(db, term, timeout=10)
        term = _leader(db)[1]
        _wait_fired(db, 1)
    _wait_fired(db, 2)
    _settle(db)
    for r in replicas:
        assert r.stop() == 0, r.output()
    _assert_invariants(db)
