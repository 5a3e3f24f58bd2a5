-- Per-account audit-log TTL from the account's retention policy
-- (conclave.events.retention.policy_changed); NULL: the deployment default
-- (CONCLAVE_AUTH_AUDIT_TTL_SECONDS).
ALTER TABLE accounts ADD COLUMN audit_log_ttl_seconds bigint CHECK (audit_log_ttl_seconds > 0);
