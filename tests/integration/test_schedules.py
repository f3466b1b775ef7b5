"""Reconciling declared schedules with the schedules table."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg

from scheduler.config import load_config_text
from scheduler.schedules import reconcile
from scheduler.settings import Settings
from scheduler.store import Store

STORE = Store("scheduler")
NOW = datetime(2026, 3, 1, 10, 0, 30, tzinfo=UTC)

BASE = """\
timezone: Europe/Berlin
imports: [tests.acceptance.app_tasks]
schedules:
  - name: hourly
    cron: "0 * * * *"
    task: acceptance.tick
  - name: nightly
    cron: "30 3 * * *"
    task: acceptance.tick
    max_attempts: 4
"""


def _reconcile(db_url: str, text: str, now: datetime = NOW, filename: str = "schedules.yaml"):
    config = load_config_text(text, filename)

    async def run():
        async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.transaction():
            return await reconcile(
                conn,
                STORE,
                config.schedules,
                now=now,
                settings=Settings(),
                config_hash=config.config_hash(),
            )

    return asyncio.run(run())


def _rows(db) -> dict[str, tuple]:
    rows = db.execute(
        "SELECT name, next_run_at, cron, max_attempts, enabled, args FROM scheduler.schedules"
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_new_schedules_get_their_first_fire_time_in_their_zone(db, db_url):
    result = _reconcile(db_url, BASE)
    assert sorted(result.added) == ["hourly", "nightly"]
    rows = _rows(db)
    assert rows["hourly"][0] == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
    # 03:30 in Berlin (UTC+1 in March before the switch) is 02:30 UTC, next day
    assert rows["nightly"][0] == datetime(2026, 3, 2, 2, 30, tzinfo=UTC)
    assert rows["nightly"][2] == 4 and rows["hourly"][2] == 20


def test_unchanged_schedule_keeps_next_run_at(db, db_url):
    _reconcile(db_url, BASE)
    before = _rows(db)
    later = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)
    result = _reconcile(db_url, BASE, now=later)
    assert result.added == result.rescheduled == result.updated == result.removed == []
    assert _rows(db) == before


def test_changed_cron_recomputes_from_now_other_changes_keep_it(db, db_url):
    _reconcile(db_url, BASE)
    before = _rows(db)
    later = datetime(2026, 3, 1, 15, 10, tzinfo=UTC)
    changed = BASE.replace('cron: "0 * * * *"', 'cron: "*/15 * * * *"').replace(
        "max_attempts: 4", "max_attempts: 9"
    )
    result = _reconcile(db_url, changed, now=later)
    assert result.rescheduled == ["hourly"] and result.updated == ["nightly"]
    rows = _rows(db)
    assert rows["hourly"][0] == datetime(2026, 3, 1, 15, 15, tzinfo=UTC)
    assert rows["nightly"][0] == before["nightly"][0] and rows["nightly"][2] == 9


def test_removed_schedule_is_deleted_and_its_jobs_keep_their_state(db, db_url):
    _reconcile(db_url, BASE)
    db.execute(
        "INSERT INTO scheduler.jobs (task, schedule_name, scheduled_for) "
        "VALUES ('acceptance.tick', 'nightly', now())"
    )
    only_hourly = BASE.split("  - name: nightly")[0]
    result = _reconcile(db_url, only_hourly)
    assert result.removed == ["nightly"]
    assert set(_rows(db)) == {"hourly"}
    assert db.execute("SELECT state FROM scheduler.jobs").fetchall() == [("pending",)]


def test_disabled_schedule_has_no_next_run_and_re_enabling_starts_from_now(db, db_url):
    disabled = BASE.replace("    max_attempts: 4\n", "    max_attempts: 4\n    enabled: false\n")
    _reconcile(db_url, disabled)
    assert _rows(db)["nightly"][0] is None and _rows(db)["nightly"][3] is False
    later = datetime(2026, 3, 5, 12, 0, tzinfo=UTC)
    _reconcile(db_url, BASE, now=later)
    assert _rows(db)["nightly"][0] == datetime(2026, 3, 6, 2, 30, tzinfo=UTC)


def test_reconcile_reports_schedules_written_from_another_file(db, db_url):
    _reconcile(db_url, BASE)
    other = BASE.replace("max_attempts: 4", "max_attempts: 5")  # a different file
    result = _reconcile(db_url, other, filename="other.yaml")
    assert sorted(result.from_other_config) == ["hourly", "nightly"]
