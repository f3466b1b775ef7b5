"""Fixtures that run the real ``scheduler`` CLI in subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Replica:
    """A ``scheduler run`` subprocess; its output goes to a log file under tmp_path."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._terminated = False
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self) -> None:
        """Send SIGTERM once (a second one would force an immediate exit, by design)."""
        if not self._terminated and self.proc.poll() is None:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (unless already sent) and wait; returns the exit code."""
        self.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env.update(
        SCHEDULER_DATABASE_URL=db_url,
        SCHEDULER_EMBEDDED_DIR=str(tmp_path / "embedded"),
        SCHEDULER_LOG_FORMAT="json",
        SCHEDULER_LEADER_RETRY_S="0.2",
        SCHEDULER_POLL_INTERVAL_S="0.5",
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture
def start_replica(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    replicas: list[Replica] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Replica:
        r = Replica(
            list(args), {**cli_env, **(env or {})}, tmp_path / f"replica{len(replicas)}.log"
        )
        replicas.append(r)
        return r

    yield start
    for r in replicas:
        r.kill()


@pytest.fixture
def run_cli(cli_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(
        *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scheduler", *args],
            cwd=ROOT,
            env=cli_env if env is None else env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run
