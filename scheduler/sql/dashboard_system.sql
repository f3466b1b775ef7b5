-- The dashboard's system pages (scheduler.web: overview, schedules, replicas): named reads,
-- loaded by scheduler.store with queries.sql. Every read is bounded: a LIMIT, a cap on what
-- a count may read (%(cap)s: a count that reaches it is shown as "cap+"), or a table that
-- stays small (schedules, queues, replicas). The index each one uses is named in its
-- comment. The overview and its live refresh (/events) run the first three per tick.

-- name: dashboard_overview_queues
-- Each queue known anywhere (with pending or running jobs, limits, a pause, or served by a
-- replica), at most %(queues_max)s by name, with its depth by state, each count reading at
-- most %(cap)s index entries: due and scheduled pending jobs (jobs_claim, index-only), running
-- (jobs_running_queue), dead in the last %(dead_window_s)s seconds (jobs_state_finished,
-- capped across queues), the oldest due job (one jobs_claim descent per queue and priority,
-- as next_due), its limits (queues) and its pause (queue_pauses). Queues with pending jobs
-- are found by a loose index scan of jobs_claim (one descent per queue).
WITH RECURSIVE pending_queues AS (
    SELECT (SELECT j.queue FROM {schema}.jobs AS j WHERE j.state = 'pending'
            ORDER BY j.queue LIMIT 1) AS queue, 1 AS n
  UNION ALL
    SELECT (SELECT j.queue FROM {schema}.jobs AS j WHERE j.state = 'pending' AND j.queue > p.queue
            ORDER BY j.queue LIMIT 1), p.n + 1
    FROM pending_queues AS p
    WHERE p.queue IS NOT NULL AND p.n < %(queues_max)s
), names AS (
    SELECT queue AS name FROM pending_queues WHERE queue IS NOT NULL
    UNION SELECT queue FROM (SELECT queue FROM {schema}.jobs WHERE state = 'running'
                             LIMIT %(cap)s) AS r
    UNION SELECT name FROM {schema}.queues
    UNION SELECT queue FROM {schema}.queue_pauses
    UNION SELECT unnest(queues) FROM {schema}.replicas
), shown AS (
    SELECT name FROM names ORDER BY name LIMIT %(queues_max)s
), priorities AS (
    SELECT s.name AS queue,
           (SELECT j.priority FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue = s.name
            ORDER BY j.priority LIMIT 1) AS priority
    FROM shown AS s
  UNION ALL
    SELECT p.queue,
           (SELECT j.priority FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue = p.queue AND j.priority > p.priority
            ORDER BY j.priority LIMIT 1)
    FROM priorities AS p
    WHERE p.priority IS NOT NULL
), oldest AS (
    SELECT p.queue, min(o.run_at) AS oldest_due_at
    FROM priorities AS p
    CROSS JOIN LATERAL (
        SELECT j.run_at FROM {schema}.jobs AS j
        WHERE j.state = 'pending' AND j.queue = p.queue AND j.priority = p.priority
          AND j.run_at <= now()
        ORDER BY j.run_at LIMIT 1
    ) AS o
    WHERE p.priority IS NOT NULL
    GROUP BY p.queue
), dead AS (
    SELECT d.queue, count(*) AS n, sum(count(*)) OVER () >= %(cap)s AS capped
    FROM (SELECT queue FROM {schema}.jobs
          WHERE state = 'dead' AND finished_at > now() - make_interval(secs => %(dead_window_s)s)
          LIMIT %(cap)s) AS d
    GROUP BY d.queue
)
SELECT s.name AS queue,
       (SELECT count(*) FROM (SELECT 1 FROM {schema}.jobs AS j
                              WHERE j.state = 'pending' AND j.queue = s.name AND j.run_at <= now()
                              LIMIT %(cap)s) AS x) AS due,
       (SELECT count(*) FROM (SELECT 1 FROM {schema}.jobs AS j
                              WHERE j.state = 'pending' AND j.queue = s.name AND j.run_at > now()
                              LIMIT %(cap)s) AS x) AS scheduled,
       (SELECT count(*) FROM (SELECT 1 FROM {schema}.jobs AS j
                              WHERE j.state = 'running' AND j.queue = s.name
                              LIMIT %(cap)s) AS x) AS running,
       coalesce(d.n, 0) AS dead_recent,
       coalesce((SELECT bool_or(capped) FROM dead), false) AS dead_capped,
       o.oldest_due_at,
       extract(epoch FROM now() - o.oldest_due_at)::float8 AS oldest_due_age_s,
       q.concurrency, q.rate, q.per_s, q.key_concurrency, q.source AS limits_source,
       p.paused_at, p.paused_by
FROM shown AS s
LEFT JOIN oldest AS o ON o.queue = s.name
LEFT JOIN dead AS d ON d.queue = s.name
LEFT JOIN {schema}.queues AS q ON q.name = s.name
LEFT JOIN {schema}.queue_pauses AS p ON p.queue = s.name
ORDER BY s.name;

-- name: dashboard_overview_throughput
-- Runs finished per minute over the last hour (60 rows, oldest first, the current minute
-- last), by outcome. job_runs has no index on finished_at, but runs are inserted when they
-- finish, so by id (job_runs_pkey, backwards) they come newest first: `steps` walks back
-- 1,000 ids at a time (an index-only skip and one row read per step) while the run there
-- finished within the hour, at most %(steps)s steps; then the runs of those steps are read
-- and counted. A quiet hour reads 1,000 runs, a busy one about its own runs, at most
-- %(steps)s x 1,000; `truncated` says the hour had more (the oldest minutes are short).
WITH RECURSIVE bounds AS (
    SELECT date_trunc('minute', now()) - interval '59 minutes' AS since,
           date_trunc('minute', now()) AS until
), steps AS (
    SELECT (SELECT max(id) FROM {schema}.job_runs) AS id, 0 AS n
  UNION ALL
    SELECT (SELECT r.id FROM {schema}.job_runs AS r WHERE r.id < s.id
            ORDER BY r.id DESC OFFSET 999 LIMIT 1), s.n + 1
    FROM steps AS s
    WHERE s.id IS NOT NULL AND s.n < %(steps)s
      AND (SELECT r.finished_at FROM {schema}.job_runs AS r WHERE r.id = s.id)
          >= (SELECT since FROM bounds)
), recent AS (
    SELECT r.finished_at, r.outcome FROM {schema}.job_runs AS r
    ORDER BY r.id DESC
    LIMIT (SELECT count(*) * 1000 FROM steps)
), counted AS (
    SELECT date_trunc('minute', r.finished_at) AS minute,
           count(*) FILTER (WHERE r.outcome = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE r.outcome IN ('failed', 'timeout', 'lost')) AS failed,
           count(*) FILTER (WHERE r.outcome = 'cancelled') AS cancelled
    FROM recent AS r, bounds AS b
    WHERE r.finished_at >= b.since
    GROUP BY 1
)
SELECT m.minute, coalesce(c.succeeded, 0) AS succeeded, coalesce(c.failed, 0) AS failed,
       coalesce(c.cancelled, 0) AS cancelled,
       (SELECT count(*) > %(steps)s FROM steps) AS truncated
FROM bounds AS b
CROSS JOIN generate_series(b.since, b.until, interval '1 minute') AS m(minute)
LEFT JOIN counted AS c ON c.minute = m.minute
ORDER BY m.minute;

-- name: dashboard_schedules
-- The schedules page: schedules by name after %(after)s (keyset; '' for the first page), at
-- most %(limit)s, each with its latest job (jobs_one_per_fire_time, one descent) and its open
-- incidents (incidents_one_open).
SELECT s.name, s.cron, s.every_s, s.timezone, s.task, s.queue, s.enabled, s.paused_at,
       s.next_run_at, s.last_fire_at, s.misfire_policy, s.overlap_policy, s.source,
       s.last_error, l.state AS last_state, l.scheduled_for AS last_scheduled_for,
       (SELECT count(*) FROM {schema}.incidents AS i
        WHERE i.schedule_name = s.name AND i.closed_at IS NULL) AS open_incidents
FROM {schema}.schedules AS s
LEFT JOIN LATERAL (
    SELECT j.state, j.scheduled_for FROM {schema}.jobs AS j
    WHERE j.schedule_name = s.name
    ORDER BY j.scheduled_for DESC LIMIT 1
) AS l ON true
WHERE s.name > %(after)s
ORDER BY s.name
LIMIT %(limit)s;

-- name: dashboard_schedule
-- One schedule's row (schedules_pkey) and the database's clock.
SELECT s.*, now() AS db_now FROM {schema}.schedules AS s WHERE s.name = %(name)s;

-- name: dashboard_schedule_runs
-- A schedule's latest %(limit)s jobs by fire time (jobs_one_per_fire_time, backwards) with
-- their first attempt (job_runs_one_per_attempt): start lateness = started_at - first_run_at
-- (the run_history view's start_lateness_s).
SELECT j.id, j.scheduled_for, j.origin, j.state, j.attempt, j.max_attempts, j.first_run_at,
       j.finished_at, j.last_error, r.started_at, r.outcome AS first_outcome,
       extract(epoch FROM r.started_at - j.first_run_at)::float8 AS lateness_s
FROM (SELECT * FROM {schema}.jobs
      WHERE schedule_name = %(name)s
      ORDER BY scheduled_for DESC LIMIT %(limit)s) AS j
LEFT JOIN {schema}.job_runs AS r ON r.job_id = j.id AND r.attempt = 1
ORDER BY j.scheduled_for DESC;

-- name: dashboard_schedule_skipped
-- Fire times a schedule did not run, newest first (skipped_fire_times_schedule).
SELECT first_fire_time, last_fire_time, fire_times, reason, term, recorded_at
FROM {schema}.skipped_fire_times
WHERE schedule_name = %(name)s
ORDER BY last_fire_time DESC
LIMIT %(limit)s;

-- name: dashboard_schedule_incidents
-- A schedule's alert incidents, newest first (incidents_schedule, backwards).
SELECT id, kind, opened_at, since, detail, failures, closed_at, close_reason
FROM {schema}.incidents
WHERE schedule_name = %(name)s
ORDER BY opened_at DESC, id DESC
LIMIT %(limit)s;

-- name: dashboard_schedule_events
-- Operator actions on a schedule, newest first (job_events_schedule, backwards).
SELECT at, event, detail, actor, job_id
FROM {schema}.job_events
WHERE schedule_name = %(name)s
ORDER BY at DESC
LIMIT %(limit)s;

-- name: dashboard_leader_terms
-- Leader history, newest term first (leader_terms_pkey, backwards): the gap between a term
-- and the previous one's last heartbeat is how long the service had no leader (a failover).
SELECT term, holder, elected_at, timeline, previous_holder, previous_heartbeat_at,
       extract(epoch FROM elected_at - previous_heartbeat_at)::float8 AS gap_s
FROM {schema}.leader_terms
ORDER BY term DESC
LIMIT %(limit)s;
