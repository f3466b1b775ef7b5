"""Fast rescue under real faults: real `scheduler run` processes, a real PostgreSQL.

SIGKILL: the killed replica's liveness session ends with its process, and its running job
starts again on the other replica within 2 s (default lease, 30 s). SIGSTOP: the stopped
replica's sessions stay open, so its job is rescued only when its lease (5 s here) expires,
and its late completion after SIGCONT is refused.

The replicas import this module for its task (``--import tests.acceptance.test_fast_rescue``).
"""

from __future__ import annotations

import json
import os
import signal

import psycopg
import pytest

from scheduler import enqueue, task
from tests.conftest import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

IMPORT = ("run", "--import", "tests.acceptance.test_fast_rescue")


@task(name="fast_rescue.block_first", max_attempts=3)
def block_first(marker: str, seconds: float) -> None:
    """First attempt: write this process's pid to ``marker`` and block ``seconds``; later
    attempts return at once."""
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        import time

        time.sleep(seconds)


def _registered(db: psycopg.Connection, n: int) -> bool:
    """``n`` replicas hold a registered liveness lock."""
    return db.execute(
        "SELECT count(*) = %s FROM scheduler.replicas WHERE lock_key IS NOT NULL", [n]
    ).fetchone()[0]


def _start_two(start_replica, db, env=None):
    replicas = [start_replica(*IMPORT, env=env) for _ in range(2)]
    wait_until(lambda: _registered(db, 2), timeout=30)
    wait_until(
        lambda: db.execute("SELECT count(*) FROM scheduler.leader").fetchone()[0], timeout=30
    )
    return replicas


def _runner(db_url, db, tmp_path, replicas, seconds):
    """Enqueue the job, wait until a replica runs it; returns (job id, that replica)."""
    marker = tmp_path / "marker"
    with psycopg.connect(db_url, autocommit=True) as conn:
        job_id = enqueue(block_first, args={"marker": str(marker), "seconds": seconds},
                         connection=conn)  # fmt: skip
    wait_until(lambda: marker.exists() and marker.read_text(), timeout=30)
    pid = int(marker.read_text())
    (runner,) = [r for r in replicas if r.pid == pid]
    return job_id, runner


def _runs(db, job_id):
    return db.execute(
        "SELECT attempt, outcome, worker_id, started_at, finished_at, error "
        "FROM scheduler.job_runs WHERE job_id = %s ORDER BY attempt, outcome",
        [job_id],
    ).fetchall()


def _succeeded(db, job_id) -> bool:
    return db.execute(
        "SELECT state = 'succeeded' FROM scheduler.jobs WHERE id = %s", [job_id]
    ).fetchone()[0]


def _holder(db) -> str:
    return db.execute("SELECT holder FROM scheduler.leader").fetchone()[0]


@pytest.mark.parametrize("victim_role", ["leader", "follower"])
def test_sigkilled_replicas_job_starts_again_within_2s(
    db, db_url, tmp_path, start_replica, victim_role
):
    """The victim runs the job (it starts alone, so it leads); as a follower, it is deposed
    first (its lock session ended: the other replica, waiting, leads; the victim waits)."""
    victim = start_replica(*IMPORT)
    wait_until(lambda: _registered(db, 1), timeout=30)
    job_id, _ = _runner(db_url, db, tmp_path, [victim], seconds=120)
    survivor = start_replica(*IMPORT)
    wait_until(lambda: _registered(db, 2), timeout=30)
    victim_id = _holder(db)
    if victim_role == "follower":
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE application_name = left('scheduler leader ' || %s, 63)",
                   [victim_id])  # fmt: skip
        wait_until(lambda: _holder(db) != victim_id, timeout=20)
        wait_until(lambda: db.execute(  # the victim campaigns again: waits for the lock
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory' AND "
            "application_name = left('scheduler leader ' || %s, 63)", [victim_id]
        ).fetchone()[0], timeout=20)  # fmt: skip
    leader = _holder(db)
    killed_at = db.execute("SELECT clock_timestamp()").fetchone()[0]
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: _succeeded(db, job_id), timeout=30)
    runs = _runs(db, job_id)
    assert [(a, o) for a, o, *_ in runs] == [(1, "lost"), (2, "succeeded")], runs
    lost, again = runs
    assert "is gone (its database session ended)" in lost[5], lost[5]
    assert lost[2] != again[2]  # the survivor ran it
    rescued_s = (lost[4] - killed_at).total_seconds()
    restarted_s = (again[3] - killed_at).total_seconds()
    victim_led = leader.split(":")[1] == str(victim.pid)
    print(f"\nfast rescue after SIGKILL ({'the leader' if victim_led else 'a follower'} "
          f"killed): rescued {rescued_s:.2f} s, started again {restarted_s:.2f} s after the "
          "kill (lease 30 s)")  # fmt: skip
    assert restarted_s < 2.0, f"started again {restarted_s:.2f} s after the kill"
    assert survivor.stop() == 0, survivor.output()


def test_sigstopped_replicas_job_waits_for_its_lease_and_its_late_completion_is_refused(
    db, db_url, tmp_path, start_replica
):
    replicas = _start_two(start_replica, db, env={"SCHEDULER_LEASE_S": "5"})
    job_id, victim = _runner(db_url, db, tmp_path, replicas, seconds=10)
    (survivor,) = [r for r in replicas if r is not victim]
    stopped_at = db.execute("SELECT clock_timestamp()").fetchone()[0]
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        # an extension sent just before the stop may still land: read the lease after it
        wait_until(lambda: db.execute("SELECT clock_timestamp() > %s + interval '0.3 s'",
                                      [stopped_at]).fetchone()[0], timeout=5)  # fmt: skip
        lease_end = db.execute(
            "SELECT lease_expires_at FROM scheduler.jobs WHERE id = %s AND state = 'running'",
            [job_id],
        ).fetchone()[0]
        wait_until(lambda: _succeeded(db, job_id), timeout=40)
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    lost, again = _runs(db, job_id)
    assert (lost[0], lost[1], again[0], again[1]) == (1, "lost", 2, "succeeded")
    assert lost[5].startswith("lease expired"), lost[5]
    assert lost[4] >= lease_end, "rescued before the lease of the stopped replica expired"
    print(f"\nSIGSTOP: rescued {(lost[4] - stopped_at).total_seconds():.2f} s after the stop "
          f"(lease 5 s, {(lease_end - stopped_at).total_seconds():.2f} s left at the stop)")  # fmt: skip
    # the resumed replica finishes its first attempt; the write is fenced off
    wait_until(lambda: "job_completion_fenced" in victim.output(), timeout=30)
    fenced = [json.loads(line) for line in victim.output().splitlines()
              if "job_completion_fenced" in line]  # fmt: skip
    assert [(f["job_id"], f["attempt"]) for f in fenced] == [(job_id, 1)]
    assert [(a, o) for a, o, *_ in _runs(db, job_id)] == [(1, "lost"), (2, "succeeded")]
    for r in (victim, survivor):
        assert r.stop() == 0, r.output()
