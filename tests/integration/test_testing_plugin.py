"""scheduler.testing: the pytest plugin users load (``scheduler_db``, ``scheduler_inline``),
run in a subprocess with ``pytester`` as a user's suite would, and its helpers tested
directly: ``SchedulerDB.run_jobs`` (the due-time horizon, retries, dead letters, handlers'
context), the enqueued-job assertions, and inline mode."""

from __future__ import annotations

import asyncio
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from scheduler import JobContext, TaskArgumentsError, current_job, enqueue, enqueueing, task
from scheduler.connections import close_default_pools, set_default_database_url
from scheduler.errors import InvalidArgumentError, JobNotFoundError, SchedulerError
from scheduler.testing import SchedulerDB, inline

pytest_plugins = ["pytester"]

CALLS: list[dict[str, Any]] = []


@task(name="tp.receipt", queue="mail")
def receipt(order_id: int) -> str:
    CALLS.append({"order_id": order_id, "thread": threading.get_ident(), "ctx": current_job()})
    return f"receipt {order_id}"


@task(name="tp.flaky", max_attempts=3, backoff_base_s=1.0, backoff_jitter=0.0)
def flaky(n: int) -> None:
    raise ValueError(f"boom {n}")


@task(name="tp.with_context")
def with_context(ctx: JobContext, n: int) -> list[Any]:
    return [ctx.job_id, ctx.attempt, ctx.queue, current_job() is ctx, n]


@task(name="tp.async_handler")
async def async_handler(n: int) -> dict[str, Any]:
    await asyncio.sleep(0)
    ctx = current_job()
    return {"n": n, "job_id": ctx.job_id if ctx else None}


@task(name="tp.echo")
def echo(value: Any) -> Any:
    return value


@task(name="tp.slow", timeout_s=0.05, max_attempts=1)
async def slow() -> None:
    await asyncio.sleep(30)


@task(name="tp.order")
def order(order_id: int) -> None:  # a follow-up job, in another queue, due now
    receipt.defer(order_id=order_id)


@task(name="tp.forever")
def forever(n: int) -> None:
    forever.defer(n=n + 1)


@task(name="tp.loop_free")
def loop_free() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


@pytest.fixture
def sdb(db_url: str):
    """A SchedulerDB on the project's per-test database, as the plugin's fixture makes it."""
    CALLS.clear()
    set_default_database_url(db_url)
    yield SchedulerDB(db_url)
    set_default_database_url(None)
    close_default_pools()


def _job(db: psycopg.Connection, job_id: int) -> dict[str, Any]:
    cur = db.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute("SELECT * FROM scheduler.jobs WHERE id = %s", [job_id]).fetchone()


# ---- run_jobs: the due-time horizon -----------------------------------------------------------


def test_a_job_due_in_five_minutes_runs_only_when_the_horizon_reaches_it(sdb, db):
    job_id = receipt.schedule_in(timedelta(minutes=5), order_id=1)
    assert sdb.run_jobs().succeeded == 0  # the database clock: not due
    assert sdb.run_jobs(until=timedelta(minutes=4)).succeeded == 0
    assert sdb.run_jobs(until=240.0).succeeded == 0  # seconds
    assert _job(db, job_id)["state"] == "pending" and CALLS == []
    report = sdb.run_jobs(until=timedelta(minutes=6))
    assert (report.succeeded, report.job_ids) == (1, [job_id])
    assert report.results == {job_id: "receipt 1"}
    assert _job(db, job_id)["state"] == "succeeded"
    assert sdb.get_result(job_id) == "receipt 1"


def test_until_may_be_an_instant(sdb):
    receipt.schedule_in(timedelta(minutes=5), order_id=2)
    now = sdb.now()
    assert sdb.run_jobs(until=now + timedelta(minutes=4)).succeeded == 0
    assert sdb.run_jobs(until=now + timedelta(minutes=5, seconds=1)).succeeded == 1


def test_retries_follow_the_backoff_and_end_dead(sdb, db):
    job_id = flaky.defer(n=1)
    first = sdb.run_jobs()  # runs once; the retry is due 1 s later, after the horizon
    assert (first.failed, first.dead, first.failed_ids) == (1, 0, [job_id])
    assert first.errors[job_id] == "ValueError: boom 1"
    row = _job(db, job_id)
    assert (row["state"], row["attempt"]) == ("pending", 1)
    assert row["run_at"] > sdb.now()
    rest = sdb.run_jobs(until=timedelta(days=1))
    assert (rest.failed, rest.dead, rest.dead_ids) == (1, 1, [job_id])
    row = _job(db, job_id)
    assert (row["state"], row["attempt"], row["last_error"]) == ("dead", 3, "ValueError: boom 1")
    runs = db.execute("SELECT attempt, outcome FROM scheduler.job_runs WHERE job_id = %s "
                      "ORDER BY attempt", [job_id]).fetchall()  # fmt: skip
    assert runs == [(1, "failed"), (2, "failed"), (3, "failed")]
    with pytest.raises(AssertionError, match=r"tp.flaky\) has not succeeded: it is dead"):
        sdb.get_result(job_id)


def test_an_unknown_task_is_dead_lettered_with_the_reason(sdb, db):
    job_id = enqueue("tp.nobody_has_this", args={"x": 1})
    report = sdb.run_jobs()
    assert report.dead_ids == [job_id]
    row = _job(db, job_id)
    assert row["state"] == "dead"
    assert "'tp.nobody_has_this' is not registered in this process" in row["last_error"]


def test_handlers_get_their_context_and_run_in_this_thread_with_no_loop(sdb):
    ctx_id = with_context.defer(n=5)
    receipt_id = receipt.defer(order_id=3)
    free_id = loop_free.defer()
    async_id = async_handler.defer(n=7)
    report = sdb.run_jobs()
    assert report.succeeded == 4, report.errors
    assert sdb.get_result(ctx_id) == [ctx_id, 1, "default", True, 5]
    assert sdb.get_result(async_id) == {"n": 7, "job_id": async_id}
    assert sdb.get_result(free_id) is True  # asyncio.run works in a sync handler
    assert CALLS[0]["thread"] == threading.get_ident()
    assert CALLS[0]["ctx"].job_id == receipt_id
    assert current_job() is None  # nothing leaks into the test


def test_an_async_handler_past_its_timeout_is_a_timeout(sdb, db):
    job_id = slow.defer()
    report = sdb.run_jobs()
    assert report.errors[job_id] == "TimeoutError: attempt ran longer than timeout_s=0.05"
    outcome = db.execute("SELECT outcome FROM scheduler.job_runs WHERE job_id = %s", [job_id])
    assert outcome.fetchone() == ("timeout",) and _job(db, job_id)["state"] == "dead"


def test_jobs_enqueued_by_handlers_run_in_the_same_call(sdb, db):
    order_id = order.defer(order_id=9)
    report = sdb.run_jobs()
    assert report.succeeded == 2 and report.job_ids[0] == order_id
    (follow_up,) = sdb.enqueued_jobs(receipt, state="succeeded")
    assert (follow_up.queue, follow_up.args) == ("mail", {"order_id": 9})


def test_queues_limits_what_runs(sdb):
    receipt.defer(order_id=1)  # queue mail
    other = with_context.defer(n=1)  # queue default
    assert sdb.run_jobs(queues=["default"]).job_ids == [other]
    assert sdb.run_jobs(queues=["mail"]).succeeded == 1


def test_max_jobs_stops_a_job_that_keeps_enqueuing(sdb):
    forever.defer(n=0)
    report = sdb.run_jobs(max_jobs=5)
    assert (report.attempts, report.succeeded, report.limit_reached) == (5, 5, True)
    assert len(sdb.enqueued_jobs(forever)) == 1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"until": datetime(2030, 1, 1)}, "naive"),
        ({"until": "tomorrow"}, "until must be a timedelta or a number of seconds"),
        ({"until": -1}, "until must be from 0 s to 10 years"),
        ({"max_jobs": 0}, "max_jobs must be an int >= 1"),
        ({"queues": "mail"}, "queues must be a list of queue names"),
        ({"queues": ["bad queue"]}, "queues[]"),
    ],
)
def test_bad_arguments_are_refused(sdb, kwargs, fragment):
    with pytest.raises(InvalidArgumentError) as info:
        sdb.run_jobs(**kwargs)
    assert fragment in str(info.value)


def test_inside_an_event_loop_run_jobs_async_is_the_way(sdb):
    sync_id = receipt.defer(order_id=4)
    async_id = async_handler.defer(n=8)

    async def main() -> Any:
        with pytest.raises(SchedulerError, match="run_jobs_async"):
            sdb.run_jobs()
        return await sdb.run_jobs_async()

    report = asyncio.run(main())
    assert sorted(report.succeeded_ids) == sorted([sync_id, async_id])
    assert CALLS[0]["thread"] != threading.get_ident()  # sync handlers: asyncio.to_thread
    assert sdb.get_result(async_id) == {"n": 8, "job_id": async_id}


# ---- enqueued jobs and the assertions ---------------------------------------------------------


def test_enqueued_jobs_filter_by_task_and_a_subset_of_args(sdb):
    a = receipt.defer(order_id=1)
    b = receipt.schedule_in(300, order_id=2)
    c = with_context.defer(n=1)
    assert [j.id for j in sdb.enqueued_jobs()] == [a, b, c]
    assert [j.id for j in sdb.enqueued_jobs(receipt)] == [a, b]
    assert [j.id for j in sdb.enqueued_jobs("tp.receipt", args={"order_id": 2})] == [b]
    assert sdb.enqueued_jobs(receipt, args={"order_id": 3}) == []
    assert sdb.enqueued_jobs(state="succeeded") == []
    assert [j.id for j in sdb.assert_enqueued(receipt, count=2)] == [a, b]
    assert [j.id for j in sdb.assert_enqueued(receipt, within=60)] == [a]
    sdb.assert_enqueued(receipt, args={"order_id": 2}, within=timedelta(minutes=6))
    sdb.assert_not_enqueued(receipt, args={"order_id": 2}, within=timedelta(minutes=4))
    sdb.assert_not_enqueued(flaky)


def test_assertion_messages_list_what_is_enqueued(sdb):
    receipt.schedule_in(timedelta(minutes=5), order_id=1)
    with pytest.raises(AssertionError) as info:
        sdb.assert_enqueued(receipt, args={"order_id": 2})
    message = str(info.value)
    assert "expected at least one job of task 'tp.receipt' in state 'pending' with args " \
           "including {'order_id': 2}; 0 matched" in message
    assert re.search(r"#\d+ tp.receipt\(order_id=1\) queue=mail, due in (299|300) s", message)
    with pytest.raises(AssertionError, match=r"expected 2 job\(s\) .*; 1 matched"):
        sdb.assert_enqueued(receipt, count=2)
    with pytest.raises(AssertionError, match=r"expected no job .* due within 360 s; 1 matched"):
        sdb.assert_not_enqueued(receipt, within=timedelta(minutes=6))
    none_dead = r"in state 'dead'; 0 matched. Jobs dead now:\n  \(none\)"
    with pytest.raises(AssertionError, match=none_dead):
        sdb.assert_enqueued(receipt, state="dead")


def test_enqueued_jobs_refuses_bad_filters(sdb):
    with pytest.raises(InvalidArgumentError, match="state"):
        sdb.enqueued_jobs(state="nope")
    with pytest.raises(InvalidArgumentError, match="args must be a mapping"):
        sdb.enqueued_jobs(receipt, args=[1])
    with pytest.raises(InvalidArgumentError, match="count must be an int"):
        sdb.assert_enqueued(receipt, count=True)
    with pytest.raises(InvalidArgumentError, match="within must be from 0 s"):
        sdb.assert_enqueued(receipt, within=-5)


def test_get_result_of_a_missing_job(sdb):
    with pytest.raises(JobNotFoundError):
        sdb.get_result(123456)


# ---- inline mode --------------------------------------------------------------------------------


def test_inline_runs_the_handler_at_once_and_records_the_call():
    CALLS.clear()
    with inline() as runner:
        first = receipt.defer(order_id=1)
        second = receipt.schedule_in(timedelta(minutes=5), order_id=2)
        third = enqueue("tp.with_context", args={"n": 3})
    assert (first, second, third) == (1, 2, 3)
    assert [c["order_id"] for c in CALLS] == [1, 2]
    assert CALLS[0]["ctx"].job_id == 1 and CALLS[0]["thread"] == threading.get_ident()
    assert [(j.task, j.args, j.result, j.ran) for j in runner.jobs] == [
        ("tp.receipt", {"order_id": 1}, "receipt 1", True),
        ("tp.receipt", {"order_id": 2}, "receipt 2", True),
        ("tp.with_context", {"n": 3}, [3, 1, "default", True, 3], True),
    ]
    assert runner.jobs[1].delay_s == 300.0 and runner.jobs[0].options["queue"] == "mail"
    assert enqueueing._inline is None  # restored
    assert current_job() is None


def test_inline_passes_arguments_through_json_as_a_worker_would():
    payload = {"k": [1, "a", None]}
    with inline() as runner:
        echo.defer(value=payload)
    assert runner.jobs[0].result == payload and runner.jobs[0].result is not payload
    assert runner.jobs[0].args == {"value": payload}


def test_inline_raises_the_handlers_exception_and_checks_arguments():
    with inline() as runner:
        with pytest.raises(ValueError, match="boom 4"):
            flaky.defer(n=4)
        assert runner.jobs[0].error is not None and runner.jobs[0].ran
        with pytest.raises(TaskArgumentsError, match="unexpected argument 'orderid'"):
            receipt.defer(orderid=1)  # type: ignore[call-arg]
        with pytest.raises(TaskArgumentsError, match="order_id"):
            receipt.defer(order_id="1")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="inline mode"):
            receipt.defer_many([{"order_id": 1}])
    assert len(runner.jobs) == 1  # refused calls are not recorded


def test_inline_async_handlers_from_sync_and_async_calls():
    with inline() as runner:
        assert async_handler.defer(n=1) == 1  # asyncio.run

        async def from_async() -> list[int]:
            ids = [await async_handler.defer_async(n=2)]  # awaited in this loop
            ids.append(async_handler.defer(n=3))  # a loop runs here: a helper thread
            ids.append(await receipt.defer_async(order_id=4))  # a sync handler, called
            return ids

        assert asyncio.run(from_async()) == [2, 3, 4]
    assert [j.result for j in runner.jobs] == [
        {"n": 1, "job_id": 1}, {"n": 2, "job_id": 2}, {"n": 3, "job_id": 3}, "receipt 4"]


def test_inline_runs_the_attempt_and_failure_hooks_and_gives_headers():
    """Inline mode wraps each handler in the attempt hooks (Django's connection handling,
    tracing spans) and reports failures, as a worker does; ctx.headers carries headers."""
    import contextlib

    from scheduler.hooks import add_attempt_hook, add_failure_hook

    seen: list[Any] = []

    @contextlib.contextmanager
    def scope(ctx: JobContext) -> Any:
        seen.append(("enter", ctx.task, dict(ctx.headers)))
        yield
        seen.append(("exit", ctx.task))

    removers = [add_attempt_hook(scope),
                add_failure_hook(lambda ctx, exc: seen.append(("failed", ctx.task, repr(exc))))]
    try:
        with inline():
            receipt.configure(headers={"tenant": "acme"}).defer(order_id=1)
            with pytest.raises(ValueError, match="boom 2"):
                flaky.defer(n=2)
            assert async_handler.defer(n=3) == 3
    finally:
        for remove in removers:
            remove()
    assert seen == [
        ("enter", "tp.receipt", {"tenant": "acme"}), ("exit", "tp.receipt"),
        ("enter", "tp.flaky", {}), ("failed", "tp.flaky", "ValueError('boom 2')"),
        ("enter", "tp.async_handler", {}), ("exit", "tp.async_handler"),
    ]  # fmt: skip


def test_inline_may_leave_scheduled_jobs_unrun():
    CALLS.clear()
    with inline(run_scheduled=False) as runner:
        receipt.schedule_in(timedelta(minutes=5), order_id=1)
        receipt.schedule_at(datetime.now(UTC) + timedelta(hours=1), order_id=2)
        receipt.schedule_at(datetime.now(UTC) - timedelta(seconds=1), order_id=3)  # past: due
        receipt.defer(order_id=4)
    assert [(j.args["order_id"], j.ran) for j in runner.jobs] == [
        (1, False), (2, False), (3, True), (4, True)]
    assert [c["order_id"] for c in CALLS] == [3, 4]
    assert [j.id for j in runner.for_task(receipt)] == [1, 2, 3, 4]


# ---- the plugin, as a user's suite loads it (pytester, in a subprocess) -----------------------

USER_TESTS = '''
import asyncio
from datetime import timedelta

import pytest
from scheduler import JobContext, TaskArgumentsError, current_job, enqueue, task


@task(queue="mail")
def send_receipt(order_id: int) -> str:
    return f"receipt for order {order_id}"


def place_order(order_id: int) -> None:
    send_receipt.schedule_in(timedelta(minutes=5), order_id=order_id)


def test_receipt_five_minutes_after_the_order(scheduler_db):
    place_order(order_id=1)
    assert scheduler_db.run_jobs().succeeded == 0           # not due yet
    report = scheduler_db.run_jobs(until=timedelta(minutes=6))
    assert report.succeeded == 1
    assert scheduler_db.get_result(report.job_ids[0]) == "receipt for order 1"


def test_defer_then_run(scheduler_db):
    job_id = send_receipt.defer(order_id=2)
    scheduler_db.assert_enqueued(send_receipt, args={"order_id": 2}, count=1)
    assert scheduler_db.run_jobs().succeeded_ids == [job_id]
    scheduler_db.assert_not_enqueued(send_receipt)


@task(max_attempts=3, backoff_base_s=0.5)
def always_fails() -> None:
    raise RuntimeError("smtp down")


def test_retries_end_dead(scheduler_db):
    job_id = always_fails.defer()
    assert scheduler_db.run_jobs().failed == 1
    report = scheduler_db.run_jobs(until=timedelta(hours=1))
    assert report.dead_ids == [job_id] and report.errors[job_id] == "RuntimeError: smtp down"
    scheduler_db.assert_enqueued(always_fails, state="dead")


@task
def knows_its_job(ctx: JobContext) -> list:
    return [ctx.job_id, ctx.attempt, current_job() is ctx]


@task
async def async_sum(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def test_context_and_async_handlers(scheduler_db):
    ctx_id = knows_its_job.defer()
    sum_id = async_sum.defer(a=2, b=3)
    assert scheduler_db.run_jobs().succeeded == 2
    assert scheduler_db.get_result(ctx_id) == [ctx_id, 1, True]
    assert scheduler_db.get_result(sum_id) == 5


def test_unknown_task_is_dead(scheduler_db):
    job_id = enqueue("not_defined_anywhere")
    assert scheduler_db.run_jobs().dead_ids == [job_id]


def test_each_test_has_a_fresh_database(scheduler_db):
    assert scheduler_db.enqueued_jobs(state=None) == []


def test_inline_raises(scheduler_inline):
    with pytest.raises(RuntimeError, match="smtp down"):
        always_fails.defer()
    with pytest.raises(TaskArgumentsError):
        send_receipt.defer(order=1)
    assert async_sum.defer(a=1, b=2) == 2
    assert [j.result for j in scheduler_inline.jobs] == [None, 3]


def test_inline_outside_pytest_fixtures():
    from scheduler.testing import inline
    with inline() as runner:
        send_receipt.schedule_in(timedelta(minutes=5), order_id=3)
    assert runner.jobs[0].result == "receipt for order 3"
'''

FAILING_USER_TESTS = '''
from scheduler import task


@task
def welcome(user_id: int) -> None: ...


def test_wrong_args(scheduler_db):
    welcome.defer(user_id=1)
    welcome.defer(user_id=2)
    scheduler_db.assert_enqueued(welcome, args={"user_id": 3})


def test_unexpected_job(scheduler_db):
    welcome.defer(user_id=1)
    scheduler_db.assert_not_enqueued(welcome)
'''


@pytest.fixture
def user_suite(pytester: pytest.Pytester, pg_server_url: str, monkeypatch: pytest.MonkeyPatch):
    """Run a user's test file in a subprocess on this session's server (SCHEDULER_TEST_DSN)."""
    monkeypatch.setenv("SCHEDULER_TEST_DSN", pg_server_url)
    monkeypatch.delenv("SCHEDULER_DATABASE_URL", raising=False)

    def run(source: str, *args: str) -> pytest.RunResult:
        pytester.makepyfile(test_user=source)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)

    return run


def test_the_plugin_in_a_users_suite(user_suite):
    result = user_suite(USER_TESTS)
    result.assert_outcomes(passed=8)


def test_the_plugins_failure_messages(user_suite):
    result = user_suite(FAILING_USER_TESTS)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        ("*expected at least one job of task 'welcome' in state 'pending' with args including "
         "{'user_id': 3}; 0 matched. Jobs pending now:"),
        "*#1 welcome(user_id=1) queue=default, due now",
        "*#2 welcome(user_id=2) queue=default, due now",
        "*expected no job of task 'welcome' in state 'pending'; 1 matched*",
    ])  # fmt: skip


def test_without_a_dsn_the_plugin_starts_an_embedded_server(pytester: pytest.Pytester,
                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SCHEDULER_TEST_DSN", raising=False)
    monkeypatch.delenv("SCHEDULER_DATABASE_URL", raising=False)
    pytester.makepyfile(test_user='''
from datetime import timedelta
from scheduler import task

@task
def hello(name: str) -> str:
    return "hello " + name

def test_embedded(scheduler_db):
    assert "host=/" in scheduler_db.url or "host=%2F" in scheduler_db.url
    job_id = hello.schedule_in(timedelta(minutes=5), name="x")
    assert scheduler_db.run_jobs(until=timedelta(minutes=6)).succeeded_ids == [job_id]

def test_again(scheduler_db):
    assert scheduler_db.enqueued_jobs(state=None) == []
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=2)


def test_the_plugin_drops_its_databases(user_suite, pg_server_url: str):
    def ours() -> list[str]:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            return [r[0] for r in admin.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'scheduler_plugin_%'")]

    before = ours()
    user_suite("def test_one(scheduler_db):\n    assert scheduler_db.run_jobs().attempts == 0\n")\
        .assert_outcomes(passed=1)
    assert ours() == before  # the test's database and the session's template
