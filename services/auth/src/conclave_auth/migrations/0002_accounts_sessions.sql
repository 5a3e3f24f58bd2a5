-- Accounts, second factor, devices, sessions, refresh tokens, audit log (issue #3).
-- Every column is listed in docs/data-map.md with its purpose and lifetime.

CREATE TABLE accounts (
    account_id uuid PRIMARY KEY,
    username text NOT NULL UNIQUE,                 -- normalised (NFKC, casefold, ASCII)
    password_hash text NOT NULL,                   -- Argon2id PHC string (params + salt)
    password_changed_at timestamptz NOT NULL,
    totp_secret text NOT NULL,                     -- base32; needed to verify codes
    totp_confirmed_at timestamptz,                 -- NULL: enrollment pending, no sessions
    totp_last_step bigint NOT NULL DEFAULT 0,      -- highest accepted step: codes work once
    pending_totp_secret text,                      -- ChangeTotp until ConfirmTotpChange
    pending_totp_expires_at timestamptz,
    enrollment_token_hash bytea UNIQUE,            -- SHA-256; cleared on confirmation
    enrollment_expires_at timestamptz,
    device_approval_required boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL
);

CREATE TABLE recovery_codes (
    account_id uuid NOT NULL REFERENCES accounts ON DELETE CASCADE,
    code_hash bytea NOT NULL,                      -- SHA-256 over account id and code
    used_at timestamptz,
    PRIMARY KEY (account_id, code_hash)
);

CREATE TABLE devices (
    device_id uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts ON DELETE CASCADE,
    name text NOT NULL,
    platform smallint NOT NULL,
    approval_state smallint NOT NULL,
    created_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);
CREATE INDEX devices_by_account ON devices (account_id);

CREATE TABLE sessions (
    session_id uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts ON DELETE CASCADE,
    device_id uuid NOT NULL REFERENCES devices ON DELETE CASCADE,
    auth_time timestamptz NOT NULL,                -- last password + second factor check
    created_at timestamptz NOT NULL,
    last_used_at timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    access_expires_at timestamptz NOT NULL,        -- latest access token handed out
    ended_at timestamptz,
    end_reason smallint
);
CREATE INDEX sessions_by_account ON sessions (account_id) WHERE ended_at IS NULL;
-- One live session per device: a re-login of the device replaces the old session.
CREATE UNIQUE INDEX one_live_session_per_device ON sessions (device_id) WHERE ended_at IS NULL;

CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,                  -- SHA-256 of the 256-bit token
    session_id uuid NOT NULL REFERENCES sessions ON DELETE CASCADE,
    issued_at timestamptz NOT NULL,
    used_at timestamptz                            -- set on rotation; reuse => revoke family
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

CREATE TABLE audit_events (
    event_id uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts ON DELETE CASCADE,
    kind smallint NOT NULL,
    occurred_at timestamptz NOT NULL,
    session_id uuid,
    device_id uuid,
    device_name text NOT NULL DEFAULT '',
    detail text NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_account ON audit_events (account_id, occurred_at DESC, event_id DESC);

CREATE TABLE rate_limit_buckets (
    bucket text PRIMARY KEY,
    tokens double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    subject text NOT NULL,
    msg_id text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
