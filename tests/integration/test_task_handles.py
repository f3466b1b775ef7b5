"""Typed task handles against a real database: defer / schedule_at / schedule_in /
defer_many (sync and async), per-call options, arguments bound before any SQL, the handler's
JobContext and log context, and return values stored in jobs.result."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import structlog

from scheduler import JobContext, TaskArgumentsError, current_job, enqueue, task
from scheduler.connections import close_default_pools, set_default_database_url
from scheduler.errors import DatabaseNotConfiguredError, InvalidArgumentError, UnknownTaskError
from scheduler.limits import RESULT_MAX
from scheduler.registry import load_tasks
from scheduler.settings import Settings, get_settings
from tests.integration.test_worker import _run_worker_until

SEEN: list[dict[str, Any]] = []


@task(name="handles.send_receipt", queue="mail", max_attempts=5)
def send_receipt(order_id: int, email: str, note: str = "") -> dict[str, Any]:
    return {"order_id": order_id, "sent_to": email}


@task(name="handles.with_context")
def with_context(ctx: JobContext, n: int) -> int:
    logging.getLogger("user.handler").warning("in handler %s", n)
    SEEN.append({"ctx": ctx, "current": current_job(),
                 "structlog": structlog.contextvars.get_contextvars()})  # fmt: skip
    return ctx.attempt * 100 + n


@task(name="handles.async_context")
async def async_context(ctx: JobContext, n: int) -> list[int]:
    await asyncio.sleep(0)
    SEEN.append({"ctx": ctx, "current": current_job(),
                 "structlog": structlog.contextvars.get_contextvars()})  # fmt: skip
    return [ctx.job_id, n]


@task(name="handles.unstorable")
def unstorable(kind: str) -> object:
    return {"set": {1, 2}} if kind == "set" else "x" * (RESULT_MAX + 1)


@pytest.fixture
def default_db(db_url: str):
    set_default_database_url(db_url)
    yield db_url
    set_default_database_url(None)
    close_default_pools()


def _job(db: psycopg.Connection, job_id: int) -> dict[str, Any]:
    cur = db.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute("SELECT * FROM scheduler.jobs WHERE id = %s", [job_id]).fetchone()


def test_defer_binds_arguments_and_uses_the_task_options(db, default_db):
    job_id = send_receipt.defer(order_id=7, email="a@example.com")
    row = _job(db, job_id)
    assert row["task"] == "handles.send_receipt" and row["queue"] == "mail"
    assert row["args"] == {"order_id": 7, "email": "a@example.com"}  # the default is not stored
    assert row["max_attempts"] == 5
    positional = send_receipt.defer(8, "b@example.com", note="n")
    assert _job(db, positional)["args"] == {"order_id": 8, "email": "b@example.com", "note": "n"}


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: send_receipt.defer(orderid=1, email="a"),
         "unexpected argument 'orderid'; did you mean 'order_id'?"),
        (lambda: send_receipt.defer(order_id=1), "missing a required argument: 'email'"),
        (lambda: send_receipt.defer(order_id="1", email="a"), "argument 'order_id'='1'"),
        (lambda: send_receipt.defer(order_id=True, email="a"), "argument 'order_id'=True"),
        (lambda: send_receipt.defer(order_id=1, email="a\x00b"), "args.email: contains"),
        (lambda: send_receipt.defer(order_id=1, email="a", note="\udcff"), "args.note"),
        (lambda: send_receipt.defer(1, "a", "n", 4), "too many positional arguments"),
        (lambda: enqueue(send_receipt, args={"order_id": 1}), "missing a required argument"),
        (lambda: send_receipt.defer_many([{"order_id": 1, "email": "a"}, {"order_id": 2}]),
         "args_list[1]"),
    ],
)
def test_arguments_that_do_not_fit_are_refused_before_any_sql(db, default_db, call, fragment):
    with pytest.raises(TaskArgumentsError) as info:
        call()
    assert "handles.send_receipt" in str(info.value) and fragment in str(info.value)
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0


def test_a_misspelt_task_name_raises_once_the_registry_is_loaded(db, default_db):
    enqueue("handles.send_reciept", args={})  # not loaded: a producer may name any task
    load_tasks("tests.integration.test_task_handles")
    with pytest.raises(UnknownTaskError, match="did you mean 'handles.send_receipt'"):
        enqueue("handles.send_reciept", args={})
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 1


def test_schedule_in_counts_from_the_database_clock(db, default_db):
    job_id = send_receipt.schedule_in(timedelta(minutes=5), order_id=1, email="a")
    secs = db.execute(
        "SELECT extract(epoch FROM run_at - created_at) FROM scheduler.jobs WHERE id = %s",
        [job_id],
    ).fetchone()[0]
    assert 299.9 < float(secs) < 300.5
    when = datetime(2030, 1, 1, 12, tzinfo=UTC)
    assert _job(db, send_receipt.schedule_at(when, order_id=2, email="b"))["run_at"] == when
    with pytest.raises(InvalidArgumentError, match="delay"):
        send_receipt.schedule_in(-1, order_id=1, email="a")
    with pytest.raises(InvalidArgumentError, match="naive"):
        send_receipt.schedule_at(datetime(2030, 1, 1), order_id=1, email="a")


def test_configure_joins_the_callers_transaction_and_overrides_options(db, db_url):
    with psycopg.connect(db_url) as conn:
        call = send_receipt.configure(queue="urgent", priority=-5, connection=conn)
        job_id = call.defer(order_id=1, email="a")
        conn.rollback()  # the transactional outbox: no job without the caller's commit
        assert _job(db, job_id) is None
        job_id = call.defer(order_id=1, email="a")
        ids = call.defer_many([{"order_id": 2, "email": "b"}, {"order_id": 3, "email": "c"}])
        conn.commit()
    row = _job(db, job_id)
    assert (row["queue"], row["priority"]) == ("urgent", -5)
    assert [_job(db, i)["args"]["order_id"] for i in ids] == [2, 3]
    with psycopg.connect(db_url) as sync_conn, pytest.raises(InvalidArgumentError,
                                                             match="without _async"):  # fmt: skip
        asyncio.run(send_receipt.configure(connection=sync_conn).defer_async(order_id=1, email="a"))


def test_async_twins_on_an_async_connection_and_on_the_default_pool(db, default_db):
    async def run() -> list[int]:
        async with await psycopg.AsyncConnection.connect(default_db) as aconn:
            call = send_receipt.configure(connection=aconn)
            first = await call.defer_async(order_id=1, email="a")
            with pytest.raises(InvalidArgumentError, match="defer_async"):
                send_receipt.configure(connection=aconn).defer(order_id=1, email="a")
            await aconn.commit()
        second = await send_receipt.schedule_in_async(60, order_id=2, email="b")
        third = await send_receipt.defer_many_async([{"order_id": 3, "email": "c"}])
        return [first, second, *third]

    ids = asyncio.run(run())
    assert [_job(db, i)["args"]["order_id"] for i in ids] == [1, 2, 3]


def test_handlers_get_their_context_and_log_with_it(db, db_url, default_db, caplog):
    SEEN.clear()
    sync_id = with_context.defer(n=1)
    async_id = async_context.defer(n=2)

    async def finished(conn: psycopg.AsyncConnection) -> bool:
        cur = await conn.execute("SELECT count(*) FROM scheduler.jobs WHERE state = 'succeeded'")
        return (await cur.fetchone())[0] == 2

    with caplog.at_level(logging.WARNING, logger="user.handler"):
        asyncio.run(_run_worker_until(db_url, finished))
    by_task = {s["ctx"].task: s for s in SEEN}
    sync, async_ = by_task["handles.with_context"], by_task["handles.async_context"]
    assert (sync["ctx"].job_id, sync["ctx"].attempt, sync["ctx"].queue) == (sync_id, 1, "default")
    assert sync["current"] is sync["ctx"] and async_["current"] is async_["ctx"]
    assert sync["ctx"].max_attempts == Settings().max_attempts
    assert sync["structlog"] == {"job_id": sync_id, "task": "handles.with_context", "attempt": 1,
                                 "schedule": None}  # fmt: skip
    assert async_["structlog"]["job_id"] == async_id
    record = next(r for r in caplog.records if r.name == "user.handler")
    assert (record.scheduler_job_id, record.scheduler_task, record.scheduler_attempt) == (
        sync_id, "handles.with_context", 1)  # fmt: skip
    assert _job(db, sync_id)["result"] == 101
    assert _job(db, async_id)["result"] == [async_id, 2]
    history = db.execute(
        "SELECT outcome, result FROM scheduler.run_history WHERE job_id = %s", [async_id]
    ).fetchall()
    assert history == [("succeeded", [async_id, 2])]
    assert current_job() is None  # nothing leaks out of the job's task or thread


def test_a_result_that_cannot_be_stored_leaves_the_job_succeeded_and_says_why(db, db_url,
                                                                              default_db):  # fmt: skip
    ids = [unstorable.defer(kind="set"), unstorable.defer(kind="big")]

    async def finished(conn: psycopg.AsyncConnection) -> bool:
        cur = await conn.execute("SELECT count(*) FROM scheduler.jobs WHERE state = 'succeeded'")
        return (await cur.fetchone())[0] == 2

    asyncio.run(_run_worker_until(db_url, finished))
    for job_id, reason in zip(ids, ["a set is not JSON", f"more than {RESULT_MAX:,}"], strict=True):
        assert _job(db, job_id)["result"] is None
        error = db.execute(
            "SELECT error FROM scheduler.job_runs WHERE job_id = %s", [job_id]
        ).fetchone()[0]
        assert error.startswith("result not stored") and reason in error, error


def test_direct_call_runs_the_handler_with_a_detached_context():
    assert send_receipt(1, "a") == {"order_id": 1, "sent_to": "a"}
    assert with_context(n=5) == 105  # attempt 1, job id 0


def test_without_any_database_the_error_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.delenv("SCHEDULER_DATABASE_URL", raising=False)
    monkeypatch.setenv("SCHEDULER_EMBEDDED_DIR", str(tmp_path / "nowhere"))
    get_settings.cache_clear()
    try:
        with pytest.raises(DatabaseNotConfiguredError) as info:
            send_receipt.defer(order_id=1, email="a")
    finally:
        get_settings.cache_clear()
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "SCHEDULER_DATABASE_URL" in message
    assert "scheduler migrate" in message


def test_the_default_async_pool_is_closed_when_its_event_loop_ends(db, default_db):
    """asyncio.run cancels the tasks left when main returns; psycopg_pool's workers swallow a
    cancellation that lands while they open a connection, and asyncio.run then waited for
    them forever (seen as a rare 120 s hang of the test below). The pool is now closed by a
    task of ours that the same cancellation reaches, which stops those workers."""
    from scheduler import connections

    pools: list[Any] = []

    async def main() -> None:
        await asyncio.gather(*(send_receipt.defer_async(order_id=i, email="a") for i in range(8)))
        pools.extend(connections._async_pools[asyncio.get_running_loop()].values())

    asyncio.run(main())
    assert pools and all(p.closed for p in pools)
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone() == (8,)


def test_a_sync_call_on_a_running_event_loop_is_refused_before_anything_is_written(db, default_db):
    """``await enqueue(...)`` used to commit the job, block the loop, then fail on awaiting an
    int (a caller retrying on that error enqueued it twice)."""

    async def from_async_code() -> None:
        with pytest.raises(InvalidArgumentError, match="running event loop") as info:
            await enqueue(send_receipt, args={"order_id": 1, "email": "a"})  # type: ignore[misc]
        assert "enqueue_async" in str(info.value)
        with pytest.raises(InvalidArgumentError, match="defer_async"):
            send_receipt.defer(order_id=1, email="a")
        with pytest.raises(InvalidArgumentError, match="running event loop"):
            send_receipt.defer_many([{"order_id": 1, "email": "a"}])
        await send_receipt.defer_async(order_id=2, email="b")  # the async twin is fine

    asyncio.run(from_async_code())
    rows = db.execute("SELECT args->>'order_id' FROM scheduler.jobs").fetchall()
    assert rows == [("2",)]
