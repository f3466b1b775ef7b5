"""``python -m examples.newsletter [--once] [--timeout S]`` (from the repo root): the demo.

1. start the local SMTP server (:mod:`.smtp_server`);
2. use ``SCHEDULER_DATABASE_URL``, or start the embedded PostgreSQL in ``.scheduler``
   (``SCHEDULER_EMBEDDED_DIR``) and export its URL for the child process;
3. start one scheduler replica, the real CLI, as a child process:
   ``python -m scheduler run --config config/schedules.yaml --queues default,smtp`` (it
   applies the migrations; as the leader it applies the file's rate limit of the ``smtp``
   queue, 100 starts per minute);
4. create the example's tables and subscribers, send one newsletter (transactional outbox);
5. wait until none of its delivery jobs is pending or running, then print who got mail and
   the run history (successes, failed attempts that were retried, dead letters);
6. ``--once``: stop the replica with SIGTERM; exit 0 if the outcome is the expected one, 1
   if not. Otherwise keep the replica (and its cron schedules) running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from scheduler import embedded
from scheduler.settings import Settings

from . import report, smtp_server
from .app import SUBSCRIBERS, send_newsletter, setup
from .settings import embedded_dir, mailbox_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = "config/schedules.yaml"
QUEUES = "default,smtp"  # the cron jobs, and the deliveries (rate-limited, see CONFIG)
STOP_TIMEOUT_S = 40


def _psql() -> str:
    """``psql`` if installed, else the client that ships with the embedded server."""
    return "psql" if shutil.which("psql") else embedded.psql_path()


class DemoFailed(Exception):
    """The demo could not run to the end (replica died, timeout...)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.newsletter", description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop after the first newsletter")
    parser.add_argument(
        "--timeout", type=float, default=90.0, help="seconds to wait for the deliveries"
    )
    return parser.parse_args(argv)


def database_url() -> str:
    """``SCHEDULER_DATABASE_URL``, or the embedded server's URL (exported for the child)."""
    url = os.environ.get("SCHEDULER_DATABASE_URL")
    if not url:
        url = embedded.start(embedded_dir())
        os.environ["SCHEDULER_DATABASE_URL"] = url
    return url


def start_replica(log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``scheduler run`` in its own session (so Ctrl-C reaches only us; we then send
    it exactly one SIGTERM), logging to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "scheduler", "run", "--config", CONFIG, "--queues", QUEUES],
            cwd=REPO_ROOT,
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_replica(replica: subprocess.Popen[bytes]) -> int:
    """SIGTERM (graceful stop), then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
    if replica.poll() is None:
        replica.send_signal(signal.SIGTERM)
        try:
            replica.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"replica did not stop within {STOP_TIMEOUT_S} s: killing it")
            replica.kill()
            replica.wait()
    return replica.returncode


def wait_for(
    what: str, predicate: Callable[[], Any], timeout: float, replica: subprocess.Popen[bytes]
) -> Any:
    """Poll ``predicate`` until truthy; DemoFailed on timeout or if the replica exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if replica.poll() is not None:
            raise DemoFailed(f"the replica exited with code {replica.returncode} ({what})")
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_demo(
    conn: psycopg.Connection[Any], replica: subprocess.Popen[bytes], timeout: float
) -> bool:
    """Steps 4-5 above; returns True if the outcome is the expected one."""
    schema = Settings().schema_name

    def migrated() -> bool:
        row = conn.execute("SELECT to_regclass(%s)", [f"{schema}.run_history"]).fetchone()
        return row[0] is not None

    wait_for("the replica to apply the migrations", migrated, 60, replica)
    setup(conn)
    newsletter_id = send_newsletter(
        conn,
        "Hello from the scheduler",
        "Hi {name},\n\nthis mail was sent by a deliver_newsletter job.\n",
    )
    active = {email for email, _, is_active in SUBSCRIBERS if is_active}
    print(
        f"newsletter {newsletter_id}: {len(active)} delivery jobs enqueued with it, in one "
        "transaction"
    )
    wait_for(
        "the delivery jobs to finish",
        lambda: report.unfinished_jobs(conn, schema, newsletter_id) == 0,
        timeout,
        replica,
    )

    mail = report.mail_received(mailbox_dir(), newsletter_id)
    print(f"\n== mailbox {mailbox_dir()} (accepted mail for newsletter {newsletter_id})")
    rows = [{"recipient": r, "mails": n} for r, n in sorted(mail.items())]
    print(report.table(rows, ["recipient", "mails"]))

    print(f"\n== {schema}.run_history (one row per attempt)")
    print(report.table(report.run_history(conn, schema, newsletter_id)))

    outcomes = report.job_outcomes(conn, schema, newsletter_id)
    states = {s: sum(o["state"] == s for o in outcomes) for s in ("succeeded", "dead")}
    retried = sum(o["runs"] > 1 and o["state"] == "succeeded" for o in outcomes)
    print(
        f"\n{states['succeeded']} delivered ({retried} after a retry), "
        f"{states['dead']} dead letters"
    )

    print(f"\n== {schema}.schedules (cron, from {CONFIG})")
    print(report.table(report.schedules(conn, schema)))

    found = report.problems(outcomes, mail, active)
    for problem in found:
        print(f"UNEXPECTED: {problem}")
    return not found


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        controller = smtp_server.start()
    except OSError as exc:
        print(f"cannot start the SMTP server (set NEWSLETTER_SMTP_PORT?): {exc}", file=sys.stderr)
        return 2
    log_path = embedded_dir() / "replica.log"
    replica = None
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM to us: stop as on Ctrl-C
    try:
        url = database_url()
        print(f"SMTP server on {controller.hostname}:{controller.port}, mailbox {mailbox_dir()}")
        print(f"database: {_psql()} '{url}'")
        replica = start_replica(log_path)
        print(f"replica pid {replica.pid}: python {' '.join(replica.args[1:])}  (log: {log_path})")
        with psycopg.connect(url, autocommit=True) as conn:
            ok = run_demo(conn, replica, args.timeout)
        print(f"\nQuery the history yourself: {_psql()} '{url}'")
        print("  SELECT * FROM scheduler.run_history ORDER BY run_id DESC LIMIT 20;")
        if not args.once:
            print("\nThe replica keeps running the cron schedules; Ctrl-C to stop.")
            replica.wait()
            print(f"replica exited with code {replica.returncode}", file=sys.stderr)
            return 1
        code = stop_replica(replica)
        if code != 0:
            print(f"replica exited with code {code} after SIGTERM (expected 0)", file=sys.stderr)
            ok = False
        return 0 if ok else 1
    except DemoFailed as exc:
        print(
            f"demo failed: {exc}\n--- last lines of {log_path}:\n{tail(log_path)}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    finally:
        if replica is not None:
            stop_replica(replica)
        controller.stop()


if __name__ == "__main__":
    sys.exit(main())
