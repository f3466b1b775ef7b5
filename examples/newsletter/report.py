"""What the demo prints and checks after sending: mailbox, run history, expected outcome.

All queries read the scheduler's documented tables (``jobs``, ``job_runs``) and its
``run_history`` view, joined with the example's own tables.
"""

from __future__ import annotations

import mailbox
from collections import Counter
from collections.abc import Sequence
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .settings import BOUNCE_DOMAIN

RUN_HISTORY = """
SELECT h.job_id, s.email, h.attempt, h.max_attempts, h.outcome, h.job_state,
       round(h.duration_s::numeric, 3) AS duration_s, left(h.error, 70) AS error
FROM {schema}.run_history AS h
JOIN newsletter.subscribers AS s ON s.id = (h.args->>'subscriber_id')::bigint
WHERE h.task = 'deliver_newsletter' AND (h.args->>'newsletter_id')::bigint = %(newsletter_id)s
ORDER BY h.job_id, h.attempt
"""

JOB_OUTCOMES = """
SELECT s.email, j.state, j.max_attempts,
       (SELECT count(*) FROM {schema}.job_runs AS r WHERE r.job_id = j.id) AS runs,
       d.delivered_at IS NOT NULL AS delivered
FROM {schema}.jobs AS j
JOIN newsletter.subscribers AS s ON s.id = (j.args->>'subscriber_id')::bigint
LEFT JOIN newsletter.deliveries AS d
       ON d.newsletter_id = (j.args->>'newsletter_id')::bigint AND d.subscriber_id = s.id
WHERE j.task = 'deliver_newsletter' AND (j.args->>'newsletter_id')::bigint = %(newsletter_id)s
ORDER BY s.id
"""

UNFINISHED = """
SELECT count(*) FROM {schema}.jobs
WHERE task = 'deliver_newsletter' AND (args->>'newsletter_id')::bigint = %(newsletter_id)s
  AND state IN ('pending', 'running')
"""

SCHEDULES = """
SELECT name, cron, timezone, task, next_run_at FROM {schema}.schedules ORDER BY name
"""


def _query(
    conn: psycopg.Connection[Any], text: str, schema: str, **params: Any
) -> list[dict[str, Any]]:
    composed = sql.SQL(text).format(schema=sql.Identifier(schema))  # type: ignore[arg-type]
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(composed, params).fetchall()


def unfinished_jobs(conn: psycopg.Connection[Any], schema: str, newsletter_id: int) -> int:
    """How many delivery jobs of the newsletter are still pending or running."""
    return int(_query(conn, UNFINISHED, schema, newsletter_id=newsletter_id)[0]["count"])


def run_history(conn: psycopg.Connection[Any], schema: str, newsletter_id: int) -> list[dict]:
    """One row per attempt of the newsletter's delivery jobs (``run_history`` view)."""
    return _query(conn, RUN_HISTORY, schema, newsletter_id=newsletter_id)


def job_outcomes(conn: psycopg.Connection[Any], schema: str, newsletter_id: int) -> list[dict]:
    """One row per delivery job: subscriber, final state, attempts run, delivery recorded."""
    return _query(conn, JOB_OUTCOMES, schema, newsletter_id=newsletter_id)


def schedules(conn: psycopg.Connection[Any], schema: str) -> list[dict]:
    """The cron schedules the leader reconciled from ``config/schedules.yaml``."""
    return _query(conn, SCHEDULES, schema)


def mail_received(maildir: Path, newsletter_id: int) -> Counter[str]:
    """Recipient address → number of mails of this newsletter in the Maildir."""
    counts: Counter[str] = Counter()
    if not maildir.exists():
        return counts
    for msg in mailbox.Maildir(maildir, create=False):
        if msg["X-Newsletter-Id"] == str(newsletter_id):
            counts[parseaddr(msg["Delivered-To"] or msg["To"])[1].lower()] += 1
    return counts


def problems(outcomes: list[dict], mail: Counter[str], active: set[str]) -> list[str]:
    """Differences from the expected outcome (empty = as expected):

    one job per active subscriber (``active``: their addresses) and no mail to anyone else;
    bounce-domain subscribers: job ``dead`` after ``max_attempts`` attempts, no mail;
    everyone else: job ``succeeded``, delivery recorded, exactly one mail.
    """
    found = []
    jobs_for = Counter(o["email"].lower() for o in outcomes)
    active = {a.lower() for a in active}
    if set(jobs_for) != active or any(n != 1 for n in jobs_for.values()):
        found.append(f"expected one job for each of {sorted(active)}, got {dict(jobs_for)}")
    strangers = set(mail) - active
    if strangers:
        found.append(f"mail sent to non-subscribers or inactive ones: {sorted(strangers)}")
    for o in outcomes:
        email = o["email"].lower()
        if email.endswith("@" + BOUNCE_DOMAIN):
            if o["state"] != "dead" or o["runs"] != o["max_attempts"] or mail[email]:
                found.append(
                    f"{email}: expected dead after {o['max_attempts']} attempts and no mail, "
                    f"got {o['state']} after {o['runs']} attempt(s), {mail[email]} mail(s)"
                )
        elif o["state"] != "succeeded" or not o["delivered"] or mail[email] != 1:
            found.append(
                f"{email}: expected succeeded, delivered, 1 mail; got {o['state']}, "
                f"delivered={o['delivered']}, {mail[email]} mail(s)"
            )
    return found


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Format rows as a plain-text table (``psql``-like)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [["" if r[c] is None else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(columns), "-+-".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    return "\n".join(out)
