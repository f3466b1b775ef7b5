"""Upgrades of databases that hold data, not only of empty ones.

For each shipped migration k, a database is brought to version k-1 (migrations applied one at
a time, as ``Store.migrate`` does), filled with representative rows that the schema at that
version allows (schedules, pending / running / succeeded / dead / cancelled jobs, their runs,
skipped fire times, the leader row, operator events, replicas), then migrated by
``Store.migrate``. Afterwards:

* every row survived with its values; a column a migration added holds the value
  :data:`ADDED` says existing rows get (a new column without an entry there fails the test:
  say what upgraded rows hold);
* the schema equals that of a fresh ``migrate`` (columns, indexes, constraints, triggers,
  functions, views);
* the code works on the upgraded rows: enqueue, claim, completion (success and retry),
  election, lease rescue, materialisation and ``scheduler status``.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from scheduler import maintenance, materialiser, operations
from scheduler.migrations import _compose, migrations
from scheduler.store import Store

STORE = Store("scheduler")
TABLES = (
    "migrations", "leader", "schedules", "jobs", "job_runs", "skipped_fire_times",
    "job_events", "replicas",
)  # fmt: skip
WORKER = "host-a:101:abcd"

# What a row written before a migration holds in a column that migration added.
ADDED: dict[tuple[str, str], Any] = {
    # 0002_policies
    ("schedules", "misfire_policy"): "run_once",
    ("schedules", "overlap_policy"): "allow",
    ("schedules", "max_catch_up"): 100,
    ("schedules", "misfire_grace_s"): 60.0,
    ("schedules", "starting_deadline_s"): None,
    ("schedules", "paused_at"): None,
    ("jobs", "origin"): lambda row: "cron" if row["schedule_name"] else "api",
    ("jobs", "overlap"): "allow",
    # 0006_operator_actions
    ("jobs", "cancel_requested_at"): None,
    ("jobs", "retry_budget"): None,
    # 0008_robustness
    ("schedules", "last_error"): None,
    ("schedules", "last_error_at"): None,
    ("replicas", "config_hash"): None,
    ("replicas", "stuck_threads"): 0,
    # 0009_leader_timeline
    ("leader", "timeline"): None,
    # 0011_replica_liveness
    ("replicas", "lock_key"): None,
    ("replicas", "lock_registered_at"): None,
    ("replicas", "lock_timeline"): None,
    # 0013_job_results
    ("jobs", "result"): None,
    # 0022_dashboard (events recorded before it have no actor, schedule or queue)
    ("job_events", "actor"): None,
    ("job_events", "schedule_name"): None,
    ("job_events", "queue"): None,
    # 0023_job_headers (jobs enqueued before it carry no headers)
    ("jobs", "headers"): {},
    # 0019_alerts (a schedule without alert settings)
    ("schedules", "alert_after_s"): None,
    ("schedules", "alert_on_failures"): None,
    ("schedules", "pause_on_failures"): None,
    ("schedules", "on_alert"): None,
    ("schedules", "on_alert_options"): None,
    # 0014_unique_window
    ("jobs", "unique_until"): None,
    # 0015_interval_schedules
    ("schedules", "every_s"): None,
    ("schedules", "start_at"): None,
    # 0016_queue_limits
    ("jobs", "concurrency_key"): None,
}

SCHEMA = {
    "columns": "SELECT table_name, column_name, ordinal_position, data_type, udt_name, "
    "column_default, is_nullable, is_identity, identity_generation "
    "FROM information_schema.columns WHERE table_schema = 'scheduler' ORDER BY 1, 2",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes "
    "WHERE schemaname = 'scheduler' ORDER BY 1, 2",
    "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
    "FROM pg_constraint WHERE connamespace = 'scheduler'::regnamespace ORDER BY 1, 2",
    "triggers": "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger "
    "WHERE NOT tgisinternal AND tgrelid IN ("
    "  SELECT oid FROM pg_class WHERE relnamespace = 'scheduler'::regnamespace) ORDER BY 1, 2",
    "functions": "SELECT proname, pg_get_functiondef(oid) FROM pg_proc "
    "WHERE pronamespace = 'scheduler'::regnamespace ORDER BY 1",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'scheduler' ORDER BY 1",
}


def _rows(now: datetime) -> list[tuple[str, str, dict[str, Any]]]:
    """(table, key, row) with values for every column of the latest schema; each version gets
    the columns it has. ``job`` names the job a run or event belongs to."""
    sec = now.replace(microsecond=0)
    t0 = sec - timedelta(seconds=3)  # every_second's next fire time: due, within the grace
    day = timedelta(days=1)
    job = {
        "queue": "default", "priority": 0, "attempt": 0, "max_attempts": 3,
        "backoff_base_s": 1.0, "backoff_max_s": 60.0, "backoff_jitter": 0.1, "locked_by": None,
        "locked_at": None, "lease_expires_at": None, "schedule_name": None,
        "scheduled_for": None, "term": None, "idempotency_key": None, "last_error": None,
        "finished_at": None, "origin": "api", "overlap": "allow", "cancel_requested_at": None,
        "retry_budget": None,
    }  # fmt: skip
    return [
        ("leader", "leader", {"holder": WORKER, "term": 7, "elected_at": now - day,
                              "heartbeat_at": now - timedelta(seconds=1), "config_hash": "c1"}),
        ("schedules", "nightly", {
            "name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Paris",
            "task": "reports.nightly", "args": Jsonb({"format": "pdf", "to": ["ops"]}),
            "queue": "reports", "priority": 5, "max_attempts": 4, "backoff_base_s": 2.0,
            "backoff_max_s": 600.0, "backoff_jitter": 0.3, "enabled": True, "source": "config",
            "definition_hash": "d1", "config_hash": "c1", "next_run_at": now + day,
            "last_fire_at": now - day, "misfire_policy": "skip", "overlap_policy": "skip",
            "max_catch_up": 5, "misfire_grace_s": 30.0, "starting_deadline_s": 600.0,
            "paused_at": now - timedelta(hours=1), "last_error": "bad row",
            "last_error_at": now - timedelta(hours=2)}),
        ("schedules", "every_second", {
            "name": "every_second", "cron": "* * * * * *", "timezone": "UTC", "task": "tick",
            "max_attempts": 3, "backoff_base_s": 1.0, "backoff_max_s": 10.0,
            "backoff_jitter": 0.0, "definition_hash": "d2", "next_run_at": t0,
            "last_fire_at": t0 - timedelta(seconds=1)}),
        ("schedules", "api_disabled", {
            "name": "api_disabled", "cron": "*/5 * * * *", "timezone": "Asia/Kolkata",
            "task": "noop", "max_attempts": 1, "backoff_base_s": 1.0, "backoff_max_s": 1.0,
            "backoff_jitter": 0.0, "enabled": False, "source": "api", "definition_hash": "d3",
            "next_run_at": None}),
        ("jobs", "due", {  # a retry, due: the claim takes it
            **job, "task": "mail.send", "args": Jsonb({"to": "ä@example.org", "n": [1, 2]}),
            "priority": 1, "run_at": now - timedelta(minutes=1),
            "first_run_at": now - timedelta(minutes=2), "attempt": 1, "max_attempts": 5,
            "locked_by": WORKER, "locked_at": now - timedelta(seconds=119),
            "idempotency_key": "mail-42", "last_error": "SMTP down"}),
        ("jobs", "future", {
            **job, "queue": "mail", "task": "mail.send", "run_at": now + timedelta(hours=1),
            "first_run_at": now + timedelta(hours=1)}),
        ("jobs", "running", {  # its worker died: the lease expired a minute ago
            **job, "task": "video.encode", "args": Jsonb({"id": 9}), "state": "running",
            "run_at": now - timedelta(minutes=3), "first_run_at": now - timedelta(minutes=3),
            "attempt": 1, "locked_by": "host-b:7:ef", "locked_at": now - timedelta(minutes=2),
            "lease_expires_at": now - timedelta(minutes=1)}),
        ("jobs", "cron_succeeded", {
            **job, "queue": "reports", "task": "reports.nightly", "state": "succeeded",
            "run_at": now - day, "first_run_at": now - day, "attempt": 1,
            "locked_by": WORKER, "locked_at": now - day, "schedule_name": "nightly",
            "scheduled_for": now - day, "term": 6, "finished_at": now - day, "origin": "cron",
            "overlap": "skip"}),
        ("jobs", "cron_due", {
            **job, "task": "tick", "run_at": t0 - timedelta(seconds=1),
            "first_run_at": t0 - timedelta(seconds=1), "schedule_name": "every_second",
            "scheduled_for": t0 - timedelta(seconds=1), "term": 7, "origin": "cron"}),
        ("jobs", "dead", {
            **job, "task": "gone.task", "state": "dead", "run_at": now - timedelta(hours=1),
            "first_run_at": now - timedelta(hours=2), "attempt": 3, "locked_by": WORKER,
            "locked_at": now - timedelta(hours=1), "last_error": "unknown task 'gone.task'",
            "finished_at": now - timedelta(hours=1), "retry_budget": 3}),
        ("jobs", "cancelled", {
            **job, "task": "mail.send", "state": "cancelled", "run_at": now + day,
            "first_run_at": now + day, "finished_at": now - timedelta(minutes=5)}),
        *[
            ("job_runs", f"{key}_{attempt}", {
                "job": key, "attempt": attempt, "worker_id": WORKER, "started_at": at,
                "finished_at": at + timedelta(seconds=1), "outcome": outcome, "error": error,
                "traceback": error and f"Traceback (most recent call last):\n{error}\n"})
            for key, attempt, at, outcome, error in [
                ("due", 1, now - timedelta(seconds=119), "failed", "SMTP down"),
                ("cron_succeeded", 1, now - day, "succeeded", None),
                *[("dead", a, now - timedelta(hours=2) + timedelta(minutes=a), "failed",
                   "unknown task 'gone.task'") for a in (1, 2, 3)],
            ]
        ],
        ("job_events", "cancelled", {"job": "cancelled", "at": now - timedelta(minutes=5),
                                     "event": "cancelled", "detail": "by ops"}),
        ("skipped_fire_times", "misfire", {
            "schedule_name": "nightly", "first_fire_time": now - 30 * day,
            "last_fire_time": now - 2 * day, "fire_times": 2**31 - 1, "reason": "misfire",
            "term": 5}),
        ("skipped_fire_times", "cap", {
            "schedule_name": "every_second", "first_fire_time": now - day,
            "last_fire_time": now - timedelta(hours=1), "fire_times": None,
            "reason": "catch_up_cap", "term": 6}),
        ("replicas", WORKER, {
            "id": WORKER, "host": "host-a", "pid": 101, "version": "0.1.0",
            "queues": ["default", "mail"], "concurrency": 10, "started_at": now - day,
            "heartbeat_at": now - timedelta(seconds=2), "config_hash": "c1",
            "stuck_threads": 2}),
    ]  # fmt: skip


def _columns(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'scheduler' AND table_name = %s",
        [table],
    ).fetchall()
    return {r[0] for r in rows}


def _apply_up_to(conn: psycopg.Connection, version: int) -> None:
    """Apply the shipped migrations up to ``version`` only, each in its own transaction with
    its migrations-table record, as ``Store.migrate`` does."""
    for migration in migrations():
        if migration.version > version:
            break
        with conn.transaction():
            conn.execute(STORE.q["migrations_table"])
            conn.execute(_compose(migration.text, STORE.schema))
            conn.execute(
                STORE.q["migration_record"], {"version": migration.version, "name": migration.name}
            )


def _fill(conn: psycopg.Connection, now: datetime) -> dict[str, Any]:
    """Insert the rows the current schema allows; returns key -> primary key of the rows."""
    ids: dict[str, Any] = {}
    for table, key, row in _rows(now):
        columns = _columns(conn, table)
        if not columns:
            continue  # the table comes with a later migration
        values = {c: v for c, v in row.items() if c in columns}
        if "job" in row:
            values["job_id"] = ids[row["job"]]
        cur = conn.execute(
            sql.SQL("INSERT INTO scheduler.{} ({}) VALUES ({}) RETURNING *").format(
                sql.Identifier(table),
                sql.SQL(", ").join(map(sql.Identifier, values)),
                sql.SQL(", ").join(map(sql.Placeholder, values)),
            ),
            values,
        )
        ids[key] = next(iter(cur.fetchone()))
    return ids


def _snapshot(conn: psycopg.Connection) -> dict[str, dict[Any, dict[str, Any]]]:
    """Every row of every table, keyed by its first column (the primary key of each)."""
    out = {}
    with conn.cursor(row_factory=dict_row) as cur:
        for table in TABLES:
            if _columns(conn, table):
                cur.execute(sql.SQL("SELECT * FROM scheduler.{}").format(sql.Identifier(table)))
                out[table] = {next(iter(r.values())): r for r in cur.fetchall()}
    return out


def _assert_survived(before: dict, after: dict) -> None:
    for table, rows in before.items():
        if table != "migrations":
            assert after[table].keys() == rows.keys(), f"{table}: rows lost or added"
        for key, old in rows.items():
            new = after[table].get(key)
            assert new is not None, f"{table} row {key!r} lost"
            changed = {c: (v, new[c]) for c, v in old.items() if new[c] != v}
            assert changed == {}, f"{table} row {key!r} changed (old, new): {changed}"
            for column in new.keys() - old.keys():
                if (table, column) not in ADDED:
                    pytest.fail(
                        f"a migration added {table}.{column}: add to ADDED the value that "
                        "rows written before it hold"
                    )
                expected = ADDED[table, column]
                expected = expected(old) if callable(expected) else expected
                assert new[column] == expected, f"{table} row {key!r}: {column} = {new[column]!r}"


def _schema(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    return {name: conn.execute(query).fetchall() for name, query in SCHEMA.items()}


async def _exercise(url: str, ids: dict[str, Any]) -> dict[str, Any]:
    """The hot path and the leader's work on the upgraded rows."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        new_id = await STORE.insert_job(conn, {
            "queue": "mail", "task": "mail.send", "args": Jsonb({}), "priority": 0,
            "run_at": None, "delay_s": 0.0, "max_attempts": 3, "backoff_base_s": 1.0, "backoff_max_s": 60.0,
            "backoff_jitter": 0.0, "idempotency_key": None, "concurrency_key": None})  # fmt: skip
        claimed = await STORE.claim_jobs(
            conn, queues=["default", "reports"], limit=10, worker_id="w-new", lease_s=30
        )
        by_id = {c["id"]: c for c in claimed}
        outcomes = [
            {"id": c["id"], "attempt": c["attempt"], "state": "succeeded", "outcome": "succeeded"}
            for c in claimed if c["id"] == ids["due"]
        ] + [
            {"id": c["id"], "attempt": c["attempt"], "state": "pending", "delay_s": 60.0,
             "outcome": "failed", "error": "retry me", "traceback": "tb"}
            for c in claimed if c["id"] != ids["due"]
        ]  # fmt: skip
        completed = await STORE.complete_jobs(conn, "w-new", outcomes)
        assert await STORE.try_lock_leader(conn)
        term = await STORE.elect(conn, "w-new", None)
        rescued = await maintenance.rescue_expired_leases(conn, STORE, holder="w-new", term=term)
        ticked = await materialiser.tick(conn, STORE, holder="w-new", term=term)
        status = await operations.status(conn, STORE)
    return {
        "new_id": new_id, "claimed": {i: c["attempt"] for i, c in by_id.items()},
        "completed": completed, "term": term, "rescued": rescued, "ticked": ticked,
        "status": status,
    }  # fmt: skip


UPGRADES = [
    pytest.param(m.version - 1, id=f"{m.version:04d}_{m.name}_on_data")
    for m in migrations()
    if m.version > 1  # 0001 runs on an empty database: tests/integration/test_migrations.py
]


def _migrate(url: str) -> list:
    async def run() -> list:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await STORE.migrate(conn)

    return asyncio.run(run())


def _assert_code_works(conn: psycopg.Connection, url: str, ids: dict[str, Any], version: int):
    """Enqueue, claim, complete, elect, rescue, materialise and status on upgraded rows."""
    last_id = conn.execute("SELECT max(id) FROM scheduler.jobs").fetchone()[0]
    result = asyncio.run(_exercise(url, ids))
    assert result["new_id"] > last_id  # the identity continues after the old rows
    assert result["claimed"] == {ids["due"]: 2, ids["cron_due"]: 1}
    assert set(result["completed"]) == {ids["due"], ids["cron_due"]}
    runs = conn.execute(
        "SELECT job_id, attempt, outcome FROM scheduler.job_runs WHERE job_id = ANY(%s)",
        [[ids["due"], ids["cron_due"], ids["running"]]],
    ).fetchall()
    assert sorted(runs) == sorted([
        (ids["due"], 1, "failed"), (ids["due"], 2, "succeeded"),
        (ids["cron_due"], 1, "failed"), (ids["running"], 1, "lost"),
    ])  # fmt: skip
    states = dict(conn.execute("SELECT id, state FROM scheduler.jobs").fetchall())
    due, cron_due, running = (states[ids[k]] for k in ("due", "cron_due", "running"))
    assert (due, cron_due, running) == ("succeeded", "pending", "pending")
    assert result["term"] == 8 and result["rescued"] == [ids["running"]]
    fire_times = [
        r[0]
        for r in conn.execute(
            "SELECT scheduled_for FROM scheduler.jobs WHERE schedule_name = 'every_second' "
            "ORDER BY 1"
        )
    ]
    assert result["ticked"].inserted >= 3 and len(fire_times) == result["ticked"].inserted + 1
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(fire_times))
    status = result["status"]
    assert status["leader"]["term"] == 8
    # the replica row exists from 0007 on; written at 0008 or later it has its own value
    expected = [] if version < 7 else [0] if version < 8 else [2]
    assert [r["stuck_threads"] for r in status["replicas"]] == expected


@pytest.mark.parametrize("from_version", UPGRADES)
def test_upgrade_keeps_rows_and_matches_a_fresh_schema(fresh_db_url, db, from_version):
    url = fresh_db_url()
    with psycopg.connect(url, autocommit=True) as conn:
        _apply_up_to(conn, from_version)
        applied = [r[0] for r in conn.execute(STORE.q["migrations_applied"])]
        assert applied == list(range(1, from_version + 1))
        now = conn.execute("SELECT now()").fetchone()[0]
        ids = _fill(conn, now)
        before = _snapshot(conn)

        applied_now = _migrate(url)
        assert [m.version for m in applied_now] == [
            m.version for m in migrations() if m.version > from_version
        ]
        after = _snapshot(conn)
        _assert_survived(before, after)
        assert after["migrations"].keys() == {m.version for m in migrations()}
        for table, _, row in _rows(now):  # the data above names real columns only
            assert row.keys() - {"job"} <= _columns(conn, table), table
        assert _schema(conn) == _schema(db), "upgraded schema differs from a fresh migrate"
        _assert_code_works(conn, url, ids, from_version)
