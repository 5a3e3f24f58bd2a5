"""Writes conclave_v1_kat.json: known-answer vectors for protocol version 1 (run once).

Usage: .venv/bin/python tests/vectors/generate_conclave_kat.py
The vectors are checked by test_conclave_kat.py with an independent re-implementation of
docs/protocol.md (raw primitives only), so the document and the library cannot drift apart.
"""

from __future__ import annotations

import json
import pathlib

from conclave_crypto import pqxdh
from conclave_crypto.attachments import encrypt_attachment
from conclave_crypto.sealed_sender import SenderCertificate, seal
from conclave_crypto.sender_keys import GroupSessions
from conclave_crypto.session import WireMessage
from conclave_crypto.testing import bundle_of, make_device
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HERE = pathlib.Path(__file__).parent


def main() -> None:
    """Generate every vector and write the JSON file."""
    alice = make_device("alice", "a1", one_time=0, kem_one_time=0)
    bob = make_device("bob", "b1", one_time=1, kem_one_time=1)
    bundle = bundle_of(bob)
    assert bundle.one_time_prekey_id is not None and bundle.kem_prekey_id is not None
    alice.process_bundle(bundle)
    m1 = alice.encrypt(bob.address, b"Hello Bob: PQXDH known-answer test")
    m2 = alice.encrypt(bob.address, b"second message, same chain")
    init = WireMessage.parse(m1).init
    assert init is not None
    res, _ = pqxdh.respond(bob.identity, bob.prekeys, init)
    spk = bob.prekeys.signed_prekeys[bundle.signed_prekey_id]
    kem = bob.prekeys.kem_prekeys[bundle.kem_prekey_id]
    bob_keys = {
        "identity_sig_private": bob.identity.signing.private_bytes_raw().hex(),
        "identity_dh_private": bob.identity.dh.private_bytes_raw().hex(),
        "spk_id": bundle.signed_prekey_id,
        "spk_private": spk.private.private_bytes_raw().hex(),
        "opk_id": bundle.one_time_prekey_id,
        "opk_private": bob.prekeys.one_time_prekeys[bundle.one_time_prekey_id]
        .private_bytes_raw()
        .hex(),
        "pqpk_id": bundle.kem_prekey_id,
        "pqpk_seed": kem.private.private_bytes_raw().hex(),
    }
    assert bob.decrypt(alice.address, m1) and bob.decrypt(alice.address, m2)

    gs = GroupSessions()
    dist = gs.distribution("kat-group")
    gs.encrypt("kat-group", b"group message 0")
    g1 = gs.encrypt("kat-group", b"group message 1")

    att_data = bytes(range(256)) * 5
    att_ct, ptr = encrypt_attachment(att_data, chunk_size=1024)

    server = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    expires = 2_000_000_000_000
    cert = SenderCertificate.issue(server, 7, "alice", "a1", alice.identity.public, expires)
    env = seal(alice.identity, cert, bob.identity.public, b"inner pairwise message bytes")

    kat = {
        "description": "Conclave protocol v1 known-answer vectors (docs/protocol.md)",
        "pqxdh": {
            "bob": bob_keys,
            "alice_identity": alice.identity.public.encode().hex(),
            "prekey_message_0": m1.hex(),
            "prekey_message_1": m2.hex(),
            "shared_key": res.shared_key.hex(),
            "associated_data": res.associated_data.hex(),
            "plaintext_0": "Hello Bob: PQXDH known-answer test",
            "plaintext_1": "second message, same chain",
        },
        "sender_key": {
            "distribution": dist.hex(),
            "message_1": g1.hex(),
            "plaintext_1": "group message 1",
        },
        "attachment": {
            "plaintext": att_data.hex(),
            "ciphertext": att_ct.hex(),
            "pointer": ptr.encode().hex(),
        },
        "sealed_sender": {
            "server_public": server.public_key().public_bytes_raw().hex(),
            "server_key_id": 7,
            "now_ms": expires - 3_600_000,
            "envelope": env.hex(),
            "sender": ["alice", "a1"],
            "sender_identity": alice.identity.public.encode().hex(),
            "inner": b"inner pairwise message bytes".hex(),
        },
    }
    (HERE / "conclave_v1_kat.json").write_text(json.dumps(kat, indent=1) + "\n")


if __name__ == "__main__":
    main()
