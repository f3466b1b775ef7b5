-- 0017: runtime schedules and applied schedules files.
-- * jobs.origin gains 'backfill': one job per fire time of a range, made by
--   `scheduler schedules backfill` / backfill_schedule() (still unique per fire time).
-- * schedules_file: the one schedules file last written into the schedules table, by a leader
--   reconciling its own file at election (applied_by 'leader') or by
--   `scheduler schedules apply FILE` (applied_by 'apply'). After an apply, a leader whose own
--   file differs leaves the applied schedules as they are and says so (scheduler.schedules).
-- Runtime schedules themselves need no column: schedules.source already allows 'api'.
ALTER TABLE {schema}.jobs DROP CONSTRAINT IF EXISTS jobs_origin_check;
ALTER TABLE {schema}.jobs ADD CONSTRAINT jobs_origin_check
    CHECK (origin IN ('api', 'cron', 'trigger', 'backfill'));

CREATE TABLE {schema}.schedules_file (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    config_hash  text NOT NULL,
    path         text NOT NULL,
    applied_by   text NOT NULL CHECK (applied_by IN ('leader', 'apply')),
    applied_at   timestamptz NOT NULL DEFAULT now()
);
