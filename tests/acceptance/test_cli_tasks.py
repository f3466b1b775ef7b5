"""``scheduler --version``, ``scheduler tasks list`` and ``scheduler enqueue``: the real CLI in
subprocesses against a real PostgreSQL (task modules: tests/acceptance/cli_task_module.py)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

import scheduler

RunCli = Callable[..., subprocess.CompletedProcess[str]]
MODULE = "tests.acceptance.cli_task_module"
RECEIPT = '{"order_id": 42, "email": "a@example.com"}'


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a command (asserting the exit code and no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    return lines[0]


def db_now(db: psycopg.Connection) -> datetime:
    return db.execute("SELECT clock_timestamp()").fetchone()[0]


def jobs(db: psycopg.Connection) -> list[tuple]:
    return db.execute(
        "SELECT id, task, args, queue, priority, max_attempts, run_at, idempotency_key "
        "FROM scheduler.jobs ORDER BY id"
    ).fetchall()


# ---- --version -------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag, run_cli):
    result = run_cli(flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"scheduler {scheduler.__version__}\n"


# ---- tasks list ------------------------------------------------------------------------------


def test_tasks_list_table_shows_signatures_and_marks_defaults(run_cli, cli_env):
    env = {**cli_env, "SCHEDULER_MAX_ATTEMPTS": "7"}  # a service default the table must show
    result = run_cli("tasks", "list", "--import", MODULE, env=env)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["name", "queue", "priority", "max_attempts"]
    assert [r.split()[0] for r in rows] == ["shop.notify", "shop.send_receipt"]  # sorted
    notify, receipt = rows
    assert "(order_id: int, email: str) -> None" in receipt
    assert "default (default)" in receipt and "0 (default)" in receipt
    assert "7 (default)" in receipt and "1/3600/0.1 (default)" in receipt
    assert "none (default)" in receipt and " sync " in receipt
    assert "(channel: str, urgent: bool = False) -> None" in notify
    assert "ctx" not in notify and "JobContext" not in notify  # filled by the worker
    assert " mail " in notify and " 5 " in notify and " 4 " in notify and " 30 " in notify
    assert "0.5/3600/0.1 (default max, jitter)" in notify and " async " in notify
    assert "(default)" not in notify.split("0.5/")[0]  # queue, priority, max_attempts: its own


def test_tasks_list_json_from_the_config_imports(tmp_path, run_cli):
    config = tmp_path / "schedules.yaml"
    config.write_text(f"imports: [{MODULE}]\nschedules: []\n")
    result = run_cli("tasks", "list", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert [t["name"] for t in listed] == ["shop.notify", "shop.send_receipt"]
    notify, receipt = listed
    assert receipt == {
        "name": "shop.send_receipt",
        "handler": f"{MODULE}.send_receipt",
        "queue": "default",
        "priority": 0,
        "max_attempts": 20,
        "backoff_base_s": 1.0,
        "backoff_max_s": 3600.0,
        "backoff_jitter": 0.1,
        "timeout_s": None,
        "defaults": ["queue", "priority", "max_attempts", "backoff_base_s", "backoff_max_s",
                     "backoff_jitter", "timeout_s"],
        "kind": "sync",
        "signature": "(order_id: int, email: str) -> None",
    }  # fmt: skip
    assert notify["kind"] == "async" and notify["queue"] == "mail" and notify["timeout_s"] == 30
    assert notify["defaults"] == ["backoff_max_s", "backoff_jitter"]
    assert notify["signature"] == "(channel: str, urgent: bool = False) -> None"


def test_tasks_list_without_modules_says_how_to_import_them(run_cli):
    result = run_cli("tasks", "list")
    assert "--import MODULE" in one_line(result, 0)
    assert run_cli("tasks", "list", "--json").stdout == "[]\n"


def test_a_module_that_fails_to_import_is_one_line(tmp_path, run_cli, cli_env):
    (tmp_path / "broken_cli_tasks.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    env = {**cli_env, "PYTHONPATH": os.pathsep.join([cli_env["PYTHONPATH"], str(tmp_path)])}
    line = one_line(run_cli("tasks", "list", "--import", "tests.no_such_module", env=env), 2)
    assert "--import 'tests.no_such_module': cannot import it: ModuleNotFoundError" in line
    config = tmp_path / "schedules.yaml"
    config.write_text("imports: [broken_cli_tasks]\nschedules: []\n")
    line = one_line(run_cli("tasks", "list", "--config", str(config), env=env), 2)
    assert f"{config}: imports 'broken_cli_tasks'" in line
    assert "RuntimeError: boom second line" in line
    line = one_line(run_cli("enqueue", "x", "--import", "broken_cli_tasks", env=env), 2)
    assert "importing it raised RuntimeError" in line


# ---- enqueue ---------------------------------------------------------------------------------


def test_enqueue_now_with_options(db, run_cli):
    before = db_now(db)
    result = run_cli(
        "enqueue", "shop.send_receipt", "--args", RECEIPT, "--queue", "receipts",
        "--priority", "-3", "--max-attempts", "2", "--import", MODULE,
    )  # fmt: skip
    after = db_now(db)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [(job_id, task, args, queue, priority, max_attempts, run_at, _)] = jobs(db)
    assert result.stdout == f"{job_id}\n"
    assert (task, queue, priority, max_attempts) == ("shop.send_receipt", "receipts", -3, 2)
    assert args == json.loads(RECEIPT)
    assert before <= run_at <= after  # now, by the database clock


def test_enqueue_takes_the_task_policies_from_the_config_imports(tmp_path, db, run_cli):
    config = tmp_path / "schedules.yaml"
    config.write_text(f"imports: [{MODULE}]\nschedules: []\n")
    result = run_cli("enqueue", "shop.notify", "--args", '{"channel": "sms"}', "--config",
                     str(config))  # fmt: skip
    assert result.returncode == 0, result.stderr
    [(_, task, args, queue, priority, max_attempts, _, _)] = jobs(db)
    assert (task, args, queue, priority, max_attempts) == ("shop.notify", {"channel": "sms"},
                                                           "mail", 5, 4)  # fmt: skip


def test_enqueue_at_an_instant_with_json_output(db, run_cli):
    result = run_cli(
        "enqueue", "shop.send_receipt", "--args", RECEIPT, "--at", "2030-01-01T09:00:00+02:00",
        "--json", "--import", MODULE,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [(job_id, _, _, _, _, _, run_at, _)] = jobs(db)
    assert run_at == datetime(2030, 1, 1, 7, tzinfo=UTC)
    assert json.loads(result.stdout) == {
        "id": job_id, "task": "shop.send_receipt", "run_at": "2030-01-01T07:00:00+00:00"
    }  # fmt: skip


@pytest.mark.parametrize(("duration", "seconds"), [("90s", 90), ("5m", 300), ("P1D", 86400)])
def test_enqueue_in_a_duration(duration, seconds, db, run_cli):
    before = db_now(db)
    result = run_cli("enqueue", "shop.send_receipt", "--args", RECEIPT, "--in", duration,
                     "--import", MODULE)  # fmt: skip
    after = db_now(db)
    assert result.returncode == 0, result.stderr
    [(*_, run_at, _)] = jobs(db)
    delay = timedelta(seconds=seconds)
    slack = timedelta(seconds=1)  # the CLI adds the delay to its own clock, on this host
    assert before + delay - slack <= run_at <= after + delay + slack


def test_enqueue_with_an_idempotency_key_returns_the_live_job(db, run_cli):
    first = run_cli("enqueue", "x.remote", "--idempotency-key", "order-42")
    second = run_cli("enqueue", "x.remote", "--idempotency-key", "order-42", "--json")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    [(job_id, *_, key)] = jobs(db)
    assert key == "order-42" and first.stdout == f"{job_id}\n"
    assert json.loads(second.stdout)["id"] == job_id


def test_an_unknown_task_with_imports_is_refused_with_a_suggestion(db, run_cli):
    result = run_cli("enqueue", "shop.send_reciept", "--args", RECEIPT, "--import", MODULE)
    line = one_line(result, 2)
    assert "TASK 'shop.send_reciept' is not registered by tests.acceptance.cli_task_module" in line
    assert "did you mean 'shop.send_receipt'?" in line
    assert jobs(db) == []


def test_an_unknown_task_without_imports_is_enqueued_with_a_warning(db, run_cli):
    result = run_cli("enqueue", "billing.elsewhere", "--args", '{"n": 1}')
    line = one_line(result, 0)
    assert line.startswith("warning: TASK 'billing.elsewhere' and its --args are not checked")
    [(job_id, task, args, queue, priority, max_attempts, *_)] = jobs(db)
    assert result.stdout == f"{job_id}\n"
    assert (task, args, queue, priority, max_attempts) == ("billing.elsewhere", {"n": 1},
                                                           "default", 0, 20)  # fmt: skip


DEEP = "[" * 50_000 + "]" * 50_000  # under the 128 KiB a single argv string may have
HOSTILE = {
    "not JSON": (["--args", "{order_id: 42}"], "--args '{order_id: 42}' is not valid JSON"),
    "a JSON array": (["--args", "[42]"], "--args must be a JSON object"),
    "a JSON string": (["--args", '"42"'], "not a JSON string"),
    "NUL": (["--args", '{"email": "a\\u0000b"}'], "--args.email: contains \\u0000"),
    "escaped surrogate": (["--args", '{"email": "\\ud800"}'], "--args.email: contains an unpaired"),
    "raw surrogate": (["--args", '{"email": "\udcff"}'], "--args.email: contains an unpaired"),
    "NaN": (["--args", '{"order_id": NaN}'], "--args.order_id: nan is not valid JSON"),
    "a key twice": (["--args", '{"a": 1, "a": 2}'], "--args: key 'a' appears twice"),
    "a huge number": (["--args", '{"a": ' + "9" * 5000 + "}"], "--args holds a number with"),
    "a big number": (["--args", '{"a": ' + "9" * 4000 + "}"], "--args.a: an integer of"),
    "deep nesting": (["--args", '{"a": ' + DEEP + "}"], "--args is nested too deeply"),
    "a string for an int": (
        ["--args", '{"order_id": "42", "email": "a@b"}'],
        "--args: task 'shop.send_receipt': argument 'order_id'='42'",
    ),
    "a missing argument": (["--args", '{"order_id": 42}'], "missing a required argument: 'email'"),
    "an unexpected argument": (
        ["--args", '{"order_id": 42, "email": "a@b", "cc": 1}'],
        "unexpected argument 'cc'",
    ),
    "not a duration": (["--in", "soon"], "--in 'soon' is not a duration"),
    "a negative duration": (["--in=-5m"], "--in '-5m' is not a duration"),
    "a zero duration": (["--in", "0s"], "--in '0s': the duration must be positive"),
    "a huge duration": (["--in", "99999999d"], "--in '99999999d': the duration must be at most"),
    "a naive --at": (
        ["--at", "2030-01-01T09:00"],
        "add Z for UTC or an offset, e.g. 2030-01-01T09:00:00Z or 2030-01-01T09:00:00+02:00",
    ),
    "not an instant": (["--at", "tomorrow"], "--at 'tomorrow' is not an ISO 8601 instant"),
    "--at and --in": (["--at", "2030-01-01T09:00Z", "--in", "5m"], "not allowed with"),
    "priority too high": (["--priority", "2147483648"], "--priority: 2147483648 is out of range"),
    "priority too low": (["--priority", "-2147483649"], "-2147483649 is out of range"),
    "priority huge": (["--priority", "9" * 5000], "--priority: '999"),
    "priority not whole": (["--priority", "1.5"], "'1.5' is not a whole number"),
    "max attempts 0": (["--max-attempts", "0"], "--max-attempts: 0 is out of range"),
    "bad queue": (["--queue", "a,b"], "--queue 'a,b' may only contain"),
    "long queue": (["--queue", "q" * 101], "is too long: 101 characters, at most 100"),
    "long key": (["--idempotency-key", "k" * 513], "--idempotency-key 'kkk"),
    "surrogate key": (["--idempotency-key", "\udcff"], "--idempotency-key '\\udcff' contains"),
}


@pytest.mark.parametrize(("options", "expected"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_is_one_line_exit_2_and_nothing_inserted(options, expected, db, run_cli):
    result = run_cli("enqueue", "shop.send_receipt", *options, "--import", MODULE)
    line = one_line(result, 2)
    assert expected in line, line
    assert len(line) < 600
    assert jobs(db) == []


@pytest.mark.parametrize(
    ("task", "expected"),
    [("a b", "TASK 'a b' contains whitespace"), ("t" * 201, "TASK 'ttt"),
     ("\udcff", "TASK '\\udcff' contains an unpaired surrogate")],
    ids=["whitespace", "too long", "surrogate"],
)  # fmt: skip
def test_a_hostile_task_name_is_one_line_exit_2(task, expected, db, run_cli):
    line = one_line(run_cli("enqueue", task), 2)
    assert expected in line, line
    assert jobs(db) == []


def test_database_unreachable_or_not_migrated_exits_1(run_cli, cli_env):
    env = {**cli_env, "SCHEDULER_DATABASE_URL": "postgresql://x:secret@127.0.0.1:1/db"}
    line = one_line(run_cli("enqueue", "shop.send_receipt", "--args", RECEIPT, "--import",
                            MODULE, env=env), 1)  # fmt: skip
    assert "cannot connect to the database postgresql://x:***@127.0.0.1:1/db" in line
    # bad input is found before connecting: exit 2, not 1
    line = one_line(run_cli("enqueue", "shop.send_receipt", "--args", '{"order_id": 42}',
                            "--import", MODULE, env=env), 2)  # fmt: skip
    assert "missing a required argument: 'email'" in line
    env = {**cli_env, "SCHEDULER_SCHEMA": "never_migrated"}
    line = one_line(run_cli("enqueue", "shop.send_receipt", "--args", RECEIPT, "--import",
                            MODULE, env=env), 1)  # fmt: skip
    assert "'never_migrated' has no scheduler tables" in line and "scheduler migrate" in line


def test_config_file_problems_exit_like_run(tmp_path: Path, run_cli):
    config = tmp_path / "schedules.yaml"
    config.write_text("imports: [\n")
    result = run_cli("tasks", "list", "--config", str(config))
    assert result.returncode == 1 and "YAML syntax error" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
