CREATE TABLE rate_limit_buckets (
    bucket text PRIMARY KEY,
    tokens double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
