"""The claim's cost does not grow with jobs that are not yet due, on every PostgreSQL major
the suite runs on (PostgreSQL <= 17 has no skip scan: a claim ordered by (priority, run_at)
over the claim index read every future job of a priority, ~100 ms per claim with a million).

Measured in buffers touched (EXPLAIN ANALYZE), which do not depend on the machine's speed."""

from __future__ import annotations

import psycopg

from scheduler.store import Store

STORE = Store("scheduler")
PARAMS = {"queues": ["default", "other"], "limit": 10, "worker_id": "w", "lease_s": 30, "now": None}


def _claim_buffers(db: psycopg.Connection) -> tuple[int, list[tuple[int, int]]]:
    """Buffers one claim touches, and the (priority, id) of what it claimed (rolled back)."""
    text = STORE.q["claim_jobs"].as_string(db)
    with db.transaction(force_rollback=True):
        plan = db.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + text, PARAMS).fetchone()[0]
    with db.transaction(force_rollback=True):
        claimed = db.execute(text, PARAMS).fetchall()
    top = plan[0]["Plan"]
    buffers = top["Shared Hit Blocks"] + top["Shared Read Blocks"]
    return buffers, sorted((row[4], row[0]) for row in claimed)


def _future(db: psycopg.Connection, n: int) -> None:
    db.execute(
        "INSERT INTO scheduler.jobs (task, run_at, first_run_at, priority, queue) "
        "SELECT 't', now() + (1 + g %% 30) * interval '1 day', now(), g %% 3, "
        "CASE WHEN g %% 2 = 0 THEN 'default' ELSE 'other' END "
        "FROM generate_series(1, %s) AS g",
        [n],
    )
    db.execute("VACUUM ANALYZE scheduler.jobs")


def test_claim_cost_does_not_grow_with_future_jobs(db):
    _future(db, 2_000)
    small, _ = _claim_buffers(db)
    _future(db, 200_000)
    large, claimed = _claim_buffers(db)
    assert claimed == []  # nothing is due
    assert large < 4 * small + 50, (small, large)  # the walk read ~2,000 buffers on PG 15


def test_priorities_are_honoured_across_future_jobs(db):
    _future(db, 50_000)
    db.execute(
        "INSERT INTO scheduler.jobs (task, priority, queue) "
        "SELECT 't', p, q FROM unnest(ARRAY[2, 0, 1, 5, 0, -3, 1, 2, 0, 7, 4, 1]) WITH ORDINALITY "
        "AS u(p, n) CROSS JOIN (VALUES ('default'), ('other')) AS v(q)"
    )
    _, claimed = _claim_buffers(db)
    assert [p for p, _ in claimed] == [-3, -3, 0, 0, 0, 0, 0, 0, 1, 1]
