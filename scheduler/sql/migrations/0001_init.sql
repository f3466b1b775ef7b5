-- 0001: schedules, jobs, job_runs, leader and the run_history view.
-- {schema} is replaced by the configured schema name, quoted as an SQL identifier.

CREATE TABLE {schema}.schedules (
    name             text PRIMARY KEY,
    cron             text NOT NULL,
    timezone         text NOT NULL,
    task             text NOT NULL,
    args             jsonb NOT NULL DEFAULT '{}'::jsonb,
    queue            text NOT NULL DEFAULT 'default',
    priority         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL CHECK (max_attempts >= 1),
    backoff_base_s   double precision NOT NULL CHECK (backoff_base_s > 0),
    backoff_max_s    double precision NOT NULL CHECK (backoff_max_s > 0),
    backoff_jitter   double precision NOT NULL CHECK (backoff_jitter BETWEEN 0 AND 1),
    enabled          boolean NOT NULL DEFAULT true,
    source           text NOT NULL DEFAULT 'config' CHECK (source IN ('config', 'api')),
    definition_hash  text NOT NULL,
    config_hash      text,
    next_run_at      timestamptz,          -- next fire time (UTC instant); NULL when disabled
    last_fire_at     timestamptz,          -- last fire time materialised into a job
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX schedules_due ON {schema}.schedules (next_run_at) WHERE enabled;

CREATE TABLE {schema}.jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            text NOT NULL DEFAULT 'default',
    task             text NOT NULL,
    args             jsonb NOT NULL DEFAULT '{}'::jsonb,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'succeeded', 'dead', 'cancelled')),
    priority         integer NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),   -- when it is next due
    first_run_at     timestamptz NOT NULL DEFAULT now(),   -- when it was first due (for lateness)
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer NOT NULL DEFAULT 20 CHECK (max_attempts >= 1),
    backoff_base_s   double precision NOT NULL DEFAULT 1 CHECK (backoff_base_s > 0),
    backoff_max_s    double precision NOT NULL DEFAULT 3600 CHECK (backoff_max_s > 0),
    backoff_jitter   double precision NOT NULL DEFAULT 0.1 CHECK (backoff_jitter BETWEEN 0 AND 1),
    locked_by        text,                 -- worker id of the current / last attempt
    locked_at        timestamptz,          -- when the current / last attempt was claimed
    lease_expires_at timestamptz,          -- set while running
    schedule_name    text,                 -- cron jobs: the schedule ...
    scheduled_for    timestamptz,          -- ... and the fire time this job is for
    term             bigint,               -- leader term that materialised it (cron jobs)
    idempotency_key  text,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT jobs_one_per_fire_time UNIQUE (schedule_name, scheduled_for),
    CONSTRAINT jobs_fire_time_pairs CHECK ((schedule_name IS NULL) = (scheduled_for IS NULL)),
    CONSTRAINT jobs_running_has_lease CHECK (state <> 'running' OR
                                              (locked_by IS NOT NULL AND lease_expires_at IS NOT NULL))
);

-- The claim: due pending jobs of a queue, best priority first, oldest first.
CREATE INDEX jobs_claim ON {schema}.jobs (queue, priority, run_at, id) WHERE state = 'pending';
-- One live job per idempotency key; finished jobs free the key.
CREATE UNIQUE INDEX jobs_idempotency_key ON {schema}.jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state IN ('pending', 'running');
CREATE INDEX jobs_schedule ON {schema}.jobs (schedule_name, scheduled_for DESC)
    WHERE schedule_name IS NOT NULL;
CREATE INDEX jobs_state_finished ON {schema}.jobs (state, finished_at)
    WHERE state IN ('succeeded', 'dead', 'cancelled');

CREATE TABLE {schema}.job_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       bigint NOT NULL REFERENCES {schema}.jobs (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    worker_id    text,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'timeout', 'lost', 'cancelled')),
    error        text,
    traceback    text,
    CONSTRAINT job_runs_one_per_attempt UNIQUE (job_id, attempt)
);

CREATE TABLE {schema}.leader (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),   -- exactly one row
    holder        text NOT NULL,
    term          bigint NOT NULL,
    elected_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    config_hash   text
);

-- Wake workers when jobs are inserted: one notification per statement and queue, delivered
-- at commit (so a rolled-back schedule_at() wakes nobody). Payload: the queue name.
CREATE FUNCTION {schema}.notify_jobs_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.jobs', q.queue)
    FROM (SELECT DISTINCT queue FROM inserted) AS q;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_inserted
    AFTER INSERT ON {schema}.jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.notify_jobs_inserted();

-- Run history: one row per finished attempt, with its job and schedule.
CREATE VIEW {schema}.run_history AS
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
       s.timezone
FROM {schema}.job_runs AS r
JOIN {schema}.jobs AS j ON j.id = r.job_id
LEFT JOIN {schema}.schedules AS s ON s.name = j.schedule_name;
