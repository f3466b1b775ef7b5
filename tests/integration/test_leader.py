"""Leader election, fencing and materialisation against a real database."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from scheduler import materialiser
from scheduler.errors import LeadershipLostError
from scheduler.leader import LeaderElector
from scheduler.settings import Settings
from scheduler.store import Store
from tests.conftest import running_replica, wait_until_async

STORE = Store("scheduler")
FAST = Settings(leader_retry_s=0.05, heartbeat_s=0.05, leader_session_timeout_s=5)


def _elector(db_url: str, holder: str, ticks: list[tuple[str, int]]) -> LeaderElector:
    async def on_elected(conn: psycopg.AsyncConnection[Any], term: int) -> None:
        ticks.append((f"elected:{holder}", term))

    async def tick(conn: psycopg.AsyncConnection[Any], term: int) -> float:
        if await STORE.fence(conn, holder, term) is None:
            raise LeadershipLostError("fenced")
        ticks.append((holder, term))
        return 0.05

    return LeaderElector(
        db_url, STORE, FAST, holder=holder, config_hash=None, on_elected=on_elected, tick=tick
    )


def _waiting_for_the_lock(db: psycopg.Connection, holder: str) -> bool:
    """True while the lock session of elector ``holder`` waits inside PostgreSQL for an
    advisory lock (the leader's: the only one these tests take)."""
    return db.execute(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = %s AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
        [f"scheduler leader {holder}"],
    ).fetchone()[0]


def _terminate_lock_session(db: psycopg.Connection, holder: str) -> None:
    killed = db.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s",
        [f"scheduler leader {holder}"],
    ).fetchone()[0]
    assert killed == 1


async def _ticks_by(ticks: list[tuple[str, int]], holder: str, n: int) -> None:
    """Wait until ``holder`` has ticked ``n`` more times (a deliberate interval measured in
    the leader's ticks rather than in seconds)."""
    seen = len(ticks)
    await wait_until_async(lambda: sum(h == holder for h, _ in ticks[seen:]) >= n, timeout=5)


def test_one_leader_at_a_time_and_graceful_handover(db, db_url):
    async def scenario() -> list[tuple[str, int]]:
        ticks: list[tuple[str, int]] = []
        a, b = _elector(db_url, "a", ticks), _elector(db_url, "b", ticks)
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        run_a = asyncio.create_task(a.run(stop_a))
        await asyncio.wait_for(a.is_leader.wait(), 10)
        run_b = asyncio.create_task(b.run(stop_b))
        await wait_until_async(lambda: _waiting_for_the_lock(db, "b"), timeout=10)
        # Deliberate interval: with b campaigning (waiting for the lock), a leads on for three
        # more ticks and b must not win meanwhile.
        await _ticks_by(ticks, "a", 3)
        assert not b.is_leader.is_set() and a.term == 1
        stop_a.set()
        await run_a
        await asyncio.wait_for(b.is_leader.wait(), 2)
        assert b.term == 2
        await wait_until_async(lambda: ("b", 2) in ticks, timeout=5)
        stop_b.set()
        await run_b
        return ticks

    ticks = asyncio.run(scenario())
    holders = [h for h, _ in ticks]
    last_a = max(i for i, h in enumerate(holders) if h == "a")
    first_b = holders.index("elected:b")
    assert last_a < first_b, "b ticked while a was still leader"
    assert {t for h, t in ticks if h == "a"} == {1} and {t for h, t in ticks if h == "b"} == {2}
    holder, term = db.execute("SELECT holder, term FROM scheduler.leader").fetchone()
    assert (holder, term) == ("b", 2)


def test_killed_lock_session_steps_down_and_follower_takes_over(db, db_url):
    async def scenario() -> None:
        ticks: list[tuple[str, int]] = []
        a, b = _elector(db_url, "a", ticks), _elector(db_url, "b", ticks)
        stop = asyncio.Event()
        run_a = asyncio.create_task(a.run(stop))
        await asyncio.wait_for(a.is_leader.wait(), 10)
        run_b = asyncio.create_task(b.run(stop))
        await wait_until_async(lambda: _waiting_for_the_lock(db, "b"), timeout=10)
        _terminate_lock_session(db, "a")
        await asyncio.wait_for(b.is_leader.wait(), 5)
        assert b.term == 2
        # a comes back as a follower: its new session waits for the lock...
        await wait_until_async(lambda: _waiting_for_the_lock(db, "a"), timeout=10)
        # ... and (deliberate interval) while b leads on for three more ticks, a must not lead
        await _ticks_by(ticks, "b", 3)
        assert not a.is_leader.is_set() and a.term is None
        assert {t for h, t in ticks if h == "a"} == {1}
        stop.set()
        await asyncio.gather(run_a, run_b)

    asyncio.run(scenario())


def test_follower_waits_inside_postgres_and_leads_as_soon_as_the_lock_is_free(db, db_url):
    """No polling: with a 30 s retry delay, the follower still leads within a second of the
    leader's session ending, and a stop request ends its wait at once."""
    slow_retry = Settings(leader_retry_s=30, heartbeat_s=0.05, leader_session_timeout_s=5)

    async def scenario() -> None:
        ticks: list[tuple[str, int]] = []
        a, b = _elector(db_url, "a", ticks), _elector(db_url, "b", ticks)
        a.settings = b.settings = slow_retry
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        run_a = asyncio.create_task(a.run(stop_a))
        await asyncio.wait_for(a.is_leader.wait(), 10)
        run_b = asyncio.create_task(b.run(stop_b))
        await wait_until_async(lambda: _waiting_for_the_lock(db, "b"), timeout=10)
        _terminate_lock_session(db, "a")
        await asyncio.wait_for(b.is_leader.wait(), 1)
        stop_b.set()
        await asyncio.wait_for(run_b, 5)
        # a reconnects after its 30 s backoff; stopping it now must not wait for that
        stop_a.set()
        await asyncio.wait_for(run_a, 2)

    asyncio.run(scenario())


def test_stop_ends_a_followers_wait_for_the_lock(db, db_url):
    async def scenario() -> None:
        holder = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
        assert await STORE.try_lock_leader(holder)
        b = _elector(db_url, "b", [])
        stop = asyncio.Event()
        run_b = asyncio.create_task(b.run(stop))
        await wait_until_async(lambda: _waiting_for_the_lock(db, "b"), timeout=10)
        stop.set()  # b is inside its (up to 10 s) wait: the stop must cancel it
        await asyncio.wait_for(run_b, 2)
        assert not b.is_leader.is_set()
        await holder.close()

    asyncio.run(scenario())


async def _lead(db_url: str, holder: str = "me") -> tuple[psycopg.AsyncConnection, int]:
    conn = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    assert await STORE.try_lock_leader(conn)
    term = await STORE.elect(conn, holder, None)
    return conn, term


def _add_schedule(db, name: str, cron: str, next_run_at: datetime, tz: str = "UTC") -> None:
    db.execute(
        """INSERT INTO scheduler.schedules (name, cron, timezone, task, max_attempts, backoff_base_s,
               backoff_max_s, backoff_jitter, definition_hash, next_run_at)
           VALUES (%s, %s, %s, 'noop', 3, 1, 10, 0, 'h', %s)""",
        [name, cron, tz, next_run_at],
    )


def test_tick_materialises_each_due_fire_time_once_and_advances(db, db_url):
    now = db.execute("SELECT date_trunc('second', now())").fetchone()[0]
    _add_schedule(db, "every_second", "* * * * * *", now - timedelta(seconds=4))
    _add_schedule(db, "future", "0 0 1 1 *", now + timedelta(days=30))

    async def scenario() -> tuple[materialiser.TickResult, materialiser.TickResult]:
        conn, term = await _lead(db_url)
        async with conn:
            first = await materialiser.tick(conn, STORE, holder="me", term=term)
            second = await materialiser.tick(conn, STORE, holder="me", term=term)
            return first, second

    first, second = asyncio.run(scenario())
    rows = db.execute(
        "SELECT scheduled_for, run_at, term, task, max_attempts FROM scheduler.jobs "
        "WHERE schedule_name = 'every_second' ORDER BY scheduled_for"
    ).fetchall()
    fire_times = [r[0] for r in rows]
    assert fire_times[0] == now - timedelta(seconds=4)
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(fire_times))
    assert all(r[1] == r[0] and r[2] == 1 and r[3] == "noop" and r[4] == 3 for r in rows)
    assert first.inserted >= 5
    next_run_at, last_fire_at = db.execute(
        "SELECT next_run_at, last_fire_at FROM scheduler.schedules WHERE name = 'every_second'"
    ).fetchone()
    assert last_fire_at == fire_times[-1] and next_run_at == last_fire_at + timedelta(seconds=1)
    assert (
        db.execute("SELECT count(*) FROM scheduler.jobs WHERE schedule_name = 'future'").fetchone()[
            0
        ]
        == 0
    )
    assert second.materialise_at is not None


def test_tick_materialises_ahead_with_run_at_at_the_fire_time(db, db_url):
    now = datetime(2026, 6, 1, 12, 0, 0, 300_000, tzinfo=UTC)  # injected clock
    _add_schedule(
        db, "every_second", "* * * * * *", now.replace(microsecond=0) + timedelta(seconds=1)
    )
    _add_schedule(db, "skipper", "* * * * * *", now.replace(microsecond=0) + timedelta(seconds=1))
    db.execute("UPDATE scheduler.schedules SET overlap_policy = 'skip' WHERE name = 'skipper'")

    async def scenario() -> materialiser.TickResult:
        conn, term = await _lead(db_url)
        async with conn:
            return await materialiser.tick(
                conn, STORE, holder="me", term=term, now=now, ahead_s=2.0
            )

    result = asyncio.run(scenario())
    rows = db.execute(
        "SELECT schedule_name, scheduled_for, run_at FROM scheduler.jobs ORDER BY 1, 2"
    ).fetchall()
    second = now.replace(microsecond=0)
    # fire times in (now, now + 2 s]: 12:00:01 and 12:00:02, not yet due; none for "skipper"
    assert rows == [
        ("every_second", second + timedelta(seconds=k), second + timedelta(seconds=k))
        for k in (1, 2)
    ]
    # next: skipper at its fire time (12:00:01); every_second at 12:00:03 - 2 s
    assert result.materialise_at == second + timedelta(seconds=1)


def test_deposed_leader_commits_nothing(db, db_url):
    now = db.execute("SELECT now()").fetchone()[0]
    _add_schedule(db, "s", "* * * * *", now - timedelta(minutes=3))

    async def scenario() -> None:
        conn, term = await _lead(db_url, "old")
        async with conn:
            # another replica is elected (term moves on) while "old" still holds its session
            db.execute("UPDATE scheduler.leader SET holder = 'new', term = term + 1")
            with pytest.raises(LeadershipLostError):
                await materialiser.tick(conn, STORE, holder="old", term=term)

    asyncio.run(scenario())
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0


def test_session_without_the_lock_cannot_materialise(db, db_url):
    """A row that claims leadership is not enough: the lock must be held by this session."""
    now = db.execute("SELECT now()").fetchone()[0]
    _add_schedule(db, "s", "* * * * *", now - timedelta(minutes=1))

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            term = await STORE.elect(conn, "impostor", None)
            with pytest.raises(LeadershipLostError):
                await materialiser.tick(conn, STORE, holder="impostor", term=term)

    asyncio.run(scenario())
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0


def test_unique_fire_time_guards_against_two_writers(db, db_url):
    """Even if two sessions materialise the same fire time, only one job exists."""
    now = db.execute("SELECT date_trunc('minute', now())").fetchone()[0]
    params = {"names": ["s", "s"], "fire_times": [now, now], "term": 1}
    _add_schedule(db, "s", "* * * * *", now + timedelta(minutes=1))

    async def insert() -> int:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return len(await STORE.fetch(conn, "materialise_fire_times", params))

    async def both() -> list[int]:
        return await asyncio.gather(insert(), insert())

    assert sum(asyncio.run(both())) == 1
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 1


def test_catch_up_is_capped_and_skips_to_the_future(db, db_url):
    now = db.execute("SELECT date_trunc('minute', now())").fetchone()[0]
    _add_schedule(db, "s", "* * * * *", now - timedelta(minutes=30))
    db.execute("UPDATE scheduler.schedules SET max_catch_up = 5, misfire_policy = 'run_all'")

    async def scenario() -> None:
        conn, term = await _lead(db_url)
        async with conn:
            await materialiser.tick(conn, STORE, holder="me", term=term)

    asyncio.run(scenario())
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 5
    next_run_at = db.execute("SELECT next_run_at FROM scheduler.schedules").fetchone()[0]
    assert next_run_at > datetime.now(UTC) - timedelta(seconds=5)


def test_invalid_schedule_row_is_stopped_not_fatal(db, db_url):
    now = db.execute("SELECT now()").fetchone()[0]
    _add_schedule(db, "broken", "0 0 30 2 *", now - timedelta(minutes=1))
    _add_schedule(db, "fine", "* * * * *", now - timedelta(minutes=1))

    async def scenario() -> None:
        conn, term = await _lead(db_url)
        async with conn:
            await materialiser.tick(conn, STORE, holder="me", term=term)

    asyncio.run(scenario())
    rows = dict(db.execute("SELECT name, next_run_at IS NULL FROM scheduler.schedules").fetchall())
    assert rows == {"broken": True, "fine": False}
    assert (
        db.execute("SELECT count(*) FROM scheduler.jobs WHERE schedule_name = 'fine'").fetchone()[0]
        >= 1
    )


def test_follower_with_a_different_schedules_file_logs_config_mismatch(db_url):
    from structlog.testing import capture_logs

    async def scenario() -> list[dict]:
        ticks: list[tuple[str, int]] = []
        leader, follower = _elector(db_url, "a", ticks), _elector(db_url, "b", ticks)
        leader.config_hash, follower.config_hash = "a" * 64, "b" * 64
        stop = asyncio.Event()
        with capture_logs() as logs:
            run_a = asyncio.create_task(leader.run(stop))
            await asyncio.wait_for(leader.is_leader.wait(), 10)
            run_b = asyncio.create_task(follower.run(stop))
            await wait_until_async(
                lambda: any(e["event"] == "config_mismatch" for e in logs), timeout=10
            )
            stop.set()
            await asyncio.gather(run_a, run_b)
        return logs

    logs = asyncio.run(scenario())
    mismatches = [e for e in logs if e["event"] == "config_mismatch"]
    assert len(mismatches) == 1
    assert mismatches[0]["log_level"] == "error" and mismatches[0]["leader"] == "a"


def test_lock_held_sees_only_the_session_that_took_the_lock(db_url):
    """The pooler check: behind a transaction-mode pooler the statement after
    pg_try_advisory_lock may run on another server session, which does not hold it."""

    async def scenario() -> tuple[bool, bool]:
        async with (
            await psycopg.AsyncConnection.connect(db_url, autocommit=True) as a,
            await psycopg.AsyncConnection.connect(db_url, autocommit=True) as b,
        ):
            assert await STORE.try_lock_leader(a)
            pid = (await (await a.execute("SELECT pg_backend_pid()")).fetchone())[0]
            return await STORE.lock_held(a, pid), await STORE.lock_held(b, pid)

    assert asyncio.run(scenario()) == (True, False)


def test_lock_session_has_timeouts_that_end_a_hung_leader(db_url):
    async def scenario() -> list[str]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await STORE.setup_session(conn, idle_session_timeout_s=5, name="x")
            rows = await (
                await conn.execute(
                    "SELECT current_setting('idle_session_timeout'), "
                    "current_setting('idle_in_transaction_session_timeout'), "
                    "current_setting('statement_timeout')"
                )
            ).fetchone()
            return list(rows)

    assert asyncio.run(scenario()) == ["5s", "5s", "5s"]


def test_replica_materialises_cron_fire_times_ahead_of_time(db, db_url):
    """With the default look-ahead, each fire time's job exists before it is due, so a worker
    can start it on a timer at the second."""
    from scheduler.config import load_config_text

    config = load_config_text(
        "timezone: UTC\nimports: [tests.acceptance.app_tasks]\nschedules:\n"
        "  - name: every_second\n    cron: '* * * * * *'\n    task: acceptance.tick\n"
    )

    async def scenario() -> None:
        async with running_replica(db_url, Settings(), config):
            await wait_until_async(
                lambda: db.execute(
                    "SELECT count(*) >= 3 FROM scheduler.job_runs WHERE outcome = 'succeeded'"
                ).fetchone()[0],
                timeout=15,
            )

    asyncio.run(scenario())
    rows = db.execute(
        "SELECT j.created_at < j.scheduled_for, r.started_at >= j.scheduled_for "
        "FROM scheduler.jobs AS j JOIN scheduler.job_runs AS r ON r.job_id = j.id "
        "WHERE j.schedule_name = 'every_second' ORDER BY j.scheduled_for OFFSET 1"
    ).fetchall()
    assert len(rows) >= 2
    assert all(ahead and not_early for ahead, not_early in rows), rows


def test_an_election_on_another_timeline_reports_a_failover(db, db_url):
    """The leader row records the timeline of each election; a new leader on another one (a
    promoted standby) logs database_failover_detected at error level and counts it. (The
    real failover: tests/acceptance/test_failover.py.)"""
    from structlog.testing import capture_logs

    from scheduler import metrics

    async def elect_twice() -> tuple[int, int | None, int]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            first = await STORE.elect_on_timeline(conn, "a", None)
            assert first[1] is None  # no earlier election
            db.execute("UPDATE scheduler.leader SET timeline = timeline + 7")  # as if promoted
            return first

    first = asyncio.run(elect_twice())
    before = metrics.DATABASE_FAILOVERS._value.get()
    with capture_logs() as logs:

        async def scenario() -> None:
            elector = _elector(db_url, "b", [])
            stop = asyncio.Event()
            runner = asyncio.create_task(elector.run(stop))
            await wait_until_async(lambda: elector.term is not None, 10)
            stop.set()
            await runner

        asyncio.run(scenario())
    failover = [e for e in logs if e["event"] == "database_failover_detected"]
    assert len(failover) == 1 and failover[0]["log_level"] == "error"
    assert (failover[0]["old_timeline"], failover[0]["new_timeline"]) == (first[2] + 7, first[2])
    assert metrics.DATABASE_FAILOVERS._value.get() == before + 1
