-- The media schema is created by the migration runner; this first migration documents it.
COMMENT ON SCHEMA media IS 'Owned by the Conclave media service (encrypted attachment blobs). No other service reads it.';
