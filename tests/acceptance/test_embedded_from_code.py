"""A user's script without SCHEDULER_DATABASE_URL finds the embedded server the CLI made in
the same directory (the same directory rules: ``./.scheduler`` or SCHEDULER_EMBEDDED_DIR)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
from scheduler import get_job, task

@task
def send_receipt(order_id: int) -> None: ...

job_id = send_receipt.defer(order_id=7)
job = get_job(job_id)
print("JOB", job.task, job.state.value, job.args)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.timeout(240)
def test_a_script_finds_the_embedded_server_of_the_cli(tmp_path: Path) -> None:
    env = _env()
    migrate = subprocess.run([sys.executable, "-m", "scheduler", "migrate"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    assert (tmp_path / ".scheduler" / "pgdata" / "PG_VERSION").exists()
    script = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert script.returncode == 0, script.stderr
    assert "JOB send_receipt pending {'order_id': 7}" in script.stdout


def test_without_any_database_a_script_is_told_where_it_looked(tmp_path: Path) -> None:
    script = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert script.returncode == 1
    last = script.stderr.strip().splitlines()[-1]
    assert last.startswith("scheduler.errors.DatabaseNotConfiguredError: no connection was passed")
    assert str(tmp_path / ".scheduler") in last and "scheduler migrate" in last
