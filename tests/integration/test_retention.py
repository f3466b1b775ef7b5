"""Retention: the leader prunes old finished jobs in bounded batches, never a live job, and
never in a way that lets a cron fire time run twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg

from scheduler import maintenance, materialiser
from scheduler.settings import Settings
from scheduler.store import Store
from tests.conftest import running_replica, wait_until_async

STORE = Store("scheduler")
DAY = 86400.0


def _add_jobs(db, n: int, state: str, finished_days_ago: float | None, **cron) -> None:
    """n jobs in ``state`` finished that many days ago, each with one run."""
    db.execute(
        """WITH j AS (
               INSERT INTO scheduler.jobs (task, state, attempt, finished_at, schedule_name,
                                           scheduled_for, origin)
               SELECT 'noop', %(state)s, 1,
                      now() - make_interval(secs => %(ago)s * 86400) , %(schedule)s,
                      %(fire)s::timestamptz + g * interval '1 hour',
                      CASE WHEN %(schedule)s::text IS NULL THEN 'api' ELSE 'cron' END
               FROM generate_series(1, %(n)s) AS g
               RETURNING id)
           INSERT INTO scheduler.job_runs (job_id, attempt, started_at, finished_at, outcome)
           SELECT id, 1, now(), now(), 'succeeded' FROM j""",
        {
            "state": state,
            "ago": finished_days_ago,
            "n": n,
            "schedule": cron.get("schedule"),
            "fire": cron.get("first_fire"),
        },
    )


def _counts(db) -> dict[str, int]:
    return dict(db.execute("SELECT state, count(*) FROM scheduler.jobs GROUP BY state").fetchall())


async def _prune_all(db_url: str, batch: int, **kw) -> list[maintenance.Pruned]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        rounds = [
            await maintenance.prune(
                conn,
                STORE,
                holder="L",
                term=1,
                batch=batch,
                **{"succeeded_s": 7 * DAY, "dead_s": 30 * DAY, **kw},
            )
        ]
        while rounds[-1].more:
            rounds.append(
                await maintenance.prune(
                    conn,
                    STORE,
                    holder="L",
                    term=1,
                    batch=batch,
                    succeeded_s=7 * DAY,
                    dead_s=30 * DAY,
                )
            )
    return rounds


def test_prunes_expired_jobs_and_their_runs_in_bounded_batches(db, db_url):
    _add_jobs(db, 12_000, "succeeded", 8)  # expired
    _add_jobs(db, 500, "succeeded", 1)  # kept
    _add_jobs(db, 100, "cancelled", 8)  # expired
    _add_jobs(db, 300, "dead", 31)  # expired
    _add_jobs(db, 200, "dead", 10)  # kept: dead letters live 30 days
    db.execute(
        "INSERT INTO scheduler.jobs (task, run_at, created_at) "
        "SELECT 'noop', now() - interval '60 days', now() - interval '60 days' "
        "FROM generate_series(1, 50)"
    )  # pending for 60 days: never pruned
    db.execute(
        "INSERT INTO scheduler.skipped_fire_times (schedule_name, first_fire_time, "
        "last_fire_time, fire_times, reason, recorded_at) VALUES "
        "('s', now(), now(), 1, 'misfire', now() - interval '40 days'), "
        "('s', now(), now(), 1, 'misfire', now() - interval '1 day')"
    )
    db.execute(  # closed incidents age out as dead letters do; an open one never
        "INSERT INTO scheduler.incidents (schedule_name, kind, opened_at, since, detail, "
        "failures, opened_term, closed_at, closed_term, close_reason) VALUES "
        "('s', 'failing', now() - interval '41 days', now() - interval '41 days', 'd', 3, 1, "
        " now() - interval '40 days', 1, 'succeeded'), "
        "('s', 'missed', now() - interval '41 days', now() - interval '41 days', 'd', 0, 1, "
        " now() - interval '1 day', 1, 'succeeded'), "
        "('s', 'paused', now() - interval '90 days', now() - interval '90 days', 'd', 3, 1, "
        " NULL, NULL, NULL)"
    )

    rounds = asyncio.run(_prune_all(db_url, batch=1000))

    # 12,400 expired rows at 1,000 per statement and 10 statements per call: 2 calls
    assert len(rounds) == 2 and rounds[0].more and not rounds[1].more
    assert sum(r.succeeded for r in rounds) == 12_000
    assert sum(r.cancelled for r in rounds) == 100 and sum(r.dead for r in rounds) == 300
    assert _counts(db) == {"succeeded": 500, "dead": 200, "pending": 50}
    orphans = db.execute(
        "SELECT count(*) FROM scheduler.job_runs r "
        "WHERE NOT EXISTS (SELECT 1 FROM scheduler.jobs j WHERE j.id = r.job_id)"
    ).fetchone()[0]
    assert orphans == 0
    assert db.execute("SELECT count(*) FROM scheduler.job_runs").fetchone()[0] == 700
    assert db.execute("SELECT count(*) FROM scheduler.skipped_fire_times").fetchone()[0] == 1
    assert sum(r.incidents for r in rounds) == 1
    kinds = db.execute("SELECT kind FROM scheduler.incidents ORDER BY kind").fetchall()
    assert kinds == [("missed",), ("paused",)]


def test_pruning_never_lets_a_cron_fire_time_run_twice(db, db_url):
    now = db.execute("SELECT date_trunc('hour', now())").fetchone()[0]
    first_fire = now - timedelta(days=9)
    db.execute(
        """INSERT INTO scheduler.schedules (name, cron, timezone, task, max_attempts,
               backoff_base_s, backoff_max_s, backoff_jitter, definition_hash, next_run_at,
               misfire_grace_s, max_catch_up)
           VALUES ('hourly', '0 * * * *', 'UTC', 'noop', 3, 1, 10, 0, 'h', %s, %s, 1000)""",
        [first_fire + timedelta(hours=3), 30 * DAY],
    )
    # fire times first_fire + 1..5 h, all finished 8 days ago; next_run_at is the 3rd. Every
    # fire time since next_run_at is within misfire_grace_s and max_catch_up, so a tick
    # would re-insert any of them whose job was pruned.
    _add_jobs(db, 5, "succeeded", 8, schedule="hourly", first_fire=first_fire)

    asyncio.run(_prune_all(db_url, batch=1000))
    kept = [
        r[0]
        for r in db.execute(
            "SELECT scheduled_for FROM scheduler.jobs ORDER BY scheduled_for"
        ).fetchall()
    ]
    # only the fire times before next_run_at went; the others still guard their uniqueness
    assert kept == [first_fire + timedelta(hours=k) for k in (3, 4, 5)]

    async def tick() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            assert await STORE.try_lock_leader(conn)
            term = await STORE.elect(conn, "L", None)
            await materialiser.tick(conn, STORE, holder="L", term=term)

    asyncio.run(tick())
    fire_times = [
        r[0]
        for r in db.execute(
            "SELECT scheduled_for FROM scheduler.jobs WHERE scheduled_for <= %s "
            "ORDER BY scheduled_for",
            [first_fire + timedelta(hours=5)],
        ).fetchall()
    ]
    assert fire_times == [first_fire + timedelta(hours=k) for k in (3, 4, 5)]
    planned = db.execute("SELECT count(*) FROM scheduler.jobs WHERE state = 'pending'").fetchone()[
        0
    ]
    assert planned > 200  # the tick did materialise the fire times since (9 days, hourly)


def test_the_leader_prunes_on_its_own(db, db_url):
    _add_jobs(db, 30, "succeeded", 8)
    _add_jobs(db, 5, "succeeded", 0)
    settings = Settings(retention_succeeded_s=DAY, retention_batch=10)

    async def scenario() -> None:
        async with running_replica(db_url, settings):
            await wait_until_async(lambda: _counts(db).get("succeeded") == 5, timeout=15)

    asyncio.run(scenario())
    assert _counts(db) == {"succeeded": 5}
