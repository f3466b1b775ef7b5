-- 0003: find expired leases without scanning the table.
CREATE INDEX jobs_running_lease ON {schema}.jobs (lease_expires_at) WHERE state = 'running';
