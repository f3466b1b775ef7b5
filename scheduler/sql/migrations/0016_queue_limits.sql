-- 0016: flow control per queue, enforced by the claim in the database, across replicas.
--
-- queues: one row per queue that HAS a limit (a queue without a row is unlimited and keeps
-- the lock-free claim): at most `concurrency` running jobs of the queue (all replicas), at
-- most `rate` starts in any window of `per_s` seconds, at most `key_concurrency` running
-- jobs per jobs.concurrency_key (jobs without a key: only the queue's limits). Written by
-- scheduler.set_queue_limits() (source 'api') or from SCHEDULER_QUEUE_LIMITS ('settings').
--
-- Why a function: the claim stays one statement, and a limited queue's part of it runs in
-- claim_limited(), which first locks the queue's row (SELECT ... FOR UPDATE, queues in name
-- order so replicas cannot deadlock), then counts. The count must come AFTER the lock, with
-- a snapshot that sees what the previous holder committed: a single SQL statement reads
-- every table with the snapshot it took when it started, before it waited for the lock, so
-- two claims racing would both count "3 of 5 running" and claim 2 each. Each statement of a
-- VOLATILE plpgsql function takes a new snapshot (READ COMMITTED), so the counts are those of
-- the claims serialised before us. Running jobs are counted from the jobs table itself
-- (index jobs_running_queue), so jobs of dead replicas count until they are rescued, and
-- no counter has to be kept right by completions, rescues, releases or operators.
--
-- Starts per window: queue_starts is a ledger of claimed counts per (queue, started_at),
-- started_at being the claim time ROUNDED UP to a bucket of per_s/100 seconds (one row per
-- bucket: at most ~101 rows in a window whatever the claim rate, so the count is bounded;
-- rounding up keeps a start counted slightly longer than its window, never shorter: the limit
-- may be under-used by ~1 %, never exceeded). jobs.locked_at is not used: a retry's next
-- claim overwrites it and pruning deletes jobs, both of which would hide starts.
ALTER TABLE {schema}.jobs ADD COLUMN concurrency_key text;

CREATE TABLE {schema}.queues (
    name            text PRIMARY KEY,
    concurrency     integer CHECK (concurrency >= 1),
    rate            integer CHECK (rate >= 1),
    per_s           double precision CHECK (per_s > 0 AND per_s <= 315360000),
    key_concurrency integer CHECK (key_concurrency >= 1),
    source          text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'settings')),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((rate IS NULL) = (per_s IS NULL)),
    CHECK (num_nonnulls(concurrency, rate, key_concurrency) > 0)
);

CREATE TABLE {schema}.queue_starts (
    queue      text NOT NULL,
    started_at timestamptz NOT NULL,
    n          integer NOT NULL,
    PRIMARY KEY (queue, started_at)
);

-- Running jobs per queue and key. Lease extensions change neither column (still HOT).
CREATE INDEX jobs_running_queue ON {schema}.jobs (queue, concurrency_key) WHERE state = 'running';

CREATE FUNCTION {schema}.claim_limited(
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
                  AND (j.overlap <> 'queue' OR NOT EXISTS (
                          SELECT 1 FROM {schema}.jobs AS older
                          WHERE older.schedule_name = j.schedule_name
                            AND older.scheduled_for < j.scheduled_for
                            AND older.state IN ('pending', 'running')))
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
