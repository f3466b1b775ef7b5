"""The example's tasks (imported by ``config/schedules.yaml`` via ``imports:``).

* ``deliver_newsletter(newsletter_id, subscriber_id)`` — one mail to one subscriber. Enqueued
  by :func:`examples.newsletter.app.send_newsletter`, never scheduled by cron. Runs on the
  ``smtp`` queue, which ``config/schedules.yaml`` limits to 100 starts per minute across
  every replica (flow control: the relay's quota is never exceeded, however many replicas).
* ``weekly_digest()`` — cron (Mondays 09:00): fans out a digest newsletter.
* ``nightly_cleanup()`` — cron (03:30): forgets newsletters and deliveries older than 30 days.

Jobs run **at least once**: a job may run again after a crash or a lost lease. Each handler is
therefore idempotent: a delivery is recorded in ``newsletter.deliveries`` (primary key
``(newsletter_id, subscriber_id)``) in the same transaction that sends the mail, and a retried
job finds the row and sends nothing. The only window left is a crash between the SMTP server
accepting the mail and our COMMIT; the mail's ``Message-ID`` is deterministic so a receiving
system can drop that duplicate.

Database: ``SCHEDULER_DATABASE_URL`` (the same database as the scheduler's tables).
SMTP server: ``NEWSLETTER_SMTP_HOST`` / ``NEWSLETTER_SMTP_PORT`` (default 127.0.0.1:8025).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import smtplib
from email.message import EmailMessage
from email.utils import formataddr
from typing import Any

import psycopg

from scheduler import task

from .settings import smtp_host, smtp_port

log = logging.getLogger(__name__)

SENDER = formataddr(("The Scheduler Newsletter", "newsletter@example.com"))
RETENTION = dt.timedelta(days=30)
SMTP_QUEUE = "smtp"  # deliveries only: the queue the relay's rate limit applies to


class DeliveryRefused(Exception):
    """The SMTP server refused the recipient (4xx: temporary, 5xx: permanent)."""


def connect() -> psycopg.Connection[Any]:
    """A new connection to ``SCHEDULER_DATABASE_URL``."""
    url = os.environ.get("SCHEDULER_DATABASE_URL")
    if not url:
        raise RuntimeError("SCHEDULER_DATABASE_URL is not set: the tasks need the database URL")
    return psycopg.connect(url)


def build_message(
    newsletter_id: int, subscriber_id: int, email: str, name: str, subject: str, body: str
) -> EmailMessage:
    """The mail for one subscriber; its Message-ID is the same on every attempt."""
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = formataddr((name, email))
    msg["Subject"] = subject
    msg["Message-ID"] = f"<newsletter-{newsletter_id}-{subscriber_id}@newsletter.example>"
    msg["X-Newsletter-Id"] = str(newsletter_id)
    msg.set_content(body.replace("{name}", name))
    return msg


def send_mail(msg: EmailMessage) -> None:
    """Hand ``msg`` to the SMTP server; raises :class:`DeliveryRefused` if it is refused."""
    try:
        with smtplib.SMTP(smtp_host(), smtp_port(), timeout=10) as smtp:
            smtp.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        reasons = "; ".join(
            f"{rcpt}: {code} {reply.decode(errors='replace')}"
            for rcpt, (code, reply) in exc.recipients.items()
        )
        raise DeliveryRefused(reasons) from None


# queue "smtp": the schedules file limits it to 100 starts per minute (the SMTP relay's quota),
# on all replicas together (config/schedules.yaml, `queues:`)
@task(queue=SMTP_QUEUE, max_attempts=3, backoff_base_s=0.5, backoff_max_s=2)
def deliver_newsletter(newsletter_id: int, subscriber_id: int) -> str:
    """Send newsletter ``newsletter_id`` to subscriber ``subscriber_id``, at most once.

    Returns what happened (``delivered``, ``already delivered``, ``inactive``, ``gone``);
    raises when the mail is refused, so the job is retried and, after ``max_attempts``,
    dead-lettered.
    """
    with connect() as conn, conn.transaction():
        row = conn.execute(
            "SELECT n.subject, n.body, s.email, s.name, s.active"
            " FROM newsletter.newsletters AS n, newsletter.subscribers AS s"
            " WHERE n.id = %s AND s.id = %s",
            (newsletter_id, subscriber_id),
        ).fetchone()
        if row is None:  # cleaned up or unsubscribed-and-deleted meanwhile: nothing to do
            return "gone"
        subject, body, email, name, active = row
        if not active:
            return "inactive"
        # Claim the delivery first: a concurrent duplicate of this job waits on the primary
        # key until we commit, then finds the row. If sending fails, the rollback removes it.
        claimed = conn.execute(
            "INSERT INTO newsletter.deliveries (newsletter_id, subscriber_id) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            (newsletter_id, subscriber_id),
        ).fetchone()
        if claimed is None:
            log.info("newsletter %s already delivered to %s", newsletter_id, email)
            return "already delivered"
        send_mail(build_message(newsletter_id, subscriber_id, email, name, subject, body))
    return "delivered"


@task
def weekly_digest() -> int:
    """Send this week's digest (the subjects of the last 7 days' newsletters) to everyone.

    Idempotent per ISO week: the digest's ``dedupe_key`` is ``digest:<year>-W<week>``, so a
    second run in the same week returns the first digest's id and sends nothing.
    """
    from .app import send_newsletter  # app imports this module: import at call time

    with connect() as conn:
        (today,) = conn.execute("SELECT current_date").fetchone()
        year, week, _ = today.isocalendar()
        subjects = [
            s
            for (s,) in conn.execute(
                "SELECT subject FROM newsletter.newsletters"
                " WHERE created_at > now() - interval '7 days' AND dedupe_key IS NULL"
                " ORDER BY created_at"
            ).fetchall()
        ]
        lines = "\n".join(f"  - {s}" for s in subjects) or "  (nothing new this week)"
        body = f"Hello {{name}},\n\nThis week in the newsletter:\n{lines}\n"
        return send_newsletter(
            conn, f"Weekly digest {year}-W{week:02d}", body, dedupe_key=f"digest:{year}-W{week:02d}"
        )


@task
def nightly_cleanup() -> int:
    """Delete deliveries and newsletters older than 30 days; returns the rows deleted."""
    with connect() as conn, conn.transaction():
        deliveries = conn.execute(
            "DELETE FROM newsletter.deliveries WHERE delivered_at < now() - %s", (RETENTION,)
        ).rowcount
        newsletters = conn.execute(
            "DELETE FROM newsletter.newsletters WHERE created_at < now() - %s", (RETENTION,)
        ).rowcount
    log.info("cleanup: %s deliveries, %s newsletters deleted", deliveries, newsletters)
    return deliveries + newsletters
