"""Client-side key-transparency verification (RFC 9162 §2.1.3/§2.1.4, keys.proto).

A client must not trust an identity key just because the key server returned it. Before
it does, it checks:

1. the signed tree head, against the log key pinned from configuration
   (:func:`verify_tree_head`);
2. the inclusion proof of the binding's ADD/ROTATE leaf in that head
   (:func:`verify_inclusion`, :func:`verify_binding`);
3. that the head is a consistent extension of the last head it verified from that server
   (:class:`TrustedHeadStore`, :func:`verify_consistency`): a smaller head is a rollback, a
   head of the same size with another root or a larger head without a valid consistency
   proof is a fork (equivocation), and both are refused.

This module is written independently of the server's log (servers never import client
code, and the client must not share the server's mistakes); tests build trees with the
server's code and verify them here. Verification functions return ``False`` rather than
raising for any malformed input: a proof either verifies or it does not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from conclave.keys.v1 import keys_pb2, keys_pb2_grpc

# The RFC 9162 proof math lives once, in the client crypto library (tested there against
# the Certificate Transparency vectors); this module adds the wire format, the pinned key
# and the remembered heads.
from conclave_crypto.transparency import leaf_hash as leaf_hash
from conclave_crypto.transparency import node_hash as node_hash
from conclave_crypto.transparency import verify_consistency as verify_consistency
from conclave_crypto.transparency import verify_inclusion as verify_inclusion
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from conclave_client.home import conclave_home

LEAF_CONTEXT = b"Conclave/v1/KT/Leaf"
TREE_HEAD_CONTEXT = b"Conclave/v1/KT/TreeHead"
HASH_SIZE = 32
ACTION_ADD = keys_pb2.LOG_ACTION_ADD
ACTION_ROTATE = keys_pb2.LOG_ACTION_ROTATE
ACTION_REMOVE = keys_pb2.LOG_ACTION_REMOVE


class TransparencyError(Exception):
    """A key-transparency check failed; the key or head must not be trusted."""


class RollbackError(TransparencyError):
    """The server presented a head older than one this client already verified."""


class EquivocationError(TransparencyError):
    """The server presented a head that is not a consistent extension of a verified one."""


def encode_leaf(
    action: int,
    account_id: str,
    device_id: str,
    signing_public_key: bytes,
    agreement_public_key: bytes,
    timestamp_ms: int,
) -> bytes:
    """The leaf bytes of keys.proto for a binding change."""
    account = account_id.encode()
    device = device_id.encode()
    return (
        LEAF_CONTEXT
        + struct.pack(">B", action)
        + struct.pack(">I", len(account))
        + account
        + struct.pack(">I", len(device))
        + device
        + signing_public_key
        + agreement_public_key
        + struct.pack(">Q", timestamp_ms)
    )


@dataclass(frozen=True)
class TreeHead:
    """A signed tree head as the client sees it.

    Attributes:
        tree_size: Number of leaves.
        root_hash: Root hash (32 bytes).
        timestamp_ms: Signing time, ms since the epoch (the signed value).
        key_id: Id of the log key.
        signature: Ed25519 signature (64 bytes).
    """

    tree_size: int
    root_hash: bytes
    timestamp_ms: int
    key_id: str
    signature: bytes

    @classmethod
    def from_proto(cls, head: keys_pb2.SignedTreeHead) -> TreeHead:
        """Converts the wire form (the timestamp is carried with ms precision)."""
        ms = head.timestamp.seconds * 1000 + head.timestamp.nanos // 1_000_000
        return cls(head.tree_size, bytes(head.root_hash), ms, head.key_id, bytes(head.signature))

    def signed_bytes(self) -> bytes:
        """The byte string the log key signs."""
        return (
            TREE_HEAD_CONTEXT
            + struct.pack(">QQ", self.tree_size, self.timestamp_ms)
            + (self.root_hash)
        )


def verify_tree_head(head: TreeHead, pinned_log_key: bytes) -> bool:
    """Checks a head's Ed25519 signature against the pinned 32-byte log public key."""
    if len(head.root_hash) != HASH_SIZE or len(pinned_log_key) != 32:
        return False
    if not 0 <= head.tree_size < 2**64 or not 0 <= head.timestamp_ms < 2**64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(pinned_log_key).verify(
            head.signature, head.signed_bytes()
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_binding(
    response: keys_pb2.GetInclusionProofResponse,
    pinned_log_key: bytes,
    *,
    account_id: str,
    device_id: str,
    signing_public_key: bytes,
    agreement_public_key: bytes,
) -> TreeHead:
    """Checks a ``GetInclusionProof`` answer for a binding the client is about to trust.

    Returns:
        The verified head, to feed :meth:`TrustedHeadStore.update`.

    Raises:
        TransparencyError: The head signature, the leaf (not an ADD/ROTATE of exactly
            this binding) or the inclusion proof does not verify.
    """
    head = TreeHead.from_proto(response.tree_head)
    if not verify_tree_head(head, pinned_log_key):
        raise TransparencyError("tree head signature does not verify with the pinned log key")
    leaf = response.leaf
    if leaf.action not in (ACTION_ADD, ACTION_ROTATE):
        raise TransparencyError("leaf does not publish a key")
    key = leaf.identity_key
    if (leaf.account_id, leaf.device_id, key.signing_public_key, key.agreement_public_key) != (
        account_id,
        device_id,
        signing_public_key,
        agreement_public_key,
    ):
        raise TransparencyError("leaf is not the binding being verified")
    ms = leaf.timestamp.seconds * 1000 + leaf.timestamp.nanos // 1_000_000
    encoded = encode_leaf(
        leaf.action, account_id, device_id, signing_public_key, agreement_public_key, ms
    )
    proof = [bytes(h) for h in response.audit_path]
    if not verify_inclusion(
        leaf_hash(encoded), response.leaf_index, head.tree_size, proof, head.root_hash
    ):
        raise TransparencyError("inclusion proof does not verify")
    return head


def _head_to_json(head: TreeHead) -> dict[str, Any]:
    data = asdict(head)
    data["root_hash"] = head.root_hash.hex()
    data["signature"] = head.signature.hex()
    return data


def _head_from_json(data: dict[str, Any]) -> TreeHead:
    return TreeHead(
        tree_size=int(data["tree_size"]),
        root_hash=bytes.fromhex(data["root_hash"]),
        timestamp_ms=int(data["timestamp_ms"]),
        key_id=str(data["key_id"]),
        signature=bytes.fromhex(data["signature"]),
    )


class TrustedHeadStore:
    """The last verified tree head per key server, persisted under ``$CONCLAVE_HOME``.

    The file (``kt-heads.json``, mode 0600) only ever moves forward: :meth:`update` accepts
    a head only if its signature verifies and it is a consistent extension of the head
    remembered for that server. Writes are atomic (temp file + rename) and serialised
    between processes with an advisory lock, so two CLI invocations cannot interleave.

    Args:
        path: The state file; defaults to ``$CONCLAVE_HOME/kt-heads.json``.
    """

    FILE_NAME = "kt-heads.json"
    VERSION = 1

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else conclave_home() / self.FILE_NAME

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> dict[str, TreeHead]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        if data.get("version") != self.VERSION:
            raise TransparencyError(f"{self.path}: unknown format version {data.get('version')}")
        return {server: _head_from_json(h) for server, h in data["servers"].items()}

    def _write(self, heads: dict[str, TreeHead]) -> None:
        payload = {
            "version": self.VERSION,
            "servers": {server: _head_to_json(h) for server, h in sorted(heads.items())},
        }
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)

    def last(self, server: str) -> TreeHead | None:
        """The last head verified for ``server`` (e.g. ``host:port``), if any."""
        with self._locked():
            return self._read().get(server)

    def update(
        self,
        server: str,
        head: TreeHead,
        consistency_proof: Sequence[bytes],
        pinned_log_key: bytes,
    ) -> TreeHead:
        """Verifies ``head`` and remembers it if it extends the last one.

        Args:
            server: Which key server the head came from.
            head: The newly received head.
            consistency_proof: ``GetConsistencyProof(last.tree_size, head.tree_size)``;
                ignored (may be empty) when nothing is remembered yet or sizes are equal.
            pinned_log_key: The log's Ed25519 public key from configuration.

        Returns:
            The head now remembered (``head``, or the remembered one if equal).

        Raises:
            TransparencyError: The head's signature does not verify.
            RollbackError: The head is smaller than the remembered one.
            EquivocationError: Same size with another root, or no valid consistency proof.
        """
        if not verify_tree_head(head, pinned_log_key):
            raise TransparencyError("tree head signature does not verify with the pinned log key")
        with self._locked():
            heads = self._read()
            last = heads.get(server)
            if last is not None:
                if head.tree_size < last.tree_size:
                    raise RollbackError(
                        f"{server} presented a tree of {head.tree_size} leaves after one of "
                        f"{last.tree_size} was verified (rollback)"
                    )
                if head.tree_size == last.tree_size:
                    if head.root_hash != last.root_hash:
                        raise EquivocationError(
                            f"{server} presented two different trees of {head.tree_size} leaves"
                        )
                    return last
                if last.tree_size > 0 and not verify_consistency(
                    last.tree_size,
                    head.tree_size,
                    consistency_proof,
                    last.root_hash,
                    head.root_hash,
                ):
                    raise EquivocationError(
                        f"{server}: tree of {head.tree_size} leaves is not a consistent "
                        f"extension of the verified tree of {last.tree_size} leaves"
                    )
            heads[server] = head
            self._write(heads)
            return head


@dataclass(frozen=True)
class VerifiedDevice:
    """An identity key whose binding was proven in the log.

    Attributes:
        device_id: The device (UUID).
        signing_public_key: Ed25519 half of the identity (32 bytes).
        agreement_public_key: X25519 half of the identity (32 bytes).
        leaf_index: The binding's ADD/ROTATE leaf.
        tree_size: Size of the verified head the proof was checked against.
    """

    device_id: str
    signing_public_key: bytes
    agreement_public_key: bytes
    leaf_index: int
    tree_size: int

    @property
    def digest(self) -> str:
        """SHA-256 of Encode(IK) in groups of four hex digits (for display and comparison)."""
        value = hashlib.sha256(self.signing_public_key + self.agreement_public_key).hexdigest()
        return " ".join(value[i : i + 4] for i in range(0, len(value), 4))


async def verify_account(
    stub: keys_pb2_grpc.KeyServiceAsyncStub,
    account_id: str,
    *,
    pinned_log_key: bytes,
    server: str,
    store: TrustedHeadStore,
    metadata: Sequence[tuple[str, str]],
) -> list[VerifiedDevice]:
    """Fetches an account's identity keys and proves each binding against the log.

    For every device: the inclusion proof of its binding under the latest head, the head's
    signature, and the head's consistency with the last head this client verified from
    ``server`` (which is then remembered). Any failure raises; nothing partial is returned.

    Args:
        stub: KeyService stub on an async channel.
        account_id: Whose keys to verify.
        pinned_log_key: The log's Ed25519 public key from configuration.
        server: Name of the key server in ``store`` (e.g. ``host:port``).
        store: The persisted last verified heads.
        metadata: Call metadata carrying the access token.

    Raises:
        TransparencyError: A signature, inclusion or consistency check failed (including
            :class:`RollbackError` and :class:`EquivocationError`).
        grpc.aio.AioRpcError: A call failed.
    """
    reply = await stub.LookupIdentityKeys(
        keys_pb2.LookupIdentityKeysRequest(account_id=account_id), metadata=metadata
    )
    verified: list[VerifiedDevice] = []
    for device in reply.devices:
        key = device.identity_key
        proof = await stub.GetInclusionProof(
            keys_pb2.GetInclusionProofRequest(
                binding=keys_pb2.LogBinding(
                    account_id=account_id, device_id=device.device_id, identity_key=key
                )
            ),
            metadata=metadata,
        )
        head = verify_binding(
            proof,
            pinned_log_key,
            account_id=account_id,
            device_id=device.device_id,
            signing_public_key=bytes(key.signing_public_key),
            agreement_public_key=bytes(key.agreement_public_key),
        )
        last = store.last(server)
        consistency: list[bytes] = []
        if last is not None and 0 < last.tree_size < head.tree_size:
            answer = await stub.GetConsistencyProof(
                keys_pb2.GetConsistencyProofRequest(
                    first_tree_size=last.tree_size, second_tree_size=head.tree_size
                ),
                metadata=metadata,
            )
            consistency = [bytes(h) for h in answer.proof]
        store.update(server, head, consistency, pinned_log_key)
        verified.append(
            VerifiedDevice(
                device_id=device.device_id,
                signing_public_key=bytes(key.signing_public_key),
                agreement_public_key=bytes(key.agreement_public_key),
                leaf_index=proof.leaf_index,
                tree_size=head.tree_size,
            )
        )
    return verified
