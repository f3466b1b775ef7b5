"""schedule_at / enqueue against a real database."""

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from scheduler import DatabaseNotConfiguredError, enqueue, schedule_at, task
from scheduler.jobs import set_default_database_url


@task(name="test_enqueue.noop", max_attempts=7, queue="mail")
def noop(**_: object) -> None:
    pass


def _job(db, job_id):
    return db.execute(
        "SELECT task, queue, state, args, max_attempts, run_at, first_run_at, priority, "
        "run_at <= now() AS due FROM scheduler.jobs WHERE id = %s",
        [job_id],
    ).fetchone()


def test_schedule_at_in_callers_transaction_commits_with_it(db, db_url):
    run_at = datetime.now(UTC) + timedelta(hours=1)
    with psycopg.connect(db_url) as conn:
        job_id = schedule_at(noop, run_at, args={"to": "a@example.com"}, connection=conn)
        # not visible to others before the caller commits
        assert _job(db, job_id) is None
        conn.commit()
    task_name, queue, state, args, max_attempts, stored_run_at, first_run_at, _, due = _job(
        db, job_id
    )
    assert (task_name, queue, state, args, max_attempts) == (
        "test_enqueue.noop",
        "mail",
        "pending",
        {"to": "a@example.com"},
        7,
    )
    assert stored_run_at == run_at and first_run_at == run_at and not due


def test_rollback_leaves_no_job(db, db_url):
    with psycopg.connect(db_url) as conn:
        schedule_at(noop, datetime.now(UTC), connection=conn)
        conn.rollback()
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0


def test_async_connection_returns_awaitable_and_joins_transaction(db, db_url):
    async def run() -> int:
        async with await psycopg.AsyncConnection.connect(db_url) as aconn:
            await enqueue(noop, args={"n": 1}, connection=aconn)
            await aconn.rollback()
            job_id2 = await enqueue(noop, args={"n": 2}, connection=aconn)
            await aconn.commit()
            return job_id2

    job_id = asyncio.run(run())
    rows = db.execute("SELECT id, args FROM scheduler.jobs").fetchall()
    assert rows == [(job_id, {"n": 2})]


def test_past_run_at_is_due_at_once_and_enqueue_is_now(db, db_url):
    with psycopg.connect(db_url) as conn:
        past = schedule_at(noop, datetime(2000, 1, 1, tzinfo=UTC), connection=conn)
        now_job = enqueue("test_enqueue.noop", connection=conn, priority=-5)
        conn.commit()
    assert _job(db, past)[-1] is True
    assert _job(db, now_job)[-1] is True
    assert _job(db, now_job)[-2] == -5


def test_naive_run_at_is_rejected_before_any_write(db, db_url):
    with psycopg.connect(db_url) as conn, pytest.raises(ValueError, match="naive"):
        schedule_at(noop, datetime(2030, 1, 1, 12, 0), connection=conn)
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"x": float("nan")}, ValueError),
        ({"x": "a\u0000b"}, ValueError),
        ({"x": datetime.now()}, ValueError),
        ({"x": {1, 2}}, ValueError),
        ([1, 2], TypeError),
    ],
)
def test_args_that_jsonb_cannot_store_are_rejected(db_url, args, error):
    with psycopg.connect(db_url) as conn, pytest.raises(error):
        enqueue(noop, args=args, connection=conn)


def test_idempotency_key_returns_the_live_job(db, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = enqueue(noop, idempotency_key="order-42", connection=conn)
        second = enqueue(noop, idempotency_key="order-42", connection=conn)
        assert first == second
        conn.execute("UPDATE scheduler.jobs SET state = 'succeeded' WHERE id = %s", [first])
        third = enqueue(noop, idempotency_key="order-42", connection=conn)
    assert third != first
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 2


def test_default_connection_uses_configured_url(db, db_url):
    set_default_database_url(None)
    try:
        with pytest.raises(DatabaseNotConfiguredError):
            enqueue(noop)
        set_default_database_url(db_url)
        job_id = enqueue(noop)
    finally:
        set_default_database_url(None)
    assert _job(db, job_id)[2] == "pending"


def test_insert_notifies_on_commit_only(db_url):
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute('LISTEN "scheduler.jobs"')
        with psycopg.connect(db_url) as conn:
            enqueue(noop, connection=conn)
            conn.rollback()
            enqueue(noop, connection=conn)
            enqueue(noop, connection=conn)
            conn.commit()
        payloads = [n.payload for n in listener.notifies(timeout=1.0, stop_after=5)]
    assert [p.split(" ")[0] for p in payloads] == ["mail"]


def test_bulk_enqueue_in_one_statement_inside_the_callers_transaction(db, db_url):
    from scheduler import JobSpec, enqueue_many, schedule_many

    with psycopg.connect(db_url) as conn:
        ids = enqueue_many(noop, [{"n": i} for i in range(1000)], connection=conn)
        conn.rollback()
        assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0
        ids = enqueue_many(noop, [{"n": i} for i in range(1000)], priority=3, connection=conn)
        later = datetime.now(UTC) + timedelta(hours=1)
        mixed = schedule_many(
            [JobSpec(noop, later, {"x": 1}), JobSpec("other.task", None, None, queue="q2")],
            connection=conn,
        )
        conn.commit()
    assert len(ids) == 1000 and ids == sorted(ids)
    rows = db.execute(
        "SELECT args->>'n', queue, priority, max_attempts FROM scheduler.jobs WHERE id = ANY(%s) ORDER BY id",
        [ids],
    ).fetchall()
    assert [r[0] for r in rows] == [str(i) for i in range(1000)]
    assert {r[1:] for r in rows} == {("mail", 3, 7)}  # the task's defaults
    assert db.execute(
        "SELECT task, queue, run_at = %s FROM scheduler.jobs WHERE id = ANY(%s) ORDER BY id",
        [later, mixed],
    ).fetchall() == [("test_enqueue.noop", "mail", True), ("other.task", "q2", False)]


def test_bulk_enqueue_validates_everything_before_writing(db, db_url):
    from scheduler import enqueue_many

    with psycopg.connect(db_url) as conn, pytest.raises(ValueError):
        enqueue_many(noop, [{"n": 1}, {"n": float("inf")}], connection=conn)
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0


def test_bulk_enqueue_async(db, db_url):
    from scheduler import enqueue_many

    async def run() -> list[int]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
            return await enqueue_many(noop, [{"n": 1}, {"n": 2}], connection=aconn)

    assert len(asyncio.run(run())) == 2
