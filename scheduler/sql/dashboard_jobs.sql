-- The dashboard's reads of jobs (scheduler/web/job_pages.py). Loaded by store.py with
-- queries.sql; every name here starts with dashboard_. Every statement is bounded: a LIMIT
-- or a keyset, under the dashboard's statement timeout (SCHEDULER_DASHBOARD_STATEMENT_TIMEOUT_S).
-- A filter parameter that is NULL does not filter; the pool runs statements unprepared, so
-- each is planned with its actual values (the NULL tests fold away).

-- name: dashboard_jobs_page
-- The jobs list: newest first, keyset on id (before = the last id of the previous page),
-- limit = page size + 1 (the extra row says there is a next page). Index: the primary key
-- scanned backwards from `before`, the filters checked on the way (or jobs_claim /
-- jobs_state_finished / jobs_schedule when the planner finds them cheaper).
-- A search (q: a case-insensitive substring of the arguments as JSON text or of the last
-- error) and a time window (since, until: on created_at) are checked on at most `scan`
-- jobs per page, those matching the other filters (NULL: no bound); a page they do not fill
-- says how far it looked (dashboard_jobs_scanned) and links on from there. So a word in no job, or a window far back in history, costs one
-- bounded walk per page instead of the whole table (at 1M jobs: 2 s and 0.6-0.8 s, past the
-- statement timeout and the 200 ms a page may take). No index on created_at: every claim
-- and completion would write it (18 per cent less claim+complete throughput, measured).
SELECT id, queue, task, state, priority, attempt, max_attempts, run_at, created_at,
       finished_at, schedule_name, scheduled_for, origin,
       left(last_error, 200) AS last_error,
       left(args::text, 200) AS args_text
FROM (
    SELECT *
    FROM {schema}.jobs
    WHERE (%(before)s::bigint IS NULL OR id < %(before)s)
      AND (%(state)s::text IS NULL OR state = %(state)s)
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
      AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(schedule)s::text IS NULL OR schedule_name = %(schedule)s)
    ORDER BY id DESC
    LIMIT %(scan)s::bigint
) AS j
WHERE (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
  AND (%(q)s::text IS NULL
       OR strpos(lower(args::text), lower(%(q)s)) > 0
       OR strpos(lower(coalesce(last_error, '')), lower(%(q)s)) > 0)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: dashboard_jobs_scanned
-- How far a bounded page of dashboard_jobs_page that it did not fill looked: the oldest of
-- the `scan` jobs it read (last_id) and how many it read (fewer than `scan`: the end).
SELECT s.id AS last_id, count(*) OVER () AS scanned
FROM (
    SELECT id
    FROM {schema}.jobs
    WHERE (%(before)s::bigint IS NULL OR id < %(before)s)
      AND (%(state)s::text IS NULL OR state = %(state)s)
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
      AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(schedule)s::text IS NULL OR schedule_name = %(schedule)s)
    ORDER BY id DESC
    LIMIT %(scan)s::bigint
) AS s
ORDER BY s.id
LIMIT 1;

-- name: dashboard_jobs_matching_ids
-- A bulk action's jobs: the ids matching the list's filter, newest first, at most `limit`
-- (10,001: one more than an action takes, so the confirmation can say "more than").
SELECT id
FROM {schema}.jobs
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(schedule)s::text IS NULL OR schedule_name = %(schedule)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
  AND (%(q)s::text IS NULL
       OR strpos(lower(args::text), lower(%(q)s)) > 0
       OR strpos(lower(coalesce(last_error, '')), lower(%(q)s)) > 0)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: dashboard_job
-- One job, with how late its first attempt started after it was first due (lateness_s:
-- against the fire time for a cron job). Index: the primary key; job_runs_one_per_attempt.
SELECT j.*,
       (SELECT extract(epoch FROM r.started_at - coalesce(j.scheduled_for, j.first_run_at))
        FROM {schema}.job_runs AS r
        WHERE r.job_id = j.id ORDER BY r.attempt LIMIT 1)::float8 AS lateness_s
FROM {schema}.jobs AS j
WHERE j.id = %(id)s;

-- name: dashboard_job_runs
-- Every attempt of a job, oldest first, at most `limit`. Index: job_runs_one_per_attempt.
SELECT attempt, outcome, worker_id, started_at, finished_at,
       extract(epoch FROM finished_at - started_at)::float8 AS duration_s,
       error, traceback
FROM {schema}.job_runs
WHERE job_id = %(id)s
ORDER BY attempt
LIMIT %(limit)s;

-- name: dashboard_job_events
-- The operator actions on a job, newest first, at most `limit`. Index: job_events_job.
SELECT at, event, detail, actor
FROM {schema}.job_events
WHERE job_id = %(id)s
ORDER BY at DESC, id DESC
LIMIT %(limit)s;

-- name: dashboard_dead_letters
-- Dead jobs, most recently dead first, keyset on (finished_at, id). Index:
-- jobs_state_finished (state, finished_at), scanned backwards.
SELECT id, queue, task, attempt, finished_at, schedule_name,
       left(last_error, 300) AS last_error,
       left(args::text, 200) AS args_text
FROM {schema}.jobs
WHERE state = 'dead'
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(before_at)s::timestamptz IS NULL
       OR (finished_at, id) < (%(before_at)s::timestamptz, %(before_id)s::bigint))
ORDER BY finished_at DESC, id DESC
LIMIT %(limit)s;
