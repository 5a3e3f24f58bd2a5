"""Identity keys, pre-keys and pre-key bundles (docs/protocol.md §3).

Conclave does **not** use XEdDSA. Each identity is a *pair* of independent keys:

* an Ed25519 signing key (signs pre-keys, sender-key messages), and
* an X25519 Diffie-Hellman key (used in PQXDH, sealed sender).

The 64-byte encoding ``Ed25519_pub || X25519_pub`` is the identity: it is what the key
transparency log binds to a (user, device), what the safety number covers and what the
PQXDH associated data contains. Any substitution of either half changes all three.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM1024PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from conclave_crypto.encoding import Reader, lp, u8, u32
from conclave_crypto.errors import DecryptionError, InvalidKeyError
from conclave_crypto.primitives import (
    PROTOCOL_VERSION,
    SIG_KEM_PREKEY,
    SIG_SIGNED_PREKEY,
    random_bytes,
    x25519_public,
)

ED25519_PUB_LEN = 32
X25519_PUB_LEN = 32
IDENTITY_LEN = ED25519_PUB_LEN + X25519_PUB_LEN
SIGNATURE_LEN = 64
MLKEM1024_PUB_LEN = 1568
MLKEM1024_CT_LEN = 1568

JSON = dict[str, Any]


def verify_signature(public: bytes, signature: bytes, message: bytes) -> bool:
    """Verify an Ed25519 signature; returns False for any malformed input."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class IdentityKey:
    """Public identity of one device: Ed25519 signing key + X25519 DH key."""

    signing: bytes
    dh: bytes

    def __post_init__(self) -> None:
        if len(self.signing) != ED25519_PUB_LEN or len(self.dh) != X25519_PUB_LEN:
            raise InvalidKeyError("identity key halves must be 32 bytes each")

    def encode(self) -> bytes:
        """64-byte encoding ``signing || dh`` (the Encode(IK) of docs/protocol.md)."""
        return self.signing + self.dh

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityKey:
        """Parse the 64-byte encoding.

        Raises:
            InvalidKeyError: if the length is wrong.
        """
        if len(data) != IDENTITY_LEN:
            raise InvalidKeyError("identity key must be 64 bytes")
        return cls(data[:ED25519_PUB_LEN], data[ED25519_PUB_LEN:])

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Check an Ed25519 signature made by this identity."""
        return verify_signature(self.signing, signature, message)


class IdentityKeyPair:
    """Private identity of this device."""

    def __init__(self, signing: Ed25519PrivateKey, dh: X25519PrivateKey) -> None:
        self.signing = signing
        self.dh = dh
        self.public = IdentityKey(signing.public_key().public_bytes_raw(), x25519_public(dh))

    @classmethod
    def generate(cls) -> IdentityKeyPair:
        """Create a fresh random identity."""
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature with the identity signing key."""
        return self.signing.sign(message)

    def to_json(self) -> JSON:
        """Serialise the private keys for local storage."""
        return {
            "signing": self.signing.private_bytes_raw().hex(),
            "dh": self.dh.private_bytes_raw().hex(),
        }

    @classmethod
    def from_json(cls, data: JSON) -> IdentityKeyPair:
        """Inverse of :meth:`to_json`."""
        return cls(
            Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["signing"])),
            X25519PrivateKey.from_private_bytes(bytes.fromhex(data["dh"])),
        )


def signed_prekey_message(key_id: int, public: bytes) -> bytes:
    """Bytes signed for a signed X25519 pre-key."""
    return SIG_SIGNED_PREKEY + u32(key_id) + public


def kem_prekey_message(key_id: int, public: bytes) -> bytes:
    """Bytes signed for an ML-KEM-1024 pre-key."""
    return SIG_KEM_PREKEY + u32(key_id) + public


@dataclass
class SignedPreKey:
    """Medium-term X25519 pre-key signed by the identity (SPK)."""

    key_id: int
    private: X25519PrivateKey
    signature: bytes

    @property
    def public(self) -> bytes:
        """Raw public key."""
        return x25519_public(self.private)


@dataclass
class KemPreKey:
    """ML-KEM-1024 pre-key (PQPK), one-time or last-resort, signed by the identity."""

    key_id: int
    private: MLKEM1024PrivateKey
    signature: bytes
    last_resort: bool

    @property
    def public(self) -> bytes:
        """Raw 1568-byte public key."""
        return self.private.public_key().public_bytes_raw()


@dataclass
class PreKeyBundle:
    """What the keys service hands out for one device (docs/protocol.md §3.3).

    ``kem_*`` fields are None only when the device published no PQ pre-key; the initiator
    refuses such a bundle unless its policy explicitly allows the non-PQ fallback.
    """

    user_id: str
    device_id: str
    identity: IdentityKey
    signed_prekey_id: int
    signed_prekey: bytes
    signed_prekey_signature: bytes
    one_time_prekey_id: int | None = None
    one_time_prekey: bytes | None = None
    kem_prekey_id: int | None = None
    kem_prekey: bytes | None = None
    kem_prekey_signature: bytes | None = None

    def verify(self) -> None:
        """Check both pre-key signatures and key lengths.

        Raises:
            InvalidKeyError: on any malformed key or bad signature.
        """
        if len(self.signed_prekey) != X25519_PUB_LEN or not self.identity.verify(
            self.signed_prekey_signature,
            signed_prekey_message(self.signed_prekey_id, self.signed_prekey),
        ):
            raise InvalidKeyError("bad signed pre-key")
        if (self.one_time_prekey_id is None) != (self.one_time_prekey is None):
            raise InvalidKeyError("one-time pre-key id/key mismatch")
        if self.one_time_prekey is not None and len(self.one_time_prekey) != X25519_PUB_LEN:
            raise InvalidKeyError("bad one-time pre-key")
        kem = (self.kem_prekey_id, self.kem_prekey, self.kem_prekey_signature)
        if any(v is None for v in kem) and not all(v is None for v in kem):
            raise InvalidKeyError("incomplete KEM pre-key")
        if self.kem_prekey is not None:
            assert self.kem_prekey_id is not None
            assert self.kem_prekey_signature is not None
            if len(self.kem_prekey) != MLKEM1024_PUB_LEN or not self.identity.verify(
                self.kem_prekey_signature, kem_prekey_message(self.kem_prekey_id, self.kem_prekey)
            ):
                raise InvalidKeyError("bad KEM pre-key")

    def to_bytes(self) -> bytes:
        """Serialise (docs/protocol.md §3.3)."""
        flags = (1 if self.one_time_prekey is not None else 0) | (
            2 if self.kem_prekey is not None else 0
        )
        out = (
            u8(PROTOCOL_VERSION)
            + lp(self.user_id.encode())
            + lp(self.device_id.encode())
            + self.identity.encode()
            + u32(self.signed_prekey_id)
            + self.signed_prekey
            + self.signed_prekey_signature
            + u8(flags)
        )
        if self.one_time_prekey is not None:
            assert self.one_time_prekey_id is not None
            out += u32(self.one_time_prekey_id) + self.one_time_prekey
        if self.kem_prekey is not None:
            assert self.kem_prekey_id is not None and self.kem_prekey_signature is not None
            out += u32(self.kem_prekey_id) + self.kem_prekey + self.kem_prekey_signature
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> PreKeyBundle:
        """Parse :meth:`to_bytes` output.

        Raises:
            InvalidKeyError: if malformed.
        """
        try:
            r = Reader(data)
            if r.u8() != PROTOCOL_VERSION:
                raise InvalidKeyError("unknown bundle version")
            user_id = r.lp().decode()
            device_id = r.lp().decode()
            identity = IdentityKey.from_bytes(r.take(IDENTITY_LEN))
            spk_id = r.u32()
            spk = r.take(X25519_PUB_LEN)
            spk_sig = r.take(SIGNATURE_LEN)
            flags = r.u8()
            b = cls(user_id, device_id, identity, spk_id, spk, spk_sig)
            if flags & 1:
                b.one_time_prekey_id = r.u32()
                b.one_time_prekey = r.take(X25519_PUB_LEN)
            if flags & 2:
                b.kem_prekey_id = r.u32()
                b.kem_prekey = r.take(MLKEM1024_PUB_LEN)
                b.kem_prekey_signature = r.take(SIGNATURE_LEN)
            r.end()
        except (DecryptionError, UnicodeDecodeError):
            raise InvalidKeyError("malformed bundle") from None
        return b


@dataclass
class PreKeyStore:
    """This device's private pre-keys.

    One-time X25519 keys and one-time KEM keys are deleted when used (forward secrecy and
    replay protection of the first message); the last-resort KEM key and signed pre-key stay
    until rotated.
    """

    signed_prekeys: dict[int, SignedPreKey] = field(default_factory=dict)
    one_time_prekeys: dict[int, X25519PrivateKey] = field(default_factory=dict)
    kem_prekeys: dict[int, KemPreKey] = field(default_factory=dict)
    next_id: int = 1
    current_signed_prekey_id: int | None = None
    last_resort_kem_id: int | None = None

    def _new_id(self) -> int:
        i = self.next_id
        self.next_id += 1
        return i

    def generate_signed_prekey(self, identity: IdentityKeyPair) -> SignedPreKey:
        """Create (and make current) a new signed pre-key."""
        kid = self._new_id()
        priv = X25519PrivateKey.generate()
        spk = SignedPreKey(
            kid, priv, identity.sign(signed_prekey_message(kid, x25519_public(priv)))
        )
        self.signed_prekeys[kid] = spk
        self.current_signed_prekey_id = kid
        return spk

    def prune_signed_prekeys(self, keep: int = 2) -> list[int]:
        """Delete all but the ``keep`` newest signed pre-keys (the current one always stays).

        Old signed pre-keys are kept for a while after rotation so first messages still in
        flight can be answered; pruning them bounds how long a stolen device's old SPK helps.

        Returns:
            The deleted key ids.
        """
        ids = sorted(self.signed_prekeys, reverse=True)
        doomed = [i for i in ids[max(keep, 1) :] if i != self.current_signed_prekey_id]
        for i in doomed:
            del self.signed_prekeys[i]
        return doomed

    def generate_one_time_prekeys(self, count: int) -> dict[int, bytes]:
        """Create ``count`` one-time X25519 pre-keys; returns id -> public key to upload."""
        out: dict[int, bytes] = {}
        for _ in itertools.repeat(None, count):
            kid = self._new_id()
            priv = X25519PrivateKey.generate()
            self.one_time_prekeys[kid] = priv
            out[kid] = x25519_public(priv)
        return out

    def generate_kem_prekey(self, identity: IdentityKeyPair, *, last_resort: bool) -> KemPreKey:
        """Create a signed ML-KEM-1024 pre-key (one-time, or the last-resort key)."""
        kid = self._new_id()
        priv = MLKEM1024PrivateKey.generate()
        pub = priv.public_key().public_bytes_raw()
        kp = KemPreKey(kid, priv, identity.sign(kem_prekey_message(kid, pub)), last_resort)
        self.kem_prekeys[kid] = kp
        if last_resort:
            self.last_resort_kem_id = kid
        return kp

    def bundle(
        self,
        identity: IdentityKeyPair,
        user_id: str,
        device_id: str,
        *,
        one_time_prekey_id: int | None = None,
        kem_prekey_id: int | None = None,
        include_kem: bool = True,
    ) -> PreKeyBundle:
        """Build a bundle as the keys service would hand it out (used by tests and tools)."""
        if self.current_signed_prekey_id is None:
            raise InvalidKeyError("no signed pre-key")
        spk = self.signed_prekeys[self.current_signed_prekey_id]
        b = PreKeyBundle(user_id, device_id, identity.public, spk.key_id, spk.public, spk.signature)
        if one_time_prekey_id is None and self.one_time_prekeys:
            one_time_prekey_id = min(self.one_time_prekeys)
        if one_time_prekey_id is not None:
            b.one_time_prekey_id = one_time_prekey_id
            b.one_time_prekey = x25519_public(self.one_time_prekeys[one_time_prekey_id])
        if include_kem:
            if kem_prekey_id is None:
                one_time = [k for k, v in self.kem_prekeys.items() if not v.last_resort]
                kem_prekey_id = min(one_time) if one_time else self.last_resort_kem_id
            if kem_prekey_id is not None:
                kp = self.kem_prekeys[kem_prekey_id]
                b.kem_prekey_id = kp.key_id
                b.kem_prekey = kp.public
                b.kem_prekey_signature = kp.signature
        return b

    def to_json(self) -> JSON:
        """Serialise for local storage."""
        return {
            "next_id": self.next_id,
            "current_spk": self.current_signed_prekey_id,
            "last_resort_kem": self.last_resort_kem_id,
            "spk": [
                [k.key_id, k.private.private_bytes_raw().hex(), k.signature.hex()]
                for k in self.signed_prekeys.values()
            ],
            "opk": [[i, p.private_bytes_raw().hex()] for i, p in self.one_time_prekeys.items()],
            "kem": [
                [k.key_id, k.private.private_bytes_raw().hex(), k.signature.hex(), k.last_resort]
                for k in self.kem_prekeys.values()
            ],
        }

    @classmethod
    def from_json(cls, data: JSON) -> PreKeyStore:
        """Inverse of :meth:`to_json`."""
        s = cls(next_id=int(data["next_id"]))
        s.current_signed_prekey_id = data["current_spk"]
        s.last_resort_kem_id = data["last_resort_kem"]
        for kid, priv, sig in data["spk"]:
            s.signed_prekeys[kid] = SignedPreKey(
                kid, X25519PrivateKey.from_private_bytes(bytes.fromhex(priv)), bytes.fromhex(sig)
            )
        for kid, priv in data["opk"]:
            s.one_time_prekeys[kid] = X25519PrivateKey.from_private_bytes(bytes.fromhex(priv))
        for kid, seed, sig, lr in data["kem"]:
            s.kem_prekeys[kid] = KemPreKey(
                kid,
                MLKEM1024PrivateKey.from_seed_bytes(bytes.fromhex(seed)),
                bytes.fromhex(sig),
                lr,
            )
        return s


def random_chain_id() -> int:
    """Random non-zero u32 identifier."""
    return int.from_bytes(random_bytes(4), "big") or 1
