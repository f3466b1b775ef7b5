"""Misfire and overlap policies, pause/resume/trigger, against a real database with an
injected clock (the tick plans against ``now`` given by the test)."""

from __future__ import annotations

import asyncio
import inspect
from datetime import datetime, timedelta
from typing import Any, Self

import psycopg
import pytest

from scheduler import materialiser, schedule_operations
from scheduler.store import Store

STORE = Store("scheduler")
T0 = datetime.fromisoformat("2026-01-05T12:00:00+00:00")


def minute(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def _add(db, name: str, cron: str = "* * * * *", **cols: Any) -> None:
    values = {
        "name": name,
        "cron": cron,
        "timezone": "UTC",
        "task": "noop",
        "max_attempts": 3,
        "backoff_base_s": 1,
        "backoff_max_s": 10,
        "backoff_jitter": 0,
        "definition_hash": "h",
        "next_run_at": T0,
        **cols,
    }
    columns = ", ".join(values)
    placeholders = ", ".join(f"%({k})s" for k in values)
    db.execute(f"INSERT INTO scheduler.schedules ({columns}) VALUES ({placeholders})", values)


class Leader:
    """A real lock-holding session that ticks with an injected clock."""

    def __init__(self, db_url: str):
        self.db_url = db_url

    async def __aenter__(self) -> Self:
        self.conn = await psycopg.AsyncConnection.connect(self.db_url, autocommit=True)
        assert await STORE.try_lock_leader(self.conn)
        self.term = await STORE.elect(self.conn, "test-leader", None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()

    async def tick(self, now: datetime) -> materialiser.TickResult:
        return await materialiser.tick(
            self.conn, STORE, holder="test-leader", term=self.term, now=now
        )


def run_ticks(db_url: str, *nows: datetime, between=None) -> list[materialiser.TickResult]:
    async def scenario() -> list[materialiser.TickResult]:
        results = []
        async with Leader(db_url) as leader:
            for i, now in enumerate(nows):
                if between and i:
                    result = between(i)
                    if inspect.isawaitable(result):
                        await result
                results.append(await leader.tick(now))
        return results

    return asyncio.run(scenario())


def jobs(db, name: str) -> list[datetime]:
    rows = db.execute(
        "SELECT scheduled_for FROM scheduler.jobs WHERE schedule_name = %s ORDER BY 1", [name]
    ).fetchall()
    return [r[0] for r in rows]


def skipped(db, name: str) -> list[tuple]:
    return db.execute(
        "SELECT first_fire_time, last_fire_time, fire_times, reason FROM scheduler.skipped_fire_times "
        "WHERE schedule_name = %s ORDER BY id",
        [name],
    ).fetchall()


def next_run_at(db, name: str) -> datetime:
    return db.execute(
        "SELECT next_run_at FROM scheduler.schedules WHERE name = %s", [name]
    ).fetchone()[0]


@pytest.mark.parametrize(
    ("policy", "expected_jobs", "expected_skips"),
    [
        ("run_once", [minute(9), minute(10)], [(minute(0), minute(8), 9, "misfire")]),
        ("skip", [minute(10)], [(minute(0), minute(9), 10, "misfire")]),
        ("run_all", [minute(i) for i in range(11)], []),
    ],
)
def test_misfire_policy_after_an_outage(db, db_url, policy, expected_jobs, expected_skips):
    _add(db, "s", misfire_policy=policy)
    run_ticks(db_url, minute(10.5))
    assert jobs(db, "s") == expected_jobs
    assert skipped(db, "s") == expected_skips
    assert next_run_at(db, "s") == minute(11)


def test_a_failover_within_the_grace_loses_nothing_even_with_skip(db, db_url):
    _add(db, "s", misfire_policy="skip")  # misfire_grace_s defaults to 60
    # the leader ticks at 12:00:00, dies, and a new one ticks at 12:01:45: 12:01 is 45 s late
    run_ticks(db_url, minute(0), minute(1.75))
    assert jobs(db, "s") == [minute(0), minute(1)]
    assert skipped(db, "s") == []


def test_starting_deadline_records_late_fire_times(db, db_url):
    _add(db, "s", starting_deadline_s=30, misfire_policy="run_all")
    run_ticks(db_url, minute(2) + timedelta(seconds=40))  # 12:02 is 40 s late: past deadline
    assert jobs(db, "s") == []
    assert skipped(db, "s") == [(minute(0), minute(2), 3, "starting_deadline")]
    assert next_run_at(db, "s") == minute(3)


def test_overlap_skip_while_a_job_is_live(db, db_url):
    _add(db, "s", overlap_policy="skip")

    def finish_first(i: int) -> None:
        if i == 2:
            db.execute("UPDATE scheduler.jobs SET state = 'succeeded' WHERE schedule_name = 's'")

    run_ticks(db_url, minute(0), minute(1), minute(2), between=finish_first)
    # 12:00 runs; 12:01 arrives while 12:00 is still pending: skipped; 12:00 ends; 12:02 runs
    assert jobs(db, "s") == [minute(0), minute(2)]
    assert skipped(db, "s") == [(minute(1), minute(1), 1, "overlap")]


def test_overlap_skip_is_a_database_constraint(db, db_url):
    """Even two writers racing (which a healthy leader never does) get one live job."""
    _add(db, "s", overlap_policy="skip")

    async def insert(fire_time: datetime) -> int:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            rows = await STORE.fetch(
                conn,
                "materialise_fire_times",
                {"names": ["s"], "fire_times": [fire_time], "term": 1},
            )
            return len(rows)

    async def race() -> list[int]:
        return await asyncio.gather(*(insert(minute(i)) for i in range(8)))

    assert sum(asyncio.run(race())) == 1
    assert (
        db.execute(
            "SELECT count(*) FROM scheduler.jobs WHERE state IN ('pending', 'running')"
        ).fetchone()[0]
        == 1
    )


def test_overlap_queue_runs_one_at_a_time_in_order_with_racing_workers(db, db_url):
    _add(db, "q", overlap_policy="queue", misfire_policy="run_all")
    run_ticks(db_url, minute(5.5))  # six fire times materialised at once, all due
    assert len(jobs(db, "q")) == 6

    async def claim(worker: str) -> list[dict]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return await STORE.claim_jobs(
                conn, queues=["default"], limit=10, worker_id=worker, lease_s=30
            )

    async def round_() -> list[dict]:
        results = await asyncio.gather(*(claim(f"w{i}") for i in range(4)))
        return [job for claimed in results for job in claimed]

    order = []
    for _ in range(6):
        claimed = asyncio.run(round_())
        assert len(claimed) == 1, "two jobs of a queued schedule were claimed at once"
        order.append(claimed[0]["scheduled_for"])
        assert asyncio.run(round_()) == []  # nothing else while it runs
        db.execute(
            "UPDATE scheduler.jobs SET state = 'succeeded' WHERE id = %s", [claimed[0]["id"]]
        )
    assert order == [minute(i) for i in range(6)]


def test_pause_then_resume_applies_the_misfire_policy(db, db_url):
    _add(db, "s")  # run_once

    async def operate(i: int) -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            if i == 1:
                assert await schedule_operations.pause(conn, STORE, "s")
            if i == 3:
                assert await schedule_operations.resume(conn, STORE, "s")

    results = run_ticks(db_url, minute(0), minute(5), minute(30), minute(30.25), between=operate)
    # paused after 12:00; ticks at 12:05 and 12:30 make nothing; resumed: the most recent
    # missed fire time (12:29) runs with the on-time 12:30, the rest is recorded as missed
    assert jobs(db, "s") == [minute(0), minute(29), minute(30)]
    assert skipped(db, "s") == [(minute(1), minute(28), 28, "misfire")]
    assert [r.inserted for r in results] == [1, 0, 0, 2]


def test_trigger_runs_now_without_moving_next_run_at(db, db_url):
    _add(db, "s", cron="0 0 1 1 *", next_run_at=T0 + timedelta(days=300))

    async def op() -> int | None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return await schedule_operations.trigger(conn, STORE, "s")

    job_id = asyncio.run(op())
    origin, task, due = db.execute(
        "SELECT origin, task, run_at <= now() FROM scheduler.jobs WHERE id = %s", [job_id]
    ).fetchone()
    assert (origin, task, due) == ("trigger", "noop", True)
    assert next_run_at(db, "s") == T0 + timedelta(days=300)
    with pytest.raises(LookupError):
        asyncio.run(_trigger_missing(db_url))


async def _trigger_missing(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await schedule_operations.trigger(conn, STORE, "missing")
