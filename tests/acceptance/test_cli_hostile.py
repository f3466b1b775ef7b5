"""Hostile input to the real ``scheduler`` CLI: every bad argument, setting or database gets
one line on stderr naming the input and the reason, and a non-zero exit (2 for bad arguments
and settings, 1 for failures); never a traceback, never a hang, never a password."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import wait_until

SECRET = "hunter2-do-not-print"
RunCli = Callable[..., subprocess.CompletedProcess[str]]


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a failed command (asserting the exit code)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    assert SECRET not in result.stdout + result.stderr
    assert "errors.pydantic.dev" not in result.stderr
    return lines[0]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections and never answers (a hung host)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    sock.close()


# ---- the database setting -------------------------------------------------------------------

OPERATOR_COMMANDS = [
    ["status"],
    ["jobs", "list"],
    ["dead-letters", "list"],
    ["schedules", "list"],
    ["migrate"],
    ["run"],
]


@pytest.mark.parametrize("command", OPERATOR_COMMANDS, ids=" ".join)
def test_refused_connection_is_one_line_with_the_url_redacted(command, run_cli, cli_env):
    env = {**cli_env, "SCHEDULER_DATABASE_URL": f"postgresql://x:{SECRET}@127.0.0.1:1/db"}
    line = one_line(run_cli(*command, env=env, timeout=30), 1)
    assert "cannot connect to the database postgresql://x:***@127.0.0.1:1/db" in line
    assert "refused" in line


def test_malformed_url_is_a_settings_error(run_cli, cli_env):
    line = one_line(run_cli("status", env={**cli_env, "SCHEDULER_DATABASE_URL": "not a url"}), 2)
    assert line.startswith("SCHEDULER_DATABASE_URL='not a url': is not a libpq URL")
    empty = run_cli("jobs", "list", env={**cli_env, "SCHEDULER_DATABASE_URL": ""})
    assert "SCHEDULER_DATABASE_URL='': is empty" in one_line(empty, 2)


def test_missing_database_is_named(db_url, run_cli, cli_env):
    url = make_conninfo(db_url, dbname="no_such_database_here")
    for command in (["status"], ["migrate"]):
        line = one_line(run_cli(*command, env={**cli_env, "SCHEDULER_DATABASE_URL": url}), 1)
        assert 'database "no_such_database_here" does not exist' in line


@pytest.mark.timeout(60)
def test_a_host_that_does_not_answer_times_out_with_a_message(silent_server, run_cli, cli_env):
    env = {
        **cli_env,
        "SCHEDULER_DATABASE_URL": f"postgresql://x:{SECRET}@127.0.0.1:{silent_server}/db",
        "SCHEDULER_CONNECT_TIMEOUT_S": "2",
    }
    for command in (["status"], ["run"]):
        started = time.monotonic()
        line = one_line(run_cli(*command, env=env, timeout=40), 1)
        assert time.monotonic() - started < 20, "the connect timeout was not applied"
        assert "timeout" in line and "SCHEDULER_CONNECT_TIMEOUT_S=2" in line, line


@pytest.mark.parametrize(
    "command", [c for c in OPERATOR_COMMANDS if c[0] not in ("migrate", "run")], ids=" ".join
)
def test_a_schema_never_migrated_says_run_migrate(command, run_cli, cli_env):
    result = run_cli(*command, env={**cli_env, "SCHEDULER_SCHEMA": "never_migrated"})
    line = one_line(result, 1)
    assert "'never_migrated' has no scheduler tables" in line
    assert "run `scheduler migrate`" in line


def test_a_schema_behind_the_code_names_the_pending_migrations(db, run_cli):
    db.execute("DELETE FROM scheduler.migrations WHERE version = 8")
    line = one_line(run_cli("status"), 1)
    assert "0008_robustness" in line and "run `scheduler migrate`" in line


# ---- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["jobs", "list", "--limit", "-1"], "--limit"),
        (["jobs", "list", "--limit", "0"], "--limit"),
        (["jobs", "list", "--limit", "1000000000"], "--limit"),
        (["dead-letters", "list", "--limit", "-5"], "--limit"),
        (["jobs", "show", "99999999999999999999"], "id"),
        (["jobs", "retry", "-3"], "id"),
        (["jobs", "cancel", "0"], "id"),
        (["schedules", "next", "--cron", "* * * * *", "--count", "-1"], "--count"),
        (["schedules", "next", "--cron", "* * * * *", "--count", "0"], "--count"),
        (["schedules", "next", "--cron", "* * * * *", "--count", "100000000"], "--count"),
        (["dead-letters", "purge", "--older-than", "100000000d"], "--older-than"),
        (["dead-letters", "purge", "--older-than", "P99999999D"], "--older-than"),
        (["dead-letters", "purge", "--older-than", "0s"], "--older-than"),
        (["run", "--concurrency", "0"], "--concurrency"),
        (["run", "--concurrency", "1001"], "--concurrency"),
        (["run", "--queues", ","], "--queues"),
        (["run", "--queues", "mail,,default"], "--queues"),
        (["run", "--queues", "mail box"], "--queues"),
        (["run", "--queues", "q" * 101], "--queues"),
        (["jobs", "list", "--queue", "a,b"], "--queue"),
        (["jobs", "list", "--task", "bad\udcff"], "--task"),
        (["dead-letters", "list", "--task", "x" * 201], "--task"),
        (["jobs", "list", "--schedule", "no spaces"], "--schedule"),
        (["schedules", "pause", "bad\udcffname"], "schedule NAME"),
        (["schedules", "next", "--cron", "0 0 1 1 *", "--after", "9999-06-01T00:00"], "--after"),
        (["schedules", "next", "--cron", "0 0 * * *", "--after", "9999-12-31T00:00"], "--after"),
        (["schedules", "next", "--cron", "* * * * *", "--after", "yesterday"], "--after"),
        (["schedules", "next", "--cron", "* * * * *", "--timezone", "Mars/Olympus"], "Mars"),
    ],
    ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else None,
)
def test_bad_arguments_are_one_line_and_exit_2(args, named, run_cli):
    line = one_line(run_cli(*args), 2)
    assert named in line, line


def test_run_with_a_module_that_raises_at_import(tmp_path, run_cli, cli_env):
    (tmp_path / "explodes_on_import.py").write_text("1 / 0\n")
    env = {**cli_env, "PYTHONPATH": f"{tmp_path}:{cli_env['PYTHONPATH']}"}
    line = one_line(run_cli("run", "--import", "explodes_on_import", env=env), 1)
    assert line.startswith("--import 'explodes_on_import': importing it raised ZeroDivisionError")
    missing = one_line(run_cli("run", "--import", "no_such_module_here", env=env), 1)
    assert "cannot import it ModuleNotFoundError" in missing


# ---- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"SCHEDULER_QUEUES": " , "}, "SCHEDULER_QUEUES=' , ': no queue name"),
        ({"SCHEDULER_QUEUES": "a,b;c"}, "SCHEDULER_QUEUES='a,b;c': queue 2 of 2 'b;c'"),
        ({"SCHEDULER_LOG_LEVEL": "loud"}, "SCHEDULER_LOG_LEVEL='loud': input should be 'debug'"),
        ({"SCHEDULER_LOG_FORMAT": "xml"}, "SCHEDULER_LOG_FORMAT='xml'"),
        ({"SCHEDULER_CONCURRENCY": "0"}, "SCHEDULER_CONCURRENCY='0': input should be greater"),
        ({"SCHEDULER_LEASE_S": "inf"}, "SCHEDULER_LEASE_S='inf': input should be a finite"),
        ({"SCHEDULER_LEASE_S": "1e300"}, "SCHEDULER_LEASE_S='1e300': at most"),
        ({"SCHEDULER_SCHEMA": "Robert'); DROP"}, "SCHEDULER_SCHEMA="),
        (
            {
                "SCHEDULER_HEARTBEAT_S": "10",
                "SCHEDULER_DATABASE_URL": f"postgresql://u:{SECRET}@h/d",
            },
            "SCHEDULER_HEARTBEAT_S (heartbeat_s=10.0) must be at most half",
        ),
        (
            {"SCHEDULER_DIRECT_DATABASE_URL": f"postgresql://u:{SECRET} x@h/db"},
            "SCHEDULER_DIRECT_DATABASE_URL='postgresql://u:***@h/db': is not a libpq URL",
        ),
        (
            {"SCHEDULER_DATABASE_URL": f"host=h password={SECRET} port=notaport"},
            "SCHEDULER_DATABASE_URL=",
        ),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
def test_bad_settings_are_one_line_each_naming_the_variable(variables, expected, run_cli, cli_env):
    for command in (["status"], ["run"]):
        line = one_line(run_cli(*command, env={**cli_env, **variables}), 2)
        assert line.startswith(expected) or expected in line, line


def test_every_bad_setting_gets_its_own_line(run_cli, cli_env):
    env = {**cli_env, "SCHEDULER_CONCURRENCY": "lots", "SCHEDULER_POLL_INTERVAL_S": "-1"}
    result = run_cli("status", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = sorted(result.stderr.splitlines())
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("SCHEDULER_CONCURRENCY='lots': input should be a valid integer")
    assert lines[1].startswith("SCHEDULER_POLL_INTERVAL_S='-1': input should be greater than 0")


def test_a_misspelled_variable_gets_a_did_you_mean_warning_once(run_cli, cli_env):
    env = {**cli_env, "SCHEDULER_CONCURENCY": "4", "SCHEDULER_RESCUE_INTERVAL_S": "1"}
    result = run_cli("status", env=env)
    assert result.returncode == 0, result.stderr  # a warning, not an error
    lines = result.stderr.splitlines()
    assert (
        lines.count(
            "warning: SCHEDULER_CONCURENCY is not a scheduler setting and is ignored; "
            "did you mean SCHEDULER_CONCURRENCY?"
        )
        == 1
    ), result.stderr
    assert [line for line in lines if "SCHEDULER_RESCUE_INTERVAL_S" in line] == [
        (
            "warning: SCHEDULER_RESCUE_INTERVAL_S is not a scheduler setting and is ignored; "
            "did you mean SCHEDULER_RETENTION_INTERVAL_S?"
        )
    ]


# ---- retry with conflicts -------------------------------------------------------------------


def _dead(db, *, key: str | None = None, schedule: str | None = None, at: str | None = None):
    return db.execute(
        """INSERT INTO scheduler.jobs (task, state, attempt, max_attempts, finished_at,
               idempotency_key, schedule_name, scheduled_for, overlap)
           VALUES ('acceptance.tick', 'dead', 3, 3, now(), %s, %s, %s, %s) RETURNING id""",
        [key, schedule, at, "skip" if schedule else "allow"],
    ).fetchone()[0]


def _live(db, *, key: str | None = None, schedule: str | None = None, at: str | None = None):
    return db.execute(
        """INSERT INTO scheduler.jobs (task, idempotency_key, schedule_name, scheduled_for,
               overlap)
           VALUES ('acceptance.tick', %s, %s, %s, %s) RETURNING id""",
        [key, schedule, at, "skip" if schedule else "allow"],
    ).fetchone()[0]


def _state(db, job_id: int) -> str:
    return db.execute("SELECT state FROM scheduler.jobs WHERE id = %s", [job_id]).fetchone()[0]


def test_dead_letters_retry_all_retries_the_rest_and_names_the_skipped(db, run_cli):
    db.execute(
        """INSERT INTO scheduler.schedules (name, cron, timezone, task, max_attempts,
               backoff_base_s, backoff_max_s, backoff_jitter, definition_hash, next_run_at,
               overlap_policy)
           VALUES ('hourly', '0 * * * *', 'UTC', 'acceptance.tick', 3, 1, 10, 0, 'h',
                   '2030-01-01T00:00:00Z', 'skip'),
                  ('daily', '0 0 * * *', 'UTC', 'acceptance.tick', 3, 1, 10, 0, 'h',
                   '2030-01-01T00:00:00Z', 'skip')"""
    )
    key_taken = _dead(db, key="report-1")
    holder = _live(db, key="report-1")
    older_twin, newer_twin = _dead(db, key="report-2"), _dead(db, key="report-2")
    overlapping = _dead(db, schedule="hourly", at="2029-01-01T00:00Z")
    running = _live(db, schedule="hourly", at="2029-01-01T01:00Z")
    daily_old = _dead(db, schedule="daily", at="2029-01-01T00:00Z")
    daily_new = _dead(db, schedule="daily", at="2029-01-02T00:00Z")
    plain = _dead(db)

    result = run_cli("dead-letters", "retry", "--all")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() == "3 dead letter(s) back to pending"
    assert {_state(db, j) for j in (newer_twin, daily_new, plain)} == {"pending"}
    for job in (key_taken, older_twin, overlapping, daily_old):
        assert _state(db, job) == "dead"
    skipped = result.stderr.splitlines()
    assert skipped == [
        f"job {key_taken}: not retried: its idempotency key 'report-1' is held by live job {holder}",
        f"job {older_twin}: not retried: its idempotency key 'report-2' is shared with job"
        + f" {newer_twin}, retried instead",
        f"job {overlapping}: not retried: its schedule 'hourly' has overlap_policy skip and"
        + f" live job {running}",
        f"job {daily_old}: not retried: its schedule 'daily' has overlap_policy skip and job"
        + f" {daily_new} of it is retried instead",
        "4 dead letter(s) skipped",
    ]
    events = db.execute("SELECT job_id FROM scheduler.job_events ORDER BY job_id").fetchall()
    assert [e[0] for e in events] == sorted([newer_twin, daily_new, plain])


def test_jobs_retry_says_why_not(db, run_cli):
    dead = _dead(db, key="invoice-7")
    holder = _live(db, key="invoice-7")
    line = one_line(run_cli("jobs", "retry", str(dead)), 1)
    assert line == (
        f"job {dead}: not retried: its idempotency key 'invoice-7' is held by live job {holder}"
    )
    assert _state(db, dead) == "dead"


# ---- timeouts -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_statement_waiting_on_a_lock_times_out_with_a_message(db_url, db, run_cli, cli_env):
    dead = _dead(db)
    with psycopg.connect(db_url) as blocker:  # holds the job's row lock, uncommitted
        blocker.execute("SELECT 1 FROM scheduler.jobs WHERE id = %s FOR UPDATE", [dead])
        started = time.monotonic()
        result = run_cli(
            "jobs", "retry", str(dead),
            env={**cli_env, "SCHEDULER_STATEMENT_TIMEOUT_S": "1"}, timeout=40,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        blocker.rollback()
    line = one_line(result, 1)
    assert "did not answer within SCHEDULER_STATEMENT_TIMEOUT_S=1 s" in line
    assert elapsed < 15
    assert _state(db, dead) == "dead"


@pytest.fixture
def freezing_proxy(db_url: str) -> Iterator[int]:
    """A TCP port forwarding to the test server that goes silent (forwards nothing more from
    the client) once the server has said ReadyForQuery: a database that hangs after the
    connection is made."""
    params = conninfo_to_dict(db_url)
    host, port = params.get("host") or "/tmp", int(params.get("port") or 5432)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    sockets: list[socket.socket] = [listener]

    def upstream() -> socket.socket:
        if host.startswith("/"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(f"{host}/.s.PGSQL.{port}")
        else:
            s = socket.create_connection((host, port))
        sockets.append(s)
        return s

    def pump(src: socket.socket, dst: socket.socket, ready: threading.Event, *, up: bool):
        while not stop.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not up and b"Z\x00\x00\x00\x05I" in data:
                ready.set()
            if up and ready.is_set():
                continue  # the frozen database: the query never arrives
            try:
                dst.sendall(data)
            except OSError:
                return

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            sockets.append(client)
            server, ready = upstream(), threading.Event()
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=pump, args=(src, dst, ready), kwargs={"up": up},
                                 daemon=True).start()  # fmt: skip

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for s in sockets:
        s.close()


@pytest.mark.timeout(90)
def test_a_database_that_hangs_after_connecting_gives_a_message(
    freezing_proxy, db_url, run_cli, cli_env
):
    url = make_conninfo(db_url, host="127.0.0.1", port=freezing_proxy, sslmode="disable")
    env = {**cli_env, "SCHEDULER_DATABASE_URL": url, "SCHEDULER_STATEMENT_TIMEOUT_S": "1"}
    started = time.monotonic()
    line = one_line(run_cli("status", env=env, timeout=60), 1)
    assert time.monotonic() - started < 30
    assert "no answer from the database" in line and "within 7 s" in line, line


# ---- status ---------------------------------------------------------------------------------


def test_status_says_the_leader_is_stale_after_it_was_killed(db, run_cli, start_replica):
    db.execute(
        """INSERT INTO scheduler.schedules (name, cron, timezone, task, max_attempts,
               backoff_base_s, backoff_max_s, backoff_jitter, definition_hash, next_run_at,
               last_error, last_error_at)
           VALUES ('broken', '0 * * * *', 'UTC', 'acceptance.tick', 3, 1, 10, 0, 'h',
                   '2030-01-01T00:00:00Z', 'InvalidArgumentError: args are not JSON', now())"""
    )
    replica = start_replica("run", "--import", "tests.acceptance.app_tasks")
    wait_until(
        lambda: (
            db.execute("SELECT count(*) FROM scheduler.leader").fetchone()[0]
            and db.execute("SELECT count(*) FROM scheduler.replicas").fetchone()[0]
        ),
        timeout=30,
    )
    live = json.loads(run_cli("status", "--json").stdout)
    assert live["leader"]["stale"] is False and live["leader"]["lock_held"] is True
    (me,) = live["replicas"]
    assert me["leader"] is True and me["stuck_threads"] == 0 and me["stale"] is False
    (trouble,) = live["schedules_in_trouble"]
    assert trouble["name"] == "broken" and trouble["problem"] == "materialisation failed"
    assert trouble["detail"] == "InvalidArgumentError: args are not JSON" and trouble["at"]

    replica.kill()  # SIGKILL: no unlock, no goodbye; no other replica takes over

    def lock_freed():
        return json.loads(run_cli("status", "--json").stdout)["leader"]["lock_held"] is False

    wait_until(lock_freed, timeout=15)
    report = json.loads(run_cli("status", "--json").stdout)
    leader = report["leader"]
    assert leader["stale"] is True and "no session holds the leader lock" in leader["stale_reason"]
    assert [r["leader"] for r in report["replicas"]] == [False]
    text = run_cli("status")
    assert text.returncode == 0, text.stderr
    assert "STALE: no session holds the leader lock" in text.stdout
    assert "stuck_threads" in text.stdout and "materialisation failed" in text.stdout


def test_status_says_a_leader_with_an_old_heartbeat_is_stale(db, run_cli):
    db.execute(
        "INSERT INTO scheduler.leader (id, holder, term, elected_at, heartbeat_at) "
        "VALUES (true, 'gone:1:abc', 3, now() - interval '1 h', now() - interval '1 h')"
    )
    leader = json.loads(run_cli("status", "--json").stdout)["leader"]
    assert leader["stale"] is True and leader["lock_held"] is False
    # an hour, plus however long the command took to start (CI saw 3601.2 s under load)
    assert re.search(r"last heartbeat is 36[0-5]\d(\.\d)? s old", leader["stale_reason"])
