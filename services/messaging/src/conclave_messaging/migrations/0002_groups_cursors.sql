-- Groups, members, per-device delivery cursors and the event outbox (issue #6).
-- Message content never lives here: ciphertext is in JetStream (streams MSG_GROUPS and
-- MSG_DIRECT). Every column is listed in docs/data-map.md with its purpose and lifetime.

CREATE TABLE groups (
    group_id uuid PRIMARY KEY,                     -- client-chosen (idempotency key)
    created_by uuid NOT NULL,                      -- creator account: retries by it are idempotent
    encrypted_metadata bytea NOT NULL,             -- opaque to the server (E2EE), <= 16 KiB
    membership_version bigint NOT NULL,            -- +1 on every membership or role change
    member_count integer NOT NULL,
    max_members integer NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE members (
    group_id uuid NOT NULL REFERENCES groups ON DELETE CASCADE,
    account_id uuid NOT NULL,
    role smallint NOT NULL,                        -- messaging.v1.MemberRole
    joined_at timestamptz NOT NULL,
    -- Last MSG_GROUPS sequence before the account joined: it is never delivered messages
    -- at or below it (a new member gets no history).
    join_seq bigint NOT NULL,
    added_by uuid,                                 -- NULL for the creator
    PRIMARY KEY (group_id, account_id)
);
CREATE INDEX members_by_account ON members (account_id, group_id);
CREATE INDEX members_by_join ON members (group_id, joined_at, account_id);

-- A device's position in each conversation ('direct' = its 1:1 mailbox, else a group id).
-- Acknowledgements are cumulative per conversation: everything at or below acked_seq is
-- done; delivered_seq only marks redeliveries.
CREATE TABLE cursors (
    device_id uuid NOT NULL,
    conversation text NOT NULL,
    account_id uuid NOT NULL,                      -- for erasure and membership removal
    acked_seq bigint NOT NULL DEFAULT 0,
    delivered_seq bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, conversation)
);
CREATE INDEX cursors_by_account ON cursors (account_id, conversation);

CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    subject text NOT NULL,
    msg_id text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
