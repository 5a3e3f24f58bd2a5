"""The local device: identity, pre-keys, pairwise sessions and group sender keys in one place.

This is the main entry point for the client SDK::

    dev = Device.create("alice", 1)
    upload = dev.prekey_upload(one_time=100)          # publish via the keys service
    dev.sessions.process_bundle(bundle)               # start a session from a fetched bundle
    per_device = dev.sessions.encrypt_for_user("bob", b"hi")
    CryptoStore.open(path).save_device(dev)           # persist (SQLite, 0600)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from conclave_crypto.errors import MissingSessionError
from conclave_crypto.keys import IdentityKeyPair, KemPreKey, PreKeyStore, SignedPreKey
from conclave_crypto.manager import DeviceAddress, SessionManager
from conclave_crypto.sealed_sender import SenderCertificate, seal, unseal
from conclave_crypto.sender_keys import GroupSessions


@dataclass(frozen=True)
class PreKeyUpload:
    """Public pre-keys to publish through the keys service."""

    identity: bytes
    signed_prekey: SignedPreKey
    one_time_prekeys: dict[int, bytes]
    kem_prekeys: list[KemPreKey]


class Device:
    """All end-to-end state of this device."""

    def __init__(self, sessions: SessionManager, groups: GroupSessions) -> None:
        self.sessions = sessions
        self.groups = groups

    @property
    def identity(self) -> IdentityKeyPair:
        """This device's identity key pair."""
        return self.sessions.identity

    @property
    def prekeys(self) -> PreKeyStore:
        """This device's private pre-keys."""
        return self.sessions.prekeys

    @classmethod
    def create(cls, user_id: str, device_id: str, *, allow_non_pq: bool = False) -> Device:
        """A brand-new device with a fresh identity, signed pre-key and last-resort KEM key."""
        identity = IdentityKeyPair.generate()
        store = PreKeyStore()
        store.generate_signed_prekey(identity)
        store.generate_kem_prekey(identity, last_resort=True)
        sm = SessionManager(user_id, device_id, identity, store, allow_non_pq=allow_non_pq)
        return cls(sm, GroupSessions())

    def prekey_upload(self, *, one_time: int = 100, kem_one_time: int = 20) -> PreKeyUpload:
        """Generate a batch of one-time X25519 and ML-KEM pre-keys to publish."""
        opks = self.prekeys.generate_one_time_prekeys(one_time)
        kems = [
            self.prekeys.generate_kem_prekey(self.identity, last_resort=False)
            for _ in range(kem_one_time)
        ]
        lr = self.prekeys.last_resort_kem_id
        if lr is not None:
            kems.append(self.prekeys.kem_prekeys[lr])
        spk_id = self.prekeys.current_signed_prekey_id
        assert spk_id is not None
        return PreKeyUpload(
            self.identity.public.encode(), self.prekeys.signed_prekeys[spk_id], opks, kems
        )

    # -- group helpers: sender-key distribution over pairwise sessions ------------------------
    def distribute_sender_key(
        self, group_id: str, members: Iterable[DeviceAddress], *, rotate: bool = False
    ) -> dict[DeviceAddress, bytes]:
        """Encrypt our sender-key distribution for ``group_id`` to each member device.

        Args:
            group_id: the group.
            members: every member *device* (other users' and our own other devices).
            rotate: start a fresh sender chain first (after a member left or was removed).

        Returns:
            One pairwise ciphertext per member device. The SDK must mark these as sender-key
            distributions in its content framing so the receiver calls
            :meth:`receive_sender_key`.

        Raises:
            MissingSessionError: if some member device has no pairwise session yet (nothing
                is encrypted and the chain is not rotated in that case).
        """
        targets = [m for m in dict.fromkeys(members) if m != self.sessions.address]
        missing = [m for m in targets if not self.sessions.has_session(m)]
        if missing:
            raise MissingSessionError(missing)
        dist = self.groups.rotate(group_id) if rotate else self.groups.distribution(group_id)
        return {m: self.sessions.encrypt(m, dist) for m in targets}

    def receive_sender_key(self, sender: DeviceAddress, pairwise_ciphertext: bytes) -> str:
        """Decrypt a pairwise message carrying a sender-key distribution and install it.

        Returns:
            The group id.

        Raises:
            DecryptionError: on any failure.
        """
        return self.groups.process_distribution(
            sender, self.sessions.decrypt(sender, pairwise_ciphertext)
        )

    def remove_group_member(
        self, group_id: str, removed_user: str, remaining: Iterable[DeviceAddress]
    ) -> dict[DeviceAddress, bytes]:
        """Apply a member removal: forget its chains, rotate ours, distribute to the rest.

        Every remaining member device must do this before its next send to the group.

        Returns:
            The new distribution, encrypted per remaining member device.
        """
        remaining = [m for m in remaining if m.user_id != removed_user]
        for key in [k for k in self.groups.received if k[0] == group_id]:
            if key[1].user_id == removed_user:
                self.groups.forget_member(group_id, key[1])
        return self.distribute_sender_key(group_id, remaining, rotate=True)

    # -- sealed sender ----------------------------------------------------------------------
    def encrypt_sealed(
        self, recipient: DeviceAddress, certificate: SenderCertificate, plaintext: bytes
    ) -> bytes:
        """Encrypt for one device and wrap it in a sealed-sender envelope.

        Raises:
            MissingSessionError: if there is no session with ``recipient``.
        """
        session = self.sessions.session(recipient)
        if session is None:
            raise MissingSessionError([recipient])
        inner = session.encrypt(plaintext)
        return seal(self.identity, certificate, session.remote_identity, inner)

    def decrypt_sealed(
        self, envelope: bytes, trusted_server_keys: dict[int, Ed25519PublicKey], now_ms: int
    ) -> tuple[DeviceAddress, bytes]:
        """Open a sealed envelope and decrypt its inner message.

        The inner message must decrypt under a session whose remote identity is exactly the
        certified one, so a certificate for one identity cannot carry another's messages.

        Returns:
            ``(certified sender address, plaintext)``.

        Raises:
            DecryptionError: on any failure.
        """
        opened = unseal(self.identity, envelope, trusted_server_keys, now_ms)
        pt = self.sessions.decrypt(
            opened.sender, opened.inner, expected_identity=opened.certificate.identity
        )
        return opened.sender, pt
