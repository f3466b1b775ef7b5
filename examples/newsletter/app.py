"""The "application" side of the example: its tables, and sending a newsletter.

``send_newsletter`` is the transactional outbox: the newsletter row and one
``deliver_newsletter`` job per active subscriber are inserted in **one** transaction, with
``deliver_newsletter.configure(connection=conn).defer(...)``. If that transaction rolls back,
there is neither a newsletter nor a job; once it commits, the jobs table guarantees every delivery is attempted
(at least once, retried on failure) even if this process dies right after the commit.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg

from .settings import BOUNCE_DOMAIN, GREYLIST_DOMAIN
from .tasks import deliver_newsletter

#: (email, name, active). Two addresses bounce (550), one is greylisted (451 once), one
#: subscriber is inactive (gets nothing).
SUBSCRIBERS: list[tuple[str, str, bool]] = [
    ("ada@example.com", "Ada Lovelace", True),
    ("alan@example.com", "Alan Turing", True),
    ("grace@example.org", "Grace Hopper", True),
    ("edsger@example.org", "Edsger Dijkstra", True),
    ("ken@example.net", "Ken Thompson", True),
    (f"barbara@{GREYLIST_DOMAIN}", "Barbara Liskov", True),
    (f"nobody@{BOUNCE_DOMAIN}", "No Body", True),
    (f"typo@{BOUNCE_DOMAIN}", "Typo McTypeface", True),
    ("margaret@example.com", "Margaret Hamilton", False),
]


def setup(conn: psycopg.Connection[Any]) -> None:
    """Create the ``newsletter`` schema if needed and seed :data:`SUBSCRIBERS` (idempotent).

    Runs in one transaction of its own (a savepoint if ``conn`` is already in one).
    """
    ddl = resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")
    with conn.transaction():
        conn.execute(ddl)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO newsletter.subscribers (email, name, active) VALUES (%s, %s, %s)"
                " ON CONFLICT (email) DO NOTHING",
                SUBSCRIBERS,
            )


def send_newsletter(
    conn: psycopg.Connection[Any], subject: str, body: str, *, dedupe_key: str | None = None
) -> int:
    """Store a newsletter and enqueue one ``deliver_newsletter`` job per active subscriber.

    Both happen in one transaction: ``conn.transaction()`` is a savepoint inside a transaction
    the caller has open (the caller then decides to commit or roll back everything), or its own
    transaction, committed on return, when ``conn`` is idle or in autocommit mode.

    Args:
        conn: a psycopg (3) connection to the database holding both schemas.
        subject, body: the mail's subject and plain-text body (``{name}`` is replaced by the
            subscriber's name).
        dedupe_key: optional; if a newsletter with this key exists already, nothing is
            inserted or enqueued and its id is returned (makes a retried caller idempotent).

    Returns:
        The newsletter id.
    """
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO newsletter.newsletters (subject, body, dedupe_key, sent_at)"
            " VALUES (%s, %s, %s, now())"
            " ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
            (subject, body, dedupe_key),
        ).fetchone()
        if row is None:  # same dedupe_key sent before: do not send it twice
            existing = conn.execute(
                "SELECT id FROM newsletter.newsletters WHERE dedupe_key = %s", (dedupe_key,)
            ).fetchone()
            assert existing is not None
            return int(existing[0])
        newsletter_id = int(row[0])
        subscribers = conn.execute(
            "SELECT id FROM newsletter.subscribers WHERE active ORDER BY id"
        ).fetchall()
        for (subscriber_id,) in subscribers:
            deliver_newsletter.configure(connection=conn).defer(
                newsletter_id=newsletter_id, subscriber_id=subscriber_id
            )
    return newsletter_id
