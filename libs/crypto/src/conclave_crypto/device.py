"""The local device: identity, pre-keys, pairwise sessions and group sender keys in one place.

This is the main entry point for the client SDK::

    dev = Device.create("alice", 1)
    upload = dev.prekey_upload(one_time=100)          # publish via the keys service
    dev.sessions.process_bundle(bundle)               # start a session from a fetched bundle
    per_device = dev.sessions.encrypt_for_user("bob", b"hi")
    CryptoStore.open(path).save_device(dev)           # persist (SQLite, 0600)
"""

from __future__ import annotations

from dataclasses import dataclass

from conclave_crypto.keys import IdentityKeyPair, KemPreKey, PreKeyStore, SignedPreKey
from conclave_crypto.manager import SessionManager
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
