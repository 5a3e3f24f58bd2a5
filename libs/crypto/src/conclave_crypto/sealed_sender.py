"""Sealed sender (docs/protocol.md §11).

The messaging server learns the recipient but not the sender of a 1:1 message. The sender's
identity travels inside the ciphertext, vouched for by a short-lived **sender certificate**
signed by the auth service's Ed25519 key::

    SenderCertificate = version(u8) || lp(user_id) || lp(device_id) || identity(64)
                        || expires_ms(u64) || server_key_id(u32) || signature(64)
    signature = Ed25519(server_key, SIG_SENDER_CERTIFICATE || all preceding bytes)

Envelope (a simplified Signal sealed-sender v1 with AES-256-GCM)::

    e  = fresh X25519 key;  E = e.pub
    ck || k1 = HKDF(DH(e, IK_B.dh), salt = E || Encode(IK_B), info = INFO_SEALED_EPHEMERAL, 64)
    c1 = AES-256-GCM(k1, nonce = 0^12, Encode(IK_A), AD = E)
    k2 = HKDF(DH(IK_A.dh, IK_B.dh), salt = ck || c1, info = INFO_SEALED_STATIC, 32)
    c2 = AES-256-GCM(k2, nonce = 0^12, lp(certificate) || inner_message, AD = E || c1)
    SealedEnvelope = 0x01 || 0x05 || E(32) || c1(80) || c2

Each AEAD key is used once (fresh ``e``), so the all-zero nonce is safe. The recipient
checks that the certificate is signed by a trusted server key, unexpired, and names the same
identity that ``c1`` revealed (otherwise any user could claim to be anyone).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conclave_crypto.encoding import Reader, lp, u8, u32, u64
from conclave_crypto.errors import DecryptionError, InvalidKeyError
from conclave_crypto.keys import IDENTITY_LEN, IdentityKey, IdentityKeyPair, verify_signature
from conclave_crypto.manager import DeviceAddress
from conclave_crypto.primitives import (
    INFO_SEALED_EPHEMERAL,
    INFO_SEALED_STATIC,
    PROTOCOL_VERSION,
    SIG_SENDER_CERTIFICATE,
    hkdf,
    x25519,
    x25519_public,
)

TYPE_SEALED_ENVELOPE = 0x05
#: Upper bound a client accepts for a certificate's remaining lifetime (clock-skew guard).
MAX_CERTIFICATE_LIFETIME_MS = 48 * 3600 * 1000
_ZERO_NONCE = bytes(12)


@dataclass(frozen=True)
class SenderCertificate:
    """A server-signed statement "this identity key belongs to (user, device) until T"."""

    user_id: str
    device_id: str
    identity: IdentityKey
    expires_ms: int
    server_key_id: int
    signature: bytes

    def _signed_part(self) -> bytes:
        return (
            u8(PROTOCOL_VERSION)
            + lp(self.user_id.encode())
            + lp(self.device_id.encode())
            + self.identity.encode()
            + u64(self.expires_ms)
            + u32(self.server_key_id)
        )

    def encode(self) -> bytes:
        """Serialise."""
        return self._signed_part() + self.signature

    @classmethod
    def issue(
        cls,
        server_key: Ed25519PrivateKey,
        server_key_id: int,
        user_id: str,
        device_id: str,
        identity: IdentityKey,
        expires_ms: int,
    ) -> SenderCertificate:
        """Sign a certificate (reference for the auth service, which must emit this layout)."""
        unsigned = cls(user_id, device_id, identity, expires_ms, server_key_id, b"")
        sig = server_key.sign(SIG_SENDER_CERTIFICATE + unsigned._signed_part())
        return cls(user_id, device_id, identity, expires_ms, server_key_id, sig)

    @classmethod
    def parse(cls, data: bytes) -> SenderCertificate:
        """Parse.

        Raises:
            DecryptionError: if malformed.
        """
        r = Reader(data)
        if r.u8() != PROTOCOL_VERSION:
            raise DecryptionError
        try:
            user = r.lp().decode()
            cert = cls(
                user,
                r.lp().decode(),
                IdentityKey.from_bytes(r.take(IDENTITY_LEN)),
                r.u64(),
                r.u32(),
                r.take(64),
            )
        except (UnicodeDecodeError, InvalidKeyError):
            raise DecryptionError from None
        r.end()
        return cert

    def verify(self, trusted: dict[int, Ed25519PublicKey], now_ms: int) -> bool:
        """Signature by a trusted server key, and ``now < expires <= now + max lifetime``."""
        key = trusted.get(self.server_key_id)
        if key is None or not now_ms < self.expires_ms <= now_ms + MAX_CERTIFICATE_LIFETIME_MS:
            return False
        return verify_signature(
            key.public_bytes_raw(), self.signature, SIG_SENDER_CERTIFICATE + self._signed_part()
        )


def _aead(key: bytes, data: bytes, ad: bytes) -> bytes:
    return AESGCM(key).encrypt(_ZERO_NONCE, data, ad)


def _unaead(key: bytes, data: bytes, ad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(_ZERO_NONCE, data, ad)
    except (InvalidTag, ValueError):
        raise DecryptionError from None


def seal(
    sender: IdentityKeyPair,
    certificate: SenderCertificate,
    recipient: IdentityKey,
    inner: bytes,
) -> bytes:
    """Wrap an already encrypted pairwise message (Message/PreKeyMessage) for sealed sending.

    Raises:
        InvalidKeyError: if the certificate does not name ``sender``'s identity.
    """
    if certificate.identity != sender.public:
        raise InvalidKeyError("certificate is for another identity")
    e = X25519PrivateKey.generate()
    e_pub = x25519_public(e)
    okm = hkdf(x25519(e, recipient.dh), e_pub + recipient.encode(), INFO_SEALED_EPHEMERAL, 64)
    ck, k1 = okm[:32], okm[32:]
    c1 = _aead(k1, sender.public.encode(), e_pub)
    k2 = hkdf(x25519(sender.dh, recipient.dh), ck + c1, INFO_SEALED_STATIC, 32)
    c2 = _aead(k2, lp(certificate.encode()) + inner, e_pub + c1)
    return u8(PROTOCOL_VERSION) + u8(TYPE_SEALED_ENVELOPE) + e_pub + c1 + c2


@dataclass(frozen=True)
class UnsealedMessage:
    """Result of :func:`unseal`: who sent it (certified) and the inner pairwise message."""

    sender: DeviceAddress
    certificate: SenderCertificate
    inner: bytes


def unseal(
    recipient: IdentityKeyPair,
    envelope: bytes,
    trusted_server_keys: dict[int, Ed25519PublicKey],
    now_ms: int,
) -> UnsealedMessage:
    """Open a sealed envelope and authenticate its sender certificate.

    Decrypt ``inner`` afterwards with ``SessionManager.decrypt(result.sender, result.inner)``,
    which additionally checks the sender's identity through the session's associated data.

    Raises:
        DecryptionError: on any failure (tampering, bad/expired/untrusted certificate,
            certificate not matching the sealed identity).
    """
    r = Reader(envelope)
    if r.u8() != PROTOCOL_VERSION or r.u8() != TYPE_SEALED_ENVELOPE:
        raise DecryptionError
    e_pub = r.take(32)
    c1 = r.take(IDENTITY_LEN + 16)
    c2 = r.rest()
    okm = hkdf(
        x25519(recipient.dh, e_pub),
        e_pub + recipient.public.encode(),
        INFO_SEALED_EPHEMERAL,
        64,
    )
    ck, k1 = okm[:32], okm[32:]
    try:
        sender_identity = IdentityKey.from_bytes(_unaead(k1, c1, e_pub))
    except InvalidKeyError:
        raise DecryptionError from None
    k2 = hkdf(x25519(recipient.dh, sender_identity.dh), ck + c1, INFO_SEALED_STATIC, 32)
    content = Reader(_unaead(k2, c2, e_pub + c1))
    cert = SenderCertificate.parse(content.lp())
    if cert.identity != sender_identity or not cert.verify(trusted_server_keys, now_ms):
        raise DecryptionError
    return UnsealedMessage(DeviceAddress(cert.user_id, cert.device_id), cert, content.rest())
