-- Index of every item stored in the message streams (issue #7: per-message expiry, purge,
-- export and erasure). JetStream can only delete by sequence or purge a whole subject, and
-- cannot be asked "which messages expired" or "which messages did this account send", so
-- each stored item gets one row here (no content: stream position, routing, expiry).
-- Every column is listed in docs/data-map.md.

CREATE TABLE stored_messages (
    stream text NOT NULL,                          -- MSG_DIRECT or MSG_GROUPS
    seq bigint NOT NULL,                           -- stream sequence (what STREAM.MSG.DELETE takes)
    subject text NOT NULL,                         -- conclave.msg.device.<d> / conclave.msg.group.<g>
    -- Sending account; NULL for sealed sender (never recorded) and membership changes.
    sender_account_id uuid,
    -- Account owning the mailbox of a 1:1 copy (erasure finds its mailboxes); NULL in groups.
    recipient_account_id uuid,
    -- Every account id the stored item carries in clear (sender, 1:1 peer, the accounts a
    -- membership change names): account erasure deletes exactly these items. NULL when it
    -- names none (sealed sender).
    named_account_ids uuid[],
    message_id uuid,                               -- sender-chosen id (export); NULL for changes
    size_bytes integer NOT NULL,                   -- stored size (export, purge accounting)
    expires_at timestamptz NOT NULL,               -- MessageDelivery.expire_time
    PRIMARY KEY (stream, seq)
);
CREATE INDEX stored_messages_expiry ON stored_messages (stream, expires_at);
CREATE INDEX stored_messages_subject ON stored_messages (subject, seq);
CREATE INDEX stored_messages_recipient ON stored_messages (recipient_account_id)
    WHERE recipient_account_id IS NOT NULL;
CREATE INDEX stored_messages_named ON stored_messages USING gin (named_account_ids)
    WHERE named_account_ids IS NOT NULL;

-- Account erasure keeps a group its other members still use but must not keep the erased
-- creator's id: created_by becomes NULL (only CreateGroup retries by the creator read it).
ALTER TABLE groups ALTER COLUMN created_by DROP NOT NULL;
