-- 0002: misfire and overlap policies, pause, manual triggers, and a record of skipped fire times.

ALTER TABLE {schema}.schedules
    ADD COLUMN misfire_policy text NOT NULL DEFAULT 'run_once'
        CHECK (misfire_policy IN ('skip', 'run_once', 'run_all')),
    ADD COLUMN overlap_policy text NOT NULL DEFAULT 'allow'
        CHECK (overlap_policy IN ('allow', 'skip', 'queue')),
    ADD COLUMN max_catch_up integer NOT NULL DEFAULT 100 CHECK (max_catch_up >= 1),
    ADD COLUMN misfire_grace_s double precision NOT NULL DEFAULT 60 CHECK (misfire_grace_s >= 0),
    ADD COLUMN starting_deadline_s double precision CHECK (starting_deadline_s > 0),
    ADD COLUMN paused_at timestamptz;            -- set by `scheduler schedules pause`

DROP INDEX {schema}.schedules_due;
CREATE INDEX schedules_due ON {schema}.schedules (next_run_at) WHERE enabled AND paused_at IS NULL;

ALTER TABLE {schema}.jobs
    -- how the job came to be: enqueue/schedule_at, a cron fire time, or a manual trigger
    ADD COLUMN origin text NOT NULL DEFAULT 'api' CHECK (origin IN ('api', 'cron', 'trigger')),
    -- the schedule's overlap policy, copied so that the claim and the index below can see it
    ADD COLUMN overlap text NOT NULL DEFAULT 'allow' CHECK (overlap IN ('allow', 'skip', 'queue'));

UPDATE {schema}.jobs SET origin = 'cron' WHERE schedule_name IS NOT NULL;

-- overlap_policy = skip: at most one live (pending or running) job per schedule, enforced by
-- the database whatever the replicas do.
CREATE UNIQUE INDEX jobs_overlap_skip ON {schema}.jobs (schedule_name)
    WHERE overlap = 'skip' AND state IN ('pending', 'running');

-- Fire times that were not run, and why: a misfire (late beyond misfire_grace_s, not chosen
-- by the misfire policy), past the starting deadline, cut by the catch-up cap, or an overlap.
-- One row per span of consecutive fire times (a long outage is one row, not millions).
CREATE TABLE {schema}.skipped_fire_times (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schedule_name    text NOT NULL,
    first_fire_time  timestamptz NOT NULL,
    last_fire_time   timestamptz NOT NULL,
    fire_times       integer,                 -- how many; NULL when more than 10,000
    reason           text NOT NULL
                     CHECK (reason IN ('misfire', 'starting_deadline', 'catch_up_cap', 'overlap')),
    term             bigint,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (first_fire_time <= last_fire_time)
);

CREATE INDEX skipped_fire_times_schedule
    ON {schema}.skipped_fire_times (schedule_name, last_fire_time DESC);
