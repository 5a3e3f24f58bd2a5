"""Sesame-style multi-device session manager (docs/protocol.md §7).

Sessions are kept per ``(user_id, device_id)`` address. A message "to a user" is encrypted
separately for each of the recipient's devices *and* for the sender's own other devices.
Each address has one active session and up to :data:`MAX_ARCHIVED_SESSIONS` previous ones,
which are still tried on receive so messages in flight across a re-keying are not lost.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from conclave_crypto import pqxdh
from conclave_crypto.errors import DecryptionError, MissingSessionError, UntrustedIdentityError
from conclave_crypto.keys import IdentityKey, IdentityKeyPair, PreKeyBundle, PreKeyStore
from conclave_crypto.ratchet import DoubleRatchet
from conclave_crypto.session import Session, WireMessage

MAX_ARCHIVED_SESSIONS = 5
#: PQXDH base keys (EK_A) remembered to reject replayed PreKeyMessages after their session
#: was archived away.
MAX_SEEN_BASE_KEYS = 10_000

JSON = dict[str, Any]


class DeviceAddress(NamedTuple):
    """A (user, device) pair."""

    user_id: str
    device_id: str


@dataclass
class SessionRecord:
    """Active + archived sessions with one remote device, newest first."""

    sessions: list[Session] = field(default_factory=list)

    @property
    def active(self) -> Session | None:
        """The session used for sending."""
        return self.sessions[0] if self.sessions else None

    def promote(self, session: Session) -> None:
        """Make ``session`` active, archiving the others (bounded)."""
        self.sessions = [session] + [s for s in self.sessions if s is not session]
        del self.sessions[1 + MAX_ARCHIVED_SESSIONS :]


class SessionManager:
    """All pairwise sessions of one local device."""

    def __init__(
        self,
        user_id: str,
        device_id: str,
        identity: IdentityKeyPair,
        prekeys: PreKeyStore | None = None,
        *,
        allow_non_pq: bool = False,
    ) -> None:
        self.address = DeviceAddress(user_id, device_id)
        self.identity = identity
        self.prekeys = prekeys if prekeys is not None else PreKeyStore()
        #: Deployment policy: accept/initiate sessions without ML-KEM (recorded per session).
        self.allow_non_pq = allow_non_pq
        self.records: dict[DeviceAddress, SessionRecord] = {}
        #: Last identity seen per address (trust on first use + change detection).
        self.known_identities: dict[DeviceAddress, IdentityKey] = {}
        #: Addresses whose identity changed on receive: the UI must show a safety-number change.
        self.identity_changes: list[DeviceAddress] = []
        #: Known device ids per user (our own user included), maintained by update_devices.
        self.devices: dict[str, set[str]] = {}
        self.seen_base_keys: OrderedDict[bytes, None] = OrderedDict()

    # -- setup ------------------------------------------------------------------------------
    def has_session(self, addr: DeviceAddress) -> bool:
        """Whether a session with ``addr`` exists."""
        rec = self.records.get(addr)
        return rec is not None and rec.active is not None

    def session(self, addr: DeviceAddress) -> Session | None:
        """The active session with ``addr``, if any."""
        rec = self.records.get(addr)
        return rec.active if rec else None

    def process_bundle(self, bundle: PreKeyBundle, *, trust_new_identity: bool = False) -> None:
        """Start a session with a device from its pre-key bundle (we are the initiator).

        Raises:
            InvalidKeyError: bad bundle signatures, or no PQ key while the policy forbids it.
            UntrustedIdentityError: the device's identity differs from the one we knew.
        """
        addr = DeviceAddress(bundle.user_id, bundle.device_id)
        known = self.known_identities.get(addr)
        if known is not None and known != bundle.identity and not trust_new_identity:
            raise UntrustedIdentityError(f"identity of {addr} changed")
        result, init = pqxdh.initiate(self.identity, bundle, allow_non_pq=self.allow_non_pq)
        ratchet = DoubleRatchet.init_alice(result.shared_key, bundle.signed_prekey)
        session = Session(
            bundle.identity,
            result.associated_data,
            ratchet,
            post_quantum=result.post_quantum,
            base_key=init.ephemeral,
            pending_init=init,
        )
        self.known_identities[addr] = bundle.identity
        self.records.setdefault(addr, SessionRecord()).promote(session)
        self.devices.setdefault(addr.user_id, set()).add(addr.device_id)

    def update_devices(self, user_id: str, device_ids: Iterable[str]) -> list[DeviceAddress]:
        """Apply the authoritative device list of a user (e.g. after a stale-devices reply).

        Sessions of removed devices are deleted; returns the addresses that have no session
        yet, for which the caller must fetch bundles and call :meth:`process_bundle`.
        """
        new = set(device_ids)
        if user_id == self.address.user_id:
            new.discard(self.address.device_id)
        for addr in [a for a in self.records if a.user_id == user_id]:
            if addr.device_id not in new:
                del self.records[addr]
                self.known_identities.pop(addr, None)
        self.devices[user_id] = new
        return [
            DeviceAddress(user_id, d)
            for d in sorted(new)
            if not self.has_session(DeviceAddress(user_id, d))
        ]

    # -- send -------------------------------------------------------------------------------
    def encrypt(self, addr: DeviceAddress, plaintext: bytes) -> bytes:
        """Encrypt for one device.

        Raises:
            MissingSessionError: if there is no session with ``addr``.
        """
        session = self.session(addr)
        if session is None:
            raise MissingSessionError([addr])
        return session.encrypt(plaintext)

    def encrypt_for_user(self, user_id: str, plaintext: bytes) -> dict[DeviceAddress, bytes]:
        """Encrypt for every known device of ``user_id`` and our own other devices.

        Raises:
            MissingSessionError: listing every target device without a session (nothing is
                encrypted in that case, so no ratchet advances).
        """
        targets = [DeviceAddress(user_id, d) for d in sorted(self.devices.get(user_id, set()))]
        if user_id != self.address.user_id:
            own = self.devices.get(self.address.user_id, set())
            targets += [DeviceAddress(self.address.user_id, d) for d in sorted(own)]
        targets = [t for t in targets if t != self.address]
        missing = [t for t in targets if not self.has_session(t)]
        if missing:
            raise MissingSessionError(missing)
        return {t: self.encrypt(t, plaintext) for t in targets}

    # -- receive ----------------------------------------------------------------------------
    def decrypt(
        self, addr: DeviceAddress, data: bytes, *, expected_identity: IdentityKey | None = None
    ) -> bytes:
        """Decrypt a Message or PreKeyMessage from ``addr``.

        Args:
            addr: the sender's address (from the server envelope or a sender certificate).
            data: the wire message.
            expected_identity: if given (sealed sender), only a session with exactly this
                remote identity may decrypt: the certificate and the session must agree.

        Raises:
            DecryptionError: on any failure; local state is unchanged in that case.
        """
        msg = WireMessage.parse(data)
        rec = self.records.get(addr)
        sessions = list(rec.sessions) if rec is not None else []
        if expected_identity is not None:
            sessions = [s for s in sessions if s.remote_identity == expected_identity]
        if msg.init is not None:
            if expected_identity is not None and msg.init.identity != expected_identity:
                raise DecryptionError
            for s in sessions:
                if s.base_key == msg.init.ephemeral and s.remote_identity == msg.init.identity:
                    return s.decrypt(msg)
            return self._accept_new_session(addr, msg)
        for s in sessions:
            try:
                pt = s.decrypt(msg)
            except DecryptionError:
                continue
            assert rec is not None
            if s is not rec.active:
                rec.promote(s)
            return pt
        raise DecryptionError

    def _accept_new_session(self, addr: DeviceAddress, msg: WireMessage) -> bytes:
        init = msg.init
        assert init is not None
        if init.ephemeral in self.seen_base_keys:
            raise DecryptionError
        result, spk = pqxdh.respond(
            self.identity, self.prekeys, init, allow_non_pq=self.allow_non_pq
        )
        session = Session(
            init.identity,
            result.associated_data,
            DoubleRatchet.init_bob(result.shared_key, spk),
            post_quantum=result.post_quantum,
            base_key=init.ephemeral,
        )
        pt = session.decrypt(msg)
        # Success: commit.
        pqxdh.consume(self.prekeys, init)
        self.seen_base_keys[init.ephemeral] = None
        while len(self.seen_base_keys) > MAX_SEEN_BASE_KEYS:
            self.seen_base_keys.popitem(last=False)
        known = self.known_identities.get(addr)
        if known is not None and known != init.identity:
            self.identity_changes.append(addr)
        self.known_identities[addr] = init.identity
        self.records.setdefault(addr, SessionRecord()).promote(session)
        self.devices.setdefault(addr.user_id, set()).add(addr.device_id)
        return pt

    # -- persistence ------------------------------------------------------------------------
    def to_json(self) -> JSON:
        """Serialise everything except identity and pre-keys (stored separately)."""
        return {
            "user_id": self.address.user_id,
            "device_id": self.address.device_id,
            "allow_non_pq": self.allow_non_pq,
            "records": [
                [a.user_id, a.device_id, [s.to_json() for s in r.sessions]]
                for a, r in self.records.items()
            ],
            "known_identities": [
                [a.user_id, a.device_id, k.encode().hex()] for a, k in self.known_identities.items()
            ],
            "identity_changes": [[a.user_id, a.device_id] for a in self.identity_changes],
            "devices": {u: sorted(d) for u, d in self.devices.items()},
            "seen_base_keys": [k.hex() for k in self.seen_base_keys],
        }

    @classmethod
    def from_json(cls, d: JSON, identity: IdentityKeyPair, prekeys: PreKeyStore) -> SessionManager:
        """Inverse of :meth:`to_json`."""
        m = cls(
            d["user_id"], str(d["device_id"]), identity, prekeys, allow_non_pq=d["allow_non_pq"]
        )
        for user, dev, sessions in d["records"]:
            m.records[DeviceAddress(user, dev)] = SessionRecord(
                [Session.from_json(s) for s in sessions]
            )
        for user, dev, key in d["known_identities"]:
            m.known_identities[DeviceAddress(user, dev)] = IdentityKey.from_bytes(
                bytes.fromhex(key)
            )
        m.identity_changes = [DeviceAddress(u, dv) for u, dv in d["identity_changes"]]
        m.devices = {u: set(ds) for u, ds in d["devices"].items()}
        m.seen_base_keys = OrderedDict((bytes.fromhex(k), None) for k in d["seen_base_keys"])
        return m
