-- 0019: alerts per schedule (scheduler.alerts). Settings on the schedule row, all NULL when
-- unset (existing rows: no alert, nothing evaluated):
--   alert_after_s      dead-man: a fire time not succeeded this many seconds after it
--   alert_on_failures  N consecutive failed runs (attempts) of the schedule
--   pause_on_failures  N consecutive failed runs pause the schedule (paused_at)
--   on_alert           a task enqueued once per incident opened and once per incident closed
--   on_alert_options   that task's job options (queue, priority, retry policy), resolved from
--                      its @task defaults and the settings when the schedule was written
-- incidents: one row per incident; open while closed_at IS NULL. At most one open incident
-- per (schedule, kind), held by the partial unique index incidents_one_open, so two leaders
-- (or two terms) can never open the same incident twice. `since` is the instant the problem
-- started (kind 'missed': the fire time; 'failing' / 'paused': the end of the first failed
-- run of the streak): a success that finished after it closes the incident.
-- Nullable columns without a default and CHECKs on a small table: no rewrite, a short scan.
ALTER TABLE {schema}.schedules
    ADD COLUMN alert_after_s double precision,
    ADD COLUMN alert_on_failures integer,
    ADD COLUMN pause_on_failures integer,
    ADD COLUMN on_alert text,
    ADD COLUMN on_alert_options jsonb,
    ADD CONSTRAINT schedules_alert_after_s_range
        CHECK (alert_after_s > 0 AND alert_after_s <= 315360000),
    ADD CONSTRAINT schedules_alert_on_failures_range
        CHECK (alert_on_failures BETWEEN 1 AND 1000),
    ADD CONSTRAINT schedules_pause_on_failures_range
        CHECK (pause_on_failures BETWEEN 1 AND 1000),
    ADD CONSTRAINT schedules_on_alert_name CHECK (length(on_alert) BETWEEN 1 AND 200);

-- The leader's heartbeat asks "does any schedule have alerts?" (EXISTS): one index probe.
CREATE INDEX schedules_alerting ON {schema}.schedules (name)
    WHERE alert_after_s IS NOT NULL OR alert_on_failures IS NOT NULL
       OR pause_on_failures IS NOT NULL;

CREATE TABLE {schema}.incidents (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schedule_name  text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('missed', 'failing', 'paused')),
    opened_at      timestamptz NOT NULL,
    since          timestamptz NOT NULL,
    detail         text NOT NULL,
    failures       integer,
    opened_term    bigint NOT NULL,
    closed_at      timestamptz,
    closed_term    bigint,
    close_reason   text CHECK (close_reason IN ('succeeded', 'alert_removed',
                                                'schedule_removed')),
    CONSTRAINT incidents_closed_pairs CHECK ((closed_at IS NULL) = (close_reason IS NULL))
);

CREATE UNIQUE INDEX incidents_one_open ON {schema}.incidents (schedule_name, kind)
    WHERE closed_at IS NULL;
CREATE INDEX incidents_schedule ON {schema}.incidents (schedule_name, opened_at);
