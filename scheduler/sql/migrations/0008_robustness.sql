-- 0008: what the service needs to survive bad rows and hung handlers.
-- A schedule whose materialisation failed (a row written by hand that cannot be planned or
-- inserted) records why and when; the leader retries it after a back-off instead of failing
-- every tick, and `scheduler status` lists it.
ALTER TABLE {schema}.schedules ADD COLUMN last_error text, ADD COLUMN last_error_at timestamptz;
-- Replicas report the schedules file they run (a leader tells an edited file from a
-- different one) and their sync handler threads still running past their timeout.
ALTER TABLE {schema}.replicas ADD COLUMN config_hash text,
    ADD COLUMN stuck_threads integer NOT NULL DEFAULT 0;
-- Skipped fire times are counted exactly now (arithmetically, not one by one): a long outage
-- of an every-second schedule can exceed the integer range.
ALTER TABLE {schema}.skipped_fire_times ALTER COLUMN fire_times TYPE bigint;
