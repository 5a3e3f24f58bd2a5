"""PQXDH + Double Ratchet pairwise sessions: round trips, bounds, replay, tampering."""

from __future__ import annotations

import random
import tracemalloc

import pytest
from conclave_crypto import pqxdh
from conclave_crypto.errors import (
    DecryptionError,
    InvalidKeyError,
    MissingSessionError,
    UntrustedIdentityError,
)
from conclave_crypto.keys import IdentityKeyPair, PreKeyBundle
from conclave_crypto.ratchet import MAX_FORWARD_JUMP, MAX_SKIPPED_KEYS
from conclave_crypto.session import WireMessage
from conclave_crypto.testing import bundle_of, connect, make_device
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def test_pqxdh_both_sides_derive_same_key_and_ad() -> None:
    """Initiator and responder derive the same SK and AD = IK_A || IK_B (PQ mode)."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    res_a, init = pqxdh.initiate(alice.identity, bundle_of(bob))
    res_b, _ = pqxdh.respond(bob.identity, bob.prekeys, init)
    assert res_a.shared_key == res_b.shared_key
    assert res_a.associated_data == alice.identity.public.encode() + bob.identity.public.encode()
    assert res_a.post_quantum and res_b.post_quantum
    assert init.kem_ciphertext is not None and len(init.kem_ciphertext) == 1568


def test_pqxdh_without_one_time_prekey() -> None:
    """PQXDH works when the server has run out of one-time X25519 pre-keys."""
    alice, bob = make_device("alice", 1), make_device("bob", 1, one_time=0)
    connect(alice, bob)
    assert bob.decrypt(alice.address, alice.encrypt(bob.address, b"hi")) == b"hi"


def test_non_pq_bundle_refused_unless_policy_allows() -> None:
    """A bundle without ML-KEM pre-key is refused by default; allowed fallback is recorded."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    b = bundle_of(bob, include_kem=False)
    with pytest.raises(InvalidKeyError):
        alice.process_bundle(b)
    alice_lax = make_device("alice", 2, allow_non_pq=True)
    alice_lax.process_bundle(b)
    s = alice_lax.session(bob.address)
    assert s is not None and not s.post_quantum
    with pytest.raises(DecryptionError):  # bob's policy still requires PQ
        bob.decrypt(alice_lax.address, alice_lax.encrypt(bob.address, b"x"))
    bob.allow_non_pq = True
    assert bob.decrypt(alice_lax.address, alice_lax.encrypt(bob.address, b"y")) == b"y"
    bs = bob.session(alice_lax.address)
    assert bs is not None and not bs.post_quantum


def test_pq_and_non_pq_keys_differ() -> None:
    """Dropping the KEM secret changes the derived key (distinct HKDF info strings)."""
    assert pqxdh._kdf([b"a" * 32], True) != pqxdh._kdf([b"a" * 32], False)


def test_bundle_with_bad_signature_rejected() -> None:
    """A bundle whose signed pre-key or KEM pre-key signature is wrong is rejected."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    b = bundle_of(bob)
    b.signed_prekey_signature = bytes(64)
    with pytest.raises(InvalidKeyError):
        alice.process_bundle(b)
    b = bundle_of(bob)
    other = IdentityKeyPair.generate()
    b.kem_prekey_signature = other.sign(b"x")
    with pytest.raises(InvalidKeyError):
        alice.process_bundle(b)
    with pytest.raises(InvalidKeyError):
        PreKeyBundle.from_bytes(bundle_of(bob).to_bytes()[:-1])


def test_one_to_one_round_trip_both_directions() -> None:
    """Alice and Bob exchange messages in both directions over many ratchet steps."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    connect(alice, bob)
    for i in range(5):
        m = alice.encrypt(bob.address, f"a{i}".encode())
        assert bob.decrypt(alice.address, m) == f"a{i}".encode()
        r = bob.encrypt(alice.address, f"b{i}".encode())
        assert alice.decrypt(bob.address, r) == f"b{i}".encode()
    s = alice.session(bob.address)
    assert s is not None and s.pending_init is None


def test_one_time_prekeys_consumed_after_first_message() -> None:
    """The one-time X25519 and one-time KEM pre-keys are deleted once used."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    b = bundle_of(bob)
    alice.process_bundle(b)
    assert b.one_time_prekey_id in bob.prekeys.one_time_prekeys
    assert b.kem_prekey_id in bob.prekeys.kem_prekeys
    bob.decrypt(alice.address, alice.encrypt(bob.address, b"x"))
    assert b.one_time_prekey_id not in bob.prekeys.one_time_prekeys
    assert b.kem_prekey_id not in bob.prekeys.kem_prekeys
    assert bob.prekeys.last_resort_kem_id in bob.prekeys.kem_prekeys


def test_prekey_message_replay_rejected() -> None:
    """Replaying the first PreKeyMessage (or any message) is rejected."""
    alice, bob = make_device("alice", 1), make_device("bob", 1, one_time=0)
    connect(alice, bob)
    m1 = alice.encrypt(bob.address, b"one")
    assert bob.decrypt(alice.address, m1) == b"one"
    with pytest.raises(DecryptionError):
        bob.decrypt(alice.address, m1)
    # Even after the session is dropped, the remembered base key stops a replay.
    del bob.records[alice.address]
    with pytest.raises(DecryptionError):
        bob.decrypt(alice.address, m1)


def test_out_of_order_and_lost_messages() -> None:
    """Messages delivered out of order decrypt; lost ones do not block later ones."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    connect(alice, bob)
    msgs = [alice.encrypt(bob.address, bytes([i])) for i in range(10)]
    order = [0, 5, 3, 9, 1]
    for i in order:
        assert bob.decrypt(alice.address, msgs[i]) == bytes([i])
    s = bob.session(alice.address)
    assert s is not None and len(s.ratchet.skipped) == 5  # 2,4,6,7,8 still pending


def test_tampered_ciphertext_header_and_type_rejected_opaquely() -> None:
    """Any flipped bit in header or ciphertext gives the same opaque error, state untouched."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    connect(alice, bob)
    bob.decrypt(alice.address, alice.encrypt(bob.address, b"setup"))
    bob_reply = bob.encrypt(alice.address, b"ack")
    alice.decrypt(bob.address, bob_reply)
    m = alice.encrypt(bob.address, b"secret")
    errors = set()
    for pos in [0, 1, 2, 20, 34, 38, 41, 45, len(m) - 1]:
        bad = bytearray(m)
        bad[pos] ^= 0x01
        with pytest.raises(DecryptionError) as e:
            bob.decrypt(alice.address, bytes(bad))
        errors.add(str(e.value))
    with pytest.raises(DecryptionError) as e:
        bob.decrypt(alice.address, m[:30])
    errors.add(str(e.value))
    assert errors == {"decryption failed"}
    assert bob.decrypt(alice.address, m) == b"secret"


def test_tampered_prekey_message_rejected_and_keys_not_burned() -> None:
    """A tampered PreKeyMessage fails and does not consume Bob's one-time pre-keys."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    connect(alice, bob)
    m = alice.encrypt(bob.address, b"hello")
    n_opk = len(bob.prekeys.one_time_prekeys)
    for pos in [5, 70, 110, 200, 1000, len(m) - 3]:
        bad = bytearray(m)
        bad[pos] ^= 0x80
        with pytest.raises(DecryptionError):
            bob.decrypt(alice.address, bytes(bad))
    assert len(bob.prekeys.one_time_prekeys) == n_opk
    assert bob.decrypt(alice.address, m) == b"hello"


def test_forward_jump_beyond_bound_rejected_without_memory_growth() -> None:
    """A header jumping more than 25,000 ahead is rejected and stores no skipped keys."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    connect(alice, bob)
    bob.decrypt(alice.address, alice.encrypt(bob.address, b"first"))
    s = alice.session(bob.address)
    assert s is not None
    for _ in range(MAX_FORWARD_JUMP + 1):  # genuinely lost messages, n = 1 .. 25,001
        alice.encrypt(bob.address, b"")
    far = alice.encrypt(bob.address, b"far")  # n = 25,002: 25,001 ahead of Bob's nr = 1
    bs = bob.session(alice.address)
    assert bs is not None
    before = (len(bs.ratchet.skipped), bs.ratchet.nr)
    with pytest.raises(DecryptionError):
        bob.decrypt(alice.address, far)
    assert (len(bs.ratchet.skipped), bs.ratchet.nr) == before == (0, 1)


def test_skipped_key_store_is_bounded() -> None:
    """A legitimate jump of 3,000 keeps at most 2,000 skipped keys (oldest dropped)."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    connect(alice, bob)
    bob.decrypt(alice.address, alice.encrypt(bob.address, b"first"))
    s = alice.session(bob.address)
    assert s is not None
    for _ in range(3000):
        alice.encrypt(bob.address, b"")
    assert bob.decrypt(alice.address, alice.encrypt(bob.address, b"jump")) == b"jump"
    bs = bob.session(alice.address)
    assert bs is not None and len(bs.ratchet.skipped) == MAX_SKIPPED_KEYS
    assert min(n for _, n in bs.ratchet.skipped) == 3001 - MAX_SKIPPED_KEYS


def test_forged_message_from_unknown_sender_rejected() -> None:
    """A Message without any session, or from a stranger, is rejected."""
    alice, bob, eve = make_device("alice", 1), make_device("bob", 1), make_device("eve", 1)
    connect(eve, bob)
    with pytest.raises(DecryptionError):
        bob.decrypt(alice.address, b"\x01\x01" + bytes(60))
    forged = eve.encrypt(bob.address, b"x")
    msg = WireMessage.parse(forged)
    assert msg.init is not None
    # Eve re-labels her message as Alice's: decrypts only under Eve's identity (AD binds it).
    assert bob.decrypt(alice.address, forged) == b"x"
    s = bob.session(alice.address)
    assert s is not None and s.remote_identity == eve.identity.public


def test_identity_change_detected() -> None:
    """A new identity for a known device needs explicit trust when initiating."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    connect(alice, bob)
    bob2 = make_device("bob", 1)
    with pytest.raises(UntrustedIdentityError):
        alice.process_bundle(bundle_of(bob2))
    alice.process_bundle(bundle_of(bob2), trust_new_identity=True)
    assert bob2.decrypt(alice.address, alice.encrypt(bob.address, b"x")) == b"x"


def test_encrypt_without_session_raises_missing() -> None:
    """Encrypting to an unknown device tells the caller which bundles to fetch."""
    alice = make_device("alice", 1)
    with pytest.raises(MissingSessionError) as e:
        alice.encrypt(make_device("bob", 7).address, b"x")
    assert e.value.missing == [("bob", "7")]


OPS = st.lists(
    st.tuples(
        st.sampled_from(["a_send", "b_send", "deliver", "drop", "dup", "shuffle"]),
        st.integers(0, 1_000),
    ),
    max_size=60,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_random_interleavings_decrypt_exactly_once_and_converge(
    ops: list[tuple[str, int]],
) -> None:
    """Random send/deliver/drop/reorder/duplicate: each delivered message decrypts once."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    connect(alice, bob)
    # Bob must first hear from Alice before he can send (he has no session yet).
    first = alice.encrypt(bob.address, b"hello")
    assert bob.decrypt(alice.address, first) == b"hello"
    peers = {"a": (alice, bob), "b": (bob, alice)}
    wire: list[tuple[str, bytes, bytes]] = []  # (receiver side, data, plaintext)
    delivered: set[bytes] = set()
    counter = 0
    for op, arg in ops:
        if op in ("a_send", "b_send"):
            side = op[0]
            snd, rcv = peers[side]
            pt = f"{side}{counter}".encode()
            counter += 1
            wire.append(("b" if side == "a" else "a", snd.encrypt(rcv.address, pt), pt))
        elif not wire:
            continue
        elif op == "deliver":
            to, data, pt = wire.pop(arg % len(wire))
            rcv, snd = peers[to]
            if pt in delivered:
                with pytest.raises(DecryptionError):
                    rcv.decrypt(snd.address, data)
            else:
                assert rcv.decrypt(snd.address, data) == pt
                delivered.add(pt)
        elif op == "drop":
            wire.pop(arg % len(wire))
        elif op == "dup":
            wire.append(wire[arg % len(wire)])
        elif op == "shuffle":
            random.Random(arg).shuffle(wire)
    # Convergence: after the chaos both sides can still talk, in both directions.
    for snd, rcv in (peers["a"], peers["b"], peers["a"]):
        assert rcv.decrypt(snd.address, snd.encrypt(rcv.address, b"sync")) == b"sync"


def test_signed_prekey_rotation_keeps_in_flight_first_messages() -> None:
    """After SPK rotation an in-flight first message still decrypts until the old SPK is pruned."""
    alice, bob, carol = make_device("alice", 1), make_device("bob", 1), make_device("carol", 1)
    alice.process_bundle(bundle_of(bob))
    carol.process_bundle(bundle_of(bob))
    first_a = alice.encrypt(bob.address, b"from alice")
    first_c = carol.encrypt(bob.address, b"from carol")
    bob.prekeys.generate_signed_prekey(bob.identity)
    assert bob.decrypt(alice.address, first_a) == b"from alice"
    bob.prekeys.generate_signed_prekey(bob.identity)
    assert len(bob.prekeys.prune_signed_prekeys(keep=2)) == 1
    with pytest.raises(DecryptionError):
        bob.decrypt(carol.address, first_c)
    assert bob.prekeys.current_signed_prekey_id in bob.prekeys.signed_prekeys


def test_large_legitimate_gap_memory_stays_bounded() -> None:
    """Skipping 20,000 messages allocates memory for at most 2,000 stored keys."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    connect(alice, bob)
    bob.decrypt(alice.address, alice.encrypt(bob.address, b"first"))
    for _ in range(20_000):
        alice.encrypt(bob.address, b"")
    last = alice.encrypt(bob.address, b"after the gap")
    tracemalloc.start()
    try:
        assert bob.decrypt(alice.address, last) == b"after the gap"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    s = bob.session(alice.address)
    assert s is not None and len(s.ratchet.skipped) == MAX_SKIPPED_KEYS
    # 2,000 entries of ~(32 + 32)-byte keys plus dict/tuple overhead stay well below 2 MB,
    # whereas keeping all 20,000 would need several MB.
    assert peak < 2_000_000


def test_simultaneous_initiation_converges() -> None:
    """Both sides starting a session at once still exchange every message (Sesame)."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    alice.process_bundle(bundle_of(bob))
    bob.process_bundle(bundle_of(alice))
    a1 = alice.encrypt(bob.address, b"a1")
    b1 = bob.encrypt(alice.address, b"b1")
    assert bob.decrypt(alice.address, a1) == b"a1"
    assert alice.decrypt(bob.address, b1) == b"b1"
    for i in range(4):
        assert bob.decrypt(alice.address, alice.encrypt(bob.address, b"x%d" % i)) == b"x%d" % i
        assert alice.decrypt(bob.address, bob.encrypt(alice.address, b"y%d" % i)) == b"y%d" % i
    sa, sb = alice.session(bob.address), bob.session(alice.address)
    assert sa is not None and sb is not None and sa.base_key == sb.base_key
