-- 0007: every running replica registers itself and heartbeats (scheduler status lists them);
-- rows of replicas that stopped heartbeating age out (the leader deletes them).
CREATE TABLE {schema}.replicas (
    id            text PRIMARY KEY,          -- host:pid:random, as in jobs.locked_by
    host          text NOT NULL,
    pid           integer NOT NULL,
    version       text NOT NULL,
    queues        text[] NOT NULL,
    concurrency   integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
