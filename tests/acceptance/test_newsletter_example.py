"""Acceptance: the newsletter example end to end, through the real CLI.

Runs ``python -m examples.newsletter --once`` (which starts an SMTP server and a
``scheduler run`` replica as a child process) against the test's fresh database, then checks
the mailbox and the tables: each accepted subscriber got exactly one mail, the greylisted one
after a retry, and the bounced addresses' jobs are dead letters after ``max_attempts`` attempts.
"""

from __future__ import annotations

import mailbox
import os
import socket
import subprocess
import sys
from collections import Counter
from email.utils import parseaddr
from pathlib import Path

import psycopg
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BOUNCE_DOMAIN = "@bounce.invalid"
GREYLIST_DOMAIN = "@greylist.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mail_by_recipient(maildir: Path, newsletter_id: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for msg in mailbox.Maildir(maildir, create=False):
        assert msg["X-Newsletter-Id"] == str(newsletter_id), msg["Subject"]
        counts[parseaddr(msg["Delivered-To"])[1].lower()] += 1
    return counts


@pytest.mark.timeout(240)
def test_newsletter_example_once(db_url: str, tmp_path: Path) -> None:
    maildir = tmp_path / "mailbox"
    embedded_dir = tmp_path / "embedded"
    env = {
        **os.environ,
        "SCHEDULER_DATABASE_URL": db_url,
        "SCHEDULER_EMBEDDED_DIR": str(embedded_dir),
        "NEWSLETTER_MAILBOX": str(maildir),
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(free_port()),
    }
    env.pop("SCHEDULER_SCHEMA", None)  # the fixture's database uses the default schema

    proc = subprocess.run(
        [sys.executable, "-m", "examples.newsletter", "--once", "--timeout", "90"],
        cwd=REPO_ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=200,
    )
    replica_log = embedded_dir / "replica.log"
    output = (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}\n"
        f"--- replica log\n{replica_log.read_text() if replica_log.exists() else '(none)'}"
    )
    assert proc.returncode == 0, output

    with psycopg.connect(db_url, autocommit=True) as conn:
        newsletters = conn.execute("SELECT id, sent_at FROM newsletter.newsletters").fetchall()
        assert len(newsletters) == 1, output
        newsletter_id, sent_at = newsletters[0]
        assert sent_at is not None

        active = [
            (sid, email.lower())
            for sid, email in conn.execute(
                "SELECT id, email FROM newsletter.subscribers WHERE active ORDER BY id"
            )
        ]
        bounced = {email for _, email in active if email.endswith(BOUNCE_DOMAIN)}
        accepted = {email for _, email in active if email not in bounced}
        assert len(bounced) == 2 and len(accepted) >= 5, active

        # One job per active subscriber; none left pending or running.
        jobs = conn.execute(
            """
            SELECT lower(s.email), j.id, j.state, j.max_attempts
            FROM scheduler.jobs AS j
            JOIN newsletter.subscribers AS s ON s.id = (j.args->>'subscriber_id')::bigint
            WHERE j.task = 'deliver_newsletter'
              AND (j.args->>'newsletter_id')::bigint = %s
            """,
            [newsletter_id],
        ).fetchall()
        assert sorted(email for email, *_ in jobs) == sorted(email for _, email in active)
        runs = {
            job_id: [
                outcome
                for (outcome,) in conn.execute(
                    "SELECT outcome FROM scheduler.job_runs WHERE job_id = %s ORDER BY attempt",
                    [job_id],
                )
            ]
            for _, job_id, _, _ in jobs
        }

        for email, job_id, state, max_attempts in jobs:
            if email in bounced:
                assert state == "dead", (email, state, output)
                assert max_attempts == 3
                assert runs[job_id] == ["failed"] * max_attempts, (email, runs[job_id])
                (error,) = conn.execute(
                    "SELECT last_error FROM scheduler.jobs WHERE id = %s", [job_id]
                ).fetchone()
                assert "550" in error, error
            elif email.endswith(GREYLIST_DOMAIN):
                assert state == "succeeded", (email, state, output)
                assert runs[job_id] == ["failed", "succeeded"], (email, runs[job_id])
            else:
                assert state == "succeeded", (email, state, output)
                assert runs[job_id] == ["succeeded"], (email, runs[job_id])

        delivered = {
            email.lower()
            for (email,) in conn.execute(
                "SELECT s.email FROM newsletter.deliveries AS d"
                " JOIN newsletter.subscribers AS s ON s.id = d.subscriber_id"
                " WHERE d.newsletter_id = %s",
                [newsletter_id],
            )
        }
        assert delivered == accepted

    # Every accepted subscriber got exactly one mail; the bounced addresses none.
    assert mail_by_recipient(maildir, newsletter_id) == Counter({email: 1 for email in accepted})
