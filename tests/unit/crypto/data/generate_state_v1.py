"""Writes the frozen schema-1 state file used by test_crypto_store (run once, then commit).

Usage: .venv/bin/python tests/unit/crypto/data/generate_state_v1.py
Never regenerate it for a newer schema: add state_v2.sqlite beside it instead, so the
migration from every released schema stays tested.
"""

from __future__ import annotations

import json
import pathlib

from conclave_crypto.device import Device
from conclave_crypto.store import CryptoStore
from conclave_crypto.testing import bundle_of

HERE = pathlib.Path(__file__).parent


def main() -> None:
    """Create Alice and Bob, exchange messages, save Bob, record Alice's next messages."""
    alice, bob = Device.create("alice", "1"), Device.create("bob", "1")
    bob.prekey_upload(one_time=3, kem_one_time=1)
    alice.sessions.process_bundle(bundle_of(bob.sessions))
    bob.sessions.decrypt(alice.sessions.address, alice.sessions.encrypt(bob.sessions.address, b"1"))
    alice.sessions.decrypt(bob.sessions.address, bob.sessions.encrypt(alice.sessions.address, b"2"))
    skipped = alice.sessions.encrypt(bob.sessions.address, b"skipped (delivered late)")
    dist = alice.sessions.encrypt(bob.sessions.address, alice.groups.distribution("family"))
    bob.groups.process_distribution(
        alice.sessions.address, bob.sessions.decrypt(alice.sessions.address, dist)
    )
    bob.groups.distribution("family")
    path = HERE / "state_v1.sqlite"
    path.unlink(missing_ok=True)
    with CryptoStore.open(path) as store:
        store.save_device(bob)
    expect = {
        "user_id": "bob",
        "device_id": "1",
        "identity": bob.identity.public.encode().hex(),
        "peer": ["alice", "1"],
        "pairwise": [
            [alice.sessions.encrypt(bob.sessions.address, b"after freeze").hex(), "after freeze"],
            [skipped.hex(), "skipped (delivered late)"],
        ],
        "group": [
            alice.groups.encrypt("family", b"group after freeze").hex(),
            "group after freeze",
        ],
    }
    (HERE / "state_v1_expect.json").write_text(json.dumps(expect, indent=1) + "\n")


if __name__ == "__main__":
    main()
