-- Key directory (public keys only) and the key-transparency log. See docs/data-map.md,
-- section "keys schema", for what each column is for, how long it lives and what deletes it.

-- One row per published device: its current identity binding.
CREATE TABLE devices (
    account_id text NOT NULL,
    device_id text NOT NULL,
    registration_id integer NOT NULL CHECK (registration_id > 0),
    signing_public_key bytea NOT NULL CHECK (length(signing_public_key) = 32),
    agreement_public_key bytea NOT NULL CHECK (length(agreement_public_key) = 32),
    -- Latest ADD/ROTATE leaf of this binding in kt_leaves.
    leaf_index bigint NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    -- Last conclave.events.prekeys.low for this device (at most one per 10 minutes).
    low_notified_at timestamptz,
    PRIMARY KEY (account_id, device_id)
);
-- Device ids are UUIDs assigned by auth: one device belongs to exactly one account, which
-- lets RemoveDeviceKeys tell "another account's device" from "no keys".
CREATE UNIQUE INDEX devices_device_id ON devices (device_id);

-- Signed X25519 prekeys (kind 1) and ML-KEM-1024 last-resort prekeys (kind 2). The current
-- one has replaced_at NULL; replaced ones stay for the grace period, then are deleted.
CREATE TABLE signed_prekeys (
    account_id text NOT NULL,
    device_id text NOT NULL,
    kind smallint NOT NULL CHECK (kind IN (1, 2)),
    key_id bigint NOT NULL CHECK (key_id BETWEEN 1 AND 4294967295),
    public_key bytea NOT NULL,
    signature bytea NOT NULL CHECK (length(signature) = 64),
    uploaded_at timestamptz NOT NULL DEFAULT now(),
    replaced_at timestamptz,
    PRIMARY KEY (account_id, device_id, kind, key_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices ON DELETE CASCADE
);
CREATE UNIQUE INDEX signed_prekeys_current
    ON signed_prekeys (account_id, device_id, kind) WHERE replaced_at IS NULL;
CREATE INDEX signed_prekeys_replaced ON signed_prekeys (replaced_at) WHERE replaced_at IS NOT NULL;

-- One-time prekeys: X25519 (kind 1, unsigned) and ML-KEM-1024 (kind 2, signed). A row is
-- deleted when it is handed out (claims are DELETE ... RETURNING, oldest id first).
CREATE TABLE one_time_prekeys (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id text NOT NULL,
    device_id text NOT NULL,
    kind smallint NOT NULL CHECK (kind IN (1, 2)),
    key_id bigint NOT NULL CHECK (key_id BETWEEN 1 AND 4294967295),
    public_key bytea NOT NULL,
    signature bytea CHECK (signature IS NULL OR length(signature) = 64),
    uploaded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, device_id, kind, key_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices ON DELETE CASCADE
);
CREATE INDEX one_time_prekeys_claim ON one_time_prekeys (account_id, device_id, kind, id);

-- Transparency log leaves. leaf_index is dense (0, 1, 2, ...): appends are serialised by
-- an advisory lock. The content columns are NULL after account erasure; the hash stays so
-- the tree still rebuilds to every signed head.
CREATE TABLE kt_leaves (
    leaf_index bigint PRIMARY KEY CHECK (leaf_index >= 0),
    leaf_hash bytea NOT NULL CHECK (length(leaf_hash) = 32),
    action smallint CHECK (action IN (1, 2, 3)),
    account_id text,
    device_id text,
    signing_public_key bytea,
    agreement_public_key bytea,
    timestamp_ms bigint
);
CREATE INDEX kt_leaves_binding ON kt_leaves (account_id, device_id, leaf_index)
    WHERE account_id IS NOT NULL;

-- Hashes of complete (perfect) subtrees above the leaves: node (level, node_index) covers
-- leaves [node_index * 2^level, (node_index + 1) * 2^level). Written once, never updated.
CREATE TABLE kt_nodes (
    level smallint NOT NULL CHECK (level BETWEEN 1 AND 63),
    node_index bigint NOT NULL CHECK (node_index >= 0),
    hash bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, node_index)
);

-- Public halves of the log signing keys that have signed heads (the private key is never
-- stored here), so historical heads can be served with the key that signed them.
CREATE TABLE kt_log_keys (
    key_id text PRIMARY KEY,
    public_key bytea NOT NULL CHECK (length(public_key) = 32),
    first_used_at timestamptz NOT NULL DEFAULT now()
);

-- Signed heads: one per append, plus one re-signing the latest size when the service
-- starts with a new log key (so clients pinning the new key can verify the current head).
CREATE TABLE kt_tree_heads (
    tree_size bigint NOT NULL CHECK (tree_size >= 0),
    key_id text NOT NULL REFERENCES kt_log_keys,
    root_hash bytea NOT NULL CHECK (length(root_hash) = 32),
    timestamp_ms bigint NOT NULL,
    signature bytea NOT NULL CHECK (length(signature) = 64),
    PRIMARY KEY (tree_size, key_id)
);

-- conclave_kit.ratelimit token buckets (claims, uploads, lookups, anonymous log reads).
CREATE TABLE rate_limit_buckets (
    bucket text PRIMARY KEY,
    tokens double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
