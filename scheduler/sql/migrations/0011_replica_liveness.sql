-- 0011: fast rescue of a dead replica's jobs. Each replica with a direct connection holds a
-- session-level advisory lock of its own (the "liveness lock": two-integer key (namespace of
-- the schema, lock_key), objsubid 2 in pg_locks, so it can never be the leader's bigint key)
-- on a dedicated session, and records its key here. The leader rescues the running jobs of a
-- replica whose lock no backend holds any more (its process died: the kernel closed its
-- sockets) at once instead of after their lease (see scheduler/maintenance.py).
--   lock_key           NULL: no liveness lock (older versions, a replica without a direct
--                      connection, a replica stopping): its jobs are rescued by lease only.
--   lock_registered_at when the current lock session registered (database clock): a lock
--                      registered before the server started (a restart ended every session)
--                      is not evidence of a death.
--   lock_timeline      the PostgreSQL timeline of that registration: after a failover the
--                      promoted standby has none of the old primary's sessions, so a
--                      registration of the old timeline is not evidence of a death either.
CREATE SEQUENCE {schema}.replica_lock_keys AS integer MINVALUE 1 CYCLE;
ALTER TABLE {schema}.replicas
    ADD COLUMN lock_key integer,
    ADD COLUMN lock_registered_at timestamptz,
    ADD COLUMN lock_timeline integer;
