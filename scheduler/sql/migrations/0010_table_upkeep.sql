-- 0010: keep the jobs table small under load (per-table autovacuum settings), and let lease
-- extensions be HOT updates.
--
-- Every job is inserted, updated twice (claim, completion) and deleted by the retention
-- prune: at 2,500 jobs/s that is ~5,000 dead row versions a second. With the stock settings
-- (vacuum once 20 % of the table is dead, throttled to cost_limit 200) vacuum falls behind,
-- the table and its indexes bloat and claims walk ever more dead index entries.
--
-- jobs:
--   autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000: vacuum once
--     1 % of the table (+ 1,000 rows) is dead instead of 20 % (+ 50): the dead versions of
--     a few seconds of traffic, not of minutes, so the free space is reused before the
--     table grows.
--   autovacuum_analyze_scale_factor = 0.02: the state mix (pending / running / finished)
--     moves fast; the claim and rescue plans rely on its statistics.
--   autovacuum_vacuum_cost_limit = 2000 (10x the default 200, with the default 2 ms delay):
--     a vacuum of this table finishes in seconds, not minutes; a table with its own cost
--     settings is also left out of the cost balancing between autovacuum workers.
--   autovacuum_vacuum_insert_scale_factor = 0.05: jobs enqueued far ahead (never updated
--     yet) still get their pages frozen and marked all-visible in small steps.
--   fillfactor is left at 100: the claim and the completion change `state`, which the
--     partial indexes name, so they can never be HOT whatever the free space; only the
--     lease extension can, and it found room on its page without a lower fillfactor in our
--     measurements (page pruning frees the space of the row's earlier versions; see
--     docs/benchmarks.md). A lower fillfactor would make every finished row kept for the
--     retention period cost that much more space.
-- job_runs: insert-only until the prune deletes a batch (ON DELETE CASCADE): vacuum after 2 %
--   dead (not 20 %) so the space of pruned runs is reused, and after 5 % new rows so its
--   pages are frozen / all-visible early.
-- leader, replicas, schedules: small, and their hot updates (heartbeats) are HOT already
--   (heartbeat_at is in no index); the defaults are enough.
--
-- Reloption changes take SHARE UPDATE EXCLUSIVE (reads and writes go on); the table owner
-- may set them (no superuser needed).
ALTER TABLE {schema}.jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 2000,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
ALTER TABLE {schema}.job_runs SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_cost_limit = 2000
);

-- HOT lease extensions. PostgreSQL makes an update HOT (no new index entries, the old
-- version pruned within its page) only when no column named by any index, in its keys or
-- its predicate, changes. extend_leases changes lease_expires_at alone, which only the index
-- jobs_running_lease (lease_expires_at) WHERE state = 'running' named: every extension of
-- every running job wrote new entries in jobs_pkey and that index (and in the idempotency,
-- fire-time and overlap indexes for the jobs they cover). The running jobs are at most the
-- total concurrency of the replicas, so the rescue query and the leader's heartbeat read
-- their lease times from the heap through this index of the running rows instead, keyed by
-- worker (a worker's running jobs, for rescuing the jobs of a worker known to be gone).
-- Holds ACCESS EXCLUSIVE on jobs while the index builds (seconds per million jobs): see
-- docs/operations.md, Upgrading.
DROP INDEX {schema}.jobs_running_lease;
CREATE INDEX jobs_running_worker ON {schema}.jobs (locked_by) WHERE state = 'running';
