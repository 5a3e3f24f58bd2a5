-- The auth schema is created by the migration runner; this first migration documents it.
COMMENT ON SCHEMA auth IS 'Owned by the Conclave auth service (accounts, mandatory TOTP 2FA, sessions and devices). No other service reads it.';
