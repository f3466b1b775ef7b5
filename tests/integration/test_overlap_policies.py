"""Overlap policies ``buffer_one`` and ``cancel_previous`` (0018), against a real database:
the leader's tick with an injected clock, real workers, and the constraints themselves."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from scheduler import materialiser, metrics, schedule_operations, task
from scheduler.config import OverlapPolicy
from scheduler.errors import ConfigError
from scheduler.job_context import JobContext
from scheduler.settings import Settings
from scheduler.store import Store
from scheduler.worker import Worker
from tests.conftest import wait_until_async
from tests.integration.test_policies import Leader, _add, jobs, minute, skipped

STORE = Store("scheduler")

# -- handlers: they report to the test through these, keyed by the job's fire time ----------

# an async handler's attempt returns when its gate (fire time, attempt) opens
GATES: dict[tuple[datetime, int], asyncio.Event] = {}
FAIL: set[datetime] = set()  # the first attempt of these fire times raises
SEEN: list[tuple[str, datetime, int]] = []  # (what, fire time, attempt)
SYNC_GO = threading.Event()


@task(name="test_overlap.hold", max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02)
async def hold(ctx: JobContext) -> None:
    SEEN.append(("start", ctx.fire_time, ctx.attempt))
    try:
        await GATES.setdefault((ctx.fire_time, ctx.attempt), asyncio.Event()).wait()
    except asyncio.CancelledError:
        SEEN.append(("cancelled", ctx.fire_time, ctx.attempt))
        raise
    SEEN.append(("end", ctx.fire_time, ctx.attempt))
    if ctx.fire_time in FAIL and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")


@task(name="test_overlap.sync_hold")
def sync_hold(ctx: JobContext) -> None:
    SEEN.append(("start", ctx.fire_time, ctx.attempt))
    deadline = time.monotonic() + 30
    while not ctx.cancel_requested and not SYNC_GO.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    SEEN.append(("saw_cancel" if ctx.cancel_requested else "end", ctx.fire_time, ctx.attempt))


@task(name="test_overlap.sync_stubborn")
def sync_stubborn(ctx: JobContext) -> None:
    """Ignores cancel requests: runs until SYNC_GO."""
    SEEN.append(("start", ctx.fire_time, ctx.attempt))
    SYNC_GO.wait(30)
    SEEN.append(("end", ctx.fire_time, ctx.attempt))


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATES.clear()
    FAIL.clear()
    SEEN.clear()
    SYNC_GO.clear()


def _open(fire_time: datetime, attempt: int = 1) -> None:
    GATES.setdefault((fire_time, attempt), asyncio.Event()).set()


@contextlib.asynccontextmanager
async def running_worker(db_url: str, concurrency: int = 4) -> AsyncIterator[Worker]:
    settings = Settings(database_url=None, concurrency=concurrency, poll_interval_s=0.2)
    pool = AsyncConnectionPool(
        db_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
    )
    await pool.open()
    worker = Worker(pool, db_url, STORE, settings, "test-worker")
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(worker.listening.wait(), 10)
        yield worker
    finally:
        for gate in GATES.values():
            gate.set()
        SYNC_GO.set()
        stop.set()
        await runner
        await pool.close()


def state_of(db, name: str) -> dict[datetime, str]:
    rows = db.execute(
        "SELECT scheduled_for, state FROM scheduler.jobs WHERE schedule_name = %s", [name]
    ).fetchall()
    return dict(rows)


def runs_of(db, name: str) -> list[tuple[datetime, int, str, datetime, datetime]]:
    return db.execute(
        "SELECT j.scheduled_for, r.attempt, r.outcome, r.started_at, r.finished_at "
        "FROM scheduler.job_runs AS r JOIN scheduler.jobs AS j ON j.id = r.job_id "
        "WHERE j.schedule_name = %s ORDER BY r.started_at",
        [name],
    ).fetchall()


def overlap_skips_counted(name: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "scheduler_fire_times_total", {"schedule": name, "outcome": "overlap"}
    )
    return value or 0.0


async def claim(db_url: str, worker: str = "w", limited: bool = False) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        return await STORE.claim_jobs(
            conn, queues=["default"], limit=10, worker_id=worker, lease_s=30, limited=limited
        )


async def complete(db_url: str, job: dict[str, Any], state: str, worker: str = "w") -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        outcome = {"succeeded": "succeeded", "pending": "failed"}[state]
        changed = await STORE.complete_jobs(conn, worker, [{
            "id": job["id"], "attempt": job["attempt"], "state": state, "delay_s": 0.0,
            "outcome": outcome, "error": None if state == "succeeded" else "boom",
            "traceback": None, "result": None}])  # fmt: skip
        assert list(changed) == [job["id"]]


# -- config ----------------------------------------------------------------------------------


def test_config_accepts_the_new_policies_and_suggests_the_right_spelling() -> None:
    from scheduler.config import load_config_text

    text = "schedules:\n  - name: a\n    cron: '@daily'\n    task: t\n    overlap_policy: {}\n"
    for value, policy in [("buffer_one", OverlapPolicy.BUFFER_ONE),
                          ("cancel_previous", OverlapPolicy.CANCEL_PREVIOUS)]:  # fmt: skip
        config = load_config_text(text.format(value), "schedules.yaml", import_tasks=False)
        assert config.schedules[0].overlap_policy is policy
    for typo, suggestion in [("buffer-one", "buffer_one"), ("cancel_prev", "cancel_previous"),
                             ("BUFFER_ONE", "buffer_one")]:  # fmt: skip
        with pytest.raises(ConfigError) as info:
            load_config_text(text.format(typo), "schedules.yaml", import_tasks=False)
        (issue,) = info.value.issues
        assert (issue.line, issue.schedule, issue.field) == (5, "a", "overlap_policy")
        assert f"(did you mean {suggestion!r}?)" in issue.reason
        assert "allow, skip, queue, buffer_one, cancel_previous" in issue.reason


def test_the_database_accepts_the_new_policies_and_no_other(db) -> None:
    _add(db, "b", overlap_policy="buffer_one")
    _add(db, "c", overlap_policy="cancel_previous")
    with pytest.raises(psycopg.errors.CheckViolation):
        _add(db, "x", overlap_policy="buffer_all")


# -- buffer_one --------------------------------------------------------------------------------


def test_buffer_one_keeps_one_waiting_skips_the_rest_and_starts_it_after_the_running_one(
    db, db_url
):
    _add(db, "b", overlap_policy="buffer_one", task="test_overlap.hold")
    counted = overlap_skips_counted("b")

    async def scenario() -> list[int]:
        skips = []
        async with Leader(db_url) as leader, running_worker(db_url):
            await leader.tick(minute(0))
            await wait_until_async(lambda: ("start", minute(0), 1) in SEEN, 10)
            for n in (1, 2, 3, 4):  # 12:00 runs on: 12:01 waits, the others are dropped
                skips.append((await leader.tick(minute(n))).skipped)
            assert await claim(db_url, "intruder") == []  # the waiting job cannot start
            assert [e for e in SEEN if e[0] == "start"] == [("start", minute(0), 1)]
            _open(minute(0))
            _open(minute(1))
            await wait_until_async(lambda: state_of(db, "b")[minute(1)] == "succeeded", 10)
        return skips

    assert asyncio.run(scenario()) == [0, 1, 1, 1]
    assert jobs(db, "b") == [minute(0), minute(1)]
    assert skipped(db, "b") == [(minute(n), minute(n), 1, "overlap") for n in (2, 3, 4)]
    assert overlap_skips_counted("b") - counted == 3
    (a, b) = runs_of(db, "b")
    assert (a[0], a[2], b[0], b[2]) == (minute(0), "succeeded", minute(1), "succeeded")
    assert b[3] >= a[4], "the waiting job started before the running one ended"


def test_buffer_one_a_retry_of_the_running_job_while_one_waits(db, db_url):
    """The running job fails and goes back to pending (a started job, not a waiting one):
    no unique violation, its retry runs before the waiting job, which starts after it."""
    _add(db, "b", overlap_policy="buffer_one", task="test_overlap.hold")  # retry after 1 s
    FAIL.add(minute(0))

    def states() -> list[tuple[datetime, str, int]]:
        return db.execute(
            "SELECT scheduled_for, state, attempt FROM scheduler.jobs ORDER BY 1"
        ).fetchall()

    async def scenario() -> None:
        async with Leader(db_url) as leader, running_worker(db_url):
            await leader.tick(minute(0))
            await wait_until_async(lambda: ("start", minute(0), 1) in SEEN, 10)
            assert (await leader.tick(minute(1))).inserted == 1  # waits
            _open(minute(0))  # attempt 1 fails: back to pending, retried 1 s later
            await wait_until_async(lambda: states()[0][1:] in {("pending", 1), ("running", 2)}, 10)
            assert (await leader.tick(minute(2))).skipped == 1  # 12:01 still waits
            await wait_until_async(lambda: ("start", minute(0), 2) in SEEN, 10)
            assert states()[1] == (minute(1), "pending", 0)
            _open(minute(0), 2)
            _open(minute(1))
            await wait_until_async(lambda: state_of(db, "b")[minute(1)] == "succeeded", 10)

    asyncio.run(scenario())
    outcomes = [(r[0], r[1], r[2]) for r in runs_of(db, "b")]
    assert outcomes == [(minute(0), 1, "failed"), (minute(0), 2, "succeeded"),
                        (minute(1), 1, "succeeded")]  # fmt: skip
    runs = runs_of(db, "b")
    assert runs[2][3] >= runs[1][4]
    assert skipped(db, "b") == [(minute(2), minute(2), 1, "overlap")]


@pytest.mark.parametrize("back_to_pending", ["retry", "rescue", "release"])
def test_buffer_one_a_started_job_back_to_pending_is_not_a_waiting_one(db, db_url, back_to_pending):
    """A failed attempt's retry, a rescued lease, a graceful shutdown's release (which gives
    the attempt back: attempt 0 again) all put the running job back to pending while one
    waits; none breaks the one-waiting index, and the older job runs first."""
    _add(db, "b", overlap_policy="buffer_one")

    async def scenario() -> None:
        async with Leader(db_url) as leader:
            await leader.tick(minute(0))
            (first,) = await claim(db_url)
            await leader.tick(minute(1))  # waits
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
                if back_to_pending == "retry":
                    await complete(db_url, first, "pending")
                elif back_to_pending == "rescue":
                    await c.execute("UPDATE scheduler.jobs SET lease_expires_at = now() - "
                                    "interval '1 s' WHERE id = %s", [first["id"]])  # fmt: skip
                    rows = await STORE.fetch(c, "rescue_expired_leases", {
                        "limit": 10, "channel": STORE.notify_channel,
                        "done_channel": STORE.done_channel})  # fmt: skip
                    assert [r["state"] for r in rows] == ["pending"]
                else:
                    rows = await STORE.fetch(c, "release_jobs", {
                        "ids": [first["id"]], "attempts": [first["attempt"]],
                        "worker_id": "w"})  # fmt: skip
                    assert len(rows) == 1
            assert state_of(db, "b") == {minute(0): "pending", minute(1): "pending"}
            assert (await leader.tick(minute(2))).skipped == 1  # one still waits
            (again,) = await claim(db_url)  # the older one first, alone
            assert again["id"] == first["id"]
            assert await claim(db_url) == []
            await complete(db_url, again, "succeeded")
            (waiting,) = await claim(db_url)
            assert waiting["scheduled_for"] == minute(1)

    asyncio.run(scenario())


def test_buffer_one_at_most_one_waiting_job_is_a_database_constraint(db, db_url):
    """Racing materialisations and manual triggers (which a healthy leader never races)
    make one waiting job; a second one written by hand is refused by the index."""
    _add(db, "b", overlap_policy="buffer_one")

    async def materialise(fire_time: datetime) -> int:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            params = {"names": ["b"], "fire_times": [fire_time], "term": 1}
            rows = await STORE.fetch(conn, "materialise_fire_times", params)
            return len(rows)

    async def trigger() -> int:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return int(await schedule_operations.trigger(conn, STORE, "b") is not None)

    async def race() -> list[int]:
        return await asyncio.gather(*(materialise(minute(i)) for i in range(6)),
                                    *(trigger() for _ in range(4)))  # fmt: skip

    assert sum(asyncio.run(race())) == 1
    count = "SELECT count(*) FROM scheduler.jobs WHERE state = 'pending'"
    assert db.execute(count).fetchone()[0] == 1
    with pytest.raises(psycopg.errors.UniqueViolation, match="jobs_overlap_buffer_one"):
        db.execute(
            "INSERT INTO scheduler.jobs (queue, task, schedule_name, scheduled_for, origin, "
            "overlap) VALUES ('default', 'noop', 'b', %s, 'cron', 'buffer_one')",
            [minute(30)],
        )


def test_buffer_one_trigger_waits_behind_the_running_job_and_is_refused_when_one_waits(db, db_url):
    _add(db, "b", overlap_policy="buffer_one")

    async def scenario() -> list[int | None]:
        async with Leader(db_url) as leader:
            await leader.tick(minute(0))
            (running,) = await claim(db_url)
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
                first = await schedule_operations.trigger(c, STORE, "b")  # waits behind 12:00
                second = await schedule_operations.trigger(c, STORE, "b")  # one waits already
            assert await claim(db_url) == []
            await complete(db_url, running, "succeeded")
            (triggered,) = await claim(db_url)
            assert triggered["id"] == first
            return [first, second]

    first, second = asyncio.run(scenario())
    assert first is not None and second is None


def test_buffer_one_flow_controlled_claim_waits_too(db, db_url):
    """claim_limited() (a queue with limits) applies the same overlap rule as claim_jobs."""
    _add(db, "b", overlap_policy="buffer_one")
    db.execute("INSERT INTO scheduler.queues (name, concurrency) VALUES ('default', 10)")

    async def scenario() -> None:
        async with Leader(db_url) as leader:
            await leader.tick(minute(0))
            (running,) = await claim(db_url, limited=True)
            await leader.tick(minute(1))
            assert await claim(db_url, limited=True) == []
            await complete(db_url, running, "succeeded")
            (waiting,) = await claim(db_url, limited=True)
            assert waiting["scheduled_for"] == minute(1)

    asyncio.run(scenario())


def test_retrying_a_never_started_buffer_one_job_while_one_waits_is_skipped(db, db_url):
    """An operator's retry of a cancelled, never-started job of a buffer_one schedule would
    be a second waiting job: it is skipped with the reason, not a unique violation."""
    from scheduler import job_changes

    _add(db, "b", overlap_policy="buffer_one")

    async def scenario() -> tuple[job_changes.RetryResult, int, int]:
        async with Leader(db_url) as leader:
            await leader.tick(minute(0))  # waiting (no worker)
            cancelled = db.execute("SELECT id FROM scheduler.jobs").fetchone()[0]
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
                assert await job_changes.cancel(c, STORE, cancelled) == "cancelled"
                await leader.tick(minute(1))  # a new waiting job
                waiting = db.execute(
                    "SELECT id FROM scheduler.jobs WHERE state = 'pending'"
                ).fetchone()[0]
                return await job_changes.retry(c, STORE, ids=[cancelled]), cancelled, waiting

    result, cancelled, waiting = asyncio.run(scenario())
    assert result.retried == []
    assert result.skipped == {
        cancelled: f"it never started and its schedule 'b' has overlap_policy buffer_one and "
        f"job {waiting} waiting"
    }


# -- cancel_previous ---------------------------------------------------------------------------


def test_cancel_previous_cancels_the_running_async_handler_and_starts_the_new_job_after(db, db_url):
    _add(db, "c", overlap_policy="cancel_previous", task="test_overlap.hold")

    async def scenario() -> None:
        async with Leader(db_url) as leader, running_worker(db_url):
            await leader.tick(minute(0))
            await wait_until_async(lambda: ("start", minute(0), 1) in SEEN, 10)
            assert (await leader.tick(minute(1))).inserted == 1
            await wait_until_async(lambda: ("cancelled", minute(0), 1) in SEEN, 10)
            await wait_until_async(lambda: ("start", minute(1), 1) in SEEN, 10)
            _open(minute(1))
            await wait_until_async(lambda: state_of(db, "c")[minute(1)] == "succeeded", 10)

    asyncio.run(scenario())
    assert state_of(db, "c") == {minute(0): "cancelled", minute(1): "succeeded"}
    (a, b) = runs_of(db, "c")
    assert (a[0], a[2], b[0], b[2]) == (minute(0), "cancelled", minute(1), "succeeded")
    assert b[3] >= a[4], "the new job started before the previous one ended"
    events = db.execute(
        "SELECT e.event, e.detail LIKE 'overlap_policy cancel_previous: job %%' "
        "FROM scheduler.job_events AS e JOIN scheduler.jobs AS j ON j.id = e.job_id "
        "WHERE j.scheduled_for = %s",
        [minute(0)],
    ).fetchall()
    assert events == [("cancel_requested", True)]


def test_cancel_previous_a_sync_handler_sees_cancel_requested(db, db_url):
    """A sync handler cannot be interrupted: it sees ctx.cancel_requested and returns. With
    one slot (held until its thread returns) the new job starts after it returned."""
    _add(db, "c", overlap_policy="cancel_previous", task="test_overlap.sync_hold")

    async def scenario() -> None:
        async with Leader(db_url) as leader, running_worker(db_url, concurrency=1):
            await leader.tick(minute(0))
            await wait_until_async(lambda: ("start", minute(0), 1) in SEEN, 10)
            await leader.tick(minute(1))
            await wait_until_async(lambda: ("saw_cancel", minute(0), 1) in SEEN, 10)
            await wait_until_async(lambda: ("start", minute(1), 1) in SEEN, 10)
            SYNC_GO.set()
            await wait_until_async(lambda: state_of(db, "c")[minute(1)] == "succeeded", 10)

    asyncio.run(scenario())
    assert SEEN.index(("saw_cancel", minute(0), 1)) < SEEN.index(("start", minute(1), 1))
    assert state_of(db, "c") == {minute(0): "cancelled", minute(1): "succeeded"}


def test_cancel_previous_waits_for_a_sync_thread_that_ignores_the_request(db, db_url):
    """A sync handler that ignores the request keeps running: its job stays 'running' until
    its thread returns (not 'cancelled' at once), so the new run does not start beside it,
    even with free slots."""
    _add(db, "c", overlap_policy="cancel_previous", task="test_overlap.sync_stubborn")

    async def scenario() -> None:
        async with Leader(db_url) as leader, running_worker(db_url, concurrency=4):
            await leader.tick(minute(0))
            await wait_until_async(lambda: ("start", minute(0), 1) in SEEN, 10)
            await leader.tick(minute(1))
            asked = ("SELECT cancel_requested_at IS NOT NULL FROM scheduler.jobs "
                     "WHERE schedule_name = 'c' AND scheduled_for = %s")  # fmt: skip
            await wait_until_async(lambda: db.execute(asked, [minute(0)]).fetchone()[0], 10)
            deadline = time.monotonic() + 1.5  # several claim rounds (poll 0.2 s)
            while time.monotonic() < deadline:
                assert ("start", minute(1), 1) not in SEEN
                assert state_of(db, "c")[minute(0)] == "running"
                await asyncio.sleep(0.05)
            SYNC_GO.set()
            await wait_until_async(lambda: state_of(db, "c")[minute(1)] == "succeeded", 10)

    asyncio.run(scenario())
    assert SEEN.index(("end", minute(0), 1)) < SEEN.index(("start", minute(1), 1))
    assert state_of(db, "c") == {minute(0): "cancelled", minute(1): "succeeded"}


def test_cancel_previous_cancels_pending_jobs_and_asks_running_ones_in_the_same_transaction(
    db, db_url
):
    """Without a worker: the insert itself (a fire time, or a manual trigger) cancels the
    older pending jobs (not backfilled ones), asks the running one to stop
    (cancel_requested_at, and a NOTIFY on the cancel channel for its worker), and the new job
    waits until that one ended."""
    _add(db, "c", overlap_policy="cancel_previous")

    async def scenario() -> list[str]:
        async with Leader(db_url) as leader:
            listener = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
            await listener.execute(f'LISTEN "{STORE.cancel_channel}"')
            await leader.tick(minute(0))
            (running,) = await claim(db_url)
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
                # a pending older job too (an operator's retry of an older fire time, say)
                await c.execute(
                    "INSERT INTO scheduler.jobs (queue, task, schedule_name, scheduled_for, "
                    "origin, overlap, run_at) VALUES ('default', 'noop', 'c', %s, 'cron', "
                    "'allow', now() + interval '1 h')",
                    [minute(-1)],
                )
                # and a backfilled one, which is an operator's explicit request: left alone
                await c.execute(
                    "INSERT INTO scheduler.jobs (queue, task, schedule_name, scheduled_for, "
                    "origin, overlap, run_at) VALUES ('default', 'noop', 'c', %s, 'backfill', "
                    "'queue', now() + interval '1 h')",
                    [minute(-2)],
                )
                await leader.tick(minute(1))
                assert state_of(db, "c") == {
                    minute(-2): "pending", minute(-1): "cancelled",
                    minute(0): "running", minute(1): "pending"}  # fmt: skip
                await c.execute("UPDATE scheduler.jobs SET state = 'succeeded' "
                                "WHERE origin = 'backfill'")  # fmt: skip
                notes = []
                async with asyncio.timeout(5):
                    async for note in listener.notifies():
                        notes.append(note.payload)
                        break
                await listener.close()
                assert await claim(db_url) == []  # 12:00 still runs
                await complete(db_url, running, "succeeded")  # it ignored the request
                (new,) = await claim(db_url)
                assert new["scheduled_for"] == minute(1)
                triggered = await schedule_operations.trigger(c, STORE, "c")  # stops 12:01 in turn
                assert triggered is not None
            return notes

    notes = asyncio.run(scenario())
    running_id = db.execute(
        "SELECT id FROM scheduler.jobs WHERE scheduled_for = %s", [minute(0)]
    ).fetchone()[0]
    assert notes == [str(running_id)]
    asked = db.execute(
        "SELECT scheduled_for, cancel_requested_at IS NOT NULL FROM scheduler.jobs "
        "WHERE origin = 'cron' ORDER BY 1"
    ).fetchall()
    assert asked == [(minute(-1), False), (minute(0), True), (minute(1), True)]


# -- planning: decided at the fire time, one job per tick ---------------------------------------


@pytest.mark.parametrize("policy", ["buffer_one", "cancel_previous"])
def test_decided_at_the_fire_time_not_ahead_of_it_and_one_job_per_tick(db, db_url, policy):
    """A job made ahead would take the waiting slot (buffer_one) or stop the previous run
    early (cancel_previous): these schedules are materialised when due, not with the
    look-ahead; of several fire times due at once only the last becomes a job."""
    _add(db, "p", overlap_policy=policy, misfire_policy="run_all")
    _add(db, "a", overlap_policy="allow", next_run_at=minute(6))

    async def scenario() -> None:
        async with Leader(db_url) as leader:
            await leader.tick(minute(5.5))
            early = await materialiser.tick(
                leader.conn,
                STORE,
                holder="test-leader",
                term=leader.term,
                now=minute(5.9),
                ahead_s=30,
            )
            assert early.inserted == 1  # "a" only
            assert early.materialise_at == minute(6)

    asyncio.run(scenario())
    assert jobs(db, "p") == [minute(5)]
    assert jobs(db, "a") == [minute(6)]
    assert skipped(db, "p") == [(minute(0), minute(4), 5, "overlap")]
