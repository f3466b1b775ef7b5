-- 0006: what operators do to jobs (scheduler jobs retry|cancel, dead-letters retry|purge).
-- cancel_requested_at: a running job's handler is asked to stop (workers see it when they
-- extend their leases). retry_budget: the attempts a manual retry grants, fixed at the first
-- retry to the job's original max_attempts (attempt numbers keep counting up, so job_runs
-- stays one row per attempt).
ALTER TABLE {schema}.jobs
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN retry_budget integer CHECK (retry_budget >= 1);

-- Operator actions on a job, for its history next to job_runs.
CREATE TABLE {schema}.job_events (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   bigint NOT NULL REFERENCES {schema}.jobs (id) ON DELETE CASCADE,
    at       timestamptz NOT NULL DEFAULT now(),
    event    text NOT NULL CHECK (event IN ('retried', 'cancelled', 'cancel_requested')),
    detail   text
);
CREATE INDEX job_events_job ON {schema}.job_events (job_id);
