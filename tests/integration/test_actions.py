"""Operator actions with an audit trail (scheduler.actions, migration 0022) against the real
database: queue pause/resume enforced by the claim statements, delete, retry and cancel
recorded with their actor, schedule actions, leader history, and the pruning of both."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

import scheduler
from scheduler import InvalidArgumentError, ScheduleNotFoundError, actions
from scheduler.maintenance import prune
from scheduler.store import Store

STORE = Store("scheduler")


async def _conn(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


async def _claim(conn: psycopg.AsyncConnection[Any], queues: list[str], limited: bool) -> list[int]:
    rows = await STORE.claim_jobs(conn, queues=queues, limit=10, worker_id="h:1:t", lease_s=30,
                                  limited=limited)  # fmt: skip
    return sorted(r["queue"] for r in rows)


def _enqueue(db: psycopg.Connection, queue: str, n: int) -> list[int]:
    ids = [scheduler.enqueue("t.noop", queue=queue, connection=db) for _ in range(n)]
    db.commit()
    return ids


@pytest.mark.parametrize("limited", [False, True], ids=["unlimited", "limited"])
def test_a_paused_queue_is_not_claimed_until_resumed(
    db: psycopg.Connection, db_url: str, limited: bool
) -> None:
    if limited:
        scheduler.set_queue_limits("mail", concurrency=5, connection=db)
        db.commit()
    _enqueue(db, "mail", 2)
    _enqueue(db, "other", 1)
    assert scheduler.pause_queue("mail", actor="ops", connection=db) is True
    assert scheduler.pause_queue("mail", connection=db) is False  # already paused
    db.commit()

    async def run() -> None:
        async with await _conn(db_url) as conn:
            assert await _claim(conn, ["mail", "other"], limited) == ["other"]
            assert await _claim(conn, ["mail"], limited) == []
            await conn.execute("LISTEN " + '"scheduler.jobs"')
            assert await scheduler.resume_queue_async("mail", actor="ops", connection=conn)
            wake = await anext(conn.notifies(timeout=5))
            assert wake.payload == "mail"  # the workers of the queue are woken
            assert await _claim(conn, ["mail"], limited) == ["mail", "mail"]

    asyncio.run(run())
    events = db.execute("SELECT event, queue, actor FROM scheduler.job_events "
                        "WHERE queue IS NOT NULL AND job_id IS NULL ORDER BY id").fetchall()  # fmt: skip
    assert events == [("queue_paused", "mail", "ops"), ("queue_resumed", "mail", "ops")]
    assert scheduler.resume_queue("mail", connection=db) is False


def test_queue_status_shows_the_pause(db: psycopg.Connection, db_url: str) -> None:
    from scheduler.flow import queue_overview

    scheduler.pause_queue("idle-queue", actor="ops", connection=db)
    db.commit()

    async def run() -> list[dict[str, Any]]:
        async with await _conn(db_url) as conn:
            return await queue_overview(conn, STORE)

    rows = {r["queue"]: r for r in asyncio.run(run())}
    assert rows["idle-queue"]["paused"] is True and rows["idle-queue"]["paused_by"] == "ops"


def test_delete_keeps_a_deleted_event_and_spares_running_jobs(
    db: psycopg.Connection, db_url: str
) -> None:
    gone, running = _enqueue(db, "default", 2)
    db.execute("UPDATE scheduler.jobs SET state = 'running', locked_by = 'h:1:x', "
               "lease_expires_at = now() + interval '1 min' WHERE id = %s", (running,))  # fmt: skip
    db.execute("INSERT INTO scheduler.job_runs (job_id, attempt, started_at, finished_at, "
               "outcome) VALUES (%s, 1, now(), now(), 'failed')", (gone,))  # fmt: skip
    db.execute("INSERT INTO scheduler.job_events (job_id, event) VALUES (%s, 'retried')", (gone,))
    db.commit()

    async def run() -> list[int]:
        async with await _conn(db_url) as conn:
            return await actions.delete_jobs(conn, STORE, [gone, running, 10**9], "dashboard:al")

    assert asyncio.run(run()) == [gone]
    assert db.execute("SELECT count(*) FROM scheduler.job_runs").fetchone() == (0,)
    assert db.execute("SELECT job_id, event, actor FROM scheduler.job_events").fetchall() == [
        (gone, "deleted", "dashboard:al")
    ]
    assert db.execute("SELECT state FROM scheduler.jobs").fetchall() == [("running",)]


def test_retry_and_cancel_record_their_actor(db: psycopg.Connection, db_url: str) -> None:
    dead, pending = _enqueue(db, "default", 2)
    db.execute("UPDATE scheduler.jobs SET state = 'dead', finished_at = now() WHERE id = %s",
               (dead,))  # fmt: skip
    db.commit()

    async def run() -> tuple[Any, dict[int, str]]:
        async with await _conn(db_url) as conn:
            retried = await actions.retry_jobs(conn, STORE, [dead], "dashboard:bo")
            return retried, await actions.cancel_jobs(conn, STORE, [pending, 10**9], "api")

    retried, cancelled = asyncio.run(run())
    assert retried.retried == [dead] and cancelled == {pending: "cancelled"}
    rows = db.execute("SELECT job_id, event, actor FROM scheduler.job_events ORDER BY id").fetchall()
    assert rows == [(dead, "retried", "dashboard:bo"), (pending, "cancelled", "api")]


def test_schedule_actions_are_recorded(db: psycopg.Connection, db_url: str) -> None:
    scheduler.put_schedule("nightly", "t.noop", cron="0 3 * * *", connection=db)
    db.commit()

    async def run() -> None:
        async with await _conn(db_url) as conn:
            await actions.pause_schedule(conn, STORE, "nightly", "dashboard:al")
            await actions.resume_schedule(conn, STORE, "nightly", "dashboard:al")
            job = await actions.trigger_schedule(conn, STORE, "nightly", "dashboard:al")
            assert job is not None
            start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 3, tzinfo=UTC)
            done = await actions.backfill_schedule(conn, STORE, "nightly", start, end, "al")
            assert len(done.enqueued) == 2
            with pytest.raises(ScheduleNotFoundError):
                await actions.pause_schedule(conn, STORE, "nope", "al")
            with pytest.raises(InvalidArgumentError, match="actor"):
                await actions.pause_schedule(conn, STORE, "nightly", "")

    asyncio.run(run())
    rows = db.execute("SELECT event, schedule_name FROM scheduler.job_events "
                      "ORDER BY id").fetchall()  # fmt: skip
    assert [r[0] for r in rows] == ["schedule_paused", "schedule_resumed", "schedule_triggered",
                                    "schedule_backfilled"]  # fmt: skip
    assert {r[1] for r in rows} == {"nightly"}


def test_hostile_actor_and_ids_are_refused_or_cleaned(db: psycopg.Connection, db_url: str) -> None:
    (job,) = _enqueue(db, "default", 1)

    async def run() -> None:
        async with await _conn(db_url) as conn:
            with pytest.raises(InvalidArgumentError, match="job id"):
                await actions.cancel_jobs(conn, STORE, ["1; DROP TABLE x"], "al")
            with pytest.raises(InvalidArgumentError, match="at most 10000"):
                await actions.delete_jobs(conn, STORE, list(range(1, 10_002)), "al")
            with pytest.raises(InvalidArgumentError, match="queue"):
                await actions.pause_queue(conn, STORE, "bad\x00queue", "al")
            await actions.cancel_jobs(conn, STORE, [job], "al\x00\ud800" + "x" * 500)

    asyncio.run(run())
    (actor,) = db.execute("SELECT actor FROM scheduler.job_events").fetchone()
    assert actor.startswith("al\\x00") and len(actor) <= actions.ACTOR_MAX


def test_every_election_is_logged_with_the_previous_terms_last_heartbeat(
    db: psycopg.Connection, db_url: str
) -> None:
    async def run() -> None:
        async with await _conn(db_url) as conn:
            for holder in ("a", "b", "c"):
                await STORE.elect(conn, holder, None)

    asyncio.run(run())
    rows = db.execute("SELECT term, holder, previous_holder, previous_heartbeat_at IS NOT NULL "
                      "FROM scheduler.leader_terms ORDER BY term").fetchall()  # fmt: skip
    assert rows == [(1, "a", None, False), (2, "b", "a", True), (3, "c", "b", True)]


def test_pruning_takes_old_terms_and_orphaned_events_only(db: psycopg.Connection, db_url: str) -> None:
    db.execute("INSERT INTO scheduler.leader_terms (term, holder, elected_at) "
               "SELECT t, 'x', now() - interval '30 days' FROM generate_series(1, 150) AS t")  # fmt: skip
    (live,) = _enqueue(db, "default", 1)
    db.execute("INSERT INTO scheduler.job_events (job_id, event, at, queue, actor) VALUES "
               "(%s, 'cancel_requested', now() - interval '30 days', NULL, 'a'), "
               "(NULL, 'queue_paused', now() - interval '30 days', 'q', 'a'), "
               "(NULL, 'queue_resumed', now(), 'q', 'a')", (live,))  # fmt: skip
    db.commit()

    async def run() -> None:
        async with await _conn(db_url) as conn:
            await prune(conn, STORE, holder="t", term=1, succeeded_s=86400, dead_s=7 * 86400,
                        batch=1000)  # fmt: skip

    asyncio.run(run())
    assert db.execute("SELECT count(*), min(term) FROM scheduler.leader_terms").fetchone() == (
        100, 51)  # fmt: skip
    rows = db.execute("SELECT event FROM scheduler.job_events ORDER BY id").fetchall()
    assert rows == [("cancel_requested",), ("queue_resumed",)]
