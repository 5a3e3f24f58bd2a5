"""Writes the frozen state file of the *current* schema for test_crypto_store (run once).

Usage: .venv/bin/python tests/unit/crypto/data/generate_state.py
It writes state_v{SCHEMA_VERSION}.sqlite and state_v{SCHEMA_VERSION}_expect.json and refuses
to overwrite existing files: frozen files of released schemas are never regenerated, so the
migration from every schema stays tested. (state_v1.sqlite was written by conclave-crypto
0.1.0 with schema 1.)
"""

from __future__ import annotations

import json
import pathlib

from conclave_crypto.device import Device
from conclave_crypto.store import SCHEMA_VERSION, CryptoStore
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
    path = HERE / f"state_v{SCHEMA_VERSION}.sqlite"
    expect_path = HERE / f"state_v{SCHEMA_VERSION}_expect.json"
    if path.exists() or expect_path.exists():
        raise SystemExit(f"{path.name} exists: frozen files are never regenerated")
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
    expect_path.write_text(json.dumps(expect, indent=1) + "\n")


if __name__ == "__main__":
    main()
