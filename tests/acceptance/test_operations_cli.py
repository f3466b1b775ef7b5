"""`scheduler jobs ...` and `scheduler dead-letters ...` against a real database."""

from __future__ import annotations

import json

import psycopg

from scheduler import enqueue


def _dead_job(db, task: str = "acceptance.always_fails", days_ago: int = 0) -> int:
    """A dead job with three failed runs, as a worker would leave it."""
    job_id = db.execute(
        """INSERT INTO scheduler.jobs (task, state, attempt, max_attempts, finished_at,
                                       last_error)
           VALUES (%s, 'dead', 3, 3, now() - make_interval(days => %s), 'ValueError: boom')
           RETURNING id""",
        [task, days_ago],
    ).fetchone()[0]
    db.execute(
        """INSERT INTO scheduler.job_runs (job_id, attempt, worker_id, started_at, finished_at,
                                           outcome, error, traceback)
           SELECT %s, a, 'w1', now(), now(), 'failed', 'ValueError: boom',
                  'Traceback (most recent call last):\n  ValueError: boom'
           FROM generate_series(1, 3) AS a""",
        [job_id],
    )
    return job_id


def test_jobs_list_filters_and_json(db, db_url, run_cli):
    with psycopg.connect(db_url) as conn:
        a = enqueue("acceptance.echo", args={"message": "hi"}, queue="mail", connection=conn)
        enqueue("acceptance.tick", connection=conn)
        conn.commit()
    dead = _dead_job(db)

    out = run_cli("jobs", "list", "--queue", "mail")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "state", "queue", "task"]
    assert len(lines) == 2 and lines[1].split()[:4] == [
        str(a),
        "pending",
        "mail",
        "acceptance.echo",
    ]

    out = run_cli("jobs", "list", "--state", "dead", "--json")
    rows = json.loads(out.stdout)
    assert [(r["id"], r["state"], r["last_error"]) for r in rows] == [
        (dead, "dead", "ValueError: boom")
    ]
    assert run_cli("jobs", "list", "--state", "nonsense").returncode == 2


def test_jobs_show_has_every_attempt_with_error_and_traceback(db, run_cli):
    dead = _dead_job(db)
    out = run_cli("jobs", "show", str(dead))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("ValueError: boom") >= 4  # last_error + 3 attempts
    for attempt in (1, 2, 3):
        assert f"attempt {attempt}: failed on w1" in out.stdout
    assert "Traceback (most recent call last):" in out.stdout
    shown = json.loads(run_cli("jobs", "show", str(dead), "--json").stdout)
    assert [r["attempt"] for r in shown["runs"]] == [1, 2, 3]
    missing = run_cli("jobs", "show", "999999")
    assert missing.returncode == 1 and "no job 999999" in missing.stderr


def test_jobs_retry_renews_the_budget_and_is_recorded(db, run_cli):
    dead = _dead_job(db)
    out = run_cli("jobs", "retry", str(dead))
    assert out.returncode == 0, out.stderr
    state, attempt, max_attempts = db.execute(
        "SELECT state, attempt, max_attempts FROM scheduler.jobs WHERE id = %s", [dead]
    ).fetchone()
    assert (state, attempt, max_attempts) == ("pending", 3, 6)  # attempts 4..6 granted
    assert db.execute(
        "SELECT event, detail FROM scheduler.job_events WHERE job_id = %s", [dead]
    ).fetchall() == [("retried", "attempts 4..6")]
    again = run_cli("jobs", "retry", str(dead))  # pending now: nothing to retry
    assert again.returncode == 1 and "not dead or cancelled" in again.stderr


def test_jobs_cancel_pending_and_running(db, db_url, run_cli):
    with psycopg.connect(db_url) as conn:
        pending = enqueue("acceptance.tick", connection=conn)
        running = enqueue("acceptance.tick", connection=conn)
        conn.commit()
    db.execute(
        "UPDATE scheduler.jobs SET state = 'running', attempt = 1, locked_by = 'w', "
        "locked_at = now(), lease_expires_at = now() + interval '30 s' WHERE id = %s",
        [running],
    )
    assert "cancelled" in run_cli("jobs", "cancel", str(pending)).stdout
    assert "asked to stop" in run_cli("jobs", "cancel", str(running)).stdout
    rows = {
        r[0]: (r[1], r[2])
        for r in db.execute(
            "SELECT id, state, cancel_requested_at IS NOT NULL FROM scheduler.jobs"
        ).fetchall()
    }
    assert rows[pending] == ("cancelled", False) and rows[running] == ("running", True)
    finished = run_cli("jobs", "cancel", str(pending))
    assert finished.returncode == 1 and "has finished" in finished.stderr


def test_dead_letters_list_retry_all_and_purge(db, run_cli):
    old = _dead_job(db, days_ago=40)
    recent = _dead_job(db, task="acceptance.echo", days_ago=1)
    listed = json.loads(run_cli("dead-letters", "list", "--json").stdout)
    assert {r["id"] for r in listed} == {old, recent}

    out = run_cli("dead-letters", "retry", "--all", "--task", "acceptance.echo")
    assert out.stdout.strip() == "1 dead letter(s) back to pending"
    assert db.execute("SELECT state FROM scheduler.jobs WHERE id = %s", [recent]).fetchone() == (
        "pending",
    )
    assert run_cli("dead-letters", "retry").returncode == 2  # --all is required

    bad = run_cli("dead-letters", "purge", "--older-than", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    out = run_cli("dead-letters", "purge", "--older-than", "30d")
    assert out.stdout.strip() == "1 dead letter(s) purged"
    assert db.execute("SELECT count(*) FROM scheduler.jobs WHERE id = %s", [old]).fetchone()[0] == 0
    assert (
        db.execute("SELECT count(*) FROM scheduler.job_runs WHERE job_id = %s", [old]).fetchone()[0]
        == 0
    )


def test_status_shows_leader_replicas_queues_and_schedules_in_trouble(db, run_cli, start_replica):
    db.execute(
        """INSERT INTO scheduler.schedules (name, cron, timezone, task, max_attempts,
               backoff_base_s, backoff_max_s, backoff_jitter, definition_hash, next_run_at,
               last_fire_at)
           VALUES ('nightly', '30 3 * * *', 'UTC', 'acceptance.tick', 3, 1, 10, 0, 'h',
                   '2030-01-01T03:30:00Z', '2029-12-31T03:30:00Z')"""
    )
    db.execute(
        """INSERT INTO scheduler.jobs (task, state, attempt, finished_at, last_error,
                                       schedule_name, scheduled_for, origin)
           VALUES ('acceptance.tick', 'dead', 3, now(), 'ValueError: nope', 'nightly',
                   '2029-12-31T03:30:00Z', 'cron')"""
    )
    db.execute(  # a replica that stopped heartbeating an hour ago
        """INSERT INTO scheduler.replicas (id, host, pid, version, queues, concurrency,
                                           heartbeat_at)
           VALUES ('gone:1:abc', 'gone', 1, '0.0.1', '{default}', 10, now() - interval '1 h')"""
    )
    db.execute(  # due an hour ago on a queue nobody works: lag
        "INSERT INTO scheduler.jobs (task, queue, run_at) "
        "VALUES ('acceptance.tick', 'nobody', now() - interval '1 h')"
    )
    replica = start_replica(
        "run",
        "--import",
        "tests.acceptance.app_tasks",
        env={"SCHEDULER_RETENTION_INTERVAL_S": "0.2"},
    )

    def registered():
        rows = db.execute("SELECT id FROM scheduler.replicas").fetchall()
        return rows if rows and all(not r[0].startswith("gone") for r in rows) else None

    from tests.conftest import wait_until

    wait_until(registered, timeout=30)  # registered, and the stale one aged out
    report = json.loads(run_cli("status", "--json").stdout)
    assert report["leader"]["holder"].split(":")[1] == str(replica.pid)
    (me,) = report["replicas"]
    assert me["leader"] is True and me["queues"] == "default" and me["concurrency"] == 100
    queues = {q["queue"]: q for q in report["queues"]}
    assert queues["nobody"]["due"] == 1 and float(queues["nobody"]["lag_s"]) >= 3600
    assert queues["default"]["dead"] == 1
    (trouble,) = report["schedules_in_trouble"]
    assert trouble["name"] == "nightly" and trouble["problem"] == "dead"
    text = run_cli("status").stdout
    assert "leader:" in text and "replicas:" in text and "nightly" in text
    replica.stop()
    assert db.execute("SELECT count(*) FROM scheduler.replicas").fetchone()[0] == 0


def test_no_password_reaches_the_logs(db, db_url, start_replica, run_cli, cli_env):
    """Every path that shows a database URL shows it redacted: the replica's log, `status`,
    a connection error (a wrong role, an unreachable host) and a settings error. The error
    paths print the URL, so this test fails when redaction breaks (it was seen failing with
    ``redact_url`` returning its input)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from tests.conftest import wait_until

    secret = "hunter2-do-not-log"

    def assert_redacted(text: str, shown: str | None = None) -> None:
        assert secret not in text, text
        if shown is not None:
            assert shown in text, text  # the URL is there, redacted: a leak would show

    # a working replica and `status`, with a password in the URL (local sockets are trusted)
    env = {
        "SCHEDULER_DATABASE_URL": make_conninfo(db_url, password=secret),
        "SCHEDULER_LOG_LEVEL": "debug",
    }
    with psycopg.connect(db_url) as conn:
        enqueue("acceptance.tick", connection=conn)
        conn.commit()
    replica = start_replica("run", "--import", "tests.acceptance.app_tasks", env=env)
    wait_until(
        lambda: db.execute(
            "SELECT count(*) FROM scheduler.jobs WHERE state = 'succeeded'"
        ).fetchone()[0],
        timeout=30,
    )
    status = run_cli("status", env={**cli_env, **env})
    assert status.returncode == 0, status.stderr
    replica.stop()
    output = replica.output()
    assert "leader_elected" in output and "replica_started" in output  # it did log
    assert_redacted(output)
    assert_redacted(status.stdout + status.stderr)

    # a replica that cannot connect: its log names the URL
    unreachable = f"postgresql://app:{secret}@127.0.0.1:1/app"
    failed = start_replica("run", env={"SCHEDULER_DATABASE_URL": unreachable})
    assert failed.proc.wait(30) == 1
    assert_redacted(failed.output(), "postgresql://app:***@127.0.0.1:1/app")

    # the wrong credentials (a role that does not exist), in the URI and key=value forms
    params = conninfo_to_dict(db_url)
    wrong_role_uri = (
        f"postgresql://nobody_here:{secret}@/{params['dbname']}"
        f"?host={params.get('host', '')}&port={params.get('port', 5432)}"
    )
    wrong_role_dsn = make_conninfo(db_url, user="nobody_here", password=secret)
    for url, shown in [
        (wrong_role_uri, "postgresql://nobody_here:***@/"),
        (wrong_role_dsn, "password=***"),
    ]:
        result = run_cli("status", env={**cli_env, "SCHEDULER_DATABASE_URL": url})
        assert result.returncode == 1 and 'role "nobody_here" does not exist' in result.stderr
        assert_redacted(result.stderr, shown)

    # settings errors: a malformed URL, and a rule between settings next to a good URL
    for variables, shown in [
        ({"SCHEDULER_DIRECT_DATABASE_URL": f"postgresql://app:{secret}@db:port/app"},
         "postgresql://app:***@db:port/app"),
        ({"SCHEDULER_DATABASE_URL": f"postgresql://app:{secret} x@db/app"},
         "postgresql://app:***@db/app"),
        ({"SCHEDULER_DATABASE_URL": unreachable, "SCHEDULER_HEARTBEAT_S": "10"}, None),
    ]:  # fmt: skip
        result = run_cli("status", env={**cli_env, **variables})
        assert result.returncode == 2, result.stderr
        assert_redacted(result.stderr, shown)
