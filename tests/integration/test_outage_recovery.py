"""After a long outage the leader catches up in bounded ticks, applies each schedule's policy,
runs nothing twice, and one bad schedule costs only itself.

Reproduced on the code before the fix: ten every-minute schedules a week late, default
settings: 0 jobs in 40 s and 4 elections, each ended by the lock session's
idle_in_transaction_session_timeout while the leader planned in Python inside its transaction.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from scheduler import materialiser
from scheduler.cron import Cron
from scheduler.cron_count import count
from scheduler.settings import Settings
from scheduler.store import Store
from tests.conftest import running_replica

pytestmark = pytest.mark.timeout(180)

STORE = Store("scheduler")
LATE = timedelta(days=30)
# (cron, policy columns): every policy, on an every-second and an every-minute schedule
POLICIES: list[dict[str, Any]] = [
    {"misfire_policy": "skip"},
    {"misfire_policy": "run_once"},
    {"misfire_policy": "run_all", "max_catch_up": 50},
    {"misfire_policy": "run_once", "starting_deadline_s": 3600},
    {"misfire_policy": "run_all", "overlap_policy": "skip"},
    {"misfire_policy": "run_all", "overlap_policy": "queue", "max_catch_up": 20},
    {"misfire_policy": "run_all", "max_catch_up": 300},
]
BIG = {"misfire_policy": "run_all", "max_catch_up": 2500}  # more than one tick's budget


def _add(db: psycopg.Connection, name: str, cron: str, next_run_at: datetime, **cols: Any) -> None:
    values = {"name": name, "cron": cron, "timezone": "UTC", "task": "outage.noop",
              "queue": "outage", "max_attempts": 3, "backoff_base_s": 1, "backoff_max_s": 10,
              "backoff_jitter": 0, "definition_hash": "h", "next_run_at": next_run_at, **cols}  # fmt: skip
    columns = ", ".join(values)
    placeholders = ", ".join(f"%({k})s" for k in values)
    db.execute(f"INSERT INTO scheduler.schedules ({columns}) VALUES ({placeholders})", values)


def _two_hundred(db: psycopg.Connection, now: datetime) -> dict[str, dict[str, Any]]:
    """200 schedules a month late: every second and every minute, every policy."""
    made = {}
    combinations = itertools.cycle(itertools.product(["* * * * * *", "* * * * *"], POLICIES))
    for i, (cron, policy) in enumerate(itertools.islice(combinations, 200)):
        name = f"s{i:03d}"
        _add(db, name, cron, Cron(cron).next_after(now - LATE), **policy)
        made[name] = {"cron": cron, **policy}
    _add(db, "big", "* * * * * *", Cron("* * * * * *").next_after(now - LATE), **BIG)
    made["big"] = {"cron": "* * * * * *", **BIG}
    return made


def _check_accounting(db: psycopg.Connection, made: dict[str, dict[str, Any]],
                      start: datetime, first_tick: datetime | None = None) -> None:  # fmt: skip
    """Every fire time from the old next_run_at to the new one was run once or recorded as
    skipped once, and each policy shows. ``first_tick``: the clock of the first tick, when
    known (the catch-up cap applies to what was due then)."""
    jobs: dict[str, list[datetime]] = {}
    for name, fire_time in db.execute("SELECT schedule_name, scheduled_for FROM scheduler.jobs"):
        jobs.setdefault(name, []).append(fire_time)
    skipped: dict[str, list[tuple[datetime, datetime, int, str]]] = {}
    for name, first, last, n, reason in db.execute(
        "SELECT schedule_name, first_fire_time, last_fire_time, fire_times, reason "
        "FROM scheduler.skipped_fire_times"
    ):
        skipped.setdefault(name, []).append((first, last, n, reason))
    nexts = dict(db.execute("SELECT name, next_run_at FROM scheduler.schedules"))
    for name, spec in made.items():
        cron, runs, spans = Cron(spec["cron"]), sorted(jobs.get(name, [])), skipped.get(name, [])
        assert len(runs) == len(set(runs)), name
        due = count(cron, Cron(spec["cron"]).next_after(start - LATE) - timedelta(microseconds=1),
                    nexts[name] - timedelta(microseconds=1))  # fmt: skip
        assert len(runs) + sum(n for *_, n, _ in spans) == due, (name, spec)
        for first, last, *_ in spans:  # nothing both run and skipped
            assert not [t for t in runs if first <= t <= last], (name, spec)
        reasons = {r for *_, r in spans}
        late_runs = [t for t in runs if t < start - timedelta(minutes=2)]
        if spec.get("overlap_policy") == "skip":
            assert len(runs) == 1 and "overlap" in reasons, (name, runs, reasons)
        elif spec["misfire_policy"] == "skip":
            assert late_runs == [] and "misfire" in reasons
        elif spec["misfire_policy"] == "run_once":
            assert len(late_runs) <= 1 and "misfire" in reasons
            if "starting_deadline_s" in spec:
                assert "starting_deadline" in reasons
        else:  # the cap applies to what was due when the catch-up began
            cap = spec.get("max_catch_up", 100)
            # (planned by the tick that reached it, a moment after the first one)
            caught_up = len([t for t in runs if t <= (first_tick or start)])
            assert cap - 5 <= caught_up <= cap, (name, cap, caught_up)
            assert "catch_up_cap" in reasons


def test_two_hundred_schedules_a_month_late_recover_in_bounded_ticks(db, db_url):
    now = db.execute("SELECT date_trunc('second', now())").fetchone()[0]
    made = _two_hundred(db, now)

    async def ticks() -> list[materialiser.TickResult]:
        results = []
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            assert await STORE.try_lock_leader(conn)
            term = await STORE.elect(conn, "L", None)
            while True:
                results.append(await materialiser.tick(conn, STORE, holder="L", term=term))
                if not results[-1].more and results[-1].inserted == 0 and len(results) > 1:
                    return results
                assert len(results) < 40, "the catch-up does not converge"

    results = asyncio.run(ticks())
    assert all(r.inserted <= materialiser.MAX_FIRE_TIMES_PER_TICK for r in results)
    # about 12,000 fire times to run (one schedule alone 2,500): a dozen or so bounded ticks
    assert len(results) <= 20, [r.inserted for r in results]
    _check_accounting(db, made, now, results[0].now)


def test_a_replica_with_default_settings_recovers_without_losing_its_lock(db, db_url):
    """The issue's reproduction at full size: default leader settings (lock session times
    out after 5 s idle or idle in transaction); 200 schedules a month late. The first leader
    catches up in seconds and keeps its term."""
    now = db.execute("SELECT date_trunc('second', now())").fetchone()[0]
    made = _two_hundred(db, now)

    async def scenario() -> None:
        settings = Settings(queues=["default"])  # nobody works the "outage" queue
        async with (
            running_replica(db_url, settings),
            await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c,
        ):

            async def caught_up() -> bool:
                cur = await c.execute(
                    "SELECT count(*) FROM scheduler.schedules WHERE next_run_at < now() - "
                    "interval '5 seconds'"
                )
                return (await cur.fetchone())[0] == 0

            await wait_until_async_db(caught_up, 60)

    asyncio.run(scenario())
    assert db.execute("SELECT term FROM scheduler.leader").fetchone() == (1,)
    _check_accounting(db, made, now)


def test_a_schedule_whose_jobs_the_database_refuses_costs_only_itself(db, db_url):
    """A row written by hand with a 9,000-character queue name: every insert of its jobs
    fails (NOTIFY payload too long). The other schedules fire; the bad one is reported on its
    row and retried a minute later, not every tick."""
    now = db.execute("SELECT date_trunc('second', now())").fetchone()[0]
    _add(db, "bad", "* * * * * *", now - timedelta(seconds=2), queue="q" * 9000)
    _add(db, "good", "* * * * * *", now - timedelta(seconds=2))

    async def scenario() -> None:
        async with (
            running_replica(db_url, Settings(queues=["default"])),
            await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c,
        ):

            async def fired() -> bool:
                cur = await c.execute(
                    "SELECT count(*) FROM scheduler.jobs WHERE schedule_name = 'good'"
                )
                return (await cur.fetchone())[0] >= 5

            await wait_until_async_db(fired, 20)

    asyncio.run(scenario())
    error, error_at = db.execute(
        "SELECT last_error, last_error_at FROM scheduler.schedules WHERE name = 'bad'"
    ).fetchone()
    assert "payload string too long" in error and error_at is not None
    assert db.execute("SELECT count(*) FROM scheduler.jobs WHERE schedule_name = 'bad'"
                      ).fetchone() == (0,)  # fmt: skip
    assert db.execute("SELECT term FROM scheduler.leader").fetchone() == (1,)


async def wait_until_async_db(predicate: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.1)

