-- 0004: the insert notification carries the earliest run_at per queue, so workers can set a
-- timer for delayed jobs instead of polling. Payload: "<queue> <epoch seconds of min(run_at)>".
-- Still one notification per statement and queue, delivered at commit.
CREATE OR REPLACE FUNCTION {schema}.notify_jobs_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.jobs',
                      q.queue || ' ' || extract(epoch FROM q.first_run_at)::text)
    FROM (SELECT queue, min(run_at) AS first_run_at FROM inserted GROUP BY queue) AS q;
    RETURN NULL;
END;
$$;
