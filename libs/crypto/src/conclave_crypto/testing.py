"""Test and tooling helpers: build in-memory devices and bundles without a keys service."""

from __future__ import annotations

from conclave_crypto.keys import IdentityKeyPair, PreKeyBundle, PreKeyStore
from conclave_crypto.manager import DeviceAddress, SessionManager


def make_device(
    user: str,
    device: str | int,
    *,
    one_time: int = 3,
    kem_one_time: int = 1,
    allow_non_pq: bool = False,
) -> SessionManager:
    """A device with an identity, a signed pre-key, one-time and KEM pre-keys."""
    ident = IdentityKeyPair.generate()
    store = PreKeyStore()
    store.generate_signed_prekey(ident)
    store.generate_one_time_prekeys(one_time)
    for _ in range(kem_one_time):
        store.generate_kem_prekey(ident, last_resort=False)
    store.generate_kem_prekey(ident, last_resort=True)
    return SessionManager(user, str(device), ident, store, allow_non_pq=allow_non_pq)


def bundle_of(
    m: SessionManager,
    *,
    one_time_prekey_id: int | None = None,
    kem_prekey_id: int | None = None,
    include_kem: bool = True,
) -> PreKeyBundle:
    """The bundle the keys service would hand out for ``m`` (wire round-tripped)."""
    b = m.prekeys.bundle(
        m.identity,
        m.address.user_id,
        m.address.device_id,
        one_time_prekey_id=one_time_prekey_id,
        kem_prekey_id=kem_prekey_id,
        include_kem=include_kem,
    )
    return PreKeyBundle.from_bytes(b.to_bytes())


def connect(a: SessionManager, b: SessionManager) -> None:
    """Give ``a`` a session with ``b`` (a is the initiator)."""
    a.process_bundle(bundle_of(b))


def addr(m: SessionManager) -> DeviceAddress:
    """Address of a manager."""
    return m.address
