-- The keys schema is created by the migration runner; this first migration documents it.
COMMENT ON SCHEMA keys IS 'Owned by the Conclave keys service (identity keys, signed and one-time prekeys, key-transparency log). No other service reads it.';
