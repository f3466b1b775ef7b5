-- 0009: the leader row records the PostgreSQL timeline its election ran on, so the next
-- leader notices a failover (a standby promoted: a new timeline) and says so. With
-- asynchronous replication such a failover can lose acknowledged commits (jobs, the
-- schedules' next_run_at), so fire times may run again: see docs/operations.md.
ALTER TABLE {schema}.leader ADD COLUMN timeline integer;
