"""Retention domain logic: policies per deployment, account and conversation.

Invariants this module enforces (each has a test):

* Every stored value lies within the deployment bounds when set: out of bounds is
  INVALID_ARGUMENT naming the field and the bound, never silently clamped.
* Resolution is per field: conversation, else the caller's account, else the deployment.
* A direct conversation has one policy shared by both parties (either may set it); a
  group's policy is readable by its members and settable by its admins only; a
  non-member learns nothing (NOT_FOUND, same words as an absent group).
* Every change and its ``conclave.events.retention.policy_changed`` event commit in one
  transaction (outbox).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from conclave.common.v1 import types_pb2
from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.database import Connection
from conclave_kit.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from conclave_kit.outbox import OutboxRelay
from conclave_kit.tokens import Claims
from conclave_kit.validation import parse_uuid

from conclave_retention import events, store
from conclave_retention.config import RetentionConfig
from conclave_retention.metrics import POLICY_CHANGES
from conclave_retention.policy import deployment, resolve, to_proto, validate

Clock = Callable[[], datetime]
NOT_MEMBER = "no such group"  # as messaging says it: existence is not revealed


def caller_account(claims: Claims) -> str:
    """The caller's account id (auth always signs UUIDs).

    Raises:
        Unauthenticated: The token's account id is not a UUID.
    """
    try:
        return str(uuid.UUID(claims.account_id))
    except ValueError:
        raise Unauthenticated("access token does not name a session") from None


def _check_uuid(value: str, field: str) -> str:
    """The canonical form of a UUID field (reason ``BAD_ID`` when it is not one)."""
    return parse_uuid(value, field, reason="BAD_ID")


@dataclass(frozen=True)
class Conversation:
    """A conversation resolved for the caller: its storage key and parties."""

    key: str
    group_id: str | None
    accounts: tuple[str, ...]  # (low, high) for direct conversations; () for groups

    def ref(self, account_id: str) -> types_pb2.ConversationRef:
        """The canonical ConversationRef as ``account_id`` (a party) names it."""
        if self.group_id is not None:
            return types_pb2.ConversationRef(group_id=self.group_id)
        low, high = self.accounts
        return types_pb2.ConversationRef(peer_account_id=high if account_id == low else low)


def conversation_of(account_id: str, ref: types_pb2.ConversationRef) -> Conversation:
    """The conversation ``ref`` names from ``account_id``'s point of view.

    Raises:
        InvalidArgument: Neither or a malformed id is set.
    """
    which = ref.WhichOneof("conversation")
    if which == "peer_account_id":
        peer = _check_uuid(ref.peer_account_id, "conversation.peer_account_id")
        low, high = sorted((account_id, peer))
        return Conversation(f"direct:{low}:{high}", None, (low, high))
    if which == "group_id":
        gid = _check_uuid(ref.group_id, "conversation.group_id")
        return Conversation(f"group:{gid}", gid, ())
    raise InvalidArgument(
        "conversation must name a peer_account_id or a group_id", reason="NO_CONVERSATION"
    )


class RetentionManager:
    """The retention service's policy operations.

    Args:
        config: Deployment defaults and bounds.
        pool: Pool on the ``retention`` schema.
        relay: Publishes queued events after commit.
        clock: Current time (injectable for tests).
    """

    def __init__(
        self,
        config: RetentionConfig,
        pool: asyncpg.Pool,
        relay: OutboxRelay,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._cfg = config
        self._pool = pool
        self._relay = relay
        self._clock = clock

    def deployment_policy(self) -> R.GetDeploymentPolicyResponse:
        """Defaults and bounds."""
        return deployment(self._cfg.bounds)

    async def _require_group_role(
        self, conn: Connection, conv: Conversation, account_id: str, *, admin: bool
    ) -> None:
        if conv.group_id is None:
            return
        role = await store.group_role(conn, conv.group_id, account_id)
        if role is None:
            raise NotFound(NOT_MEMBER, reason="GROUP_NOT_FOUND")
        if admin and not role:
            raise PermissionDenied(
                "only group admins may set a group's retention policy", reason="NOT_GROUP_ADMIN"
            )

    async def effective(
        self, claims: Claims, ref: types_pb2.ConversationRef | None
    ) -> R.EffectivePolicy:
        """The policy in force for the caller's account or one of its conversations."""
        account_id = caller_account(claims)
        async with self._pool.acquire() as conn:
            account = await store.account_policy(conn, account_id)
            if ref is None:
                return resolve(self._cfg.bounds, account).to_proto()
            conv = conversation_of(account_id, ref)
            await self._require_group_role(conn, conv, account_id, admin=False)
            level = await store.conversation_policy(conn, conv.key)
        return resolve(self._cfg.bounds, account, level).to_proto()

    async def resolve_for(
        self, account_id: str, ref: types_pb2.ConversationRef | None
    ) -> R.EffectivePolicy:
        """The policy in force for ``account_id``'s data, without a membership check.

        For other servers (``conclave.internal.retention.policy``), which have already
        authorised their caller. One database round trip.

        Raises:
            InvalidArgument: A malformed account id or conversation.
        """
        account_id = _check_uuid(account_id, "account_id")
        conv = None if ref is None else conversation_of(account_id, ref)
        async with self._pool.acquire() as conn:
            account, level = await store.policies_for(
                conn, account_id, None if conv is None else conv.key
            )
        return resolve(self._cfg.bounds, account, level).to_proto()

    async def set_account(self, claims: Claims, policy: R.RetentionPolicy) -> R.EffectivePolicy:
        """Replaces the caller's account level."""
        account_id = caller_account(claims)
        level = validate(policy, self._cfg.bounds, conversation=False)
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            await store.set_account_policy(conn, account_id, level, now)
            await events.policy_changed(
                conn, now=now, account_id=account_id, conversation=None, policy=to_proto(level)
            )
        self._relay.wake()
        POLICY_CHANGES.labels("account").inc()
        return resolve(self._cfg.bounds, level).to_proto()

    async def set_conversation(
        self, claims: Claims, ref: types_pb2.ConversationRef, policy: R.RetentionPolicy
    ) -> R.EffectivePolicy:
        """Replaces a conversation's level (either direct party; group admins)."""
        account_id = caller_account(claims)
        conv = conversation_of(account_id, ref)
        level = validate(policy, self._cfg.bounds, conversation=True)
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            await self._require_group_role(conn, conv, account_id, admin=True)
            await store.set_conversation_policy(
                conn,
                key=conv.key,
                group_id=conv.group_id,
                accounts=conv.accounts,
                level=level,
                updated_by=account_id,
                now=now,
            )
            await events.policy_changed(
                conn,
                now=now,
                account_id=account_id,
                conversation=conv.ref(account_id),
                policy=to_proto(level),
            )
            account = await store.account_policy(conn, account_id)
        self._relay.wake()
        POLICY_CHANGES.labels("conversation").inc()
        return resolve(self._cfg.bounds, account, level).to_proto()
