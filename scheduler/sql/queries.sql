-- Every SQL statement of scheduler, loaded by name (see scheduler/store.py).
-- {schema} is the configured schema, composed as a quoted identifier; %(name)s are parameters.
-- "Now" is always the database clock (now()), never a replica's clock.

-- name: migrations_lock
SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0));

-- name: migrations_table
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: migration_lock_timeout
-- A migration's statements wait this long (ms) for their locks, after the migrations lock:
-- a migration must not queue every reader of a table behind a long transaction.
SELECT set_config('lock_timeout', %(ms)s, true);

-- name: probe_timeout
-- Health probes must answer in time even when the database is slow.
SET statement_timeout = 2000;

-- name: migrations_table_exists
SELECT to_regclass(%(table)s) IS NOT NULL;

-- name: migrations_applied
SELECT version, name, applied_at FROM {schema}.migrations ORDER BY version;

-- name: migration_record
INSERT INTO {schema}.migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: insert_job
-- Due at run_at, or delay_s seconds after the database's now() (schedule_in; 0: at once).
-- A job without an idempotency key: a plain INSERT (ON CONFLICT would make every insert a
-- speculative insertion, with its extra WAL record, for a key that is NULL).
INSERT INTO {schema}.jobs (queue, task, args, priority, run_at, first_run_at, max_attempts,
                           backoff_base_s, backoff_max_s, backoff_jitter, concurrency_key,
                           headers)
VALUES (%(queue)s, %(task)s, %(args)s, %(priority)s,
        coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay_s)s)),
        coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay_s)s)),
        %(max_attempts)s, %(backoff_base_s)s, %(backoff_max_s)s, %(backoff_jitter)s,
        %(concurrency_key)s, coalesce(%(headers)s::jsonb, '{}'))
RETURNING id;

-- name: insert_job_idempotent
-- With an idempotency key: nothing is inserted while a live job holds the key
-- (jobs_idempotency_key) or, with unique_for_s, while another job holds the key's window
-- (jobs_unique_window, 0014: unique_until = created_at + unique_for_s; NULL without a window).
-- No conflict target, so both indexes are arbiters: a concurrent insert of the key waits for
-- the first's transaction, then inserts nothing (see the migration). A job without a key never
-- comes here (insert_job).
INSERT INTO {schema}.jobs (queue, task, args, priority, run_at, first_run_at, max_attempts,
                           backoff_base_s, backoff_max_s, backoff_jitter, idempotency_key,
                           unique_until, concurrency_key, headers)
VALUES (%(queue)s, %(task)s, %(args)s, %(priority)s,
        coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay_s)s)),
        coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay_s)s)),
        %(max_attempts)s, %(backoff_base_s)s, %(backoff_max_s)s, %(backoff_jitter)s,
        %(idempotency_key)s, now() + make_interval(secs => %(unique_for_s)s),
        %(concurrency_key)s, coalesce(%(headers)s::jsonb, '{}'))
ON CONFLICT DO NOTHING
RETURNING id;

-- name: job_holding_idempotency_key
-- The job an insert_job_idempotent that inserted nothing met: the live job holding the key,
-- else (with unique_for_s) the job whose window is still open. No row: it finished, or its
-- window passed, since the insert (the store releases a passed window and tries again).
SELECT h.id, h.state FROM (
    SELECT id, state, 0 AS rank FROM {schema}.jobs
    WHERE idempotency_key = %(idempotency_key)s AND state IN ('pending', 'running')
  UNION ALL
    SELECT id, state, 1 AS rank FROM {schema}.jobs
    WHERE idempotency_key = %(idempotency_key)s AND unique_until IS NOT NULL
      AND unique_until > now() AND %(unique_for_s)s::float8 IS NOT NULL
) AS h
ORDER BY h.rank
LIMIT 1;

-- name: release_unique_window
-- The job holding the key's window loses it once the window has passed (database clock), so
-- the next insert of the key can take it. Concurrent releases serialise on the row lock;
-- the insert that follows is still decided by jobs_unique_window.
UPDATE {schema}.jobs SET unique_until = NULL
WHERE idempotency_key = %(idempotency_key)s AND unique_until IS NOT NULL
  AND unique_until <= now();

-- name: replace_pending_job
-- on_conflict="replace": the pending job holding the key takes the new arguments, due time,
-- priority and headers (the replacing call's, with its trace context; its window, if any,
-- stays that of its creation); not a running or finished job, nor a job of another task.
-- The workers are told of the new due time, as after an insert (payload "<queue> <epoch of
-- run_at>", see 0004).
WITH replaced AS (
    UPDATE {schema}.jobs
    SET args = %(args)s,
        priority = %(priority)s,
        headers = coalesce(%(headers)s::jsonb, '{}'),
        run_at = coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay_s)s)),
        first_run_at = CASE WHEN attempt = 0
            THEN coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => %(delay_s)s))
            ELSE first_run_at END,
        updated_at = now()
    WHERE id = %(id)s AND state = 'pending' AND task = %(task)s
    RETURNING id, queue, run_at
)
SELECT r.id, pg_notify(%(channel)s, r.queue || ' ' || extract(epoch FROM r.run_at)::text)::text
FROM replaced AS r;

-- name: job_state
SELECT state FROM {schema}.jobs WHERE id = %(id)s;

-- name: claim_jobs
-- One short statement that commits: the handler never runs inside this transaction.
-- Cost independent of the jobs not yet due, on every PostgreSQL major: per queue, the
-- distinct priorities of its pending jobs are found by one descent of the claim index
-- (queue, priority, run_at, id) WHERE state = 'pending' each (a loose index scan, written
-- as a recursive CTE: PostgreSQL <= 17 has no skip scan), then per priority the due jobs are
-- read in (run_at, id) order, a range that ends at the first future job. A single walk
-- ordered by (priority, run_at) had to read every future job of a priority before the next
-- priority (1M future jobs: ~10,000 buffers and ~100 ms per claim on PostgreSQL 15). Cost
-- grows with the number of distinct priorities in a queue, not with its jobs.
-- overlap_policy queue, buffer_one, cancel_previous: a job is claimable only when no older
-- job of its schedule is live (index jobs_live_by_schedule); buffer_one and cancel_previous
-- also wait while a newer job of the schedule runs (a late fire time materialised after a
-- manual trigger, an operator's retry of an older job): one job of the schedule at a time.
-- "Due" is run_at <= %(now)s, the database clock when NULL (tests move it forward, as River's
-- queries take @now).
WITH RECURSIVE priorities AS (
    SELECT q.name AS queue,
           (SELECT j.priority FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue = q.name
            ORDER BY j.priority LIMIT 1) AS priority
    FROM unnest(%(queues)s::text[]) AS q(name)
    WHERE NOT EXISTS (SELECT 1 FROM {schema}.queue_pauses AS pq WHERE pq.queue = q.name)
  UNION ALL
    SELECT p.queue,
           (SELECT j.priority FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue = p.queue AND j.priority > p.priority
            ORDER BY j.priority LIMIT 1)
    FROM priorities AS p
    WHERE p.priority IS NOT NULL
), due AS (
    SELECT c.id
    FROM priorities AS p
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at
        FROM {schema}.jobs AS j
        WHERE j.state = 'pending' AND j.queue = p.queue AND j.priority = p.priority
          AND j.run_at <= coalesce(%(now)s::timestamptz, now())
          AND (j.overlap IN ('allow', 'skip') OR NOT EXISTS (
                  SELECT 1 FROM {schema}.jobs AS older
                  WHERE older.schedule_name = j.schedule_name
                    AND older.state IN ('pending', 'running')
                    AND (older.scheduled_for < j.scheduled_for
                         OR (older.state = 'running' AND j.overlap <> 'queue'))))
        ORDER BY j.run_at, j.id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    WHERE p.priority IS NOT NULL
    ORDER BY c.priority, c.run_at, c.id
    LIMIT %(limit)s
)
UPDATE {schema}.jobs AS j
SET state = 'running',
    attempt = j.attempt + 1,
    locked_by = %(worker_id)s,
    locked_at = now(),
    lease_expires_at = now() + make_interval(secs => %(lease_s)s),
    updated_at = now()
FROM due
WHERE j.id = due.id
RETURNING j.id, j.queue, j.task, j.args, j.priority, j.attempt, j.max_attempts,
          j.backoff_base_s, j.backoff_max_s, j.backoff_jitter,
          j.schedule_name, j.scheduled_for, j.run_at, j.headers,
          extract(epoch FROM now() - j.run_at)::float8 AS lateness_s,
          extract(epoch FROM now() - j.first_run_at)::float8 AS age_s;

-- name: claim_jobs_limited
-- claim_jobs for a worker some of whose queues have limits (a row in `queues`, 0016;
-- scheduler.flow): the worker chooses this statement only while it knows of such a queue
-- (read at start, on a NOTIFY on "<schema>.limits", at every safety poll), so an unlimited
-- claim never pays for flow control. The queues of the list that have a row are claimed
-- first, by claim_limited(), which locks each one's row and counts under the lock (see the
-- migration); the other queues take the slots left, lock-free as in claim_jobs. Which queues
-- are limited is read here, not taken from the worker: a limit removed meanwhile is no
-- longer applied, one added meanwhile already is.
WITH RECURSIVE limited AS MATERIALIZED (
    SELECT array_agg(l.name ORDER BY l.name) AS names
    FROM {schema}.queues AS l
    WHERE l.name = ANY(%(queues)s::text[])
      AND NOT EXISTS (SELECT 1 FROM {schema}.queue_pauses AS pq WHERE pq.queue = l.name)
), flow AS MATERIALIZED (
    SELECT f.*
    FROM limited AS l
    CROSS JOIN LATERAL {schema}.claim_limited(l.names, %(limit)s, %(worker_id)s,
                                              %(lease_s)s, %(now)s::timestamptz) AS f
    WHERE l.names IS NOT NULL
), priorities AS (
    SELECT q.name AS queue,
           (SELECT j.priority FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue = q.name
            ORDER BY j.priority LIMIT 1) AS priority
    FROM unnest(%(queues)s::text[]) AS q(name)
    WHERE q.name <> ALL (coalesce((SELECT names FROM limited), '{}'))
      AND NOT EXISTS (SELECT 1 FROM {schema}.queue_pauses AS pq WHERE pq.queue = q.name)
  UNION ALL
    SELECT p.queue,
           (SELECT j.priority FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue = p.queue AND j.priority > p.priority
            ORDER BY j.priority LIMIT 1)
    FROM priorities AS p
    WHERE p.priority IS NOT NULL
), due AS (
    SELECT c.id
    FROM priorities AS p
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at
        FROM {schema}.jobs AS j
        WHERE j.state = 'pending' AND j.queue = p.queue AND j.priority = p.priority
          AND j.run_at <= coalesce(%(now)s::timestamptz, now())
          AND (j.overlap IN ('allow', 'skip') OR NOT EXISTS (
                  SELECT 1 FROM {schema}.jobs AS older
                  WHERE older.schedule_name = j.schedule_name
                    AND older.state IN ('pending', 'running')
                    AND (older.scheduled_for < j.scheduled_for
                         OR (older.state = 'running' AND j.overlap <> 'queue'))))
        ORDER BY j.run_at, j.id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    WHERE p.priority IS NOT NULL
    ORDER BY c.priority, c.run_at, c.id
    LIMIT %(limit)s - (SELECT count(*) FROM flow)
), free AS (
    UPDATE {schema}.jobs AS j
    SET state = 'running',
        attempt = j.attempt + 1,
        locked_by = %(worker_id)s,
        locked_at = now(),
        lease_expires_at = now() + make_interval(secs => %(lease_s)s),
        updated_at = now()
    FROM due
    WHERE j.id = due.id
    RETURNING j.*
)
SELECT j.id, j.queue, j.task, j.args, j.priority, j.attempt, j.max_attempts,
       j.backoff_base_s, j.backoff_max_s, j.backoff_jitter,
       j.schedule_name, j.scheduled_for, j.run_at, j.headers,
       extract(epoch FROM now() - j.run_at)::float8 AS lateness_s,
       extract(epoch FROM now() - j.first_run_at)::float8 AS age_s
FROM (SELECT * FROM flow UNION ALL SELECT * FROM free) AS j;

-- name: complete_jobs
-- Fenced batch completion: a row changes only if it is still running this attempt of this
-- worker, so a stale worker cannot overwrite a newer attempt. One job_runs row per change,
-- unless job_runs already holds that attempt (jobs.attempt reset by hand): then the job's
-- transition is written all the same and run_recorded is false. One notification on
-- done_channel for the jobs that finished (payload: their ids, or '' for a batch of more than
-- 500: listeners look again), read by wait_for_job. (complete_succeeded, the
-- hot path, inserts plainly; its rare conflict makes the writer split the batch down to the
-- row and write it with this statement.)
WITH outcome AS (
    SELECT *
    FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(states)s::text[],
                %(delays_s)s::double precision[], %(outcomes)s::text[], %(errors)s::text[],
                %(tracebacks)s::text[], %(results)s::text[])
         AS o(id, attempt, state, delay_s, outcome, error, traceback, result)
), changed AS (
    UPDATE {schema}.jobs AS j
    SET state = o.state,
        result = o.result::jsonb,
        run_at = CASE WHEN o.state = 'pending'
                      THEN now() + make_interval(secs => o.delay_s) ELSE j.run_at END,
        finished_at = CASE WHEN o.state = 'pending' THEN NULL ELSE now() END,
        lease_expires_at = NULL,
        last_error = o.error,
        updated_at = now()
    FROM outcome AS o
    WHERE j.id = o.id AND j.state = 'running' AND j.locked_by = %(worker_id)s
      AND j.attempt = o.attempt
    RETURNING j.id, j.attempt, j.locked_at, j.state
), run AS (
    INSERT INTO {schema}.job_runs (job_id, attempt, worker_id, started_at, finished_at, outcome,
                                   error, traceback)
    SELECT c.id, c.attempt, %(worker_id)s, c.locked_at, now(), o.outcome, o.error, o.traceback
    FROM changed AS c JOIN outcome AS o ON o.id = c.id
    ON CONFLICT (job_id, attempt) DO NOTHING
    RETURNING job_id
), done AS (
    SELECT pg_notify(%(done_channel)s, CASE WHEN count(*) <= 500
                                            THEN string_agg(c.id::text, ',') ELSE '' END)
    FROM changed AS c WHERE c.state <> 'pending' HAVING count(*) > 0
)
SELECT c.id, c.id IN (SELECT job_id FROM run) AS run_recorded FROM changed AS c
WHERE (SELECT count(*) FROM done) >= 0;  -- evaluates done (the notification) once

-- name: session_settings
-- The lock session of a hung leader must end by itself whether it hung between statements,
-- inside a tick's transaction, or inside a statement.
SELECT set_config('idle_session_timeout', %(idle_session_timeout_ms)s, false),
       set_config('idle_in_transaction_session_timeout', %(idle_session_timeout_ms)s, false),
       set_config('statement_timeout', %(idle_session_timeout_ms)s, false),
       -- server side of a network partition (ignored on Unix sockets)
       set_config('tcp_keepalives_idle', '5', false),
       set_config('tcp_keepalives_interval', '1', false),
       set_config('tcp_keepalives_count', '3', false),
       set_config('tcp_user_timeout', '10000', false),
       set_config('application_name', %(application_name)s, false);

-- name: leader_try_lock
SELECT pg_try_advisory_lock(hashtextextended(%(key)s, 0)) AS locked;

-- name: leader_wait_timeouts
-- Run first in the follower's wait transaction: no statement_timeout for the wait itself (the
-- session keeps its own for everything else) and a lock_timeout so the wait ends now and then.
SELECT set_config('statement_timeout', '0', true),
       set_config('lock_timeout', %(lock_timeout_ms)s, true);

-- name: leader_wait_lock
-- A follower waits inside PostgreSQL for the session-level leader lock: no polling, and the
-- lock is granted the moment the leader's session ends (crash, hang timeout, unlock). Returns
-- the backend that took it: behind a transaction pooler it may not be ours afterwards.
SELECT pg_advisory_lock(hashtextextended(%(key)s, 0)), pg_backend_pid() AS pid;

-- name: backend_pid
SELECT pg_backend_pid() AS pid;

-- name: release_pooled_lock
-- The leader lock was taken by a server session a transaction pooler no longer gives us: end
-- that session (it is ours: same role), which releases the lock. Unlocking cannot be aimed.
-- Only while it is idle between transactions, so no other client's transaction is cut.
SELECT pg_terminate_backend(pid) AS terminated
FROM pg_stat_activity WHERE pid = %(pid)s AND state = 'idle';

-- name: leader_unlock
SELECT pg_advisory_unlock(hashtextextended(%(key)s, 0)) AS unlocked;

-- name: leader_elect
-- A new term on every election; the row is audit and liveness, the lock is the authority.
-- Also the PostgreSQL timeline the election ran on (the first 8 hex digits of the current WAL
-- file name), and the one the previous leader recorded: a different one means a failover.
-- Each term is also logged in leader_terms (0022: the dashboard's leader history) with the
-- previous term's holder and last heartbeat: elected_at - previous_heartbeat_at is the gap.
WITH previous AS (SELECT timeline, holder, heartbeat_at FROM {schema}.leader),
     now_on AS (SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
                       AS timeline),
     elected AS (
        INSERT INTO {schema}.leader AS l (id, holder, term, elected_at, heartbeat_at,
                                          config_hash, timeline)
        VALUES (true, %(holder)s, 1, now(), now(), %(config_hash)s, (SELECT timeline FROM now_on))
        ON CONFLICT (id) DO UPDATE
        SET holder = EXCLUDED.holder, term = l.term + 1, elected_at = now(), heartbeat_at = now(),
            config_hash = EXCLUDED.config_hash, timeline = EXCLUDED.timeline
        RETURNING term, holder, elected_at, timeline
     ), logged AS (
        INSERT INTO {schema}.leader_terms (term, holder, elected_at, timeline, previous_holder,
                                           previous_heartbeat_at)
        SELECT e.term, e.holder, e.elected_at, e.timeline, p.holder, p.heartbeat_at
        FROM elected AS e LEFT JOIN previous AS p ON true
        ON CONFLICT (term) DO NOTHING
     )
SELECT term, (SELECT timeline FROM previous) AS previous_timeline, timeline FROM elected;

-- name: leader_heartbeat
-- Heartbeat and fence in one: matches only while this session still holds the advisory lock
-- and the term is current. The idle leader's only statement (it also says when the next
-- materialisation and the next lease rescue are due); inside a tick's transaction it is the
-- fence, returning the clock for the tick: the database's, unless a test injects one.
UPDATE {schema}.leader
SET heartbeat_at = now()
WHERE holder = %(holder)s AND term = %(term)s
  AND EXISTS (
      SELECT 1 FROM pg_locks
      WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 1
        AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%(key)s, 0))
RETURNING coalesce(%(now)s::timestamptz, now()) AS now,
          (SELECT min(greatest(CASE WHEN s.overlap_policy IN ('skip', 'buffer_one',
                                                               'cancel_previous')
                                    THEN s.next_run_at
                                    ELSE s.next_run_at - make_interval(secs => %(ahead_s)s) END,
                               s.last_error_at + interval '1 minute'))
           FROM {schema}.schedules AS s
           WHERE s.enabled AND s.paused_at IS NULL AND s.next_run_at IS NOT NULL)
          AS materialise_at,
          (SELECT min(j.lease_expires_at) FROM {schema}.jobs AS j
           WHERE j.state = 'running') AS rescue_at,
          -- alerts to evaluate (scheduler.alerts): a schedule with alert settings or an open
          -- incident; two index probes (schedules_alerting, incidents_one_open)
          (EXISTS (SELECT 1 FROM {schema}.schedules AS s
                   WHERE s.alert_after_s IS NOT NULL OR s.alert_on_failures IS NOT NULL
                      OR s.pause_on_failures IS NOT NULL)
           OR EXISTS (SELECT 1 FROM {schema}.incidents AS i WHERE i.closed_at IS NULL))
          AS alerts;

-- name: leader_current
SELECT holder, term, elected_at, heartbeat_at, config_hash FROM {schema}.leader;

-- name: schedules_for_reconcile
SELECT name, cron, timezone, every_s, start_at, definition_hash, config_hash, next_run_at,
       enabled, source
FROM {schema}.schedules
FOR UPDATE;

-- name: schedule_upsert
-- paused_at is an operator's decision and is never touched here. source: 'config' (a
-- schedules file, reconciled by the leader or `schedules apply`) or 'api' (created at runtime).
INSERT INTO {schema}.schedules AS s
       (name, cron, timezone, task, args, queue, priority, max_attempts, backoff_base_s,
        backoff_max_s, backoff_jitter, misfire_policy, overlap_policy, max_catch_up,
        misfire_grace_s, starting_deadline_s, enabled, source, definition_hash, config_hash,
        next_run_at, every_s, start_at, alert_after_s, alert_on_failures, pause_on_failures,
        on_alert, on_alert_options)
VALUES (%(name)s, %(cron)s, %(timezone)s, %(task)s, %(args)s, %(queue)s, %(priority)s,
        %(max_attempts)s, %(backoff_base_s)s, %(backoff_max_s)s, %(backoff_jitter)s,
        %(misfire_policy)s, %(overlap_policy)s, %(max_catch_up)s, %(misfire_grace_s)s,
        %(starting_deadline_s)s, %(enabled)s, %(source)s, %(definition_hash)s, %(config_hash)s,
        %(next_run_at)s, %(every_s)s, %(start_at)s, %(alert_after_s)s, %(alert_on_failures)s,
        %(pause_on_failures)s, %(on_alert)s, %(on_alert_options)s::jsonb)
ON CONFLICT (name) DO UPDATE
SET cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, every_s = EXCLUDED.every_s,
    start_at = EXCLUDED.start_at, task = EXCLUDED.task,
    args = EXCLUDED.args, queue = EXCLUDED.queue, priority = EXCLUDED.priority,
    max_attempts = EXCLUDED.max_attempts, backoff_base_s = EXCLUDED.backoff_base_s,
    backoff_max_s = EXCLUDED.backoff_max_s, backoff_jitter = EXCLUDED.backoff_jitter,
    misfire_policy = EXCLUDED.misfire_policy, overlap_policy = EXCLUDED.overlap_policy,
    max_catch_up = EXCLUDED.max_catch_up, misfire_grace_s = EXCLUDED.misfire_grace_s,
    starting_deadline_s = EXCLUDED.starting_deadline_s,
    alert_after_s = EXCLUDED.alert_after_s, alert_on_failures = EXCLUDED.alert_on_failures,
    pause_on_failures = EXCLUDED.pause_on_failures, on_alert = EXCLUDED.on_alert,
    on_alert_options = EXCLUDED.on_alert_options,
    enabled = EXCLUDED.enabled, source = EXCLUDED.source, definition_hash = EXCLUDED.definition_hash,
    config_hash = EXCLUDED.config_hash, next_run_at = EXCLUDED.next_run_at, updated_at = now()
WHERE (s.definition_hash, s.config_hash, s.next_run_at, s.enabled, s.source)
      IS DISTINCT FROM (EXCLUDED.definition_hash, EXCLUDED.config_hash, EXCLUDED.next_run_at,
                        EXCLUDED.enabled, EXCLUDED.source);

-- name: schedules_delete_undeclared
DELETE FROM {schema}.schedules
WHERE source = 'config' AND NOT (name = ANY(%(names)s::text[]))
RETURNING name;

-- name: schedules_due
-- Read without a lock and outside any transaction: the leader plans in Python, then applies
-- under the fence to the rows whose next_run_at is still the one it planned from
-- (schedules_lock_planned). A schedule whose last materialisation failed waits a minute.
SELECT name, cron, timezone, every_s, start_at, next_run_at, misfire_policy, overlap_policy,
       max_catch_up, misfire_grace_s, starting_deadline_s
FROM {schema}.schedules
WHERE enabled AND paused_at IS NULL
  AND next_run_at <= CASE WHEN overlap_policy IN ('skip', 'buffer_one', 'cancel_previous')
                          THEN %(now)s
                          ELSE %(now)s + make_interval(secs => %(ahead_s)s) END
  AND (last_error_at IS NULL OR last_error_at <= %(now)s - interval '1 minute')
ORDER BY next_run_at
LIMIT %(limit)s;

-- name: schedules_lock_planned
-- Inside the apply transaction, after the fence: the planned schedules that are still as
-- planned (same next_run_at, enabled, not paused), locked until the commit.
SELECT s.name
FROM {schema}.schedules AS s
JOIN unnest(%(names)s::text[], %(next_run_ats)s::timestamptz[]) AS p(name, next_run_at)
  ON s.name = p.name AND s.next_run_at = p.next_run_at
WHERE s.enabled AND s.paused_at IS NULL
FOR UPDATE OF s;

-- name: schedules_record_errors
-- A schedule whose materialisation failed: why and when (the leader retries it a minute
-- later); stops = true also stops it (next_run_at NULL) when it cannot be planned at all.
UPDATE {schema}.schedules AS s
SET last_error = e.error, last_error_at = now(),
    next_run_at = CASE WHEN e.stop THEN NULL ELSE s.next_run_at END, updated_at = now()
FROM unnest(%(names)s::text[], %(errors)s::text[], %(stops)s::boolean[]) AS e(name, error, stop)
WHERE s.name = e.name;

-- name: materialise_fire_times
-- One job per (schedule, fire time): a fire time already materialised (by this or an older
-- leader) is skipped by the unique constraint; with overlap_policy = skip, so is a fire time
-- whose schedule still has a live job (unique index jobs_overlap_skip), with buffer_one one
-- whose schedule already has a waiting job (jobs_overlap_buffer_one). With cancel_previous
-- the trigger jobs_cancel_previous (0018) stops the schedule's older jobs in this transaction.
INSERT INTO {schema}.jobs (queue, task, args, priority, run_at, first_run_at, max_attempts,
                           backoff_base_s, backoff_max_s, backoff_jitter, schedule_name,
                           scheduled_for, term, origin, overlap)
SELECT s.queue, s.task, s.args, s.priority, f.fire_time, f.fire_time, s.max_attempts,
       s.backoff_base_s, s.backoff_max_s, s.backoff_jitter, s.name, f.fire_time, %(term)s,
       'cron', s.overlap_policy
FROM unnest(%(names)s::text[], %(fire_times)s::timestamptz[]) AS f(name, fire_time)
JOIN {schema}.schedules AS s ON s.name = f.name
ORDER BY f.fire_time
ON CONFLICT DO NOTHING
RETURNING id;

-- name: record_overlap_skips
-- Run after materialise_fire_times in the same transaction: planned fire times that have no
-- job were refused by the overlap index.
INSERT INTO {schema}.skipped_fire_times
       (schedule_name, first_fire_time, last_fire_time, fire_times, reason, term)
SELECT f.name, f.fire_time, f.fire_time, 1, 'overlap', %(term)s
FROM unnest(%(names)s::text[], %(fire_times)s::timestamptz[]) AS f(name, fire_time)
WHERE NOT EXISTS (SELECT 1 FROM {schema}.jobs AS j
                  WHERE j.schedule_name = f.name AND j.scheduled_for = f.fire_time)
RETURNING schedule_name;

-- name: record_skips
INSERT INTO {schema}.skipped_fire_times
       (schedule_name, first_fire_time, last_fire_time, fire_times, reason, term)
SELECT u.name, u.first_fire_time, u.last_fire_time, u.fire_times, u.reason, %(term)s
FROM unnest(%(names)s::text[], %(firsts)s::timestamptz[], %(lasts)s::timestamptz[],
            %(counts)s::integer[], %(reasons)s::text[])
     AS u(name, first_fire_time, last_fire_time, fire_times, reason);

-- name: schedules_advance
UPDATE {schema}.schedules AS s
SET next_run_at = a.next_run_at, last_fire_at = coalesce(a.last_fire_at, s.last_fire_at),
    last_error = NULL, last_error_at = NULL, updated_at = now()
FROM unnest(%(names)s::text[], %(next_run_ats)s::timestamptz[], %(last_fire_ats)s::timestamptz[])
     AS a(name, next_run_at, last_fire_at)
WHERE s.name = a.name;

-- name: schedules_next_due
-- When the leader must next materialise: a schedule's next_run_at minus the look-ahead, except
-- with overlap_policy skip, buffer_one or cancel_previous, which are decided at the fire time
-- itself; a schedule whose materialisation failed, not before a minute after the failure.
SELECT min(greatest(CASE WHEN overlap_policy IN ('skip', 'buffer_one', 'cancel_previous')
                         THEN next_run_at
                         ELSE next_run_at - make_interval(secs => %(ahead_s)s) END,
                    last_error_at + interval '1 minute')) AS materialise_at
FROM {schema}.schedules
WHERE enabled AND paused_at IS NULL AND next_run_at IS NOT NULL;

-- name: schedules_list
SELECT name, cron, timezone, every_s, start_at, task, queue, enabled, paused_at, next_run_at,
       last_fire_at, misfire_policy, overlap_policy, source, config_hash
FROM {schema}.schedules
ORDER BY name;

-- name: schedule_pause
UPDATE {schema}.schedules SET paused_at = now(), updated_at = now()
WHERE name = %(name)s
RETURNING name, paused_at;

-- name: schedule_resume
-- next_run_at is left as it was: fire times missed while paused go through the misfire policy.
UPDATE {schema}.schedules SET paused_at = NULL, updated_at = now()
WHERE name = %(name)s
RETURNING name, next_run_at;

-- name: schedule_trigger
-- A manual run now: a job of the schedule (same history), origin 'trigger'; next_run_at is
-- not moved. Refused (no row) for overlap_policy = skip while a job of it is live, and for
-- buffer_one while a job of it is already waiting (pending, never started); with
-- cancel_previous it stops the older jobs (trigger jobs_cancel_previous), like a fire time.
INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, backoff_base_s,
                           backoff_max_s, backoff_jitter, schedule_name, scheduled_for,
                           origin, overlap)
SELECT queue, task, args, priority, max_attempts, backoff_base_s, backoff_max_s,
       backoff_jitter, name, now(), 'trigger', overlap_policy
FROM {schema}.schedules
WHERE name = %(name)s
ON CONFLICT DO NOTHING
RETURNING id;

-- name: schedules_write_lock
-- Serialises writers of the schedules table (a leader's reconcile, `schedules apply`, the
-- runtime schedule API) for the rest of the transaction: two never interleave a diff.
SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0));

-- name: schedule_row
SELECT name, cron, timezone, every_s, start_at, task, args, queue, priority, max_attempts,
       backoff_base_s, backoff_max_s, backoff_jitter, misfire_policy, overlap_policy,
       max_catch_up, misfire_grace_s, starting_deadline_s, enabled, paused_at, source,
       definition_hash, config_hash, next_run_at, last_fire_at
FROM {schema}.schedules
WHERE name = %(name)s
FOR UPDATE;

-- name: schedule_delete_api
DELETE FROM {schema}.schedules WHERE name = %(name)s AND source = 'api' RETURNING name;

-- name: schedules_notify
-- Wakes the leader (through the workers' LISTEN connection): a schedule was written.
SELECT pg_notify(%(channel)s, %(name)s);

-- name: schedules_file_get
SELECT config_hash, path, applied_by, applied_at FROM {schema}.schedules_file;

-- name: schedules_file_set
INSERT INTO {schema}.schedules_file AS f (id, config_hash, path, applied_by, applied_at)
VALUES (true, %(config_hash)s, %(path)s, %(applied_by)s, now())
ON CONFLICT (id) DO UPDATE
SET config_hash = EXCLUDED.config_hash, path = EXCLUDED.path, applied_by = EXCLUDED.applied_by,
    applied_at = now();

-- name: schedule_backfill
-- One job per given fire time, to run now, origin 'backfill'; a fire time that has a job
-- already (materialised, triggered or backfilled before) is left alone by the unique
-- constraint. Backfilled jobs run one at a time in fire-time order (overlap 'queue') unless
-- the schedule allows overlap.
INSERT INTO {schema}.jobs (queue, task, args, priority, max_attempts, backoff_base_s,
                           backoff_max_s, backoff_jitter, schedule_name, scheduled_for,
                           origin, overlap)
SELECT s.queue, s.task, s.args, s.priority, s.max_attempts, s.backoff_base_s, s.backoff_max_s,
       s.backoff_jitter, s.name, f.fire_time, 'backfill',
       CASE WHEN s.overlap_policy = 'allow' THEN 'allow' ELSE 'queue' END
FROM unnest(%(fire_times)s::timestamptz[]) AS f(fire_time)
JOIN {schema}.schedules AS s ON s.name = %(name)s
ORDER BY f.fire_time
ON CONFLICT DO NOTHING
RETURNING id;

-- name: database_now
SELECT now() AS now;

-- name: complete_succeeded
-- complete_jobs for a batch in which every attempt succeeded (the common case under load):
-- two arrays to send instead of seven. Same fence, same rows written.
-- results is NULL when every handler returned None (the common case).
WITH changed AS (
    UPDATE {schema}.jobs AS j
    SET state = 'succeeded', finished_at = now(), lease_expires_at = NULL, last_error = NULL,
        result = o.result::jsonb, updated_at = now()
    FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(results)s::text[])
         AS o(id, attempt, result)
    WHERE j.id = o.id AND j.state = 'running' AND j.locked_by = %(worker_id)s
      AND j.attempt = o.attempt
    RETURNING j.id, j.attempt, j.locked_at
), run AS (
    INSERT INTO {schema}.job_runs (job_id, attempt, worker_id, started_at, finished_at, outcome)
    SELECT c.id, c.attempt, %(worker_id)s, c.locked_at, now(), 'succeeded'
    FROM changed AS c
    RETURNING job_id
), done AS (
    SELECT pg_notify(%(done_channel)s, CASE WHEN count(*) <= 500
                                            THEN string_agg(r.job_id::text, ',') ELSE '' END)
    FROM run AS r HAVING count(*) > 0
)
SELECT job_id FROM run WHERE (SELECT count(*) FROM done) >= 0;  -- one notification

-- name: extend_leases
-- One statement for every job this worker runs; a job missing from the result was rescued
-- (its lease had expired) and belongs to a newer attempt now. ``cancel`` is true when an
-- operator asked the job to stop (scheduler jobs cancel).
UPDATE {schema}.jobs AS j
SET lease_expires_at = now() + make_interval(secs => %(lease_s)s)
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS r(id, attempt)
WHERE j.id = r.id AND j.attempt = r.attempt AND j.state = 'running'
  AND j.locked_by = %(worker_id)s
RETURNING j.id, j.cancel_requested_at IS NOT NULL AS cancel;

-- name: release_jobs
-- Graceful shutdown: unfinished jobs go back to pending, due now, without burning an attempt.
UPDATE {schema}.jobs AS j
SET state = 'pending', attempt = j.attempt - 1, run_at = now(), lease_expires_at = NULL,
    updated_at = now()
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS r(id, attempt)
WHERE j.id = r.id AND j.attempt = r.attempt AND j.state = 'running'
  AND j.locked_by = %(worker_id)s
RETURNING j.id;

-- name: rescue_expired_leases
-- Leader only: running jobs whose worker stopped extending the lease (crashed, hung, cut off)
-- go back to pending, due now, or to dead at max_attempts, or to cancelled when an operator
-- had asked them to stop; a 'lost' run is recorded. The queues of the jobs put back are
-- notified (workers claim them at once), and the ids of the jobs that ended on done_channel
-- (wait_for_job).
WITH expired AS (
    SELECT id FROM {schema}.jobs
    WHERE state = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE {schema}.jobs AS j
    SET state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'  -- jobs cancel
                     WHEN j.attempt >= j.max_attempts THEN 'dead' ELSE 'pending' END,
        run_at = now(),
        finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL
                             OR j.attempt >= j.max_attempts THEN now() END,
        lease_expires_at = NULL,
        last_error = 'lease expired: worker ' || j.locked_by || ' stopped extending it',
        updated_at = now()
    FROM expired AS e
    WHERE j.id = e.id
    RETURNING j.id, j.attempt, j.locked_by, j.locked_at, j.state, j.last_error, j.queue, j.task
), runs AS (
    INSERT INTO {schema}.job_runs (job_id, attempt, worker_id, started_at, finished_at, outcome,
                                   error)
    SELECT id, attempt, locked_by, locked_at, now(), 'lost', last_error FROM moved
    ON CONFLICT (job_id, attempt) DO NOTHING
), notified AS (
    SELECT count(pg_notify(%(channel)s, q.queue || ' ' || extract(epoch FROM now())::text)) AS n
    FROM (SELECT DISTINCT queue FROM moved WHERE state = 'pending') AS q
), done AS (
    SELECT count(pg_notify(%(done_channel)s, d.ids)) AS n
    FROM (SELECT CASE WHEN count(*) <= 500 THEN string_agg(id::text, ',') ELSE '' END AS ids
          FROM moved WHERE state <> 'pending' HAVING count(*) > 0) AS d
)
SELECT m.id AS job_id, m.queue, m.task, m.state FROM moved AS m CROSS JOIN notified CROSS JOIN done;

-- name: lock_held
-- Does this backend hold the leader lock, and is it the backend that took it? False behind a
-- transaction-mode pooler, where the lock was taken by a server connection this client no
-- longer talks to.
SELECT pg_backend_pid() = %(pid)s AND EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 1
      AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%(key)s, 0)) AS held;

-- name: reserve_job_ids
-- Bulk enqueue, step 1: ids for the rows about to be copied (so they can be returned in
-- order, which COPY cannot do), and the clock for "due now".
SELECT nextval(pg_get_serial_sequence(%(table)s, 'id')) AS id, now() AS now
FROM generate_series(1, %(n)s);

-- name: copy_jobs
-- Bulk enqueue, step 2: COPY (several times faster than a multi-row INSERT from Python). The
-- statement-level insert trigger fires once, so one notification per queue.
COPY {schema}.jobs (id, queue, task, args, priority, run_at, first_run_at, max_attempts,
                    backoff_base_s, backoff_max_s, backoff_jitter, concurrency_key, headers)
FROM STDIN;

-- name: prune_jobs
-- Leader only, one bounded batch: finished jobs older than their retention, with their runs
-- (trigger jobs_delete_runs, 0012). A cron job is deleted only when its fire time is before its
-- schedule's next_run_at (or the schedule is gone): the materialiser never plans a fire time
-- before next_run_at, and next_run_at never moves back, so deleting the row that guarded
-- UNIQUE (schedule_name, scheduled_for) cannot make that fire time run again. Uses the
-- partial index jobs_state_finished (state, finished_at).
WITH doomed AS (
    SELECT j.id
    FROM {schema}.jobs AS j
    WHERE ((j.state IN ('succeeded', 'cancelled')
            AND j.finished_at < now() - make_interval(secs => %(succeeded_s)s))
        OR (j.state = 'dead' AND j.finished_at < now() - make_interval(secs => %(dead_s)s)))
      AND (j.schedule_name IS NULL OR NOT EXISTS (
              SELECT 1 FROM {schema}.schedules AS s
              WHERE s.name = j.schedule_name AND s.next_run_at <= j.scheduled_for))
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {schema}.jobs AS j
USING doomed AS d
WHERE j.id = d.id
RETURNING j.state;

-- name: prune_skipped_fire_times
-- The record of skipped fire times ages out with the dead-letter retention.
DELETE FROM {schema}.skipped_fire_times
WHERE id IN (SELECT id FROM {schema}.skipped_fire_times
             WHERE recorded_at < now() - make_interval(secs => %(dead_s)s)
             LIMIT %(limit)s)
RETURNING id;

-- name: prune_incidents
-- Closed alert incidents age out with the dead-letter retention; open ones are never pruned.
DELETE FROM {schema}.incidents
WHERE id IN (SELECT id FROM {schema}.incidents
             WHERE closed_at < now() - make_interval(secs => %(dead_s)s)
             LIMIT %(limit)s)
RETURNING id;

-- name: jobs_list
-- scheduler jobs list / dead-letters list: newest first; every filter optional.
SELECT id, state, queue, task, schedule_name, scheduled_for, attempt, max_attempts, run_at,
       finished_at, last_error
FROM {schema}.jobs
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(schedule)s::text IS NULL OR schedule_name = %(schedule)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: job_get
SELECT id, state, queue, task, args, priority, run_at, first_run_at, attempt, max_attempts,
       backoff_base_s, backoff_max_s, backoff_jitter, locked_by, locked_at, lease_expires_at,
       schedule_name, scheduled_for, term, origin, idempotency_key, last_error,
       cancel_requested_at, created_at, updated_at, finished_at, result
FROM {schema}.jobs WHERE id = %(id)s;

-- name: job_runs_of
SELECT attempt, outcome, worker_id, started_at, finished_at, error, traceback
FROM {schema}.job_runs WHERE job_id = %(id)s ORDER BY attempt;

-- name: job_events_of
SELECT at, event, detail, actor FROM {schema}.job_events WHERE job_id = %(id)s ORDER BY id;

-- name: jobs_retry
-- A dead or cancelled job goes back to pending, due now, with its attempt budget renewed:
-- max_attempts = attempts used + the original budget (attempt numbers keep counting, so
-- job_runs keeps one row per attempt). Recorded in job_events. A candidate whose return
-- would break a unique index is skipped, not the whole statement: its idempotency key is
-- held by a live job (jobs_idempotency_key), or its schedule has overlap_policy skip and a
-- live job (jobs_overlap_skip), or it never started, its schedule has overlap_policy
-- buffer_one and a job waiting (jobs_overlap_buffer_one); of candidates sharing a key or such
-- a schedule slot (slot: 'skip' or 'buffer_one') the newest goes back. One row per candidate:
-- skip is NULL when retried, else budget | key_live | key_retried | overlap_live |
-- overlap_retried | overlap_waiting | overlap_waiting_retried, with the other job in other_id.
WITH candidates AS (
    SELECT j.id, j.idempotency_key, j.schedule_name, j.overlap, j.attempt,
           CASE WHEN j.overlap = 'skip' OR (j.overlap = 'buffer_one' AND j.locked_at IS NULL)
                THEN j.overlap END AS slot
    FROM {schema}.jobs AS j
    WHERE j.state IN ('dead', 'cancelled')
      AND (%(ids)s::bigint[] IS NULL OR j.id = ANY(%(ids)s::bigint[]))
      AND (%(state)s::text IS NULL OR j.state = %(state)s)
      AND (%(task)s::text IS NULL OR j.task = %(task)s)
    FOR UPDATE
), live AS (
    SELECT c.*, coalesce(k.id, o.id) AS other_id,
           CASE WHEN c.attempt >= 2147483647 THEN 'budget'
                WHEN k.id IS NOT NULL THEN 'key_live'
                WHEN o.id IS NOT NULL AND c.slot = 'skip' THEN 'overlap_live'
                WHEN o.id IS NOT NULL THEN 'overlap_waiting' END AS skip
    FROM candidates AS c
    LEFT JOIN LATERAL (SELECT l.id FROM {schema}.jobs AS l
                       WHERE l.idempotency_key = c.idempotency_key
                         AND l.state IN ('pending', 'running') LIMIT 1) AS k ON true
    LEFT JOIN LATERAL (SELECT l.id FROM {schema}.jobs AS l
                       WHERE c.slot IS NOT NULL AND l.schedule_name = c.schedule_name
                         AND l.overlap = c.slot AND l.state IN ('pending', 'running')
                         AND (c.slot = 'skip' OR (l.state = 'pending' AND l.locked_at IS NULL))
                       LIMIT 1) AS o ON true
), by_key AS (
    SELECT w.id, w.idempotency_key, w.schedule_name, w.overlap, w.slot,
           coalesce(w.skip, CASE WHEN w.idempotency_key IS NOT NULL AND w.winner <> w.id
                                 THEN 'key_retried' END) AS skip,
           CASE WHEN w.skip IS NULL AND w.idempotency_key IS NOT NULL AND w.winner <> w.id
                THEN w.winner ELSE w.other_id END AS other_id
    FROM (SELECT l.*, max(l.id) FILTER (WHERE l.skip IS NULL)
                      OVER (PARTITION BY l.idempotency_key) AS winner
          FROM live AS l) AS w
), decided AS (
    SELECT b.id, b.idempotency_key, b.schedule_name,
           coalesce(b.skip, CASE WHEN b.slot IS NOT NULL AND b.winner <> b.id
                                 THEN CASE WHEN b.slot = 'skip' THEN 'overlap_retried'
                                           ELSE 'overlap_waiting_retried' END END) AS skip,
           CASE WHEN b.skip IS NULL AND b.slot IS NOT NULL AND b.winner <> b.id
                THEN b.winner ELSE b.other_id END AS other_id
    FROM (SELECT k.*, max(k.id) FILTER (WHERE k.skip IS NULL AND k.slot IS NOT NULL)
                      OVER (PARTITION BY k.schedule_name, k.slot) AS winner
          FROM by_key AS k) AS b
), retried AS (
    UPDATE {schema}.jobs AS j
    SET state = 'pending', run_at = now(), finished_at = NULL, lease_expires_at = NULL,
        cancel_requested_at = NULL,
        retry_budget = coalesce(j.retry_budget, j.max_attempts),
        max_attempts = least(j.attempt::bigint + coalesce(j.retry_budget, j.max_attempts),
                             2147483647),
        updated_at = now()
    FROM decided AS d
    WHERE j.id = d.id AND d.skip IS NULL
    RETURNING j.id, j.attempt, j.max_attempts
), events AS (
    INSERT INTO {schema}.job_events (job_id, event, detail, actor)
    SELECT id, 'retried', format('attempts %%s..%%s', attempt + 1, max_attempts),
           %(actor)s::text
    FROM retried
)
SELECT d.id AS job_id, d.skip, d.other_id, d.idempotency_key, d.schedule_name
FROM decided AS d
ORDER BY d.id;

-- name: job_cancel
-- A pending job is cancelled at once; a running one is asked to stop (notify_cancel tells its
-- worker at once, and its next lease extension returns cancel_requested_at too; the worker
-- cancels an async handler, a sync handler runs to its end). Recorded in job_events.
WITH changed AS (
    UPDATE {schema}.jobs AS j
    SET state = CASE WHEN j.state = 'pending' THEN 'cancelled' ELSE j.state END,
        finished_at = CASE WHEN j.state = 'pending' THEN now() ELSE j.finished_at END,
        cancel_requested_at = CASE WHEN j.state = 'running' THEN now() END,
        updated_at = now()
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state IN ('pending', 'running')
    RETURNING j.id, j.state
)
INSERT INTO {schema}.job_events (job_id, event, actor)
SELECT id, CASE WHEN state = 'cancelled' THEN 'cancelled' ELSE 'cancel_requested' END,
       %(actor)s::text
FROM changed
RETURNING job_id, event;

-- name: notify_cancel
-- Sent after job_cancel asked running jobs to stop: their workers cancel the handlers at once
-- (the next lease extension would also tell them, within lease_s / 3). One per id.
SELECT pg_notify(%(channel)s, i::text) FROM unnest(%(ids)s::bigint[]) AS i;

-- name: dead_letters_purge
-- Dead jobs finished before the cut-off, with their runs (trigger jobs_delete_runs) and events (ON DELETE CASCADE),
-- in one bounded batch.
DELETE FROM {schema}.jobs
WHERE id IN (SELECT id FROM {schema}.jobs
             WHERE state = 'dead' AND finished_at < now() - make_interval(secs => %(older_than_s)s)
               AND (%(task)s::text IS NULL OR task = %(task)s)
               AND (schedule_name IS NULL OR NOT EXISTS (  -- the fire-time guard of prune_jobs
                       SELECT 1 FROM {schema}.schedules AS s
                       WHERE s.name = schedule_name AND s.next_run_at <= scheduled_for))
             LIMIT %(limit)s)
RETURNING id;

-- name: replica_heartbeat
INSERT INTO {schema}.replicas AS r (id, host, pid, version, queues, concurrency, config_hash,
                                    stuck_threads)
VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(queues)s, %(concurrency)s, %(config_hash)s,
        %(stuck_threads)s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stuck_threads = EXCLUDED.stuck_threads;

-- name: replicas_running_config
-- Live replicas (other than the caller) that run one of the given schedules files: a new
-- leader that replaced schedules written from another file tells a deploy of an edited file
-- (nobody runs the old one any more) from replicas started with different files.
SELECT id FROM {schema}.replicas
WHERE config_hash = ANY(%(hashes)s::text[]) AND id <> %(id)s
  AND heartbeat_at > now() - make_interval(secs => %(fresh_s)s);

-- name: replica_remove
DELETE FROM {schema}.replicas WHERE id = %(id)s;

-- name: replicas_prune
-- Leader: replicas silent for longer than the cut-off (crashed, partitioned) age out.
DELETE FROM {schema}.replicas
WHERE heartbeat_at < now() - make_interval(secs => %(stale_s)s)
RETURNING id;

-- name: status_replicas
SELECT r.id, r.host, r.pid, r.version, array_to_string(r.queues, ',') AS queues,
       r.concurrency, r.stuck_threads, r.started_at, r.heartbeat_at,
       round(extract(epoch FROM now() - r.heartbeat_at)::numeric, 1) AS heartbeat_age_s,
       -- the holder of the leader row leads only while a session holds the advisory lock
       coalesce(l.holder = r.id AND EXISTS (
           SELECT 1 FROM pg_locks
           WHERE locktype = 'advisory' AND granted AND objsubid = 1
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%(key)s, 0)),
           false) AS leader
FROM {schema}.replicas AS r LEFT JOIN {schema}.leader AS l ON true
ORDER BY r.started_at;

-- name: status_queues
-- Depth by queue (due, scheduled for later, running, dead letters) and the oldest
-- due-but-unclaimed job (lag) per queue. Succeeded and cancelled jobs are not counted: on a
-- busy queue that is a scan of millions of rows per scrape (the counters have them); the
-- states counted here are read through their partial indexes.
SELECT queue,
       count(*) FILTER (WHERE state = 'pending' AND run_at <= now()) AS due,
       count(*) FILTER (WHERE state = 'pending' AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'dead') AS dead,
       round(extract(epoch FROM now() - min(run_at) FILTER (
           WHERE state = 'pending' AND run_at <= now()))::numeric, 3) AS lag_s
FROM {schema}.jobs
WHERE state IN ('pending', 'running', 'dead')
GROUP BY queue
ORDER BY queue;

-- name: status_schedules_in_trouble
-- Schedules whose latest fire time failed (its job is dead), was not run (skipped after
-- the schedule's last materialised fire time), or could not be materialised (last_error,
-- set by the leader; fire_time is the next_run_at it is stuck at), with what happened and
-- when (at).
SELECT s.name, 'dead' AS problem, j.scheduled_for AS fire_time, j.finished_at AS at,
       j.last_error AS detail
FROM {schema}.schedules AS s
JOIN LATERAL (SELECT scheduled_for, state, last_error, finished_at FROM {schema}.jobs
              WHERE schedule_name = s.name ORDER BY scheduled_for DESC LIMIT 1) AS j ON true
WHERE j.state = 'dead'
UNION ALL
SELECT s.name, 'missed: ' || k.reason, k.last_fire_time, k.recorded_at,
       coalesce(k.fire_times::text, 'over 10000') || ' fire time(s) not run'
FROM {schema}.schedules AS s
JOIN LATERAL (SELECT reason, last_fire_time, fire_times, recorded_at
              FROM {schema}.skipped_fire_times
              WHERE schedule_name = s.name ORDER BY last_fire_time DESC LIMIT 1) AS k ON true
WHERE s.last_fire_at IS NULL OR k.last_fire_time >= s.last_fire_at
UNION ALL
SELECT s.name, 'materialisation failed', s.next_run_at, s.last_error_at, s.last_error
FROM {schema}.schedules AS s
WHERE s.last_error IS NOT NULL
ORDER BY 1, 2;

-- name: statement_timeout_local
-- Operator commands: every statement of this transaction is cancelled after this long
-- (SET LOCAL, so nothing leaks to other clients behind a transaction-mode pooler).
SELECT set_config('statement_timeout', %(statement_timeout_ms)s, true);

-- name: status_leader
-- scheduler status: the leader row, how old its heartbeat is, and whether any session of
-- this database holds the leader's advisory lock (false: the holder exited, e.g. SIGKILL
-- with no other replica running; advisory locks are per database, hence the filter).
SELECT l.holder, l.term, l.elected_at, l.heartbeat_at, l.config_hash,
       round(extract(epoch FROM now() - l.heartbeat_at)::numeric, 1) AS heartbeat_age_s,
       EXISTS (
           SELECT 1 FROM pg_locks
           WHERE locktype = 'advisory' AND granted AND objsubid = 1
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%(key)s, 0))
           AS lock_held
FROM {schema}.leader AS l;

-- name: next_due
-- A worker that cannot LISTEN (behind a transaction pooler) sets a timer at the earliest
-- pending run_at still in the future, in seconds from the database's now(); per queue and
-- priority one index descent (as claim_jobs), so it does not grow with the future jobs.
WITH RECURSIVE priorities AS (
    SELECT q.name AS queue,
           (SELECT j.priority FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue = q.name
            ORDER BY j.priority LIMIT 1) AS priority
    FROM unnest(%(queues)s::text[]) AS q(name)
    WHERE NOT EXISTS (SELECT 1 FROM {schema}.queue_pauses AS pq WHERE pq.queue = q.name)
  UNION ALL
    SELECT p.queue,
           (SELECT j.priority FROM {schema}.jobs AS j
            WHERE j.state = 'pending' AND j.queue = p.queue AND j.priority > p.priority
            ORDER BY j.priority LIMIT 1)
    FROM priorities AS p
    WHERE p.priority IS NOT NULL
)
SELECT extract(epoch FROM min(n.run_at) - coalesce(%(now)s::timestamptz, now()))::float8
       AS delay_s
FROM priorities AS p
CROSS JOIN LATERAL (
    SELECT j.run_at FROM {schema}.jobs AS j
    WHERE j.state = 'pending' AND j.queue = p.queue AND j.priority = p.priority
      AND j.run_at > coalesce(%(now)s::timestamptz, now())
    ORDER BY j.run_at LIMIT 1
) AS n
WHERE p.priority IS NOT NULL;

-- name: liveness_session_settings
-- The liveness session of a replica (scheduler.liveness.LivenessLock) must end only when its
-- process dies, never because the process is merely stopped or slow: no idle or statement
-- timeouts (whatever the server's defaults), and the server notices a silent peer (a
-- partition, a host gone) only after the keepalive idle time, set to at least the lease, so
-- a partition is never rescued sooner than by the lease.
SELECT set_config('idle_session_timeout', '0', false),
       set_config('idle_in_transaction_session_timeout', '0', false),
       set_config('statement_timeout', '10000', false),
       set_config('tcp_keepalives_idle', %(keepalives_idle_s)s, false),
       set_config('tcp_keepalives_interval', '1', false),
       set_config('tcp_keepalives_count', '3', false),
       set_config('tcp_user_timeout', '0', false),
       set_config('application_name', %(application_name)s, false);

-- name: liveness_next_key
-- The second key of a replica's liveness lock, once per process: unique among live replicas.
SELECT nextval(%(sequence)s::regclass)::integer AS key;

-- name: liveness_lock
-- A replica's liveness lock: session level, two-integer key (pg_locks objsubid 2, distinct
-- from every bigint key such as the leader's). Shared, so a reconnected session can take it
-- while a half-open earlier session of the same replica still holds it.
SELECT pg_try_advisory_lock_shared(%(ns)s, %(key)s) AS locked, pg_backend_pid() AS pid;

-- name: liveness_held
-- The liveness lock is held by this backend, the one that took it (false behind a
-- transaction-mode pooler).
SELECT pg_backend_pid() = %(pid)s AND EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 2
      AND classid::bigint = %(ns)s AND objid::bigint = %(key)s) AS held;

-- name: liveness_end_stale
-- A reconnected liveness session ends the replica's earlier one if the server still keeps it
-- (a partition it did not notice) and it still holds the replica's lock.
SELECT pg_terminate_backend(l.pid) AS terminated
FROM pg_locks AS l
WHERE l.pid = %(pid)s AND l.pid <> pg_backend_pid() AND l.locktype = 'advisory' AND l.granted
  AND l.objsubid = 2 AND l.classid::bigint = %(ns)s AND l.objid::bigint = %(key)s
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());

-- name: liveness_register
-- Record the replica's liveness key, while (and only if) this session holds the lock, with
-- the time and timeline of the registration (a restart or failover ends every session: a
-- registration older than the server's start or of another timeline proves no death).
UPDATE {schema}.replicas
SET lock_key = %(key)s, lock_registered_at = now(),
    lock_timeline = ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
WHERE id = %(id)s
  AND EXISTS (
      SELECT 1 FROM pg_locks
      WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 2
        AND classid::bigint = %(ns)s AND objid::bigint = %(key)s)
RETURNING id;

-- name: liveness_unregister
-- A stopping replica (its worker done): its remaining jobs, if any, go by lease only.
UPDATE {schema}.replicas SET lock_key = NULL
WHERE id = %(id)s AND lock_key = %(key)s;

-- name: replicas_gone
-- Leader: replicas that registered a liveness lock on this server instance and timeline,
-- still have running jobs, and of which no session is left: nobody holds the lock and no
-- backend carries the name of the replica's liveness or leader-campaign session.
SELECT r.id
FROM {schema}.replicas AS r
WHERE r.lock_key IS NOT NULL
  AND r.lock_registered_at > pg_postmaster_start_time()
  AND r.lock_timeline = ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
  AND EXISTS (SELECT 1 FROM {schema}.jobs AS j WHERE j.state = 'running' AND j.locked_by = r.id)
  AND NOT EXISTS (
      SELECT 1 FROM pg_locks AS l
      WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
        AND l.classid::bigint = %(ns)s AND l.objid::bigint = r.lock_key
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
  AND NOT EXISTS (
      SELECT 1 FROM pg_stat_activity AS a
      WHERE a.datname = current_database()
        AND a.application_name IN (left('scheduler liveness ' || r.id, 63),
                                   left('scheduler leader ' || r.id, 63)));

-- name: rescue_lost_replicas
-- Leader only: the running jobs of the given replicas, if they are still gone (replicas_gone,
-- checked again here), are rescued as rescue_expired_leases does (pending due now, dead at
-- max_attempts, cancelled if an operator asked; a 'lost' run), their queues notified, and
-- the jobs that ended named on done_channel.
WITH gone AS (
    SELECT r.id
    FROM {schema}.replicas AS r
    WHERE r.id = ANY(%(replicas)s::text[]) AND r.lock_key IS NOT NULL
      AND r.lock_registered_at > pg_postmaster_start_time()
      AND r.lock_timeline
          = ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
      AND NOT EXISTS (
          SELECT 1 FROM pg_locks AS l
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
            AND l.classid::bigint = %(ns)s AND l.objid::bigint = r.lock_key
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
      AND NOT EXISTS (
          SELECT 1 FROM pg_stat_activity AS a
          WHERE a.datname = current_database()
            AND a.application_name IN (left('scheduler liveness ' || r.id, 63),
                                       left('scheduler leader ' || r.id, 63)))
), lost AS (
    SELECT j.id FROM {schema}.jobs AS j
    WHERE j.state = 'running' AND j.locked_by IN (SELECT id FROM gone)
    ORDER BY j.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
), moved AS (
    UPDATE {schema}.jobs AS j
    SET state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                     WHEN j.attempt >= j.max_attempts THEN 'dead' ELSE 'pending' END,
        run_at = now(),
        finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL
                             OR j.attempt >= j.max_attempts THEN now() END,
        lease_expires_at = NULL,
        last_error = 'replica ' || j.locked_by || ' is gone (its database session ended)',
        updated_at = now()
    FROM lost AS l
    WHERE j.id = l.id AND j.state = 'running'
    RETURNING j.id, j.attempt, j.locked_by, j.locked_at, j.state, j.last_error, j.queue, j.task
), runs AS (
    INSERT INTO {schema}.job_runs (job_id, attempt, worker_id, started_at, finished_at, outcome,
                                   error)
    SELECT id, attempt, locked_by, locked_at, now(), 'lost', last_error FROM moved
    ON CONFLICT (job_id, attempt) DO NOTHING
), notified AS (
    SELECT count(pg_notify(%(channel)s, q.queue || ' ' || extract(epoch FROM now())::text)) AS n
    FROM (SELECT DISTINCT queue FROM moved WHERE state = 'pending') AS q
), done AS (
    SELECT count(pg_notify(%(done_channel)s, d.ids)) AS n
    FROM (SELECT CASE WHEN count(*) <= 500 THEN string_agg(id::text, ',') ELSE '' END AS ids
          FROM moved WHERE state <> 'pending' HAVING count(*) > 0) AS d
)
SELECT m.id AS job_id, m.queue, m.task, m.state, m.locked_by AS replica
FROM moved AS m CROSS JOIN notified CROSS JOIN done;

-- name: client_check_interval
-- The leader-campaign session spends its life in statements (the follower's lock wait, 10 s):
-- a backend notices its client died (SIGKILL) during a statement only with this check, so
-- that session (the fast rescue's witness of a live replica) ends with its process.
SELECT set_config('client_connection_check_interval', %(interval_ms)s, false);

-- name: worker_session_settings
-- Each new connection of the worker's pool on a session (not transaction-pooled) URL: no JIT
-- for its short statements (a claim of a few hundred rows is costed above jit_above_cost;
-- compiling it took ~450 ms per claim on PostgreSQL 15 built with LLVM).
SET jit = off;

-- name: queue_limits_set
-- scheduler.set_queue_limits / SCHEDULER_QUEUE_LIMITS: a queue's limits, replaced as a whole
-- (0016). A queue without a row is unlimited (queue_limits_delete).
INSERT INTO {schema}.queues AS q (name, concurrency, rate, per_s, key_concurrency, source)
VALUES (%(queue)s, %(concurrency)s, %(rate)s, %(per_s)s, %(key_concurrency)s, %(source)s)
ON CONFLICT (name) DO UPDATE
SET concurrency = excluded.concurrency, rate = excluded.rate, per_s = excluded.per_s,
    key_concurrency = excluded.key_concurrency, source = excluded.source, updated_at = now();

-- name: queue_limits_delete
DELETE FROM {schema}.queues WHERE name = %(queue)s;

-- name: queue_limits_prune_settings
-- Limits that came from SCHEDULER_QUEUE_LIMITS and are no longer declared there.
DELETE FROM {schema}.queues
WHERE source = 'settings' AND name <> ALL (%(queues)s::text[]);

-- name: queue_limits_list
SELECT name, concurrency, rate, per_s, key_concurrency, source, updated_at
FROM {schema}.queues ORDER BY name;

-- name: queue_limits_of
-- The queues of a worker that have limits (it claims through claim_jobs_limited while there
-- is one), and whether each has a rate (the worker then sets a timer for its window).
SELECT name, rate IS NOT NULL AS rated
FROM {schema}.queues
WHERE name = ANY(%(queues)s::text[]);

-- name: queue_limits_notify
-- Tells the workers a queue's limits changed (payload: its name; '' for any queue): they
-- re-read queue_limits_of before their next claim. Sent at the writer's commit.
SELECT pg_notify(%(channel)s, %(queue)s);

-- name: queue_rate_wake
-- Seconds until the oldest start counted in the full rate window of one of the queues leaves
-- it (claim_limited counts the buckets started_at > now - per_s - 1 ms), when the next claim
-- may start a job again; NULL when no window is full.
SELECT min(extract(epoch FROM w.oldest + make_interval(secs => q.per_s) - now()))::float8
       + 0.002 AS delay_s
FROM {schema}.queues AS q
CROSS JOIN LATERAL (
    SELECT min(s.started_at) AS oldest, sum(s.n) AS n
    FROM {schema}.queue_starts AS s
    WHERE s.queue = q.name
      AND s.started_at > now() - make_interval(secs => q.per_s) - interval '1 ms'
) AS w
WHERE q.name = ANY(%(queues)s::text[]) AND q.rate IS NOT NULL AND w.n >= q.rate;

-- ---- flow control: declared limits and the overview (issue 14 part 5) ----------------------

-- name: queue_limits_prune_config
-- Limits the schedules file's `queues:` section wrote (source 'config') for queues it no
-- longer declares (scheduler.flow.apply_declared_limits).
DELETE FROM {schema}.queues
WHERE source = 'config' AND name <> ALL (%(queues)s::text[]);

-- name: queue_overview
-- `scheduler queues` / `scheduler status`: each queue with limits, pending or running jobs
-- or a pause; whether it is paused (0022), its limits, running and pending jobs, the starts in the rate window ending now (as
-- claim_limited counts them: buckets started_at > now - per_s - 1 ms) and the running jobs of
-- its busiest concurrency_key (index jobs_running_queue). Pending and running jobs are read
-- through their partial indexes, as status_queues does.
WITH depth AS (
    SELECT queue, count(*) FILTER (WHERE state = 'running') AS running,
           count(*) FILTER (WHERE state = 'pending') AS pending
    FROM {schema}.jobs
    WHERE state IN ('pending', 'running')
    GROUP BY queue
), names AS (
    SELECT name FROM {schema}.queues UNION SELECT queue FROM depth
    UNION SELECT queue FROM {schema}.queue_pauses
)
SELECT n.name AS queue, q.concurrency, q.rate, q.per_s, q.key_concurrency, q.source,
       coalesce(d.running, 0) AS running, coalesce(d.pending, 0) AS pending,
       w.starts AS window_starts, k.busiest AS busiest_key_running,
       (p.queue IS NOT NULL) AS paused, p.paused_at, p.paused_by
FROM names AS n
LEFT JOIN {schema}.queues AS q ON q.name = n.name
LEFT JOIN {schema}.queue_pauses AS p ON p.queue = n.name
LEFT JOIN depth AS d ON d.queue = n.name
LEFT JOIN LATERAL (
    SELECT coalesce(sum(s.n), 0)::bigint AS starts
    FROM {schema}.queue_starts AS s
    WHERE s.queue = q.name
      AND s.started_at > now() - make_interval(secs => q.per_s) - interval '1 ms'
) AS w ON q.rate IS NOT NULL
LEFT JOIN LATERAL (
    SELECT coalesce(max(c.n), 0)::bigint AS busiest
    FROM (SELECT count(*) AS n FROM {schema}.jobs AS r
          WHERE r.queue = q.name AND r.state = 'running' AND r.concurrency_key IS NOT NULL
          GROUP BY r.concurrency_key) AS c
) AS k ON q.key_concurrency IS NOT NULL
ORDER BY n.name;

-- ---- alerts per schedule (scheduler.alerts, migration 0019) --------------------------------

-- name: alerts_evaluate
-- The leader's alert evaluation: ONE statement for every schedule (autocommit on the lock
-- session), run only while leader_heartbeat says alerts exist. Fenced like leader_heartbeat:
-- when this session does not hold the lock or the term is not current, nothing is read or
-- written and no row is returned. Otherwise it closes, opens, pauses and enqueues, all or
-- nothing, and returns one row per event (opened, closed, paused), one per incident still
-- open ('open'), or a single row with event NULL. %(now)s: the clock to judge by (NULL: the
-- database's now()). Definitions (docs in scheduler.alerts):
-- * runs: the finished attempts (job_runs) of the schedule's latest jobs by fire time that
--   have one, max(alert_on_failures, pause_on_failures) + 10 jobs; the streak is the number
--   of the latest runs by finish time before the first success (any other outcome fails;
--   a run cancelled on request, by an operator or overlap_policy cancel_previous, is neither
--   and is left out);
-- * missed: the latest cron fire time at least alert_after_s old (from its materialisation
--   when that was later: a leader outage does not count) has a job that has not succeeded and
--   no run succeeded after it; or next_run_at is alert_after_s past (from the election, or from
--   the schedule's last write unless its materialisation failed) without being materialised.
--   Enabled, unpaused schedules only;
-- * an open incident closes when a run of its schedule succeeded after its `since`, or when
--   its schedule or the setting of its kind was removed.
-- At most one open incident per (schedule, kind): the partial unique index decides between
-- racing leaders (ON CONFLICT DO NOTHING), and on_alert jobs are inserted only for the rows
-- this statement wrote, with the idempotency key incident:<id>:<event>.
WITH fence AS MATERIALIZED (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now, l.elected_at
    FROM {schema}.leader AS l
    WHERE l.holder = %(holder)s AND l.term = %(term)s
      AND EXISTS (
          SELECT 1 FROM pg_locks
          WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 1
            AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%(key)s, 0))
), open_now AS MATERIALIZED (
    SELECT i.id, i.schedule_name, i.kind, i.opened_at, i.since, i.detail
    FROM {schema}.incidents AS i
    WHERE i.closed_at IS NULL AND EXISTS (SELECT 1 FROM fence)
), alerting AS MATERIALIZED (
    SELECT s.name, s.alert_after_s, s.alert_on_failures, s.pause_on_failures, s.next_run_at,
           s.enabled AND s.paused_at IS NULL AS active, s.paused_at IS NULL AS unpaused,
           CASE WHEN s.last_error_at IS NULL THEN s.updated_at END AS written_at,
           greatest(s.alert_on_failures, s.pause_on_failures, 0) + 10 AS window_jobs
    FROM {schema}.schedules AS s
    WHERE (s.alert_after_s IS NOT NULL OR s.alert_on_failures IS NOT NULL
           OR s.pause_on_failures IS NOT NULL)
      AND EXISTS (SELECT 1 FROM fence)
), runs AS MATERIALIZED (
    SELECT a.name, r.outcome, r.finished_at, r.error,
           coalesce(r.finished_at > p.opened_at, false) AS after_pause,
           row_number() OVER (PARTITION BY a.name ORDER BY r.finished_at DESC, r.id DESC) AS n
    FROM alerting AS a
    LEFT JOIN open_now AS p ON p.schedule_name = a.name AND p.kind = 'paused'
    CROSS JOIN LATERAL (
        SELECT j.id FROM {schema}.jobs AS j
        WHERE j.schedule_name = a.name
          AND j.attempt > CASE WHEN j.state = 'running' THEN 1 ELSE 0 END
        ORDER BY j.scheduled_for DESC
        LIMIT a.window_jobs
    ) AS j
    JOIN {schema}.job_runs AS r ON r.job_id = j.id AND r.outcome <> 'cancelled'
), streaks AS MATERIALIZED (
    SELECT r.name,
           max(r.finished_at) FILTER (WHERE r.outcome = 'succeeded') AS last_success_at,
           coalesce(min(r.n) FILTER (WHERE r.outcome = 'succeeded') - 1, count(*))::int
               AS streak,
           (array_agg(r.finished_at ORDER BY r.n))[
               coalesce(min(r.n) FILTER (WHERE r.outcome = 'succeeded') - 1, count(*))::int]
               AS streak_since,
           (array_agg(r.outcome || coalesce(': ' || left(r.error, 300), '') ORDER BY r.n))[1]
               AS last_run,
           count(*) FILTER (WHERE r.after_pause)::int AS runs_after_pause
    FROM runs AS r
    GROUP BY r.name
), health AS MATERIALIZED (
    SELECT a.name, a.alert_after_s, a.alert_on_failures, a.pause_on_failures, a.active,
           a.unpaused, a.next_run_at, coalesce(k.streak, 0) AS streak, k.streak_since,
           k.last_run, k.last_success_at, coalesce(k.runs_after_pause, 0) AS runs_after_pause,
           d.scheduled_for AS due_fire_time,
           coalesce(d.state <> 'succeeded'
                    AND greatest(d.scheduled_for, d.created_at)
                        + make_interval(secs => a.alert_after_s) <= f.now
                    AND (k.last_success_at IS NULL OR k.last_success_at < d.scheduled_for),
                    false) AS due_missed,
           coalesce(a.next_run_at IS NOT NULL
                    AND greatest(a.next_run_at, f.elected_at, a.written_at)
                        + make_interval(secs => a.alert_after_s) <= f.now, false) AS stuck
    FROM alerting AS a
    CROSS JOIN fence AS f
    LEFT JOIN streaks AS k ON k.name = a.name
    LEFT JOIN LATERAL (
        SELECT j.scheduled_for, j.created_at, j.state FROM {schema}.jobs AS j
        WHERE a.alert_after_s IS NOT NULL AND j.schedule_name = a.name AND j.origin = 'cron'
          AND j.scheduled_for <= f.now - make_interval(secs => a.alert_after_s)
        ORDER BY j.scheduled_for DESC
        LIMIT 1
    ) AS d ON true
), wanted AS (
    SELECT h.name, 'missed' AS kind,
           CASE WHEN h.due_missed THEN h.due_fire_time ELSE h.next_run_at END AS since,
           'fire time ' || to_char((CASE WHEN h.due_missed THEN h.due_fire_time
                                         ELSE h.next_run_at END) AT TIME ZONE 'UTC',
                                   'YYYY-MM-DD"T"HH24:MI:SS"Z"')
           || CASE WHEN h.due_missed THEN ' has not succeeded within '
                   ELSE ' was not materialised within ' END
           || h.alert_after_s || ' s (alert_after_s)' AS detail,
           NULL::integer AS failures
    FROM health AS h
    WHERE h.alert_after_s IS NOT NULL AND h.active AND (h.due_missed OR h.stuck)
  UNION ALL
    SELECT h.name, 'failing', h.streak_since,
           h.streak || ' consecutive failed runs (alert_on_failures: ' || h.alert_on_failures
           || '); last: ' || h.last_run, h.streak
    FROM health AS h
    WHERE h.streak >= h.alert_on_failures
  UNION ALL
    SELECT h.name, 'paused', h.streak_since,
           h.streak || ' consecutive failed runs (pause_on_failures: ' || h.pause_on_failures
           || '): schedule paused; last: ' || h.last_run, h.streak
    FROM health AS h
    WHERE h.streak >= h.pause_on_failures AND h.unpaused
), closing AS (
    SELECT c.id, c.reason
    FROM (SELECT o.id, o.since, h.last_success_at,
                 CASE WHEN s.name IS NULL THEN 'schedule_removed'
                      WHEN (o.kind = 'missed' AND s.alert_after_s IS NULL)
                        OR (o.kind = 'failing' AND s.alert_on_failures IS NULL)
                        OR (o.kind = 'paused' AND s.pause_on_failures IS NULL)
                      THEN 'alert_removed'
                      ELSE 'succeeded' END AS reason
          FROM open_now AS o
          LEFT JOIN {schema}.schedules AS s ON s.name = o.schedule_name
          LEFT JOIN health AS h ON h.name = o.schedule_name) AS c
    WHERE c.reason <> 'succeeded' OR c.last_success_at > c.since
), closed AS (
    UPDATE {schema}.incidents AS i
    SET closed_at = f.now, closed_term = %(term)s, close_reason = c.reason
    FROM closing AS c, fence AS f
    WHERE i.id = c.id AND i.closed_at IS NULL
    RETURNING 'closed'::text AS event, i.id, i.schedule_name, i.kind, i.opened_at, i.closed_at,
              i.detail, i.close_reason
), opened AS (
    INSERT INTO {schema}.incidents AS i (schedule_name, kind, opened_at, since, detail,
                                         failures, opened_term)
    SELECT w.name, w.kind, f.now, w.since, w.detail, w.failures, %(term)s
    FROM wanted AS w CROSS JOIN fence AS f
    WHERE NOT EXISTS (SELECT 1 FROM open_now AS o
                      WHERE o.schedule_name = w.name AND o.kind = w.kind)
    ON CONFLICT (schedule_name, kind) WHERE closed_at IS NULL DO NOTHING
    RETURNING 'opened'::text AS event, i.id, i.schedule_name, i.kind, i.opened_at, i.closed_at,
              i.detail, i.close_reason
), paused AS (
    -- pause_on_failures: at the opening of the 'paused' incident; again when an operator
    -- resumed it and pause_on_failures more runs failed (the incident stays open meanwhile)
    UPDATE {schema}.schedules AS s SET paused_at = now(), updated_at = now()
    FROM (SELECT o.schedule_name AS name FROM opened AS o WHERE o.kind = 'paused'
          UNION
          SELECT h.name FROM health AS h
          JOIN open_now AS p ON p.schedule_name = h.name AND p.kind = 'paused'
          WHERE h.unpaused AND h.runs_after_pause >= h.pause_on_failures
            AND NOT EXISTS (SELECT 1 FROM closing AS c WHERE c.id = p.id)) AS p
    WHERE s.name = p.name AND s.paused_at IS NULL
    RETURNING s.name
), events AS (
    SELECT * FROM opened UNION ALL SELECT * FROM closed
), alert_jobs AS (
    INSERT INTO {schema}.jobs AS j (queue, task, args, priority, max_attempts, backoff_base_s,
                                    backoff_max_s, backoff_jitter, idempotency_key)
    SELECT coalesce(s.on_alert_options ->> 'queue', s.queue), s.on_alert,
           jsonb_build_object('incident', jsonb_build_object(
               'id', e.id, 'schedule', e.schedule_name, 'kind', e.kind, 'event', e.event,
               'opened_at', to_char(e.opened_at AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
               'closed_at', to_char(e.closed_at AT TIME ZONE 'UTC',
                                    'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
               'close_reason', e.close_reason, 'detail', e.detail)),
           coalesce((s.on_alert_options ->> 'priority')::integer, 0),
           coalesce((s.on_alert_options ->> 'max_attempts')::integer, s.max_attempts),
           coalesce((s.on_alert_options ->> 'backoff_base_s')::float8, s.backoff_base_s),
           coalesce((s.on_alert_options ->> 'backoff_max_s')::float8, s.backoff_max_s),
           coalesce((s.on_alert_options ->> 'backoff_jitter')::float8, s.backoff_jitter),
           'incident:' || e.id || ':' || e.event
    FROM events AS e
    JOIN {schema}.schedules AS s ON s.name = e.schedule_name
    WHERE s.on_alert IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING j.id, j.idempotency_key
)
SELECT f.now, e.event, e.id, e.schedule_name AS schedule, e.kind, e.opened_at, e.closed_at,
       e.detail, e.close_reason,
       (SELECT a.id FROM alert_jobs AS a
        WHERE a.idempotency_key = 'incident:' || e.id || ':' || e.event) AS alert_job
FROM fence AS f
LEFT JOIN (
    SELECT * FROM events
  UNION ALL
    SELECT 'open', o.id, o.schedule_name, o.kind, o.opened_at, NULL, o.detail, NULL
    FROM open_now AS o
    WHERE o.id NOT IN (SELECT c.id FROM closed AS c)
  UNION ALL
    SELECT 'paused', NULL, p.name, 'paused', NULL, NULL, NULL, NULL FROM paused AS p
) AS e ON true
ORDER BY e.schedule_name, e.kind, e.event;

-- name: status_incidents
-- scheduler status: the open incidents (scheduler.alerts), oldest first.
SELECT i.id, i.schedule_name AS schedule, i.kind, i.opened_at, i.since, i.detail
FROM {schema}.incidents AS i
WHERE i.closed_at IS NULL
ORDER BY i.opened_at, i.id;

-- name: jobs_delete
-- An operator's delete (the dashboard): the jobs of the list that are not running go, with
-- their runs and events (trigger jobs_delete_runs, 0012/0022); a 'deleted' event with the
-- actor stays for each (its trigger runs after this whole statement and spares 'deleted').
WITH gone AS (
    DELETE FROM {schema}.jobs
    WHERE id = ANY(%(ids)s::bigint[]) AND state <> 'running'
    RETURNING id, task, queue, state
), events AS (
    INSERT INTO {schema}.job_events (job_id, event, detail, actor, queue)
    SELECT id, 'deleted', format('%%s, %%s', task, state), %(actor)s::text, queue FROM gone
)
SELECT id FROM gone ORDER BY id;

-- name: job_events_record
-- An operator's action on a schedule or a queue (the job actions record their own events).
INSERT INTO {schema}.job_events (job_id, event, detail, actor, schedule_name, queue)
VALUES (%(job_id)s, %(event)s, %(detail)s, %(actor)s, %(schedule_name)s, %(queue)s);

-- name: queue_pause
-- Replicas stop claiming the queue (claim_jobs, claim_jobs_limited skip paused queues);
-- running jobs finish. No row: it was paused already.
INSERT INTO {schema}.queue_pauses (queue, paused_by) VALUES (%(queue)s, %(actor)s)
ON CONFLICT (queue) DO NOTHING
RETURNING queue;

-- name: queue_resume
-- Claims of the queue resume; its workers are woken as by an insert (payload: the queue).
WITH gone AS (DELETE FROM {schema}.queue_pauses WHERE queue = %(queue)s RETURNING queue)
SELECT queue, pg_notify(%(channel)s, queue)::text AS notified FROM gone;

-- name: queues_paused
SELECT queue, paused_at, paused_by FROM {schema}.queue_pauses ORDER BY queue;

-- name: prune_leader_terms
-- Leader history older than the dead-letter retention goes; the newest 100 terms stay.
DELETE FROM {schema}.leader_terms
WHERE elected_at < now() - make_interval(secs => %(dead_s)s)
  AND term < (SELECT coalesce(min(term), 0)
              FROM (SELECT term FROM {schema}.leader_terms ORDER BY term DESC LIMIT 100) AS t)
RETURNING term;

-- name: prune_job_events
-- Events that outlive their subject (a deleted job's 'deleted' event, a schedule's or a
-- queue's action) age out with the dead-letter retention; a job's other events go with it.
DELETE FROM {schema}.job_events
WHERE id IN (SELECT id FROM {schema}.job_events
             WHERE at < now() - make_interval(secs => %(dead_s)s)
               AND (job_id IS NULL OR event = 'deleted')
             LIMIT %(limit)s)
RETURNING id;
