-- The messaging schema is created by the migration runner; this first migration documents it.
COMMENT ON SCHEMA messaging IS 'Owned by the Conclave messaging service (groups, 1:1 and group fan-out over NATS JetStream, delivery streams). No other service reads it.';
