-- 0020: flow control tuning (issue 14 part 5).
--
-- * queues.source gains 'config': limits declared in the schedules file's `queues:` section,
--   written by the leader at its election and by `scheduler schedules apply`
--   (scheduler.flow.apply_declared_limits).
-- * claim_limited: the look-ahead of a queue with a per-key limit (key_concurrency) is read
--   in two passes instead of always reading 1,000 jobs past the places to fill: first
--   2 x places + 10 jobs; a second pass, up to 1,000 jobs past the places still free, only
--   when jobs of busy keys (or too few due jobs) left places free. Both passes run under the
--   queue's row lock, and the second counts the first's claims as running (a statement of a
--   plpgsql function sees the function's earlier writes), so a key's limit is never
--   exceeded and the jobs claimed are those the single pass chose. A W1 drain with a per-key
--   limit read ~1,100 jobs per claim of ~10 (bench/flow.py).
-- * claim_limited stamps a start (jobs.locked_at, hence job_runs.started_at) with the clock
--   of the claiming UPDATE, after the snapshot its counts were taken with, and the rate's
--   bucket with the clock after that UPDATE: a completion the claim counted as finished
--   committed before, so its finished_at (its transaction's now()) is earlier than the
--   start. 0016 stamped the instant the lock was taken, before the counts: a completion
--   committed in between was counted as finished but recorded as ending after the start, so
--   job_runs showed one job too many running at once (the limit itself held; the three-
--   replica test, counting from job_runs, saw "2 running" for a key limited to 1).
-- Otherwise the function is 0018's (its overlap condition included), unchanged.

ALTER TABLE {schema}.queues DROP CONSTRAINT queues_source_check;
ALTER TABLE {schema}.queues ADD CONSTRAINT queues_source_check
    CHECK (source IN ('api', 'settings', 'config'));

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
        -- operator changed meanwhile is re-checked by the WHERE
        UPDATE {schema}.jobs AS j
        SET state = 'running',
            attempt = j.attempt + 1,
            locked_by = p_worker,
            locked_at = clock_timestamp(),
            lease_expires_at = clock_timestamp() + make_interval(secs => p_lease_s),
            updated_at = now()
        FROM chosen
        WHERE j.id = chosen.id AND j.state = 'pending'
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
