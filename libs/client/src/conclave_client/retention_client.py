"""A synchronous client of ``conclave.retention.v1.RetentionService``.

Policies: :meth:`RetentionClient.effective_policy` (``GetEffectivePolicy``, the values in
force for the account or one conversation and where each comes from),
:meth:`RetentionClient.deployment_policy` (defaults and bounds) and
:meth:`RetentionClient.set_policy` (``SetAccountPolicy`` / ``SetConversationPolicy``).
Those setters *replace* a level; :meth:`RetentionClient.update_policy` changes only the
fields given and keeps the level's other values, which is what a person setting one value
means.

Account data:

``ExportMyData`` and ``DeleteAccount`` are ``AUTH_MODE_FRESH``: the access token must carry
a recent password + second-factor check (``auth_time``). A call made with an older one
fails with ``UNAUTHENTICATED`` / ``FRESH_AUTH_REQUIRED``; the caller then re-authenticates
(:meth:`AuthClient.reauthenticate`) and calls again. ``GetErasureStatus`` needs no session:
after an erasure none exists any more, and the unguessable erasure id is the credential.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from conclave.common.v1 import types_pb2
from conclave.retention.v1 import retention_pb2, retention_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from conclave_client.auth_client import DEFAULT_TIMEOUT, AuthClient, ClientError, error_from_rpc

POLICY_FIELDS = (
    "undelivered_message_ttl",
    "disappearing_message_timer",
    "media_ttl",
    "audit_log_ttl",
)
"""RetentionPolicy fields, in display order (all ``google.protobuf.Duration``)."""
CONVERSATION_POLICY_FIELDS = POLICY_FIELDS[:3]
"""Fields a conversation policy may set (the audit log is account-level only)."""
INHERIT = -1
"""Value for :meth:`RetentionClient.update_policy`: clear the field at this level."""

EXPORT_FORMAT = "conclave-export-v1"
EXPORT_TIMEOUT = 120.0
"""Seconds for a whole export (every server contributes its share)."""
MAX_EXPORT_BYTES = 512 * 1024 * 1024
"""Refuse to buffer more than this (a server gone wrong, not a real export)."""
FRESH_AUTH_REQUIRED = "FRESH_AUTH_REQUIRED"


def _time(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def _service(value: int) -> str:
    for name, number in types_pb2.ServiceName.items():
        if number == value and number:
            return name.removeprefix("SERVICE_NAME_").lower()
    return f"service {value}"


def _state(value: int) -> str:
    if value == retention_pb2.ERASURE_STATE_COMPLETE:
        return "complete"
    if value == retention_pb2.ERASURE_STATE_PENDING:
        return "pending"
    return "unknown"


def _source(value: int) -> str:
    if value == retention_pb2.POLICY_SOURCE_CONVERSATION:
        return "conversation"
    if value == retention_pb2.POLICY_SOURCE_ACCOUNT:
        return "account"
    if value == retention_pb2.POLICY_SOURCE_DEPLOYMENT:
        return "deployment"
    return "unknown"


def _seconds(policy: retention_pb2.RetentionPolicy) -> dict[str, int]:
    return {
        name: int(getattr(policy, name).seconds)
        for name in POLICY_FIELDS
        if policy.HasField(name)  # type: ignore[arg-type]
    }


def _policy(values: dict[str, int]) -> retention_pb2.RetentionPolicy:
    policy = retention_pb2.RetentionPolicy()
    for name, seconds in values.items():
        getattr(policy, name).FromSeconds(seconds)
    return policy


@dataclass(frozen=True)
class EffectivePolicy:
    """A resolved policy: seconds per field and where each value comes from.

    Attributes:
        values: Field name -> seconds (``disappearing_message_timer`` 0 = off).
        sources: Field name -> ``conversation``, ``account`` or ``deployment``.
    """

    values: dict[str, int]
    sources: dict[str, str]

    @property
    def disappearing_timer(self) -> int:
        """The disappearing-message timer in seconds (0: off)."""
        return self.values.get("disappearing_message_timer", 0)

    @classmethod
    def from_pb(cls, effective: retention_pb2.EffectivePolicy) -> EffectivePolicy:
        """From the ``EffectivePolicy`` message."""
        return cls(
            _seconds(effective.policy),
            {n: _source(getattr(effective, f"{n}_source")) for n in POLICY_FIELDS},
        )


@dataclass(frozen=True)
class DeploymentPolicy:
    """The deployment's defaults and bounds, seconds per field."""

    defaults: dict[str, int]
    minimum: dict[str, int]
    maximum: dict[str, int]


@dataclass(frozen=True)
class ServiceErasure:
    """One server's part of an erasure."""

    service: str
    state: str
    complete_time: datetime | None


@dataclass(frozen=True)
class ErasureStatus:
    """Progress of an account erasure (``GetErasureStatus``)."""

    erasure_id: str
    state: str
    request_time: datetime | None
    complete_time: datetime | None
    services: tuple[ServiceErasure, ...]

    @property
    def complete(self) -> bool:
        """True once every server reported that nothing about the account remains."""
        return self.state == "complete"


@dataclass(frozen=True)
class Export:
    """A parsed ``conclave-export-v1`` document and its exact bytes."""

    raw: bytes
    document: dict[str, Any]

    @property
    def services(self) -> dict[str, Any]:
        """Per-server sections (``auth``, ``keys``, ...)."""
        value = self.document.get("services")
        return value if isinstance(value, dict) else {}


class RetentionClient:
    """RetentionService calls for one's own account.

    Args:
        address: ``host:port`` of the retention service.
        auth: The session.
        timeout: Seconds per unary RPC.
    """

    def __init__(self, address: str, auth: AuthClient, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self._auth = auth
        self._timeout = timeout
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)]
        )
        self._stub = retention_pb2_grpc.RetentionServiceStub(self._channel)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> RetentionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        return self._auth.authorized(
            lambda md: method(request, metadata=md, timeout=self._timeout),
            service="retention",
            address=self.address,
        )

    def effective_policy(
        self, conversation: types_pb2.ConversationRef | None = None
    ) -> EffectivePolicy:
        """The policy in force for our account, or for ``conversation`` as we see it.

        Raises:
            ClientError: ``NOT_FOUND`` (not a member of the group; no such peer), ...
        """
        request = retention_pb2.GetEffectivePolicyRequest(conversation=conversation)
        reply = self._call(self._stub.GetEffectivePolicy, request)
        return EffectivePolicy.from_pb(reply.effective)

    def deployment_policy(self) -> DeploymentPolicy:
        """The deployment's defaults and the smallest and largest value of each field."""
        reply = self._call(
            self._stub.GetDeploymentPolicy, retention_pb2.GetDeploymentPolicyRequest()
        )
        return DeploymentPolicy(
            _seconds(reply.defaults), _seconds(reply.minimum), _seconds(reply.maximum)
        )

    def set_policy(
        self, values: dict[str, int], conversation: types_pb2.ConversationRef | None = None
    ) -> EffectivePolicy:
        """Replaces the account's (or ``conversation``'s) policy level with ``values``.

        Fields not in ``values`` inherit from the level above.

        Returns:
            The effective policy after the change.

        Raises:
            ClientError: ``INVALID_ARGUMENT`` (out of bounds; audit-log TTL on a
                conversation), ``PERMISSION_DENIED`` (not a group admin), ``NOT_FOUND``.
        """
        policy = _policy(values)
        if conversation is None:
            reply = self._call(
                self._stub.SetAccountPolicy, retention_pb2.SetAccountPolicyRequest(policy=policy)
            )
        else:
            reply = self._call(
                self._stub.SetConversationPolicy,
                retention_pb2.SetConversationPolicyRequest(
                    conversation=conversation, policy=policy
                ),
            )
        return EffectivePolicy.from_pb(reply.effective)

    def update_policy(
        self, changes: dict[str, int], conversation: types_pb2.ConversationRef | None = None
    ) -> EffectivePolicy:
        """Changes only the fields in ``changes`` at the account or conversation level.

        The level's other values are kept: they are read back from the effective policy
        (the fields whose source is this level), since the RPCs replace a whole level.
        A change to :data:`INHERIT` clears that field at this level.

        Returns:
            The effective policy after the change.

        Raises:
            ClientError: As :meth:`set_policy`.
        """
        level = "account" if conversation is None else "conversation"
        current = self.effective_policy(conversation)
        values = {n: v for n, v in current.values.items() if current.sources.get(n) == level}
        for name, seconds in changes.items():
            if seconds == INHERIT:
                values.pop(name, None)
            else:
                values[name] = seconds
        return self.set_policy(values, conversation)

    def export(self, progress: Callable[[int], None] | None = None) -> Export:
        """Everything the servers hold about our account (``ExportMyData``).

        The stream either delivers the whole document or fails (a server that cannot
        contribute fails it), so a partial export is never returned.

        Args:
            progress: Called with the bytes received so far.

        Raises:
            ClientError: ``FRESH_AUTH_REQUIRED`` (re-authenticate first), rate limit, a
                server unavailable, or a document that is not a ``conclave-export-v1``.
        """

        def call(md: tuple[tuple[str, str], ...]) -> bytes:
            chunks: list[bytes] = []
            total = 0
            stream = self._stub.ExportMyData(
                retention_pb2.ExportMyDataRequest(), metadata=md, timeout=EXPORT_TIMEOUT
            )
            try:
                for item in stream:
                    chunks.append(bytes(item.json_chunk))
                    total += len(item.json_chunk)
                    if total > MAX_EXPORT_BYTES:
                        raise ClientError("the export is larger than this client accepts")
                    if progress is not None:
                        progress(total)
            finally:
                stream.cancel()  # type: ignore[no-untyped-call]
            return b"".join(chunks)

        raw = self._auth.authorized(call, service="retention", address=self.address)
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ClientError("the export is not valid UTF-8 JSON") from None
        if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
            raise ClientError(f"the export is not a {EXPORT_FORMAT} document")
        return Export(raw, document)

    def delete_account(
        self, password: str, totp_code: str, confirm_username: str
    ) -> tuple[str, datetime | None]:
        """Requests erasure of our account (``DeleteAccount``); sessions end at once.

        Returns:
            (erasure id, request time). The id is the only way to follow progress.

        Raises:
            ClientError: ``FRESH_AUTH_REQUIRED``, ``PERMISSION_DENIED`` (wrong password or
                code), ``INVALID_ARGUMENT`` (confirmation), ...
        """
        request = retention_pb2.DeleteAccountRequest(
            password=password, totp_code=totp_code, confirm_username=confirm_username
        )
        reply = self._auth.authorized(
            lambda md: self._stub.DeleteAccount(request, metadata=md, timeout=self._timeout),
            service="retention",
            address=self.address,
        )
        return reply.erasure_id, _time(reply.request_time, reply.HasField("request_time"))

    def erasure_status(self, erasure_id: str) -> ErasureStatus:
        """Per-server progress of an erasure (no session needed).

        Raises:
            ClientError: ``NOT_FOUND`` (unknown or expired id), unreachable server.
        """
        request = retention_pb2.GetErasureStatusRequest(erasure_id=erasure_id)
        try:
            reply = self._stub.GetErasureStatus(request, timeout=self._timeout)
        except grpc.RpcError as err:
            raise error_from_rpc(err, self.address, "retention") from None
        return ErasureStatus(
            erasure_id=erasure_id,
            state=_state(reply.state),
            request_time=_time(reply.request_time, reply.HasField("request_time")),
            complete_time=_time(reply.complete_time, reply.HasField("complete_time")),
            services=tuple(
                ServiceErasure(
                    _service(s.service),
                    _state(s.state),
                    _time(s.complete_time, s.HasField("complete_time")),
                )
                for s in reply.services
            ),
        )


def section_counts(export: Export) -> list[tuple[str, str, int]]:
    """(service, section, items) rows for a summary: list length, object size, else 1."""
    rows: list[tuple[str, str, int]] = []
    for service, body in sorted(export.services.items()):
        if not isinstance(body, dict):
            rows.append((service, "-", 1 if body else 0))
            continue
        for section, value in sorted(body.items()):
            if isinstance(value, list | dict):
                count = len(value)
            else:
                count = 0 if value in (None, "") else 1
            rows.append((service, section, count))
    return rows


__all__ = [
    "CONVERSATION_POLICY_FIELDS",
    "EXPORT_FORMAT",
    "FRESH_AUTH_REQUIRED",
    "INHERIT",
    "POLICY_FIELDS",
    "ClientError",
    "DeploymentPolicy",
    "EffectivePolicy",
    "ErasureStatus",
    "Export",
    "RetentionClient",
    "ServiceErasure",
    "section_counts",
]
