"""The data of ``python -m bench.dashboard``: a fresh database filled with set-based SQL
(one ``INSERT ... SELECT`` per table over ``generate_series``, then ANALYZE): jobs over the
last 3 days in realistic states, 20 queues, 50 tasks, 200 schedules written by
``put_schedule``, the newest ``runs`` attempts as job_runs, one job with 100 attempts, skipped
fire times, incidents, audit events, replicas and leader terms. :func:`fill` returns the
facts the page list needs (names, ids, a word in some errors)."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

LIMIT_MS = 200.0
USER, PASSWORD = "bench", "bench-password"
SPAN_S = 3 * 86400.0  # jobs are created over the last 3 days
QUEUES = ["default", "emails", "billing", "reports", "webhooks", "exports", "imports",
          "search-index", "notifications", "thumbnails", "payments", "sync-crm", "analytics",
          "cleanup", "invoices", "sms", "push", "audit", "ml-scoring", "backups"]  # fmt: skip
TASKS = [f"app.{QUEUES[k % 20].replace('-', '_')}.task_{k:02d}" for k in range(50)]
ERRORS = [
    "httpx.ReadTimeout: timed out reading from payments.internal:443 after 10.0 s",
    "psycopg.errors.DeadlockDetected: deadlock detected while updating ledger entries",
    "KeyError: 'customer_id'",
    "ValueError: invalid invoice total -12.50 for account 42",
    "ConnectionRefusedError: [Errno 111] Connection refused (smtp.internal:25)",
    "RuntimeError: upstream returned 503 Service Unavailable",
]
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/.venv/lib/python3.11/site-packages/scheduler/execution.py", line 212, in run\n'
    "    result = await handler(**args)\n"
    '  File "/srv/app/app/tasks/billing.py", line 88, in charge_invoice\n'
    "    response = await client.post(url, json=payload, timeout=10)\n"
    '  File "/srv/app/.venv/lib/python3.11/site-packages/httpx/_client.py", line 1859, in post\n'
    "    return await self.request(\n"
    '  File "/srv/app/.venv/lib/python3.11/site-packages/httpx/_client.py", line 1540, in request\n'
    "    return await self.send(request, auth=auth, follow_redirects=follow_redirects)\n"
    '  File "/srv/app/app/ledger.py", line 41, in post_entries\n'
    "    await conn.execute(INSERT_ENTRY, rows)\n"
)
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Europe/London"]
CRONS = ["*/5 * * * *", "0 * * * *", "30 9 * * 1-5", "0 9 * * 1", "15 2 * * *", "0 0 1 * *",
         "*/15 8-18 * * 1-5", "0 3 * * 0", "*/2 * * * *", "45 23 * * *"]  # fmt: skip
# per job id: a hash, the start lateness and the duration of each attempt (jobs and runs agree)
H2 = "(({id}) * 40503 % 10007)"
LATE = "(0.02 + {h2} % 500 / 1000.0 + CASE WHEN {cron} AND {h2} % 97 = 0 THEN 30 ELSE 0 END)"
DUR = "(0.005 + {h2} % 3000 / 1000.0)"
START = "({first} + make_interval(secs => {late} + power(2, {k}) - 2 + ({k} - 1) * {dur}))"

JOBS = """
WITH g AS (
    SELECT i, now() - make_interval(secs => (%(n)s - i) * %(step)s) AS c,
           i * 2654435761 % 1000 AS h, {h2} AS h2, i % 3 = 0 AS cron, (i / 3) % 200 AS s
    FROM generate_series(1::bigint, %(n)s) AS i
), k AS (
    SELECT g.*,
           CASE WHEN i > %(n)s - 20 THEN 'running'
                WHEN i > %(n)s - %(recent)s AND h2 % 3 = 0 THEN 'pending_due'
                WHEN h < 20 THEN 'dead'
                WHEN h < 30 THEN 'cancelled'
                WHEN h < 45 AND NOT cron THEN 'pending_later'
                WHEN h < 65 THEN 'retried'
                ELSE 'ok' END AS kind,
           CASE WHEN cron THEN (s % 50)::int
                ELSE floor(50 * power(h2 % 1000 / 1000.0, 2))::int END AS t,
           CASE WHEN cron THEN date_trunc('second', c) END AS fire,
           {late} AS late, {dur} AS dur
    FROM g
), a AS (
    SELECT k.*, coalesce(fire, c) AS first,
           CASE kind WHEN 'dead' THEN 3 WHEN 'retried' THEN 2 WHEN 'pending_later' THEN 0
                     WHEN 'pending_due' THEN (h < 100)::int ELSE 1 END AS attempt,
           CASE kind WHEN 'dead' THEN 3 WHEN 'retried' THEN 1
                     WHEN 'pending_due' THEN CASE WHEN h < 100 THEN 1 END END
               AS failed_attempt
    FROM k
), f AS (
    SELECT a.*,
           CASE WHEN kind IN ('ok', 'retried', 'dead', 'cancelled')
                THEN {start_last} + make_interval(secs => dur) END AS finished,
           CASE kind WHEN 'ok' THEN 'succeeded' WHEN 'retried' THEN 'succeeded'
                     WHEN 'pending_due' THEN 'pending' WHEN 'pending_later' THEN 'pending'
                     ELSE kind END AS state
    FROM a
)
INSERT INTO scheduler.jobs (id, queue, task, args, state, priority, run_at, first_run_at,
    attempt, max_attempts, locked_by, locked_at, lease_expires_at, schedule_name,
    scheduled_for, origin, term, last_error, created_at, updated_at, finished_at, result)
OVERRIDING SYSTEM VALUE
SELECT i, (%(queues)s::text[])[t % 20 + 1], (%(tasks)s::text[])[t + 1],
       jsonb_build_object('user_id', i % 100000, 'email', 'user' || i % 100000 || '@example.com',
                          'template', 'welcome', 'locale', 'en-GB', 'amount', i % 10000 / 100.0),
       state, CASE WHEN h2 % 20 = 0 THEN 10 ELSE 0 END,
       CASE kind WHEN 'pending_later' THEN now() + make_interval(secs => h2 % 1000 * 600)
                 WHEN 'pending_due' THEN c + make_interval(secs => attempt * 2)
                 ELSE first + make_interval(secs => power(2, greatest(attempt, 1)) - 2) END,
       first, attempt, CASE kind WHEN 'dead' THEN 3 ELSE 5 END,
       CASE WHEN attempt > 0 THEN 'host-' || i % 3 || ':1000:ab12' END,
       CASE WHEN kind = 'running' THEN now() - interval '5 seconds'
            WHEN attempt > 0 THEN first END,
       CASE WHEN kind = 'running' THEN now() + interval '30 seconds' END,
       CASE WHEN cron THEN (%(schedules)s::text[])[s + 1] END, fire,
       CASE WHEN cron THEN 'cron' ELSE 'api' END, CASE WHEN cron THEN 200 END,
       (%(errors)s::text[])[(i + failed_attempt) % 6 + 1], c, coalesce(finished, c), finished,
       CASE WHEN state = 'succeeded' THEN '{{"sent": true}}'::jsonb END
FROM f
"""

RUNS = """
INSERT INTO scheduler.job_runs (job_id, attempt, worker_id, started_at, finished_at, outcome,
                                error, traceback)
SELECT job_id, attempt, 'host-' || job_id % 3 || ':1000:ab12', started, finished, outcome,
       CASE WHEN outcome IN ('failed', 'timeout') THEN (%(errors)s::text[])[(job_id + attempt) % 6 + 1] END,
       CASE WHEN outcome IN ('failed', 'timeout')
            THEN %(traceback)s || (%(errors)s::text[])[(job_id + attempt) % 6 + 1] END
FROM (
    SELECT j.id AS job_id, n AS attempt, s.started, s.started + make_interval(secs => {dur}) AS finished,
           CASE WHEN n < j.attempt OR j.state IN ('pending', 'dead')
                THEN CASE WHEN (j.id + n) % 6 = 0 THEN 'timeout' ELSE 'failed' END
                WHEN j.state = 'cancelled' THEN 'cancelled' ELSE 'succeeded' END AS outcome
    FROM scheduler.jobs AS j
    CROSS JOIN LATERAL generate_series(1, j.attempt - (j.state = 'running')::int) AS n
    CROSS JOIN LATERAL (SELECT {start_n} AS started) AS s
    WHERE j.id <= %(n)s
    ORDER BY finished DESC
    LIMIT %(runs)s
) AS r
ORDER BY finished
"""


def _sql(template: str) -> str:
    """A fill statement with the per-job formulas spelled out (constants, not input), its
    literal ``%`` escaped for psycopg."""
    jh2 = H2.format(id="j.id")
    text = template.format(
        h2=H2.format(id="i"),
        late=LATE.format(h2="h2", cron="cron"),
        dur=DUR.format(h2="h2") if template is JOBS else DUR.format(h2=jh2),
        start_last=START.format(first="first", late="late", dur="dur", k="greatest(attempt, 1)"),
        start_n=START.format(first="j.first_run_at", dur=DUR.format(h2=jh2), k="n",
                             late=LATE.format(h2=jh2, cron="j.schedule_name IS NOT NULL")),
    )  # fmt: skip
    return _escaped(text)


def _escaped(sql: str) -> str:
    return sql.replace("%", "%%").replace("%%(", "%(")


OTHERS = [
    # the job with many attempts: dead after 100, one every 20 minutes over the last days
    """INSERT INTO scheduler.jobs (id, queue, task, args, state, run_at, first_run_at, attempt,
           max_attempts, locked_by, locked_at, last_error, created_at, updated_at, finished_at)
       OVERRIDING SYSTEM VALUE
       SELECT %(n)s + 1, 'billing', 'app.billing.task_02', '{"invoice": 991}', 'dead',
              now() - interval '2000 minutes', now() - interval '2000 minutes', 100, 100,
              'host-0:1000:ab12', now() - interval '20 minutes', %(error)s,
              now() - interval '2000 minutes', now() - interval '20 minutes',
              now() - interval '20 minutes'""",
    """INSERT INTO scheduler.job_runs (job_id, attempt, worker_id, started_at, finished_at,
           outcome, error, traceback)
       SELECT %(n)s + 1, a, 'host-0:1000:ab12', now() - make_interval(mins => 2020 - a * 20),
              now() - make_interval(mins => 2020 - a * 20) + interval '3 seconds', 'failed',
              %(error)s, %(traceback)s || %(error)s
       FROM generate_series(1, 100) AS a""",
    "SELECT setval(pg_get_serial_sequence('scheduler.jobs', 'id'), %(n)s + 1)",
    """INSERT INTO scheduler.job_events (job_id, at, event, detail, actor)
       SELECT id, finished_at + interval '10 minutes', 'retried', 'retried from the dashboard',
              'dashboard:alice'
       FROM scheduler.jobs WHERE state = 'dead' AND id % 5 = 0""",
    """INSERT INTO scheduler.job_events (job_id, at, event, detail, actor)
       SELECT %(n)s + 1, now() - make_interval(mins => 2000 - g * 40),
              (ARRAY['retried', 'cancel_requested'])[g % 2 + 1], 'from the CLI', 'cli:ops@host'
       FROM generate_series(1, 40) AS g""",
    """INSERT INTO scheduler.job_events (at, event, detail, actor, schedule_name)
       SELECT now() - make_interval(mins => g * 2),
              (ARRAY['schedule_paused', 'schedule_resumed', 'schedule_triggered'])[g % 3 + 1],
              'bench', 'dashboard:alice', (%(schedules)s::text[])[g % 200 + 1]
       FROM generate_series(1, 2000) AS g""",
    """INSERT INTO scheduler.job_events (at, event, detail, actor, queue)
       SELECT now() - make_interval(mins => g * 30),
              (ARRAY['queue_paused', 'queue_resumed'])[g % 2 + 1], 'bench', 'dashboard:bob',
              (%(queues)s::text[])[g % 20 + 1]
       FROM generate_series(1, 100) AS g""",
    """INSERT INTO scheduler.skipped_fire_times (schedule_name, first_fire_time,
           last_fire_time, fire_times, reason, term, recorded_at)
       SELECT (%(schedules)s::text[])[g % 200 + 1], now() - make_interval(mins => g * 3),
              now() - make_interval(mins => g * 3) + make_interval(mins => g % 5), g % 5 + 1,
              (ARRAY['misfire', 'starting_deadline', 'catch_up_cap', 'overlap'])[g % 4 + 1],
              200 - g / 20, now() - make_interval(mins => g * 3 - 1)
       FROM generate_series(1, 2000) AS g""",
    """INSERT INTO scheduler.incidents (schedule_name, kind, opened_at, since, detail, failures,
           opened_term, closed_at, closed_term, close_reason)
       SELECT (%(schedules)s::text[])[g % 200 + 1], (ARRAY['missed', 'failing', 'paused'])[g % 3 + 1],
              now() - make_interval(mins => g * 5), now() - make_interval(mins => g * 5 + 1),
              'bench incident', CASE WHEN g % 3 = 1 THEN 3 END, 200,
              CASE WHEN g > 10 THEN now() - make_interval(mins => g * 5 - 30) END,
              CASE WHEN g > 10 THEN 200 END, CASE WHEN g > 10 THEN 'succeeded' END
       FROM generate_series(1, 1000) AS g""",
    """INSERT INTO scheduler.replicas (id, host, pid, version, queues, concurrency, started_at,
           heartbeat_at, config_hash)
       SELECT 'host-' || g || ':1000:ab12', 'host-' || g, 1000, 'bench', %(queues)s::text[], 100,
              now() - interval '1 day', now() - make_interval(secs => g), 'cafe'
       FROM generate_series(0, 2) AS g""",
    """INSERT INTO scheduler.leader (holder, term, elected_at, heartbeat_at, timeline)
       VALUES ('host-0:1000:ab12', 200, now() - interval '3 hours', now(), 1)
       ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, term = excluded.term""",
    """INSERT INTO scheduler.leader_terms (term, holder, elected_at, timeline, previous_holder,
           previous_heartbeat_at)
       SELECT t, 'host-' || t % 3 || ':1000:ab12', now() - make_interval(hours => (200 - t) * 3),
              1, 'host-' || (t - 1) % 3 || ':1000:ab12',
              now() - make_interval(hours => (200 - t) * 3, secs => 5 + t % 20)
       FROM generate_series(1, 200) AS t ON CONFLICT DO NOTHING""",
    """INSERT INTO scheduler.queues (name, concurrency, rate, per_s, key_concurrency)
       VALUES ('billing', 10, NULL, NULL, NULL), ('webhooks', NULL, 100, 60, NULL),
              ('sync-crm', NULL, NULL, NULL, 1)""",
    "INSERT INTO scheduler.queue_pauses (queue, paused_by) VALUES ('backups', 'dashboard:bob')",
    """UPDATE scheduler.schedules AS s SET last_fire_at = (
           SELECT max(j.scheduled_for) FROM scheduler.jobs AS j WHERE j.schedule_name = s.name)""",
]


def _put_schedules(conn: psycopg.Connection[Any]) -> list[str]:
    from scheduler.schedule_control import pause_schedule, put_schedule

    names = []
    for s in range(200):
        name = f"{('report', 'sync', 'cleanup', 'digest', 'billing-run')[s % 5]}-{s:03d}"
        options: dict[str, Any] = {"queue": QUEUES[(s % 50) % 20]}
        if s % 4 == 0:
            options.update(alert_after_s=3600.0, alert_on_failures=3)
        if s % 20 == 7:
            put_schedule(name, TASKS[s % 50], every="90s", connection=conn, **options)
        else:
            put_schedule(name, TASKS[s % 50], cron=CRONS[s % len(CRONS)],
                         timezone=ZONES[s % len(ZONES)], args={"schedule": s},
                         connection=conn, **options)  # fmt: skip
        names.append(name)
    for name in names[3::40]:
        pause_schedule(name, connection=conn)
    return names


def fill(url: str, n: int, runs: int) -> dict[str, Any]:
    """Fill the migrated database at ``url``; return what the pages need (facts) and the
    row counts (``counts``)."""
    step = SPAN_S / n
    with psycopg.connect(url) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET work_mem = '256MB'")
        conn.execute("SET maintenance_work_mem = '256MB'")
        names = _put_schedules(conn)
        conn.commit()
        params = {"n": n, "step": step, "recent": max(40, int(1200 / step)), "runs": runs,
                  "queues": QUEUES, "tasks": TASKS, "errors": ERRORS, "schedules": names,
                  "traceback": TRACEBACK, "error": ERRORS[1]}  # fmt: skip
        for label, sql in (("jobs", _sql(JOBS)), ("job_runs", _sql(RUNS))):
            t = time.perf_counter()
            conn.execute(sql, params)
            conn.commit()
            print(f"  fill {label}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for sql in OTHERS:
            conn.execute(_escaped(sql), params)
        conn.commit()
        conn.autocommit = True
        t = time.perf_counter()
        conn.execute("VACUUM (ANALYZE)")
        print(f"  fill vacuum analyze: {time.perf_counter() - t:.1f} s", file=sys.stderr)

        def one(sql: str, *args: Any) -> Any:
            return conn.execute(sql, args).fetchone()[0]

        counts = {
            k: one(f"SELECT count(*) FROM scheduler.{k}")
            for k in ("jobs", "job_runs", "schedules", "job_events", "skipped_fire_times",
                      "incidents", "leader_terms")
        }  # fmt: skip
        counts["dead"] = one("SELECT count(*) FROM scheduler.jobs WHERE state = 'dead'")
        counts["pending"] = one("SELECT count(*) FROM scheduler.jobs WHERE state = 'pending'")
        nth = "SELECT id FROM scheduler.jobs ORDER BY id DESC OFFSET %s LIMIT 1"
        now = datetime.now(UTC)
        iso = lambda d: d.replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return {
            "counts": counts,
            "queue": QUEUES[0], "task": TASKS[0], "rare_queue": QUEUES[49 % 20],
            "rare_task": TASKS[49], "word": "deadlock",
            "since": iso(now - timedelta(hours=25)), "until": iso(now - timedelta(hours=24)),
            "old_since": iso(now - timedelta(hours=71)),
            "old_until": iso(now - timedelta(hours=70)),
            "page_999_path": f"/jobs?before={one(nth, 998 * 50 - 1)}",
            "page_1000_before": one(nth, 999 * 50 - 1),
            "many_attempts_id": n + 1, "many_attempts": 100,
            "schedule": one("SELECT name FROM scheduler.schedules WHERE timezone = "
                            "'Europe/Paris' AND paused_at IS NULL ORDER BY name LIMIT 1"),
        }  # fmt: skip
