-- Retention policies (issue #7), the group membership retention learns from
-- conclave.events.group.membership, and the outbox for policy_changed events.
-- Every column is listed in docs/data-map.md with its purpose and lifetime.

-- Account-level policy; NULL = inherit the deployment default. Whole seconds.
CREATE TABLE account_policies (
    account_id uuid PRIMARY KEY,
    undelivered_message_ttl_seconds bigint,
    disappearing_timer_seconds bigint,
    media_ttl_seconds bigint,
    audit_log_ttl_seconds bigint,
    updated_at timestamptz NOT NULL
);

-- Conversation-level policy; NULL = inherit the account level. A direct conversation is
-- keyed by both accounts (account_low < account_high) so the two parties share one policy;
-- a group by its id (group_id set, the account columns NULL).
CREATE TABLE conversation_policies (
    conversation_key text PRIMARY KEY,             -- 'direct:<low>:<high>' or 'group:<id>'
    group_id uuid,
    account_low uuid,
    account_high uuid,
    undelivered_message_ttl_seconds bigint,
    disappearing_timer_seconds bigint,
    media_ttl_seconds bigint,
    updated_by uuid NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX conversation_policies_by_low ON conversation_policies (account_low);
CREATE INDEX conversation_policies_by_high ON conversation_policies (account_high);
CREATE INDEX conversation_policies_by_group ON conversation_policies (group_id);

-- Who is in which group, as learned from membership events. Rows are last-writer-wins by
-- membership_version, and a removal keeps the row (is_member false) so an older event
-- delivered late cannot re-add the account.
CREATE TABLE group_members (
    group_id uuid NOT NULL,
    account_id uuid NOT NULL,
    is_member boolean NOT NULL,
    is_admin boolean NOT NULL,
    membership_version bigint NOT NULL,
    PRIMARY KEY (group_id, account_id)
);
CREATE INDEX group_members_by_account ON group_members (account_id);

CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    subject text NOT NULL,
    msg_id text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
