-- 0015: interval schedules (`every: 90s`) beside cron. A schedule has exactly one of `cron`
-- (a cron expression) or `every_s` (an interval in seconds, 1 s to 10 years); its fire times
-- are `start_at + k * every_s` (k >= 0), exact elapsed time in UTC. `start_at` is the
-- declared first fire time; NULL when the YAML gives none: the grid is then anchored at
-- `next_run_at`, set to one interval after the schedule was stored (scheduler.schedules).
-- Existing rows are cron schedules: every_s and start_at NULL. Nullable columns without a
-- default and CHECKs on a small table: no rewrite, a short scan.
ALTER TABLE {schema}.schedules
    ALTER COLUMN cron DROP NOT NULL,
    ADD COLUMN every_s double precision,
    ADD COLUMN start_at timestamptz,
    ADD CONSTRAINT schedules_cron_or_every CHECK ((cron IS NULL) <> (every_s IS NULL)),
    ADD CONSTRAINT schedules_every_s_range CHECK (every_s >= 1 AND every_s <= 315360000),
    ADD CONSTRAINT schedules_start_at_interval CHECK (start_at IS NULL OR every_s IS NOT NULL);
