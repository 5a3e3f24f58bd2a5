"""Conclave client-side end-to-end encryption (specified in docs/protocol.md).

Pure library: no network, no gRPC, no server imports; server code must never import it.

Entry points:

* :class:`Device` — identity, pre-keys, pairwise sessions (``device.sessions``, a
  :class:`SessionManager`) and group sender keys (``device.groups``, :class:`GroupSessions`).
* :class:`CryptoStore` — versioned SQLite persistence of a device (mode 0600).
* :func:`encrypt_attachment` / :func:`decrypt_attachment` with :class:`AttachmentPointer`
  (streaming: :class:`AttachmentEncryptor` / :class:`AttachmentDecryptor`).
* :func:`seal` / :func:`unseal` with :class:`SenderCertificate` — sealed sender.
* :class:`SafetyNumber` — 60-digit fingerprint and QR payload.
* :mod:`conclave_crypto.transparency` — key-transparency proof checks (``verify_binding``).
* :class:`DecryptionError` — the single opaque error for every receive-side failure.
"""

from conclave_crypto.attachments import (
    AttachmentDecryptor,
    AttachmentEncryptor,
    AttachmentPointer,
    decrypt_attachment,
    encrypt_attachment,
)
from conclave_crypto.device import Device, PreKeyUpload
from conclave_crypto.errors import (
    CryptoError,
    DecryptionError,
    InvalidKeyError,
    MissingSessionError,
    StateError,
    UntrustedIdentityError,
)
from conclave_crypto.fingerprint import SafetyNumber
from conclave_crypto.keys import IdentityKey, IdentityKeyPair, PreKeyBundle, PreKeyStore
from conclave_crypto.manager import DeviceAddress, SessionManager
from conclave_crypto.sealed_sender import SenderCertificate, UnsealedMessage, seal, unseal
from conclave_crypto.sender_keys import GroupSessions
from conclave_crypto.store import CryptoStore

__version__ = "0.1.0"

__all__ = [
    "AttachmentDecryptor",
    "AttachmentEncryptor",
    "AttachmentPointer",
    "CryptoError",
    "CryptoStore",
    "DecryptionError",
    "Device",
    "DeviceAddress",
    "GroupSessions",
    "IdentityKey",
    "IdentityKeyPair",
    "InvalidKeyError",
    "MissingSessionError",
    "PreKeyBundle",
    "PreKeyStore",
    "PreKeyUpload",
    "SafetyNumber",
    "SenderCertificate",
    "SessionManager",
    "StateError",
    "UnsealedMessage",
    "UntrustedIdentityError",
    "decrypt_attachment",
    "encrypt_attachment",
    "seal",
    "unseal",
]
