-- Token buckets of the kit's RateLimiter (conclave_kit.ratelimit): CreateUpload per account.
-- See docs/data-map.md, section "media schema".
CREATE TABLE rate_limit_buckets (
    bucket text PRIMARY KEY,
    tokens double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
