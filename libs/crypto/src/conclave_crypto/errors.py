"""Exception hierarchy of conclave_crypto.

Every failure on the *receiving* side (bad MAC, bad signature, unknown key, replay,
malformed bytes, skip bound exceeded, expired certificate) is reported as one opaque
:class:`DecryptionError` whose message never depends on the cause. Distinguishable
errors would give an attacker who can submit ciphertexts a decryption/padding oracle.
"""

from __future__ import annotations

from collections.abc import Sequence


class CryptoError(Exception):
    """Base class of every error raised by conclave_crypto."""


class DecryptionError(CryptoError):
    """A message, attachment or envelope could not be authenticated and decrypted.

    Deliberately carries no detail: callers must treat every cause the same way.
    """

    def __init__(self) -> None:
        super().__init__("decryption failed")


class InvalidKeyError(CryptoError):
    """A key or key bundle handed to the library is malformed or its signature is invalid."""


class UntrustedIdentityError(CryptoError):
    """The identity key of a known (user, device) address changed; the user must re-verify."""


class MissingSessionError(CryptoError):
    """Encryption needs pairwise sessions that do not exist yet.

    Attributes:
        missing: the device addresses for which a pre-key bundle must be fetched.
    """

    def __init__(self, missing: Sequence[tuple[str, str]]) -> None:
        super().__init__(f"no session for {len(missing)} device(s)")
        self.missing = list(missing)


class StateError(CryptoError):
    """The local state file is unreadable, too new, or otherwise unusable."""
