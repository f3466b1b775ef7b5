"""The real CLI in subprocesses against a real PostgreSQL."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from scheduler import enqueue, schedule_at
from tests.acceptance.app_tasks import always_fails
from tests.conftest import wait_until

SCHEDULES = """\
timezone: UTC
imports: [tests.acceptance.app_tasks]
schedules:
  - name: every_second
    cron: "* * * * * *"
    task: acceptance.tick
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(text)
    return path


def _leader_pid(db: psycopg.Connection) -> int | None:
    row = db.execute("SELECT holder FROM scheduler.leader").fetchone()
    return int(row[0].split(":")[1]) if row else None


def test_check_reports_valid_and_invalid_files(tmp_path, run_cli):
    good = _write(tmp_path, SCHEDULES)
    result = run_cli("check", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{good}: 1 schedule(s) OK"
    limited = tmp_path / "limited.yaml"
    limited.write_text(SCHEDULES + "queues:\n  smtp: {rate: 100, per_s: 60}\n")
    result = run_cli("check", str(limited))
    assert result.stdout.strip() == f"{limited}: 1 schedule(s) and 1 queue limit(s) OK"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "imports: [tests.acceptance.app_tasks]\n"
        "schedules:\n"
        "  - name: a\n"
        "    cron: '0 0 30 2 *'\n"
        "    task: acceptance.tick\n"
        "  - name: b\n"
        "    cron: '* * * * *'\n"
        "    task: acceptance.tick\n"
        "    timezone: Europe/Berln\n"
    )
    result = run_cli("check", str(bad))
    assert result.returncode != 0
    assert f"{bad}:4: schedule 'a': field 'cron'" in result.stderr
    assert f"{bad}:9: schedule 'b': field 'timezone'" in result.stderr


def test_migrate_is_idempotent(run_cli):
    first = run_cli("migrate")
    assert first.returncode == 0, first.stderr
    assert "up to date" in first.stdout  # the test database is already migrated


def test_two_replicas_one_job_per_fire_time_no_gaps_through_handover(tmp_path, db, start_replica):
    config = str(_write(tmp_path, SCHEDULES))
    a = start_replica("run", "--config", config)
    b = start_replica("run", "--config", config)
    wait_until(lambda: _leader_pid(db), timeout=30)

    def fired(n: int):
        def check() -> bool:
            return (
                db.execute(
                    "SELECT count(*) FROM scheduler.jobs WHERE schedule_name = 'every_second'"
                ).fetchone()[0]
                >= n
            )

        return check

    wait_until(fired(5), timeout=30)
    # graceful handover: stop whichever replica leads; the other must continue without a gap
    leader = a if _leader_pid(db) == a.pid else b
    follower = b if leader is a else a
    assert leader.stop() == 0, leader.output()
    wait_until(lambda: _leader_pid(db) == follower.pid, timeout=10)
    wait_until(fired(12), timeout=30)
    wait_until(
        lambda: db.execute(
            "SELECT count(*) = 0 FROM scheduler.jobs WHERE state IN ('pending', 'running') AND run_at < now() - interval '2 seconds'"
        ).fetchone()[0],
        timeout=10,
    )
    assert follower.stop() == 0, follower.output()

    rows = db.execute(
        "SELECT scheduled_for, state, attempt, term FROM scheduler.jobs "
        "WHERE schedule_name = 'every_second' ORDER BY scheduled_for"
    ).fetchall()
    fire_times = [r[0] for r in rows]
    assert len(fire_times) >= 12
    gaps = [(x, y) for x, y in itertools.pairwise(fire_times) if y - x != timedelta(seconds=1)]
    assert gaps == [], f"missing fire times between {gaps}"
    assert {r[3] for r in rows} == {1, 2}, "both terms should have materialised fire times"
    runs = db.execute(
        "SELECT job_id, count(*) FROM scheduler.job_runs GROUP BY job_id HAVING count(*) > 1"
    ).fetchall()
    assert runs == [], "a fire time ran twice"
    finished = [r for r in rows if r[1] == "succeeded"]
    assert len(finished) >= len(rows) - 2  # the last fire times may still be pending at stop


def test_failing_task_ends_dead_with_max_attempts_runs(db, db_url, start_replica):
    r = start_replica("run", "--import", "tests.acceptance.app_tasks")
    with psycopg.connect(db_url) as conn:
        job_id = enqueue(always_fails, connection=conn)
        conn.commit()
    wait_until(
        lambda: db.execute(
            "SELECT state = 'dead' FROM scheduler.jobs WHERE id = %s", [job_id]
        ).fetchone()[0],
        timeout=30,
    )
    assert r.stop() == 0, r.output()
    runs = db.execute(
        "SELECT attempt, outcome, error FROM scheduler.job_runs WHERE job_id = %s ORDER BY attempt",
        [job_id],
    ).fetchall()
    assert runs == [(i, "failed", "ValueError: this task always fails") for i in (1, 2, 3)]


def test_schedule_at_jobs_run_and_rollback_leaves_none(db, db_url, start_replica):
    r = start_replica("run", "--import", "tests.acceptance.app_tasks", "--concurrency", "4")
    soon = datetime.now(UTC) + timedelta(seconds=2)
    with psycopg.connect(db_url) as conn:
        kept = [
            schedule_at("acceptance.echo", soon, args={"message": f"m{i}"}, connection=conn)
            for i in range(5)
        ]
        conn.commit()
        schedule_at("acceptance.echo", soon, args={"message": "rolled back"}, connection=conn)
        conn.rollback()
    wait_until(
        lambda: db.execute(
            "SELECT count(*) = 5 FROM scheduler.jobs WHERE state = 'succeeded'"
        ).fetchone()[0],
        timeout=30,
    )
    assert r.stop() == 0, r.output()
    rows = db.execute(
        "SELECT id, args->>'message', state FROM scheduler.jobs ORDER BY id"
    ).fetchall()
    assert [row[0] for row in rows] == kept
    assert all(row[1] != "rolled back" for row in rows)
    started = db.execute("SELECT min(started_at) FROM scheduler.job_runs").fetchone()[0]
    assert started >= soon, "a delayed job started before its run_at"


def test_without_database_url_an_embedded_postgres_is_started(tmp_path, cli_env, run_cli):
    env = {k: v for k, v in cli_env.items() if k != "SCHEDULER_DATABASE_URL"}
    env["SCHEDULER_EMBEDDED_DIR"] = str(tmp_path / "state")
    result = run_cli("migrate", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    url = next(
        line.split(": ", 1)[1]
        for line in result.stderr.splitlines()
        if line.startswith("embedded PostgreSQL: ")
    )
    assert url.startswith("postgresql://")
    assert (tmp_path / "state" / "pgdata" / "PG_VERSION").exists()
    assert "applied: 0001_init" in result.stdout
    # the server stops with the process that started it; the data stays for the next run
    again = run_cli("migrate", env=env, timeout=120)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr


def test_schedules_next_previews_fire_times_with_offsets(tmp_path, run_cli):
    result = run_cli(
        "schedules",
        "next",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "Europe/Berlin",
        "--after",
        "2025-10-25T12:00:00+02:00",
        "--count",
        "3",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "2025-10-26T02:30:00+02:00",  # the first 02:30 of the repeated hour only
        "2025-10-27T02:30:00+01:00",
        "2025-10-28T02:30:00+01:00",
    ]
    config = _write(tmp_path, SCHEDULES)
    result = run_cli(
        "schedules",
        "next",
        "every_second",
        "--config",
        str(config),
        "--after",
        "2026-01-01T00:00:00+00:00",
        "--count",
        "2",
    )
    assert result.stdout.split() == ["2026-01-01T00:00:01+00:00", "2026-01-01T00:00:02+00:00"]
    bad = run_cli("schedules", "next", "--cron", "0 0 30 2 *")
    assert bad.returncode == 2 and "never fires" in bad.stderr  # a bad argument


def test_schedules_list_pause_resume_trigger(db, run_cli):
    db.execute(
        """INSERT INTO scheduler.schedules (name, cron, timezone, task, max_attempts,
               backoff_base_s, backoff_max_s, backoff_jitter, definition_hash, next_run_at)
           VALUES ('nightly', '30 3 * * *', 'Europe/Berlin', 'acceptance.tick', 3, 1, 10, 0, 'h',
                   '2030-01-01T02:30:00Z')"""
    )
    assert run_cli("schedules", "pause", "nightly").returncode == 0
    import json

    listed = json.loads(run_cli("schedules", "list", "--json").stdout)
    assert [(s["name"], s["paused_at"] is not None) for s in listed] == [("nightly", True)]
    assert run_cli("schedules", "resume", "nightly").returncode == 0
    table = run_cli("schedules", "list").stdout
    assert "nightly" in table and "enabled" in table and "2030-01-01T02:30:00+00:00" in table
    triggered = run_cli("schedules", "trigger", "nightly")
    assert triggered.returncode == 0, triggered.stderr
    origin, next_run = db.execute(
        "SELECT j.origin, s.next_run_at FROM scheduler.jobs j JOIN scheduler.schedules s "
        "ON s.name = j.schedule_name"
    ).fetchone()
    assert origin == "trigger" and next_run.year == 2030
    missing = run_cli("schedules", "pause", "nope")
    assert missing.returncode == 1 and "no schedule named 'nope'" in missing.stderr


def test_schedules_next_previews_an_interval_schedule(tmp_path, run_cli):
    config = _write(tmp_path, (
        "imports: [tests.acceptance.app_tasks]\n"
        "schedules:\n"
        "  - name: pinned\n"
        "    every: 90s\n"
        "    start_at: '2030-01-01T09:00:00Z'\n"
        "    task: acceptance.tick\n"
        "  - name: floating\n"
        "    every: 2h\n"
        "    task: acceptance.tick\n"
    ))  # fmt: skip
    pinned = run_cli("schedules", "next", "pinned", "--config", str(config), "--count", "3",
                     "--after", "2030-01-01T09:00:00Z")  # fmt: skip
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.split() == ["2030-01-01T09:01:30+00:00", "2030-01-01T09:03:00+00:00",
                                     "2030-01-01T09:04:30+00:00"]  # fmt: skip
    floating = run_cli("schedules", "next", "floating", "--config", str(config), "--count", "2",
                       "--after", "2030-01-01T00:00:00Z")  # fmt: skip
    assert floating.returncode == 0, floating.stderr
    assert floating.stdout.split() == ["2030-01-01T02:00:00+00:00", "2030-01-01T04:00:00+00:00"]
