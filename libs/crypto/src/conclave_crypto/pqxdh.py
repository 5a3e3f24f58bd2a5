"""PQXDH key agreement (Signal's PQXDH specification, revision 3; docs/protocol.md §4).

Curve: X25519. Hash: SHA-256. PQ KEM: ML-KEM-1024 (FIPS 203). Identity keys are the
Ed25519 + X25519 pair of :mod:`conclave_crypto.keys` (no XEdDSA).

    DH1 = DH(IK_A.dh, SPK_B)   DH2 = DH(EK_A, IK_B.dh)   DH3 = DH(EK_A, SPK_B)
    DH4 = DH(EK_A, OPK_B)      (only if a one-time pre-key was handed out)
    (CT, SS) = ML-KEM-1024.Encaps(PQPK_B)
    SK = HKDF-SHA-256(ikm = 0xFF*32 || DH1 || DH2 || DH3 [|| DH4] || SS,
                      salt = 0x00*32, info = INFO_PQXDH, L = 32)
    AD = Encode(IK_A) || Encode(IK_B)          (64 + 64 bytes)

Without a KEM pre-key (only if the caller's policy allows it) ``SS`` is omitted and
``INFO_X3DH`` is used instead, so a PQ and a non-PQ run can never derive the same key;
the resulting session records ``post_quantum = False``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM1024PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from conclave_crypto.encoding import Reader, u8, u32
from conclave_crypto.errors import DecryptionError, InvalidKeyError
from conclave_crypto.keys import (
    IDENTITY_LEN,
    MLKEM1024_CT_LEN,
    X25519_PUB_LEN,
    IdentityKey,
    IdentityKeyPair,
    PreKeyBundle,
    PreKeyStore,
)
from conclave_crypto.primitives import INFO_PQXDH, INFO_X3DH, hkdf, x25519, x25519_public

KDF_PREFIX = b"\xff" * 32
FLAG_OPK = 0x01
FLAG_KEM = 0x02


@dataclass(frozen=True)
class PQXDHInit:
    """The initiator's PQXDH values carried in every PreKeyMessage (docs/protocol.md §6)."""

    identity: IdentityKey
    ephemeral: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    kem_prekey_id: int | None
    kem_ciphertext: bytes | None

    def encode(self) -> bytes:
        """``IK_A(64) || EK_A(32) || spk_id(u32) || flags(u8) || [opk_id] || [kem_id || CT]``."""
        flags = (FLAG_OPK if self.one_time_prekey_id is not None else 0) | (
            FLAG_KEM if self.kem_ciphertext is not None else 0
        )
        out = self.identity.encode() + self.ephemeral + u32(self.signed_prekey_id) + u8(flags)
        if self.one_time_prekey_id is not None:
            out += u32(self.one_time_prekey_id)
        if self.kem_ciphertext is not None:
            assert self.kem_prekey_id is not None
            out += u32(self.kem_prekey_id) + self.kem_ciphertext
        return out

    @classmethod
    def read(cls, r: Reader) -> PQXDHInit:
        """Parse from a reader.

        Raises:
            DecryptionError: if malformed.
        """
        try:
            identity = IdentityKey.from_bytes(r.take(IDENTITY_LEN))
        except InvalidKeyError:
            raise DecryptionError from None
        ephemeral = r.take(X25519_PUB_LEN)
        spk_id = r.u32()
        flags = r.u8()
        if flags & ~(FLAG_OPK | FLAG_KEM):
            raise DecryptionError
        opk_id = r.u32() if flags & FLAG_OPK else None
        kem_id, ct = (r.u32(), r.take(MLKEM1024_CT_LEN)) if flags & FLAG_KEM else (None, None)
        return cls(identity, ephemeral, spk_id, opk_id, kem_id, ct)

    @property
    def post_quantum(self) -> bool:
        """Whether this run included the ML-KEM shared secret."""
        return self.kem_ciphertext is not None


@dataclass(frozen=True)
class PQXDHResult:
    """Output of either side of PQXDH."""

    shared_key: bytes
    associated_data: bytes
    post_quantum: bool


def _kdf(secrets: list[bytes], post_quantum: bool) -> bytes:
    return hkdf(KDF_PREFIX + b"".join(secrets), b"", INFO_PQXDH if post_quantum else INFO_X3DH, 32)


def initiate(
    own: IdentityKeyPair, bundle: PreKeyBundle, *, allow_non_pq: bool = False
) -> tuple[PQXDHResult, PQXDHInit]:
    """Run the initiator (Alice) side against a fetched pre-key bundle.

    Args:
        own: our identity.
        bundle: the peer's bundle; its signatures are verified here.
        allow_non_pq: accept a bundle without a KEM pre-key (deployment policy).

    Returns:
        The shared key/AD and the values to send in the PreKeyMessage.

    Raises:
        InvalidKeyError: bad signatures, malformed keys, or a missing KEM pre-key when the
            non-PQ fallback is not allowed.
    """
    bundle.verify()
    if bundle.kem_prekey is None and not allow_non_pq:
        raise InvalidKeyError("bundle has no ML-KEM pre-key and non-PQ fallback is disabled")
    ek = X25519PrivateKey.generate()
    try:
        secrets = [
            x25519(own.dh, bundle.signed_prekey),
            x25519(ek, bundle.identity.dh),
            x25519(ek, bundle.signed_prekey),
        ]
        if bundle.one_time_prekey is not None:
            secrets.append(x25519(ek, bundle.one_time_prekey))
    except DecryptionError:
        raise InvalidKeyError("invalid X25519 key in bundle") from None
    ct: bytes | None = None
    if bundle.kem_prekey is not None:
        ss, ct = MLKEM1024PublicKey.from_public_bytes(bundle.kem_prekey).encapsulate()
        secrets.append(ss)
    pq = ct is not None
    init = PQXDHInit(
        own.public,
        x25519_public(ek),
        bundle.signed_prekey_id,
        bundle.one_time_prekey_id,
        bundle.kem_prekey_id if pq else None,
        ct,
    )
    ad = own.public.encode() + bundle.identity.encode()
    return PQXDHResult(_kdf(secrets, pq), ad, pq), init


def respond(
    own: IdentityKeyPair, prekeys: PreKeyStore, init: PQXDHInit, *, allow_non_pq: bool = False
) -> tuple[PQXDHResult, X25519PrivateKey]:
    """Run the responder (Bob) side. Does NOT delete one-time keys: see :func:`consume`.

    Returns:
        The shared key/AD and the signed pre-key private key (Bob's first ratchet key).

    Raises:
        DecryptionError: unknown pre-key ids, malformed keys, or non-PQ when not allowed.
    """
    spk = prekeys.signed_prekeys.get(init.signed_prekey_id)
    if spk is None:
        raise DecryptionError
    if not init.post_quantum and not allow_non_pq:
        raise DecryptionError
    secrets = [
        x25519(spk.private, init.identity.dh),
        x25519(own.dh, init.ephemeral),
        x25519(spk.private, init.ephemeral),
    ]
    if init.one_time_prekey_id is not None:
        opk = prekeys.one_time_prekeys.get(init.one_time_prekey_id)
        if opk is None:
            raise DecryptionError
        secrets.append(x25519(opk, init.ephemeral))
    if init.kem_ciphertext is not None:
        assert init.kem_prekey_id is not None
        kem = prekeys.kem_prekeys.get(init.kem_prekey_id)
        if kem is None:
            raise DecryptionError
        try:
            secrets.append(kem.private.decapsulate(init.kem_ciphertext))
        except ValueError:
            raise DecryptionError from None
    ad = init.identity.encode() + own.public.encode()
    return PQXDHResult(_kdf(secrets, init.post_quantum), ad, init.post_quantum), spk.private


def consume(prekeys: PreKeyStore, init: PQXDHInit) -> None:
    """Delete the one-time X25519 and one-time KEM pre-keys used by ``init``.

    Called only after the first message decrypted successfully, so a forged PreKeyMessage
    cannot burn our one-time keys.
    """
    if init.one_time_prekey_id is not None:
        prekeys.one_time_prekeys.pop(init.one_time_prekey_id, None)
    if init.kem_prekey_id is not None:
        kem = prekeys.kem_prekeys.get(init.kem_prekey_id)
        if kem is not None and not kem.last_resort:
            del prekeys.kem_prekeys[init.kem_prekey_id]
