"""Runtime schedules (source 'api'): the Python API, its validation, its boundary with
schedules files, backfill, and the leader woken by a write (issue 14, part 1)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from scheduler import (
    InvalidArgumentError,
    InvalidScheduleError,
    ScheduleNotFoundError,
    ScheduleSourceError,
    backfill_schedule,
    backfill_schedule_async,
    pause_schedule,
    put_schedule,
    put_schedule_async,
    remove_schedule,
    resume_schedule,
    task,
    trigger_schedule,
)
from scheduler.config import load_config_text
from scheduler.connections import set_default_database_url
from scheduler.schedules import reconcile
from scheduler.settings import Settings
from scheduler.store import Store
from tests.conftest import running_replica, wait_until_async

STORE = Store("scheduler")
RAN: list[tuple[str, float]] = []


@task(name="test_runtime.tick")
def tick(label: str = "") -> None:
    RAN.append((label, time.time()))


@pytest.fixture
def default_db(db_url: str):
    set_default_database_url(db_url)
    yield db_url
    set_default_database_url(None)


def _row(db, name: str) -> dict | None:
    cur = db.execute(
        "SELECT source, cron, every_s, timezone, queue, next_run_at, paused_at, config_hash "
        "FROM scheduler.schedules WHERE name = %s",
        [name],
    )
    row = cur.fetchone()
    return None if row is None else dict(zip([c.name for c in cur.description], row, strict=True))


def test_put_creates_updates_and_reports_what_changed(db, default_db):
    done = put_schedule("reports", tick, cron="0 9 * * MON-FRI", timezone="Europe/Paris",
                        args={"label": "r"})  # fmt: skip
    assert done.action == "created"
    row = _row(db, "reports")
    assert row["source"] == "api" and row["config_hash"] is None
    assert row["next_run_at"] == done.next_run_at
    assert done.next_run_at.astimezone(UTC).hour in (7, 8)  # 09:00 Paris
    again = put_schedule("reports", tick, cron="0 9 * * MON-FRI", timezone="Europe/Paris",
                         args={"label": "r"})  # fmt: skip
    assert again.action == "unchanged" and again.next_run_at == done.next_run_at
    moved = put_schedule("reports", "test_runtime.tick", cron="0 10 * * MON-FRI",
                         timezone="Europe/Paris", args={"label": "r"})  # fmt: skip
    assert moved.action == "rescheduled" and moved.next_run_at != done.next_run_at
    queued = put_schedule("reports", tick, cron="0 10 * * MON-FRI", timezone="Europe/Paris",
                          args={"label": "r"}, queue="reports")  # fmt: skip
    assert queued.action == "updated" and queued.next_run_at == moved.next_run_at
    assert _row(db, "reports")["queue"] == "reports"


def test_put_validates_like_the_schedules_file(db, default_db):
    with pytest.raises(InvalidScheduleError) as caught:
        put_schedule("bad", tick, cron="0 9 * * *", queu="x", max_attempts=0)
    text = str(caught.value)
    assert "unknown key 'queu' (did you mean 'queue'?)" in text
    assert "field 'max_attempts'" in text
    assert isinstance(caught.value, InvalidArgumentError)  # and a ConfigError
    with pytest.raises(InvalidScheduleError, match="exactly one of cron"):
        put_schedule("bad", tick)
    with pytest.raises(InvalidScheduleError, match="cron"):
        put_schedule("bad", tick, cron="61 * * * *")
    with pytest.raises(InvalidScheduleError, match="field 'name'"):
        put_schedule("bad\x00name", tick, cron="* * * * *")
    with pytest.raises(InvalidScheduleError, match="timezone"):
        put_schedule("bad", tick, cron="* * * * *", timezone="Mars/Olympus")
    with pytest.raises(InvalidScheduleError, match="args"):
        put_schedule("bad", tick, cron="* * * * *", args={"label": "\ud800"})
    assert db.execute("SELECT count(*) FROM scheduler.schedules").fetchone()[0] == 0


def test_the_task_and_its_args_are_checked_once_the_registry_is_loaded(db, default_db):
    from scheduler.registry import set_loaded

    set_loaded(True)
    with pytest.raises(InvalidScheduleError, match="is not registered"):
        put_schedule("x", "test_runtime.tock", cron="* * * * *")
    with pytest.raises(InvalidScheduleError, match="args do not fit"):
        put_schedule("x", tick, cron="* * * * *", args={"lable": "typo"})
    assert put_schedule("x", tick, every="90s").action == "created"


def _reconcile(db_url: str, text: str) -> object:
    config = load_config_text(text, "schedules.yaml")

    async def run():
        async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
            return await reconcile(conn, STORE, config.schedules, now=datetime.now(UTC),
                                   settings=Settings(), config_hash=config.config_hash())  # fmt: skip

    return asyncio.run(run())


FILE = """\
schedules:
  - {name: from-file, cron: "*/5 * * * *", task: test_runtime.tick}
"""


def test_a_name_belongs_to_one_source(db, db_url, default_db):
    _reconcile(db_url, FILE)
    with pytest.raises(ScheduleSourceError, match="declared in a schedules file"):
        put_schedule("from-file", tick, every="1m")
    with pytest.raises(ScheduleSourceError, match="cannot be removed"):
        remove_schedule("from-file")
    assert _row(db, "from-file")["source"] == "config"
    # the API's schedule survives a file that does not declare it, and one that does
    put_schedule("runtime", tick, every="1m")
    result = _reconcile(db_url, FILE + '  - {name: runtime, cron: "0 * * * *", task: test_runtime.tick}\n')
    assert result.conflicts == ["runtime"]
    row = _row(db, "runtime")
    assert row["source"] == "api" and row["every_s"] == 60 and row["cron"] is None
    assert _reconcile(db_url, "schedules: []\n").removed == ["from-file"]
    assert _row(db, "runtime") is not None


def test_remove_pause_resume_trigger(db, default_db):
    put_schedule("nightly", tick, cron="0 3 * * *")
    pause_schedule("nightly")
    assert _row(db, "nightly")["paused_at"] is not None
    resume_schedule("nightly")
    assert _row(db, "nightly")["paused_at"] is None
    job = trigger_schedule("nightly")
    assert job is not None
    origin = db.execute("SELECT origin FROM scheduler.jobs WHERE id = %s", [job]).fetchone()[0]
    assert origin == "trigger"
    assert remove_schedule("nightly") is True
    assert remove_schedule("nightly") is False
    for call in (pause_schedule, resume_schedule, trigger_schedule):
        with pytest.raises(ScheduleNotFoundError, match="no schedule named 'nightly'"):
            call("nightly")


def test_backfill_one_job_per_fire_time_unique_per_fire_time(db, default_db):
    put_schedule("hourly", tick, cron="0 * * * *", overlap_policy="skip")
    start = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    end = datetime(2026, 11, 1, 5, 0, tzinfo=UTC)
    done = backfill_schedule("hourly", start, end)
    assert (done.fire_times, len(done.enqueued), done.existing) == (6, 6, 0)
    rows = db.execute(
        "SELECT scheduled_for, origin, overlap FROM scheduler.jobs WHERE schedule_name = "
        "'hourly' ORDER BY scheduled_for"
    ).fetchall()
    assert [r[0] for r in rows] == [start + timedelta(hours=h) for h in range(6)]
    assert {(r[1], r[2]) for r in rows} == {("backfill", "queue")}  # one at a time, in order
    again = backfill_schedule("hourly", start - timedelta(hours=1), end)
    assert (again.fire_times, len(again.enqueued), again.existing) == (7, 1, 6)
    with pytest.raises(InvalidArgumentError, match="more than max_jobs=3"):
        backfill_schedule("hourly", start, end + timedelta(days=1), max_jobs=3)
    with pytest.raises(InvalidArgumentError, match="timezone-aware"):
        backfill_schedule("hourly", start.replace(tzinfo=None), end)
    with pytest.raises(InvalidArgumentError, match="before start"):
        backfill_schedule("hourly", end, start)
    with pytest.raises(ScheduleNotFoundError):
        backfill_schedule("nope", start, end)
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 7


def test_backfill_of_an_interval_schedule_follows_its_grid_back_in_time(db, default_db):
    done = put_schedule("every-90s", tick, every=90)
    end = done.next_run_at - timedelta(seconds=1)
    result = backfill_schedule("every-90s", end - timedelta(minutes=15), end)
    assert result.fire_times == 10
    times = [r[0] for r in db.execute(
        "SELECT scheduled_for FROM scheduler.jobs ORDER BY scheduled_for").fetchall()]  # fmt: skip
    assert all((done.next_run_at - t).total_seconds() % 90 == 0 for t in times)


def test_async_calls_run_inside_the_callers_transaction(db, db_url):
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            await put_schedule_async("tx", tick, every="5m", connection=conn)
            await backfill_schedule_async(
                "tx", datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC), connection=conn
            )
            await conn.rollback()  # the application's transaction fails: nothing stays

    asyncio.run(scenario())
    assert _row(db, "tx") is None
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0


def test_a_schedule_created_while_the_service_runs_fires_within_a_second(db_url, default_db):
    """The leader sleeps up to heartbeat_s (4 s here) between ticks; the write's notification
    wakes it, so the first fire time is materialised and run on time. Without the wake the
    first run would come up to 4 s late."""
    RAN.clear()
    settings = Settings(heartbeat_s=4, leader_session_timeout_s=10, poll_interval_s=30)

    async def scenario() -> list[float]:
        async with running_replica(db_url, settings) as replica:
            await wait_until_async(lambda: replica.elector.is_leader.is_set(), timeout=20)
            await wait_until_async(lambda: replica.worker.listening.is_set(), timeout=20)
            await asyncio.sleep(0.3)  # the leader is asleep in its first heartbeat wait
            late: list[float] = []
            for i in range(3):
                start = datetime.now(UTC) + timedelta(seconds=1.5)
                done = await put_schedule_async(f"api-{i}", tick, every="1h", start_at=start,
                                                args={"label": f"api-{i}"})  # fmt: skip
                assert done.next_run_at == start
                await wait_until_async(lambda i=i: any(r[0] == f"api-{i}" for r in RAN),
                                       timeout=10)  # fmt: skip
                ran = next(t for label, t in RAN if label == f"api-{i}")
                late.append(ran - start.timestamp())
            return late

    late = asyncio.run(scenario())
    print(f"first-run lateness of runtime schedules: {[round(x, 3) for x in late]} s")
    assert all(-0.05 <= x < 1.0 for x in late), late
