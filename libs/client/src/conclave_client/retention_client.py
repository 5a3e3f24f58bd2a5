"""A synchronous client of the account-data RPCs of ``conclave.retention.v1.RetentionService``.

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
    "EXPORT_FORMAT",
    "FRESH_AUTH_REQUIRED",
    "ClientError",
    "ErasureStatus",
    "Export",
    "RetentionClient",
    "ServiceErasure",
    "section_counts",
]
