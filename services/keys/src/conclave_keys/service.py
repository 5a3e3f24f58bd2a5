"""gRPC layer of the keys service: thin, translating requests to the domain and back.

Auth modes are declared in keys.proto and enforced by the kit before a handler runs; the
handlers only read the verified caller (:func:`conclave_kit.auth.current_claims`).
"""

from __future__ import annotations

from typing import Any

import grpc
from conclave.keys.v1 import keys_pb2, keys_pb2_grpc
from conclave_kit.auth import current_claims
from google.protobuf.timestamp_pb2 import Timestamp

from conclave_keys.manager import (
    Bundle,
    DeviceCounts,
    IdentityKey,
    KeyManager,
)
from conclave_keys.store import StoredKey
from conclave_keys.transparency import LeafContent, SignedHead

Context = grpc.aio.ServicerContext[Any, Any]


def _ms_timestamp(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _seconds_timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMicroseconds(int(seconds * 1_000_000))
    return stamp


def _identity_in(key: keys_pb2.IdentityKey) -> IdentityKey:
    return IdentityKey(bytes(key.signing_public_key), bytes(key.agreement_public_key))


def _identity_out(key: IdentityKey) -> keys_pb2.IdentityKey:
    return keys_pb2.IdentityKey(signing_public_key=key.signing, agreement_public_key=key.agreement)


def _signed_in(key: keys_pb2.SignedEcPrekey | keys_pb2.SignedKemPrekey) -> StoredKey:
    return StoredKey(key.key_id, bytes(key.public_key), bytes(key.signature))


def _head_out(head: SignedHead) -> keys_pb2.SignedTreeHead:
    return keys_pb2.SignedTreeHead(
        tree_size=head.tree_size,
        root_hash=head.root_hash,
        timestamp=_ms_timestamp(head.timestamp_ms),
        key_id=head.key_id,
        signature=head.signature,
    )


def _leaf_out(leaf: LeafContent) -> keys_pb2.LogLeaf:
    return keys_pb2.LogLeaf(
        action=int(leaf.action),  # type: ignore[arg-type]
        account_id=leaf.account_id,
        device_id=leaf.device_id,
        identity_key=keys_pb2.IdentityKey(
            signing_public_key=leaf.signing_public_key,
            agreement_public_key=leaf.agreement_public_key,
        ),
        timestamp=_ms_timestamp(leaf.timestamp_ms),
    )


def _counts_out(c: DeviceCounts) -> keys_pb2.PrekeyCounts:
    counts = keys_pb2.PrekeyCounts(
        device_id=c.device_id,
        one_time_prekeys=c.one_time,
        pq_one_time_prekeys=c.pq_one_time,
        signed_prekey_id=c.signed_prekey_id,
        pq_last_resort_prekey_id=c.last_resort_id,
        low=c.low,
    )
    if c.signed_prekey_id:
        counts.signed_prekey_upload_time.CopyFrom(_seconds_timestamp(c.signed_prekey_time))
    if c.last_resort_id:
        counts.pq_last_resort_prekey_upload_time.CopyFrom(_seconds_timestamp(c.last_resort_time))
    return counts


def _bundle_out(b: Bundle) -> keys_pb2.PrekeyBundle:
    bundle = keys_pb2.PrekeyBundle(
        device_id=b.device_id,
        registration_id=b.registration_id,
        identity_key=_identity_out(b.identity),
        signed_prekey=keys_pb2.SignedEcPrekey(
            key_id=b.signed_prekey.key_id,
            public_key=b.signed_prekey.public_key,
            signature=b.signed_prekey.signature or b"",
        ),
        pq_prekey=keys_pb2.SignedKemPrekey(
            key_id=b.pq_prekey.key_id,
            public_key=b.pq_prekey.public_key,
            signature=b.pq_prekey.signature or b"",
        ),
        pq_prekey_is_last_resort=b.pq_is_last_resort,
        leaf_index=b.leaf_index,
    )
    if b.one_time_prekey is not None:
        bundle.one_time_prekey.CopyFrom(
            keys_pb2.EcPrekey(
                key_id=b.one_time_prekey.key_id, public_key=b.one_time_prekey.public_key
            )
        )
    return bundle


def _source(context: Context) -> str:
    """The caller's address without its port (``ipv4:1.2.3.4:5678`` → ``ipv4:1.2.3.4``)."""
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class KeyServiceServicer(keys_pb2_grpc.KeyServiceServicer):
    """Implements conclave.keys.v1.KeyService.

    Args:
        manager: The domain layer.
    """

    def __init__(self, manager: KeyManager) -> None:
        self._manager = manager

    async def PublishIdentityKey(  # noqa: D102 - documented in keys.proto
        self, request: keys_pb2.PublishIdentityKeyRequest, context: Context
    ) -> keys_pb2.PublishIdentityKeyResponse:
        leaf_index, head = await self._manager.publish_identity(
            current_claims(),
            request.device_id,
            _identity_in(request.identity_key),
            request.registration_id,
            _signed_in(request.signed_prekey) if request.HasField("signed_prekey") else None,
            _signed_in(request.pq_last_resort_prekey)
            if request.HasField("pq_last_resort_prekey")
            else None,
            [StoredKey(k.key_id, bytes(k.public_key), None) for k in request.one_time_prekeys],
            [_signed_in(k) for k in request.pq_one_time_prekeys],
        )
        return keys_pb2.PublishIdentityKeyResponse(leaf_index=leaf_index, tree_head=_head_out(head))

    async def UploadPrekeys(  # noqa: D102
        self, request: keys_pb2.UploadPrekeysRequest, context: Context
    ) -> keys_pb2.UploadPrekeysResponse:
        counts = await self._manager.upload_prekeys(
            current_claims(),
            request.device_id,
            _signed_in(request.signed_prekey) if request.HasField("signed_prekey") else None,
            _signed_in(request.pq_last_resort_prekey)
            if request.HasField("pq_last_resort_prekey")
            else None,
            [StoredKey(k.key_id, bytes(k.public_key), None) for k in request.one_time_prekeys],
            [_signed_in(k) for k in request.pq_one_time_prekeys],
        )
        return keys_pb2.UploadPrekeysResponse(counts=_counts_out(counts))

    async def GetPrekeyCounts(  # noqa: D102
        self, request: keys_pb2.GetPrekeyCountsRequest, context: Context
    ) -> keys_pb2.GetPrekeyCountsResponse:
        counts = await self._manager.prekey_counts(current_claims(), request.device_id)
        return keys_pb2.GetPrekeyCountsResponse(devices=[_counts_out(c) for c in counts])

    async def ClaimPrekeyBundles(  # noqa: D102
        self, request: keys_pb2.ClaimPrekeyBundlesRequest, context: Context
    ) -> keys_pb2.ClaimPrekeyBundlesResponse:
        bundles = await self._manager.claim_bundles(
            current_claims(), request.account_id, request.device_id
        )
        return keys_pb2.ClaimPrekeyBundlesResponse(bundles=[_bundle_out(b) for b in bundles])

    async def LookupIdentityKeys(  # noqa: D102
        self, request: keys_pb2.LookupIdentityKeysRequest, context: Context
    ) -> keys_pb2.LookupIdentityKeysResponse:
        found = await self._manager.lookup_identities(
            current_claims(), request.account_id, request.device_id
        )
        return keys_pb2.LookupIdentityKeysResponse(
            devices=[
                keys_pb2.DeviceIdentity(
                    device_id=d.device_id,
                    registration_id=d.registration_id,
                    identity_key=_identity_out(d.identity),
                    leaf_index=d.leaf_index,
                    publish_time=_seconds_timestamp(d.publish_time),
                )
                for d in found
            ]
        )

    async def RemoveDeviceKeys(  # noqa: D102
        self, request: keys_pb2.RemoveDeviceKeysRequest, context: Context
    ) -> keys_pb2.RemoveDeviceKeysResponse:
        removed, index = await self._manager.remove_device(current_claims(), request.device_id)
        return keys_pb2.RemoveDeviceKeysResponse(removed=removed, leaf_index=index)

    async def GetSignedTreeHead(  # noqa: D102
        self, request: keys_pb2.GetSignedTreeHeadRequest, context: Context
    ) -> keys_pb2.GetSignedTreeHeadResponse:
        head, public_key = await self._manager.signed_tree_head(_source(context), request.tree_size)
        return keys_pb2.GetSignedTreeHeadResponse(
            tree_head=_head_out(head), log_public_key=public_key
        )

    async def GetInclusionProof(  # noqa: D102
        self, request: keys_pb2.GetInclusionProofRequest, context: Context
    ) -> keys_pb2.GetInclusionProofResponse:
        which = request.WhichOneof("leaf")
        binding = None
        if which == "binding":
            b = request.binding
            binding = (b.account_id, b.device_id, _identity_in(b.identity_key))
        proof = await self._manager.inclusion_proof(
            current_claims(),
            leaf_index=request.leaf_index if which == "leaf_index" else None,
            binding=binding,
            tree_size=request.tree_size,
        )
        return keys_pb2.GetInclusionProofResponse(
            leaf=_leaf_out(proof.leaf),
            leaf_index=proof.leaf_index,
            audit_path=proof.audit_path,
            tree_head=_head_out(proof.head),
        )

    async def GetConsistencyProof(  # noqa: D102
        self, request: keys_pb2.GetConsistencyProofRequest, context: Context
    ) -> keys_pb2.GetConsistencyProofResponse:
        proof = await self._manager.consistency_proof(
            _source(context), request.first_tree_size, request.second_tree_size
        )
        return keys_pb2.GetConsistencyProofResponse(
            proof=proof.proof,
            first_tree_head=_head_out(proof.first),
            second_tree_head=_head_out(proof.second),
        )
