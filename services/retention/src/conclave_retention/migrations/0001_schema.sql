-- The retention schema is created by the migration runner; this first migration documents it.
COMMENT ON SCHEMA retention IS 'Owned by the Conclave retention service (retention policies, purge jobs, GDPR export and erasure). No other service reads it.';
