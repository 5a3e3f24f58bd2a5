-- Account erasure (DeleteAccount / GetErasureStatus), the export rate limit, and erasure of
-- policy authorship. Every column is listed in docs/data-map.md.

-- An erased account must not stay behind as the author of a policy other parties still
-- use (a group's policy): erasure sets updated_by to NULL.
ALTER TABLE conversation_policies ALTER COLUMN updated_by DROP NOT NULL;

-- One row per erasure. The erasure id is the credential of GetErasureStatus, so rows are
-- found by its SHA-256 only. While the erasure is pending the row also keeps the id itself
-- (a repeated DeleteAccount must answer the same id) and the account id (to match
-- completion events and to scrub the events stream); both become NULL when the erasure
-- completes, so a completed record holds no personal data and no usable id.
CREATE TABLE erasure_requests (
    id_hash bytea PRIMARY KEY CHECK (length(id_hash) = 32),
    erasure_id text,
    account_id uuid,
    requested_at timestamptz NOT NULL,
    servers_done_at timestamptz,   -- when the last of the five servers reported complete
    completed_at timestamptz,      -- after the events stream was scrubbed: COMPLETE
    CHECK ((completed_at IS NULL) = (account_id IS NOT NULL)),
    CHECK ((completed_at IS NULL) = (erasure_id IS NOT NULL))
);
-- At most one pending erasure per account: a concurrent or repeated DeleteAccount meets
-- the existing row instead of starting a second erasure.
CREATE UNIQUE INDEX erasure_requests_pending ON erasure_requests (account_id)
    WHERE account_id IS NOT NULL;
CREATE INDEX erasure_requests_due ON erasure_requests (servers_done_at)
    WHERE completed_at IS NULL AND servers_done_at IS NOT NULL;
CREATE INDEX erasure_requests_completed ON erasure_requests (completed_at)
    WHERE completed_at IS NOT NULL;

-- Which servers reported completion (conclave.events.erasure.completed), and when.
CREATE TABLE erasure_progress (
    id_hash bytea NOT NULL REFERENCES erasure_requests (id_hash) ON DELETE CASCADE,
    service smallint NOT NULL,     -- conclave.common.v1.ServiceName
    completed_at timestamptz NOT NULL,
    PRIMARY KEY (id_hash, service)
);

-- conclave_kit.ratelimit buckets: 'exports:<account id>' (ExportMyData, once an hour).
CREATE TABLE rate_limit_buckets (
    bucket text PRIMARY KEY,
    tokens double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
