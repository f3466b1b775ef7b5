-- 0021: claim_limited() planned once per connection instead of at every claim (issue 14).
--
-- Profile (PostgreSQL 18, 100 running + 20,000 pending jobs, claims of 100, bench/flow.py):
-- a limited claim took ~2 ms more than claim_jobs, of which ~1.2 ms was PLANNING: plpgsql
-- runs the claim statement with custom plans (its parameters - the queue, the instant, the
-- LIMITs - are known only at the call), and this statement's planning (~1.4 ms: recursive
-- CTE, lateral look-ahead, window, four CTEs) is repeated at every claim. A generic plan is
-- never chosen by the plan cache on its own, because with unknown LIMITs the planner assumes
-- 10 % of the table and costs it far above a custom plan; in that plan the UPDATE even joins
-- the chosen ids by hashing a sequential scan of jobs (~18 ms per claim).
--
-- * The function runs with plan_cache_mode = force_generic_plan (its own SET clause: the
--   session's setting outside it is untouched), so each of its statements is planned once
--   per connection and reused.
-- * The claiming UPDATE takes the chosen ids as an array (id = ANY (ARRAY(SELECT ...))):
--   the primary-key probe of each id whatever the planner guesses of their number.
-- * jit = off (also the function's own setting): a generic plan's estimate (millions, from the
--   unknown LIMITs) is above jit_above_cost, and JIT-compiling it took ~700 ms per claim on a
--   1M-job table (PostgreSQL 15 with LLVM). 0020's custom plan of a key-limited queue crossed
--   it too on that table: ~57 of its ~60 ms were JIT compilation (0021: ~6 ms). A claim
--   reads a few hundred rows: JIT never pays for itself there.
-- The rest of the generic plan is the custom one: descents of jobs_claim per priority, the
-- ordered (run_at, id) range read up to the LIMIT, the overlap probe of jobs_live_by_schedule.
--
-- Nothing else changes: same lock of the queues row, same counts under it, same statements,
-- same rows claimed (the planner's choice of a plan never changes a statement's result; only
-- the order of the rows returned may differ, which nothing relies on).
-- The count of running jobs (~0.5 ms) and the row lock (~0.25 ms) stay: they are what makes
-- the limit hold across replicas, jobs of dead replicas included, until they are rescued.
-- Otherwise the function is 0020's (its overlap condition and stamps included), unchanged.

CREATE OR REPLACE FUNCTION {schema}.claim_limited(
    p_queues text[], p_limit integer, p_worker text, p_lease_s double precision,
    p_now timestamptz
) RETURNS SETOF {schema}.jobs
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
    q        {schema}.queues;
    v_now    timestamptz;
    v_at     timestamptz;
    v_left   integer := p_limit;
    v_allow  integer;
    v_count  bigint;
    v_n      integer;
    v_bucket double precision;
    v_ahead  integer;
    v_pass   integer;
    v_taken  integer;
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
        -- look-ahead of a key-limited queue: a short one first; only when jobs of busy keys
        -- (or too few due jobs) left places free, a second pass reads up to 1,000 jobs past
        -- them, counting what the first pass just claimed (its own writes are visible)
        v_ahead := CASE WHEN q.key_concurrency IS NULL THEN v_allow ELSE 2 * v_allow + 10 END;
        v_pass := 1;
        v_taken := 0;
        LOOP
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
                LIMIT v_ahead
            ) AS c
            WHERE p.priority IS NOT NULL
            ORDER BY c.priority, c.run_at, c.id
            LIMIT v_ahead
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
        -- operator changed meanwhile is re-checked by the WHERE. The ids as an array: a
        -- primary-key probe each, whatever the generic plan guesses of their number
        UPDATE {schema}.jobs AS j
        SET state = 'running',
            attempt = j.attempt + 1,
            locked_by = p_worker,
            locked_at = clock_timestamp(),
            lease_expires_at = clock_timestamp() + make_interval(secs => p_lease_s),
            updated_at = now()
        WHERE j.id = ANY (ARRAY(SELECT chosen.id FROM chosen)) AND j.state = 'pending'
        RETURNING j.*;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_taken := v_taken + v_n;
        v_allow := v_allow - v_n;
        EXIT WHEN q.key_concurrency IS NULL OR v_allow <= 0 OR v_pass = 2;
        v_pass := 2;
        v_ahead := v_allow + 1000;
        END LOOP;
        v_n := v_taken;
        IF q.rate IS NOT NULL AND v_n > 0 THEN
            v_bucket := greatest(q.per_s / 100, 0.001);
            INSERT INTO {schema}.queue_starts AS s (queue, started_at, n)
            VALUES (q.name,
                    to_timestamp(ceil(extract(epoch FROM coalesce(p_now, clock_timestamp()))
                                      / v_bucket) * v_bucket), v_n)
            ON CONFLICT (queue, started_at) DO UPDATE SET n = s.n + excluded.n;
        END IF;
        v_left := v_left - v_n;
    END LOOP;
END;
$$;
