-- 0022: what the dashboard (issue 15) reads and records.
--
-- job_events becomes the audit trail of every operator action, with who did it (`actor`:
-- "dashboard:<user>", "cli:<user>@<host>", "api"): on a job (job_id), a schedule
-- (schedule_name) or a queue (queue). Its foreign key goes: a job's 'deleted' event outlives
-- the job. The other events of a deleted job still go with it, through the statement-level
-- trigger that already deletes its runs (0012); maintenance prunes the events whose job is
-- gone after SCHEDULER_RETENTION_DEAD_S.
ALTER TABLE {schema}.job_events
    ADD COLUMN actor text,
    ADD COLUMN schedule_name text,
    ADD COLUMN queue text,
    ALTER COLUMN job_id DROP NOT NULL,
    DROP CONSTRAINT job_events_job_id_fkey,
    DROP CONSTRAINT job_events_event_check,
    ADD CONSTRAINT job_events_event_check CHECK (event IN (
        'retried', 'cancelled', 'cancel_requested', 'deleted',
        'schedule_paused', 'schedule_resumed', 'schedule_triggered', 'schedule_backfilled',
        'queue_paused', 'queue_resumed')),
    ADD CONSTRAINT job_events_subject CHECK (num_nonnulls(job_id, schedule_name, queue) >= 1);
CREATE INDEX job_events_at ON {schema}.job_events (at);
CREATE INDEX job_events_schedule ON {schema}.job_events (schedule_name, at)
    WHERE schedule_name IS NOT NULL;

CREATE OR REPLACE FUNCTION {schema}.delete_runs_of_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {schema}.job_runs AS r USING deleted_jobs AS d WHERE r.job_id = d.id;
    DELETE FROM {schema}.job_events AS e USING deleted_jobs AS d
    WHERE e.job_id = d.id AND e.event <> 'deleted';
    RETURN NULL;
END;
$$;

-- Leader history: one row per term, written by the election itself (leader_elect), with the
-- last heartbeat of the term before it (so a gap between terms, a failover's length, is
-- elected_at - previous_heartbeat_at). Pruned with the dead-letter retention, the newest
-- 100 terms kept whatever their age.
CREATE TABLE {schema}.leader_terms (
    term                  bigint PRIMARY KEY,
    holder                text NOT NULL,
    elected_at            timestamptz NOT NULL,
    timeline              integer,
    previous_holder       text,
    previous_heartbeat_at timestamptz
);
INSERT INTO {schema}.leader_terms (term, holder, elected_at, timeline)
SELECT term, holder, elected_at, timeline FROM {schema}.leader;

-- Paused queues: replicas claim no job of a queue with a row here (claim_jobs,
-- claim_jobs_limited); running jobs finish. Resuming deletes the row and wakes the workers.
CREATE TABLE {schema}.queue_pauses (
    queue      text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  text
);
