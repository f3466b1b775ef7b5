-- 0014: unique jobs with a window (enqueue's unique_for_s with an idempotency_key): no second
-- job with the key is inserted until unique_until = created_at + unique_for_s of the job that
-- opened the window, whatever that job's state (pending, running, succeeded, dead, cancelled).
--
-- jobs.unique_until: set on the job that holds its key's window (NULL: no window; every job
-- written before 0014). jobs_unique_window: at most ONE job per key holds a window. The
-- enqueue inserts with ON CONFLICT DO NOTHING, so the index itself decides between concurrent
-- enqueuers (a second insert waits for the first's transaction, then conflicts), at any
-- isolation level and whether or not the callers' transactions are open; a window that has
-- passed is released by clearing its unique_until (release_unique_window, only when an insert
-- met an expired holder), under the row lock of that UPDATE, then the insert is tried again.
--
-- Rejected: a unique index on (idempotency_key, time bucket) as pg-boss's singletonSeconds
-- does: buckets are aligned slots, so two jobs 1 s apart on either side of a bucket boundary
-- both get in, which breaks "N s after the first job". An exclusion constraint on
-- (key WITH =, tstzrange(created_at, unique_until) WITH &&): exact, but needs btree_gist
-- (an extension a least-privilege owner may not create) and a GiST index. An advisory lock
-- then check-and-insert: correct only if the check's snapshot is taken after the lock, which
-- a caller's REPEATABLE READ transaction does not do (a silent duplicate); the unique index
-- turns that case into a serialization failure instead.
--
-- The jobs_idempotency_key rule stays: one live (pending/running) job per key, window or not.
-- A nullable column without a default: no table rewrite. The index build takes a SHARE lock on
-- jobs (enqueues and claims wait; reads do not) for one scan of the table, about a second per
-- million jobs; it holds no entry for a job without a window, so enqueues without a window
-- (and the claim's updates, which do not change either column) pay nothing for it.
ALTER TABLE {schema}.jobs ADD COLUMN unique_until timestamptz;

CREATE UNIQUE INDEX jobs_unique_window ON {schema}.jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL AND unique_until IS NOT NULL;
