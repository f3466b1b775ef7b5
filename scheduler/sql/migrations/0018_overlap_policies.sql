-- 0018: two more overlap policies (Temporal's names), enforced in the database.
--
-- buffer_one: at most one job of the schedule WAITING behind the running one. "Waiting" is a
-- pending job that was never claimed (locked_at IS NULL: every claim sets locked_at and
-- nothing clears it), so the unique index below refuses a second waiting job, and the
-- materialiser's ON CONFLICT DO NOTHING turns that into an 'overlap' skip, while the jobs that
-- DID start and come back to pending are not counted: a failed attempt's retry, a rescued
-- lease, a graceful shutdown's release (which also gives the attempt back: attempt may be 0
-- again, so attempt = 0 would not do). The waiting job is claimed only when no job of its
-- schedule is running and no older one is pending (claim_jobs, claim_limited below).
--
-- cancel_previous: inserting a job of such a schedule (materialised fire time, or
-- `scheduler schedules trigger`) asks the schedule's older live jobs to stop, in the same
-- transaction (trigger jobs_cancel_previous): an older pending job is cancelled at once, a
-- running one gets the operator's cancel request (cancel_requested_at, NOTIFY on
-- "<schema>.cancel"), recorded in job_events as an operator's cancel is; backfilled jobs
-- (origin 'backfill', an operator's explicit request) are left alone. The new job is
-- claimed only when no job of its schedule is running and no older one is pending. A
-- trigger, not the materialise statement, so that every path that inserts such a job
-- (materialiser, manual trigger, a hand-written INSERT) gets the same rule; it fires only
-- for rows with overlap = 'cancel_previous' (the WHEN clause: other inserts pay nothing).
--
-- jobs_live_by_schedule: the live jobs of each schedule, so the claim's overlap condition and
-- the trigger read a schedule's few live jobs, not its whole history (the fire-time index
-- holds every finished job kept by retention: ~10,000 for an every-minute schedule).
--
-- Holds ACCESS EXCLUSIVE on schedules and jobs while the CHECK constraints are re-validated
-- and SHARE on jobs while the two indexes build (one scan of jobs each, seconds per million
-- jobs): see docs/operations.md, Upgrading.

ALTER TABLE {schema}.schedules DROP CONSTRAINT schedules_overlap_policy_check;
ALTER TABLE {schema}.schedules ADD CONSTRAINT schedules_overlap_policy_check
    CHECK (overlap_policy IN ('allow', 'skip', 'queue', 'buffer_one', 'cancel_previous'));
ALTER TABLE {schema}.jobs DROP CONSTRAINT jobs_overlap_check;
ALTER TABLE {schema}.jobs ADD CONSTRAINT jobs_overlap_check
    CHECK (overlap IN ('allow', 'skip', 'queue', 'buffer_one', 'cancel_previous'));

-- overlap_policy = buffer_one: at most one waiting (pending, never claimed) job per schedule.
CREATE UNIQUE INDEX jobs_overlap_buffer_one ON {schema}.jobs (schedule_name)
    WHERE overlap = 'buffer_one' AND state = 'pending' AND locked_at IS NULL;

CREATE INDEX jobs_live_by_schedule ON {schema}.jobs (schedule_name, scheduled_for)
    WHERE state IN ('pending', 'running') AND schedule_name IS NOT NULL;

-- overlap_policy = cancel_previous: a new job of the schedule stops the older live ones.
CREATE FUNCTION {schema}.cancel_previous_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_n bigint;
BEGIN
    WITH older AS (
        SELECT o.id
        FROM {schema}.jobs AS o
        WHERE o.schedule_name = NEW.schedule_name AND o.scheduled_for < NEW.scheduled_for
          AND o.state IN ('pending', 'running')
          AND (o.state = 'pending' OR o.cancel_requested_at IS NULL)  -- asked once is enough
          AND o.origin <> 'backfill'  -- an operator's backfill runs (before the new job)
        ORDER BY o.id
        FOR UPDATE
    ), changed AS (
        UPDATE {schema}.jobs AS j
        SET state = CASE WHEN j.state = 'pending' THEN 'cancelled' ELSE j.state END,
            finished_at = CASE WHEN j.state = 'pending' THEN now() ELSE j.finished_at END,
            cancel_requested_at = CASE WHEN j.state = 'running' THEN now() END,
            updated_at = now()
        FROM older
        WHERE j.id = older.id AND j.state IN ('pending', 'running')
        RETURNING j.id, j.state
    ), events AS (
        INSERT INTO {schema}.job_events (job_id, event, detail)
        SELECT c.id, CASE WHEN c.state = 'cancelled' THEN 'cancelled' ELSE 'cancel_requested' END,
               'overlap_policy cancel_previous: job ' || NEW.id || ' of schedule '
               || NEW.schedule_name || ' was created'
        FROM changed AS c
    )
    -- the worker running a job cancels it at once; wait_for_job waiters learn of the others
    SELECT count(pg_notify(TG_TABLE_SCHEMA || CASE WHEN c.state = 'cancelled' THEN '.done'
                                                   ELSE '.cancel' END, c.id::text))
    INTO v_n
    FROM changed AS c;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_cancel_previous
    AFTER INSERT ON {schema}.jobs
    FOR EACH ROW WHEN (NEW.overlap = 'cancel_previous' AND NEW.schedule_name IS NOT NULL)
    EXECUTE FUNCTION {schema}.cancel_previous_jobs();

-- claim_limited (0016) with the claim's overlap condition of claim_jobs: a job of a queue,
-- buffer_one or cancel_previous schedule starts only when no older job of its schedule is
-- live; for buffer_one and cancel_previous, also not while a newer one runs (a late fire time
-- materialised after a manual trigger, an operator's retry of an older job). Unchanged
-- otherwise.
CREATE OR REPLACE FUNCTION {schema}.claim_limited(
    p_queues text[], p_limit integer, p_worker text, p_lease_s double precision,
    p_now timestamptz
) RETURNS SETOF {schema}.jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    q        {schema}.queues;
    v_now    timestamptz;
    v_at     timestamptz;
    v_left   integer := p_limit;
    v_allow  integer;
    v_count  bigint;
    v_n      integer;
    v_bucket double precision;
BEGIN
    IF p_limit <= 0 OR coalesce(cardinality(p_queues), 0) = 0 THEN
        RETURN;
    END IF;
    FOR q IN SELECT * FROM {schema}.queues WHERE name = ANY(p_queues) ORDER BY name FOR UPDATE
    LOOP
        EXIT WHEN v_left <= 0;
        -- the claim's instant is taken after the lock: claims of a queue are stamped in the
        -- order they were serialised, after the completions they counted were committed
        v_at := clock_timestamp();
        v_now := coalesce(p_now, v_at);
        v_allow := v_left;
        IF q.concurrency IS NOT NULL THEN
            SELECT count(*) INTO v_count FROM {schema}.jobs
            WHERE queue = q.name AND state = 'running';
            v_allow := least(v_allow, q.concurrency - v_count);
        END IF;
        IF q.rate IS NOT NULL THEN
            DELETE FROM {schema}.queue_starts
            WHERE queue = q.name
              AND started_at < least(v_now, now()) - make_interval(secs => 2 * q.per_s);
            SELECT coalesce(sum(n), 0) INTO v_count FROM {schema}.queue_starts
            WHERE queue = q.name
              AND started_at > v_now - make_interval(secs => q.per_s) - interval '1 ms';
            v_allow := least(v_allow, q.rate - v_count);
        END IF;
        CONTINUE WHEN v_allow <= 0;
        RETURN QUERY
        WITH RECURSIVE priorities AS (
            SELECT (SELECT j.priority FROM {schema}.jobs AS j
                    WHERE j.state = 'pending' AND j.queue = q.name
                    ORDER BY j.priority LIMIT 1) AS priority
          UNION ALL
            SELECT (SELECT j.priority FROM {schema}.jobs AS j
                    WHERE j.state = 'pending' AND j.queue = q.name AND j.priority > p.priority
                    ORDER BY j.priority LIMIT 1)
            FROM priorities AS p WHERE p.priority IS NOT NULL
        ), candidates AS (
            -- without a per-key limit, only what may start is read; with one, a bounded
            -- look-ahead past the jobs of busy keys
            SELECT c.id, c.priority, c.run_at, c.concurrency_key
            FROM priorities AS p
            CROSS JOIN LATERAL (
                SELECT j.id, j.priority, j.run_at, j.concurrency_key
                FROM {schema}.jobs AS j
                WHERE j.state = 'pending' AND j.queue = q.name AND j.priority = p.priority
                  AND j.run_at <= v_now
                  AND (j.overlap IN ('allow', 'skip') OR NOT EXISTS (
                          SELECT 1 FROM {schema}.jobs AS older
                          WHERE older.schedule_name = j.schedule_name
                            AND older.state IN ('pending', 'running')
                            AND (older.scheduled_for < j.scheduled_for
                                 OR (older.state = 'running' AND j.overlap <> 'queue'))))
                ORDER BY j.run_at, j.id
                LIMIT CASE WHEN q.key_concurrency IS NULL THEN v_allow ELSE v_allow + 1000 END
            ) AS c
            WHERE p.priority IS NOT NULL
            ORDER BY c.priority, c.run_at, c.id
            LIMIT CASE WHEN q.key_concurrency IS NULL THEN v_allow ELSE v_allow + 1000 END
        ), ranked AS (
            SELECT c.*, row_number() OVER (PARTITION BY c.concurrency_key
                                           ORDER BY c.priority, c.run_at, c.id) AS rn
            FROM candidates AS c
        ), busy AS (
            SELECT r.concurrency_key, count(*) AS n
            FROM {schema}.jobs AS r
            WHERE q.key_concurrency IS NOT NULL AND r.state = 'running' AND r.queue = q.name
              AND r.concurrency_key IN (SELECT concurrency_key FROM candidates)
            GROUP BY r.concurrency_key
        ), chosen AS (
            SELECT k.id
            FROM ranked AS k LEFT JOIN busy AS b ON b.concurrency_key = k.concurrency_key
            WHERE q.key_concurrency IS NULL OR k.concurrency_key IS NULL
               OR k.rn + coalesce(b.n, 0) <= q.key_concurrency
            ORDER BY k.priority, k.run_at, k.id
            LIMIT v_allow
        )
        -- this queue's claims are serialised by its row lock: no SKIP LOCKED needed; a row an
        -- operator changed meanwhile is re-checked by the WHERE
        UPDATE {schema}.jobs AS j
        SET state = 'running',
            attempt = j.attempt + 1,
            locked_by = p_worker,
            locked_at = v_at,
            lease_expires_at = v_at + make_interval(secs => p_lease_s),
            updated_at = now()
        FROM chosen
        WHERE j.id = chosen.id AND j.state = 'pending'
        RETURNING j.*;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF q.rate IS NOT NULL AND v_n > 0 THEN
            v_bucket := greatest(q.per_s / 100, 0.001);
            INSERT INTO {schema}.queue_starts AS s (queue, started_at, n)
            VALUES (q.name,
                    to_timestamp(ceil(extract(epoch FROM v_now) / v_bucket) * v_bucket), v_n)
            ON CONFLICT (queue, started_at) DO UPDATE SET n = s.n + excluded.n;
        END IF;
        v_left := v_left - v_n;
    END LOOP;
END;
$$;
