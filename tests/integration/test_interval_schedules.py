"""Interval schedules (``every:``) against a real database: a real replica materialises one
job per fire time at ``start_at + k * every``, none doubled; after a simulated outage (the
leader's tick planned against an injected clock) the misfire policy decides, as for cron;
reconciliation re-plans when ``every`` or ``start_at`` changes; the table refuses a row with
both or neither of cron / every."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from scheduler import materialiser, schedule_operations
from scheduler.config import load_config_text
from scheduler.schedules import ReconcileResult, reconcile
from scheduler.settings import Settings
from scheduler.store import Store
from tests.conftest import running_replica, wait_until_async

STORE = Store("scheduler")
T0 = datetime.fromisoformat("2026-01-05T12:00:00+00:00")
HEAD = "imports: [tests.acceptance.app_tasks]\nschedules:\n"


def sec(n: float) -> datetime:
    return T0 + timedelta(seconds=n)


def _reconcile(db_url: str, text: str, now: datetime) -> ReconcileResult:
    config = load_config_text(text, "intervals.yaml")

    async def run() -> ReconcileResult:
        async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
            return await reconcile(conn, STORE, config.schedules, now=now, settings=Settings(),
                                   config_hash=config.config_hash())  # fmt: skip

    return asyncio.run(run())


def _tick(db_url: str, *nows: datetime) -> list[materialiser.TickResult]:
    """Ticks of a real lock-holding leader session, each planned against an injected now."""

    async def run() -> list[materialiser.TickResult]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            assert await STORE.try_lock_leader(conn)
            term = await STORE.elect(conn, "test-leader", None)
            return [
                await materialiser.tick(conn, STORE, holder="test-leader", term=term, now=now)
                for now in nows
            ]

    return asyncio.run(run())


def _fire_times(db: psycopg.Connection, name: str) -> list[datetime]:
    rows = db.execute(
        "SELECT scheduled_for FROM scheduler.jobs WHERE schedule_name = %s AND origin = 'cron' "
        "ORDER BY scheduled_for",
        [name],
    ).fetchall()
    return [r[0] for r in rows]


def _skips(db: psycopg.Connection, name: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT reason, first_fire_time, last_fire_time, fire_times "
        "FROM scheduler.skipped_fire_times WHERE schedule_name = %s ORDER BY first_fire_time",
        [name],
    ).fetchall()


def test_a_replica_runs_every_2s_from_start_at_one_job_per_fire_time(db, db_url):
    now = db.execute("SELECT now()").fetchone()[0]
    start = now.replace(microsecond=0) + timedelta(seconds=2)
    config = load_config_text(
        HEAD + f"  - {{name: pulse, every: 2s, start_at: '{start.isoformat()}', "
        "task: acceptance.tick}\n"
    )

    def succeeded() -> int:
        return db.execute(
            "SELECT count(*) FROM scheduler.job_runs AS r JOIN scheduler.jobs AS j "
            "ON j.id = r.job_id WHERE j.schedule_name = 'pulse' AND r.outcome = 'succeeded'"
        ).fetchone()[0]

    async def scenario() -> None:
        async with running_replica(db_url, Settings(), config):
            await wait_until_async(lambda: succeeded() >= 3, timeout=30)

    asyncio.run(scenario())
    fire_times = _fire_times(db, "pulse")
    assert len(fire_times) >= 3
    assert fire_times == [start + timedelta(seconds=2 * k) for k in range(len(fire_times))]
    rows = db.execute(
        "SELECT j.run_at = j.scheduled_for, j.origin, count(r.id), "
        "       bool_and(r.started_at >= j.scheduled_for) "
        "FROM scheduler.jobs AS j LEFT JOIN scheduler.job_runs AS r ON r.job_id = j.id "
        "WHERE j.schedule_name = 'pulse' AND j.state = 'succeeded' GROUP BY j.id"
    ).fetchall()
    assert len(rows) >= 3
    assert all(r == (True, "cron", 1, True) for r in rows), rows  # one run each, never early
    next_run_at, every_s, start_at, cron = db.execute(
        "SELECT next_run_at, every_s, start_at, cron FROM scheduler.schedules"
    ).fetchone()
    assert (every_s, start_at, cron) == (2.0, start, None)
    assert (next_run_at - start).total_seconds() % 2 == 0 and next_run_at > fire_times[-1]


OUTAGE = sec(3600)  # the leader was away for an hour: 1,799 fire times of every 2 s are due
EXPECTED = {
    # misfire_grace_s 10: T0+3592..3600 (5 fire times) are on time under every policy
    "skip": ([sec(s) for s in range(3592, 3601, 2)], [("misfire", sec(4), sec(3590), 1794)]),
    "run_once": ([sec(s) for s in range(3590, 3601, 2)], [("misfire", sec(4), sec(3588), 1793)]),
    "run_all": (
        [sec(s) for s in range(3402, 3601, 2)],  # the newest max_catch_up (100)
        [("catch_up_cap", sec(4), sec(3400), 1699)],
    ),
}


@pytest.mark.parametrize("policy", list(EXPECTED))
def test_an_outage_goes_through_the_misfire_policy(db, db_url, policy):
    _reconcile(
        db_url,
        HEAD + f"  - {{name: pulse, every: 2s, start_at: '{T0.isoformat()}', "
        f"task: acceptance.tick, misfire_policy: {policy}, misfire_grace_s: 10, "
        "max_catch_up: 100}\n",
        now=sec(-1),
    )
    assert db.execute("SELECT next_run_at FROM scheduler.schedules").fetchone()[0] == T0
    before = _tick(db_url, sec(0), sec(2))
    assert [t.inserted for t in before] == [1, 1]
    after = _tick(db_url, OUTAGE, OUTAGE)  # the same clock twice: nothing doubled
    runs, skips = EXPECTED[policy]
    assert [t.inserted for t in after] == [len(runs), 0]
    assert _fire_times(db, "pulse") == [sec(0), sec(2), *runs]
    assert _skips(db, "pulse") == skips
    assert db.execute("SELECT next_run_at FROM scheduler.schedules").fetchone()[0] == sec(3602)
    assert db.execute(
        "SELECT count(*) = count(DISTINCT scheduled_for) FROM scheduler.jobs"
    ).fetchone()[0]


def test_reconcile_replans_on_a_changed_every_or_start_at_only(db, db_url):
    def text(every: str, start: str = "", extra: str = "") -> str:
        start_at = f", start_at: '{start}'" if start else ""
        return (
            HEAD + f"  - {{name: pulse, every: {every}{start_at}, task: acceptance.tick{extra}}}\n"
        )

    def row() -> tuple[Any, ...]:
        return db.execute(
            "SELECT next_run_at, every_s, start_at, cron, max_attempts FROM scheduler.schedules"
        ).fetchone()

    # no start_at: the first fire time is one interval after the schedule is stored
    added = _reconcile(db_url, text("90s"), now=sec(0.5))
    assert added.added == ["pulse"] and row()[:4] == (sec(90.5), 90.0, None, None)
    # unchanged, or another field changed: next_run_at kept (the grid stays anchored)
    same = _reconcile(db_url, text("PT90S"), now=sec(30))
    assert same.rescheduled == same.updated == [] and row()[0] == sec(90.5)
    other = _reconcile(db_url, text("90s", extra=", max_attempts: 7"), now=sec(40))
    assert other.updated == ["pulse"] and row()[0] == sec(90.5) and row()[4] == 7
    # a changed every re-plans from now
    faster = _reconcile(db_url, text("1m", extra=", max_attempts: 7"), now=sec(50))
    assert faster.rescheduled == ["pulse"] and row()[:2] == (sec(110), 60.0)
    # a start_at: its grid, from now (fire times before now are not caught up)
    anchored = _reconcile(db_url, text("1m", T0.isoformat(), ", max_attempts: 7"), now=sec(125))
    assert anchored.rescheduled == ["pulse"] and row()[:3] == (sec(180), 60.0, T0)
    moved = _reconcile(db_url, text("1m", sec(1).isoformat(), ", max_attempts: 7"), now=sec(125))
    assert moved.rescheduled == ["pulse"] and row()[0] == sec(181)
    # the zone of an interval schedule only displays it: no re-plan
    zoned = _reconcile(
        db_url, text("1m", sec(1).isoformat(), ", max_attempts: 7, timezone: Asia/Tokyo"),
        now=sec(150),
    )  # fmt: skip
    assert zoned.rescheduled == [] and zoned.updated == ["pulse"] and row()[0] == sec(181)
    # back to cron: cron set, every_s and start_at cleared
    cron = _reconcile(
        db_url, HEAD + "  - {name: pulse, cron: '*/5 * * * *', task: acceptance.tick}\n",
        now=sec(150),
    )  # fmt: skip
    assert cron.rescheduled == ["pulse"] and row()[:4] == (sec(300), None, None, "*/5 * * * *")


def test_pause_resume_and_trigger_work_on_an_interval_schedule(db, db_url):
    _reconcile(db_url, HEAD + "  - {name: pulse, every: 10s, task: acceptance.tick}\n", now=T0)

    async def operate() -> tuple[bool, int | None, bool]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            paused = await schedule_operations.pause(conn, STORE, "pulse")
            job = await schedule_operations.trigger(conn, STORE, "pulse")
            resumed = await schedule_operations.resume(conn, STORE, "pulse")
            return paused, job, resumed

    paused, job, resumed = asyncio.run(operate())
    assert paused and resumed and job is not None
    assert db.execute("SELECT origin FROM scheduler.jobs WHERE id = %s", [job]).fetchone() == (
        "trigger",
    )
    # an hour later: the misfire policy (run_once) runs the latest missed fire time (T0+3540)
    # and those within misfire_grace_s (60 s); the 353 before are one misfire span
    [result] = _tick(db_url, sec(3600))
    assert _fire_times(db, "pulse") == [sec(s) for s in range(3540, 3601, 10)]
    assert result.inserted == 7
    assert _skips(db, "pulse") == [("misfire", sec(10), sec(3530), 353)]


@pytest.mark.parametrize(
    ("cron", "every_s", "start_at"),
    [
        ("* * * * *", 60.0, None),  # both
        (None, None, None),  # neither
        (None, 0.5, None),  # below 1 s
        (None, 4e8, None),  # above 10 years
        ("* * * * *", None, T0),  # start_at on a cron schedule
    ],
)
def test_the_table_refuses_a_row_that_is_not_exactly_cron_or_interval(db, cron, every_s, start_at):
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO scheduler.schedules (name, cron, every_s, start_at, timezone, task, "
            "max_attempts, backoff_base_s, backoff_max_s, backoff_jitter, definition_hash) "
            "VALUES ('x', %s, %s, %s, 'UTC', 't', 1, 1, 1, 0, 'h')",
            [cron, every_s, start_at],
        )
