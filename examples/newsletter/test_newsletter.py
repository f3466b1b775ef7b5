"""The newsletter example's own tests, written the way a user of ``scheduler`` writes them:
with the ``scheduler_db`` fixture of the ``scheduler.testing`` pytest plugin (a fresh migrated
database per test; ``run_jobs`` runs the due jobs in this process) and a real SMTP server
(``smtp_server``, aiosmtpd) on a free port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from scheduler.config import load_config
from scheduler.flow import QueueLimits, apply_declared_limits, list_queue_limits
from scheduler.store import Store
from scheduler.testing import SchedulerDB

from . import app, smtp_server
from .settings import BOUNCE_DOMAIN
from .tasks import SMTP_QUEUE, deliver_newsletter

CONFIG = Path(__file__).resolve().parents[2] / "config" / "schedules.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def newsletter_db(
    scheduler_db: SchedulerDB, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[SchedulerDB]:
    """The scheduler's database with the example's schema, and an SMTP server for the test."""
    monkeypatch.setenv("SCHEDULER_DATABASE_URL", scheduler_db.url)  # the tasks connect to it
    monkeypatch.setenv("NEWSLETTER_SMTP_HOST", "127.0.0.1")
    port = _free_port()
    monkeypatch.setenv("NEWSLETTER_SMTP_PORT", str(port))
    with psycopg.connect(scheduler_db.url) as conn:
        app.setup(conn)
    server = smtp_server.start(port=port, maildir=tmp_path / "mailbox")
    yield scheduler_db
    server.stop()


def test_a_newsletter_reaches_every_active_subscriber_once(newsletter_db: SchedulerDB) -> None:
    with psycopg.connect(newsletter_db.url) as conn:
        newsletter_id = app.send_newsletter(conn, "Hello", "Hi {name}")
    active = sum(1 for _, _, is_active in app.SUBSCRIBERS if is_active)
    newsletter_db.assert_enqueued(deliver_newsletter, args={"newsletter_id": newsletter_id},
                                  count=active)  # fmt: skip

    # the greylisted address is refused once and retried after its backoff (0.5 s): a
    # horizon a minute ahead runs the retries now; the bounced ones end dead after 3 attempts
    report = newsletter_db.run_jobs(until=timedelta(minutes=1))
    bounced = sum(1 for email, _, _ in app.SUBSCRIBERS if email.endswith(BOUNCE_DOMAIN))
    assert (report.succeeded, report.dead) == (active - bounced, bounced)
    assert sorted(newsletter_db.get_result(i) for i in report.succeeded_ids) == ["delivered"] * (
        active - bounced
    )
    with psycopg.connect(newsletter_db.url) as conn:
        row = conn.execute("SELECT count(*) FROM newsletter.deliveries").fetchone()
    assert row == (active - bounced,)


def test_a_rolled_back_newsletter_enqueues_nothing(newsletter_db: SchedulerDB) -> None:
    with psycopg.connect(newsletter_db.url) as conn:
        conn.execute("SELECT 1")  # the caller's transaction is open: send_newsletter joins it
        app.send_newsletter(conn, "Oops", "never sent")
        conn.rollback()  # the newsletter and its jobs go together (the transactional outbox)
    newsletter_db.assert_not_enqueued(deliver_newsletter)
    assert newsletter_db.run_jobs().succeeded == 0


def test_a_resent_newsletter_is_not_delivered_twice(newsletter_db: SchedulerDB) -> None:
    with psycopg.connect(newsletter_db.url) as conn:
        first = app.send_newsletter(conn, "Weekly", "Hi", dedupe_key="w1")
        second = app.send_newsletter(conn, "Weekly", "Hi", dedupe_key="w1")
    assert first == second
    newsletter_db.run_jobs(until=timedelta(minutes=1))
    deliver_newsletter.defer(newsletter_id=first, subscriber_id=1)  # a duplicate job
    report = newsletter_db.run_jobs()
    assert [newsletter_db.get_result(i) for i in report.succeeded_ids] == ["already delivered"]


def test_the_smtp_queue_is_rate_limited_to_100_per_minute(newsletter_db: SchedulerDB) -> None:
    """The schedules file declares the relay's quota; the leader applies it as this does."""
    config = load_config(CONFIG)
    assert config.queues == {SMTP_QUEUE: QueueLimits(rate=100, per_s=60.0)}

    async def apply() -> dict[str, QueueLimits]:
        store = Store("scheduler")
        async with await psycopg.AsyncConnection.connect(newsletter_db.url,
                                                         autocommit=True) as conn:  # fmt: skip
            await apply_declared_limits(conn, store, config.queues)
            return await list_queue_limits(conn, store)

    assert asyncio.run(apply()) == {SMTP_QUEUE: QueueLimits(rate=100, per_s=60.0)}
    with psycopg.connect(newsletter_db.url) as conn:
        app.send_newsletter(conn, "Hello", "Hi {name}")
        queues = conn.execute("SELECT DISTINCT queue FROM scheduler.jobs").fetchall()
    assert queues == [(SMTP_QUEUE,)]  # every delivery is bound by the limit
