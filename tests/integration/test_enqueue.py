"""schedule_at / enqueue against a real database."""

import asyncio
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from scheduler import (
    DatabaseNotConfiguredError,
    enqueue,
    enqueue_async,
    enqueue_many_async,
    schedule_at,
    task,
)
from scheduler.connections import close_default_pools, set_default_database_url
from scheduler.errors import DatabaseUnavailableError, InvalidArgumentError


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
            await enqueue_async(noop, args={"n": 1}, connection=aconn)
            await aconn.rollback()
            job_id2 = await enqueue_async(noop, args={"n": 2}, connection=aconn)
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

    async def run() -> list[int]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
            return await enqueue_many_async(noop, [{"n": 1}, {"n": 2}], connection=aconn)

    assert len(asyncio.run(run())) == 2


# ---- bad values are refused before any SQL, with the project's own error ----------------------


def _untouched(conn) -> bool:
    """True when no statement ran on ``conn`` (a non-autocommit psycopg connection begins a
    transaction with its first statement)."""
    return conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda c: enqueue(noop, priority=10**12, connection=c), "priority 1000000000000 is out"),
        (
            lambda c: enqueue(noop, priority="high", connection=c),
            "priority must be an int, not str",
        ),
        (lambda c: enqueue(noop, max_attempts="3", connection=c), "max_attempts must be an int"),
        (lambda c: enqueue("a\x00b", connection=c), "task 'a\\\\x00b' contains NUL"),
        (lambda c: enqueue(noop, queue="a\x00b", connection=c), "queue 'a\\\\x00b' contains NUL"),
        (
            lambda c: enqueue(noop, idempotency_key="k\x00", connection=c),
            "idempotency_key 'k\\\\x00' contains NUL",
        ),
        (
            lambda c: enqueue(noop, idempotency_key=os.urandom(5000).hex(), connection=c),
            "idempotency_key .* too long: 10,000 characters, at most 512",
        ),
        (lambda c: enqueue(None, connection=c), "task must be a @task function"),
        (lambda c: schedule_at(noop, "2030-01-01", connection=c), "run_at must be a datetime"),
        (lambda c: enqueue(noop, args=[1], connection=c), "args must be a mapping"),
    ],
)
def test_bad_values_raise_invalid_argument_before_any_sql(db, db_url, call, fragment):
    with psycopg.connect(db_url) as conn:
        with pytest.raises(InvalidArgumentError, match=fragment):
            call(conn)
        assert _untouched(conn)
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0


def test_a_url_is_not_a_connection(db_url):
    with pytest.raises(InvalidArgumentError, match="connection must be a psycopg") as info:
        enqueue(noop, connection=db_url.replace("postgresql://", "postgresql://u:s3cret@"))
    assert "s3cret" not in str(info.value)
    with pytest.raises(InvalidArgumentError, match="connection is closed"):
        conn = psycopg.connect(db_url)
        conn.close()
        enqueue(noop, connection=conn)


def test_jobspec_fields_are_checked_when_built():
    from scheduler import JobSpec

    for kwargs, fragment in [
        ({"priority": 10**12}, "JobSpec.priority"),
        ({"max_attempts": True}, "JobSpec.max_attempts must be an int, not bool"),
        ({"queue": "a b"}, "JobSpec.queue"),
        ({"run_at": datetime(2030, 1, 1)}, "JobSpec.run_at=.* is naive"),
        ({"args": "x=1"}, "JobSpec.args must be a mapping"),
    ]:
        with pytest.raises(InvalidArgumentError, match=fragment):
            JobSpec(noop, **kwargs)
    with pytest.raises(InvalidArgumentError, match="JobSpec.task must be"):
        JobSpec(None)


# ---- bulk: a bad item writes nothing and leaves the caller's transaction usable -------------


def test_bad_bulk_item_leaves_the_callers_transaction_usable(db, db_url):
    from scheduler import JobSpec, enqueue_many, schedule_many

    later = datetime.now(UTC) + timedelta(hours=1)
    with psycopg.connect(db_url) as conn:
        first = enqueue(noop, args={"n": "before"}, connection=conn)  # the transaction is open
        with pytest.raises(InvalidArgumentError, match=r"args_list\[2\]"):
            enqueue_many(noop, [{"n": 0}, {"n": 1}, {"n": float("nan")}], connection=conn)
        with pytest.raises(InvalidArgumentError, match=r"args_list\[1\] must be a mapping"):
            enqueue_many(noop, [{"n": 0}, "n=1"], connection=conn)
        with pytest.raises(InvalidArgumentError, match=r"jobs\[1\]\.args\.x: .*\\u0000"):
            schedule_many(
                [JobSpec(noop, later, {"n": 0}), JobSpec(noop, later, {"x": "a\x00"})],
                connection=conn,
            )
        with pytest.raises(InvalidArgumentError, match=r"jobs\[1\] must be a JobSpec, not dict"):
            schedule_many([JobSpec(noop), {"task": noop}], connection=conn)
        status = conn.info.transaction_status
        assert status == psycopg.pq.TransactionStatus.INTRANS  # not INERROR: still usable
        second = enqueue(noop, args={"n": "after"}, connection=conn)
        conn.commit()
    rows = db.execute("SELECT id, args->>'n' FROM scheduler.jobs ORDER BY id").fetchall()
    assert rows == [(first, "before"), (second, "after")]


def test_database_failure_in_the_callers_transaction_is_not_hidden(db, db_url):
    from scheduler import enqueue_many

    with psycopg.connect(db_url) as conn:
        conn.execute("SET TRANSACTION READ ONLY")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            enqueue(noop, connection=conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        conn.execute("SET TRANSACTION READ ONLY")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            enqueue_many(noop, [{"n": 1}], connection=conn)
        conn.rollback()
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0


# ---- idempotency keys under a real race --------------------------------------------------------

RACERS = 20


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transaction"])
def test_idempotency_key_race_between_connections(db, db_url, autocommit):
    """RACERS threads, each on its own connection, released together: one job per key, and
    every call returns its id."""
    barrier = threading.Barrier(RACERS)

    def racer(key: str) -> int:
        with psycopg.connect(db_url, autocommit=autocommit) as conn:
            barrier.wait(timeout=30)
            job_id = enqueue(noop, idempotency_key=key, connection=conn)
            if not autocommit:
                conn.commit()
            return job_id

    with ThreadPoolExecutor(RACERS) as pool:
        for round_ in range(5):
            key = f"race-{round_}"
            ids = list(pool.map(racer, [key] * RACERS))
            rows = db.execute(
                "SELECT id FROM scheduler.jobs WHERE idempotency_key = %s", [key]
            ).fetchall()
            assert len(rows) == 1 and set(ids) == {rows[0][0]}, (ids, rows)


def test_idempotency_key_race_async(db, db_url):
    async def run() -> list[int]:
        barrier = asyncio.Barrier(RACERS)

        async def racer() -> int:
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
                await barrier.wait()
                return await enqueue_async(noop, idempotency_key="race-async", connection=conn)

        return await asyncio.gather(*(racer() for _ in range(RACERS)))

    ids = asyncio.run(run())
    rows = db.execute("SELECT id FROM scheduler.jobs").fetchall()
    assert len(rows) == 1 and set(ids) == {rows[0][0]}


def test_idempotency_key_changing_hands_while_racing(db, db_url):
    """While one connection keeps finishing the live job of a key, racers enqueue with that
    key: every call returns a job holding the key (the store retries when the live job it
    collided with finished before it could read it), and never are two live at once."""
    stop = threading.Event()

    def finisher() -> int:
        finished = 0
        with psycopg.connect(db_url, autocommit=True) as conn:
            while not stop.is_set() and finished < 400:
                cur = conn.execute(
                    "UPDATE scheduler.jobs SET state = 'succeeded' WHERE idempotency_key = "
                    "'churn' AND state = 'pending'"
                )
                finished += cur.rowcount
        stop.set()
        return finished

    def racer(_: int) -> list[int]:
        with psycopg.connect(db_url, autocommit=True) as conn:
            ids = []
            while not stop.is_set():
                ids.append(enqueue(noop, idempotency_key="churn", connection=conn))
            return ids

    with ThreadPoolExecutor(9) as pool:
        churn = pool.submit(finisher)
        try:
            ids = [i for batch in pool.map(racer, range(8)) for i in batch]
        finally:
            stop.set()
        assert churn.result(timeout=30) > 0
    held = db.execute("SELECT id FROM scheduler.jobs WHERE idempotency_key = 'churn'").fetchall()
    assert set(ids) <= {r[0] for r in held}
    live = db.execute(
        "SELECT count(*) FROM scheduler.jobs WHERE state IN ('pending', 'running')"
    ).fetchone()[0]
    assert live <= 1


# ---- the default pool: a bad SCHEDULER_DATABASE_URL fails fast, redacted -----------------------


@pytest.fixture
def default_url(monkeypatch):
    """Set SCHEDULER_DATABASE_URL for the API's default pool; restored afterwards."""
    from scheduler.settings import get_settings

    def use(url: str) -> None:
        monkeypatch.setenv("SCHEDULER_DATABASE_URL", url)
        get_settings.cache_clear()

    set_default_database_url(None)
    yield use
    monkeypatch.undo()
    get_settings.cache_clear()
    close_default_pools()


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_default_url_is_database_unavailable(default_url):
    default_url(f"postgresql://app:s3cret-pw@127.0.0.1:{_refused_port()}/app")
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="SCHEDULER_DATABASE_URL") as info:
        enqueue(noop)
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert "s3cret-pw" not in message and "app:***@127.0.0.1" in message
    assert "refused" in message and info.value.__cause__ is None


def test_silent_default_url_times_out_within_the_connect_timeout(default_url):
    """A server that accepts TCP connections and never answers: the connect timeout (5 s
    unless the URL sets one) ends the wait, not the pool's 30 s."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # never accepted: the kernel completes the handshake, nobody answers
        port = silent.getsockname()[1]
        default_url(f"postgresql://app:s3cret-pw@127.0.0.1:{port}/app")
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="timeout") as info:
            enqueue(noop)
        elapsed = time.monotonic() - started
    assert elapsed < 15, elapsed
    assert "s3cret-pw" not in str(info.value)


def test_malformed_default_url_is_database_unavailable(db, db_url):
    for url in (
        "postgresql://app:s3cret-pw@[oops",
        "postgresql://app:s3cret-pw@localhost:notaport/app",
        "host=x\x00 password=s3cret-pw",
    ):
        set_default_database_url(url)
        try:
            with pytest.raises(DatabaseUnavailableError, match="set_default_database_url") as info:
                enqueue(noop)
        finally:
            set_default_database_url(None)
        assert "s3cret-pw" not in str(info.value), str(info.value)
    set_default_database_url(db_url)  # a bad URL is not cached: a good one works afterwards
    try:
        job_id = enqueue(noop)
    finally:
        set_default_database_url(None)
        close_default_pools()
    assert _job(db, job_id)[2] == "pending"


def test_default_url_without_the_schema_is_schema_not_migrated(fresh_db_url):
    from scheduler.errors import SchemaNotMigratedError

    set_default_database_url(fresh_db_url())  # an empty database: never migrated
    try:
        with pytest.raises(SchemaNotMigratedError, match="scheduler migrate"):
            enqueue(noop)
    finally:
        set_default_database_url(None)
        close_default_pools()


def test_default_url_role_without_insert_is_a_database_error(db, db_url):
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from scheduler.errors import DatabaseError

    role = f"ro_{conninfo_to_dict(db_url)['dbname']}"[:60]
    db.execute(f'CREATE ROLE "{role}" LOGIN')
    db.execute(f'GRANT USAGE ON SCHEMA scheduler TO "{role}"')
    set_default_database_url(make_conninfo(db_url, user=role))
    try:
        with pytest.raises(DatabaseError, match="42501: permission denied for table jobs"):
            enqueue(noop)
    finally:
        set_default_database_url(None)
        close_default_pools()
        db.execute(f'DROP OWNED BY "{role}"')
        db.execute(f'DROP ROLE "{role}"')


def test_async_connection_bad_value_raises_before_any_sql(db, db_url):
    from scheduler import enqueue_many, enqueue_many_async

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as aconn:
            with pytest.raises(InvalidArgumentError, match="enqueue_async"):
                enqueue(noop, connection=aconn)  # the sync call refuses an async connection
            with pytest.raises(InvalidArgumentError, match="priority"):
                await enqueue_async(noop, priority="high", connection=aconn)
            with pytest.raises(InvalidArgumentError, match=r"args_list\[0\]"):
                await enqueue_many_async(noop, [{"x": {1, 2}}], connection=aconn)
            with psycopg.connect(db_url) as sync_conn:
                with pytest.raises(InvalidArgumentError, match="without _async"):
                    await enqueue_async(noop, connection=sync_conn)
                with pytest.raises(InvalidArgumentError, match="enqueue_async"):
                    enqueue_many(noop, [{}], connection=aconn)
            assert aconn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            await enqueue_async(noop, connection=aconn)
            await aconn.commit()

    asyncio.run(run())
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 1
