-- 0013: a handler's return value. jobs.result holds the JSON value the succeeded attempt
-- returned (NULL for None, for a job that has not succeeded, or for a value that could not
-- be stored: the succeeded run's error then says why). run_history shows it on the
-- succeeded attempt's row. A nullable column without a default: no table rewrite.
ALTER TABLE {schema}.jobs ADD COLUMN result jsonb;

CREATE OR REPLACE VIEW {schema}.run_history AS
SELECT r.id                                   AS run_id,
       r.job_id,
       j.task,
       j.queue,
       j.schedule_name,
       j.scheduled_for,
       r.attempt,
       j.max_attempts,
       r.outcome,
       j.state                                AS job_state,
       r.started_at,
       r.finished_at,
       extract(epoch FROM r.finished_at - r.started_at)           AS duration_s,
       CASE WHEN r.attempt = 1
            THEN extract(epoch FROM r.started_at - j.first_run_at)
       END                                    AS start_lateness_s,
       r.error,
       r.traceback,
       r.worker_id,
       j.args,
       s.cron,
       s.timezone,
       CASE WHEN r.outcome = 'succeeded' THEN j.result END AS result
FROM {schema}.job_runs AS r
JOIN {schema}.jobs AS j ON j.id = r.job_id
LEFT JOIN {schema}.schedules AS s ON s.name = j.schedule_name;
