"""A fake KeyService at the gRPC-stub boundary (unit tests only).

Callers are identified through the :class:`FakeAuthStub`'s access tokens. Uploads are checked
as the keys server checks them: lengths, and every prekey signature against the published
identity with the byte layouts of keys.proto, so a client building them wrongly fails here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import grpc
from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from conclave_crypto.keys import verify_signature

from tests.unit.client.fakes import FakeAuthStub, FakeRpcError, Metadata, rpc_error, ts

LOG_PUBLIC_KEY = bytes(range(32))


@dataclass
class FakeDevice:
    registration_id: int
    signing: bytes
    agreement: bytes
    leaf_index: int
    signed_prekey_id: int
    last_resort_id: int
    one_time: list[int] = field(default_factory=list)
    pq_one_time: list[int] = field(default_factory=list)
    signed_uploaded: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_resort_uploaded: datetime = field(default_factory=lambda: datetime.now(UTC))


def _check_signed(
    signing: bytes, key: keys_pb2.SignedEcPrekey | keys_pb2.SignedKemPrekey, context: bytes
) -> None:
    message = context + struct.pack(">I", key.key_id) + key.public_key
    if not verify_signature(signing, key.signature, message):
        raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad prekey signature")


def _check_kem(signing: bytes, key: keys_pb2.SignedKemPrekey) -> None:
    if len(key.public_key) != 1568:
        raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "ML-KEM-1024 key must be 1568 bytes")
    _check_signed(signing, key, b"Conclave/v1/Sig/KEMPreKey")


class FakeKeysStub:
    """Implements the KeyService stub methods the client uses."""

    def __init__(self, auth: FakeAuthStub) -> None:
        self.auth = auth
        self.devices: dict[tuple[str, str], FakeDevice] = {}
        self.calls: list[str] = []
        self.fail: dict[str, FakeRpcError] = {}
        self.leaves = 0

    def _enter(self, name: str, metadata: Metadata) -> tuple[str, str]:
        self.calls.append(name)
        if name in self.fail:
            raise self.fail.pop(name)
        session = self.auth._session(metadata)
        return session.account_id, session.device_id

    def _own(self, caller: tuple[str, str], device_id: str) -> tuple[str, str]:
        if device_id and device_id != caller[1]:
            raise rpc_error(grpc.StatusCode.PERMISSION_DENIED, "not your device")
        return caller

    def claim(self, account_id: str, count: int) -> None:
        """Another user claims ``count`` bundles from every device of the account."""
        for (account, _), device in self.devices.items():
            if account == account_id:
                del device.one_time[:count]
                del device.pq_one_time[:count]

    def _counts(self, device_id: str, d: FakeDevice) -> keys_pb2.PrekeyCounts:
        return keys_pb2.PrekeyCounts(
            device_id=device_id,
            one_time_prekeys=len(d.one_time),
            pq_one_time_prekeys=len(d.pq_one_time),
            signed_prekey_id=d.signed_prekey_id,
            signed_prekey_upload_time=ts(d.signed_uploaded),
            pq_last_resort_prekey_id=d.last_resort_id,
            pq_last_resort_prekey_upload_time=ts(d.last_resort_uploaded),
            low=min(len(d.one_time), len(d.pq_one_time)) < 10,
        )

    def PublishIdentityKey(
        self,
        request: keys_pb2.PublishIdentityKeyRequest,
        metadata: Metadata = None,
        timeout: float | None = None,
    ) -> keys_pb2.PublishIdentityKeyResponse:
        key = self._own(self._enter("PublishIdentityKey", metadata), request.device_id)
        ik = request.identity_key
        if len(ik.signing_public_key) != 32 or len(ik.agreement_public_key) != 32:
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "identity key halves are 32 bytes")
        if not 1 <= request.registration_id <= 2**31 - 1:
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad registration id")
        signing = bytes(ik.signing_public_key)
        _check_signed(signing, request.signed_prekey, b"Conclave/v1/Sig/SignedPreKey")
        _check_kem(signing, request.pq_last_resort_prekey)
        existing = self.devices.get(key)
        if existing is not None and existing.signing == signing:
            return keys_pb2.PublishIdentityKeyResponse(leaf_index=existing.leaf_index)
        self.devices[key] = FakeDevice(
            registration_id=request.registration_id,
            signing=signing,
            agreement=bytes(ik.agreement_public_key),
            leaf_index=self.leaves,
            signed_prekey_id=request.signed_prekey.key_id,
            last_resort_id=request.pq_last_resort_prekey.key_id,
        )
        self.leaves += 1
        return keys_pb2.PublishIdentityKeyResponse(leaf_index=self.leaves - 1)

    def UploadPrekeys(
        self,
        request: keys_pb2.UploadPrekeysRequest,
        metadata: Metadata = None,
        timeout: float | None = None,
    ) -> keys_pb2.UploadPrekeysResponse:
        key = self._own(self._enter("UploadPrekeys", metadata), request.device_id)
        device = self.devices.get(key)
        if device is None:
            raise rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "publish first", "NO_IDENTITY_KEY")
        if len(request.one_time_prekeys) > 100 or len(request.pq_one_time_prekeys) > 100:
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "at most 100 per kind")
        for ec in request.one_time_prekeys:
            if len(ec.public_key) != 32:
                raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "X25519 keys are 32 bytes")
        for kem in request.pq_one_time_prekeys:
            _check_kem(device.signing, kem)
        if request.HasField("signed_prekey"):
            _check_signed(device.signing, request.signed_prekey, b"Conclave/v1/Sig/SignedPreKey")
            if request.signed_prekey.key_id == device.signed_prekey_id:
                raise rpc_error(grpc.StatusCode.ALREADY_EXISTS, "signed prekey id still stored")
            device.signed_prekey_id = request.signed_prekey.key_id
            device.signed_uploaded = datetime.now(UTC)
        if request.HasField("pq_last_resort_prekey"):
            _check_kem(device.signing, request.pq_last_resort_prekey)
            if request.pq_last_resort_prekey.key_id == device.last_resort_id:
                raise rpc_error(grpc.StatusCode.ALREADY_EXISTS, "last-resort id still stored")
            device.last_resort_id = request.pq_last_resort_prekey.key_id
            device.last_resort_uploaded = datetime.now(UTC)
        ids = [k.key_id for k in request.one_time_prekeys]
        pq_ids = [k.key_id for k in request.pq_one_time_prekeys]
        if set(ids) & set(device.one_time) or set(pq_ids) & set(device.pq_one_time):
            raise rpc_error(grpc.StatusCode.ALREADY_EXISTS, "key id still stored")
        device.one_time.extend(ids)
        device.pq_one_time.extend(pq_ids)
        return keys_pb2.UploadPrekeysResponse(counts=self._counts(key[1], device))

    def GetPrekeyCounts(
        self,
        request: keys_pb2.GetPrekeyCountsRequest,
        metadata: Metadata = None,
        timeout: float | None = None,
    ) -> keys_pb2.GetPrekeyCountsResponse:
        account, _ = self._enter("GetPrekeyCounts", metadata)
        return keys_pb2.GetPrekeyCountsResponse(
            devices=[
                self._counts(device_id, d)
                for (owner, device_id), d in sorted(self.devices.items())
                if owner == account and request.device_id in ("", device_id)
            ]
        )

    def LookupIdentityKeys(
        self,
        request: keys_pb2.LookupIdentityKeysRequest,
        metadata: Metadata = None,
        timeout: float | None = None,
    ) -> keys_pb2.LookupIdentityKeysResponse:
        self._enter("LookupIdentityKeys", metadata)
        return keys_pb2.LookupIdentityKeysResponse(
            devices=[
                keys_pb2.DeviceIdentity(
                    device_id=device_id,
                    registration_id=d.registration_id,
                    identity_key=keys_pb2.IdentityKey(
                        signing_public_key=d.signing, agreement_public_key=d.agreement
                    ),
                    leaf_index=d.leaf_index,
                )
                for (owner, device_id), d in sorted(self.devices.items())
                if owner == request.account_id and request.device_id in ("", device_id)
            ]
        )

    def GetSignedTreeHead(
        self, request: keys_pb2.GetSignedTreeHeadRequest, timeout: float | None = None
    ) -> keys_pb2.GetSignedTreeHeadResponse:
        self.calls.append("GetSignedTreeHead")
        return keys_pb2.GetSignedTreeHeadResponse(
            tree_head=keys_pb2.SignedTreeHead(tree_size=self.leaves, key_id="log-1"),
            log_public_key=LOG_PUBLIC_KEY,
        )


def as_keys_stub(fake: FakeKeysStub) -> keys_pb2_grpc.KeyServiceStub:
    """The fake, typed as the real stub for the client's constructor."""
    return cast(keys_pb2_grpc.KeyServiceStub, fake)
