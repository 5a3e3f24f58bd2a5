"""Attachments (chunked AEAD, padding, digest) and sealed-sender envelopes."""

from __future__ import annotations

import hashlib
import time

import pytest
from conclave_crypto.attachments import (
    MIN_CHUNK_SIZE,
    AttachmentDecryptor,
    AttachmentEncryptor,
    AttachmentPointer,
    decrypt_attachment,
    encrypt_attachment,
)
from conclave_crypto.device import Device
from conclave_crypto.errors import DecryptionError, InvalidKeyError
from conclave_crypto.primitives import attachment_bucket
from conclave_crypto.sealed_sender import SenderCertificate, seal, unseal
from conclave_crypto.testing import bundle_of, make_device
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=5000), st.sampled_from([MIN_CHUNK_SIZE, 4096, 65536]))
def test_attachment_round_trip(data: bytes, chunk: int) -> None:
    """Attachments of any size round-trip; ciphertext size depends only on the bucket."""
    ct, ptr = encrypt_attachment(data, chunk_size=chunk)
    assert decrypt_attachment(ct, AttachmentPointer.parse(ptr.encode())) == data
    n_chunks = max(1, -(-attachment_bucket(len(data)) // chunk))
    assert len(ct) == 5 + attachment_bucket(len(data)) + 16 * n_chunks


def test_attachment_sizes_in_same_bucket_look_identical() -> None:
    """Files of 593 and 608 bytes produce equally long ciphertexts (size hiding)."""
    assert len(encrypt_attachment(b"a" * 593)[0]) == len(encrypt_attachment(b"b" * 608)[0])


def test_attachment_tampering_rejected() -> None:
    """Any modified, truncated or extended blob, wrong key or wrong size is rejected."""
    data = bytes(range(256)) * 40
    ct, ptr = encrypt_attachment(data, chunk_size=MIN_CHUNK_SIZE)
    cases = [ct[:-1], ct + b"\x00", ct[: -(MIN_CHUNK_SIZE + 16)], bytes([ct[0] ^ 1]) + ct[1:]]
    mid = bytearray(ct)
    mid[len(ct) // 2] ^= 0x10
    cases.append(bytes(mid))
    for bad in cases:
        with pytest.raises(DecryptionError):
            decrypt_attachment(bad, ptr)
    with pytest.raises(DecryptionError):
        decrypt_attachment(ct, AttachmentPointer(bytes(32), ptr.digest, ptr.size))
    with pytest.raises(DecryptionError):
        decrypt_attachment(ct, AttachmentPointer(ptr.key, ptr.digest, ptr.size - 1))


def test_attachment_digest_matching_but_chunks_truncated_rejected() -> None:
    """Even with a recomputed digest, a dropped final chunk fails (last-chunk nonce flag)."""
    data = b"x" * 10_000
    ct, ptr = encrypt_attachment(data, chunk_size=MIN_CHUNK_SIZE)
    cut = ct[: -(MIN_CHUNK_SIZE + 16)]
    forged = AttachmentPointer(ptr.key, hashlib.sha256(cut).digest(), ptr.size - MIN_CHUNK_SIZE)
    with pytest.raises(DecryptionError):
        decrypt_attachment(cut, forged)


SERVER = Ed25519PrivateKey.generate()
TRUSTED = {7: SERVER.public_key()}


def _now() -> int:
    return int(time.time() * 1000)


def test_sealed_sender_round_trip() -> None:
    """The recipient learns the certified sender and decrypts the inner message."""
    alice, bob = make_device("alice", 1), make_device("bob", 2)
    alice.process_bundle(bundle_of(bob))
    cert = SenderCertificate.issue(SERVER, 7, "alice", "1", alice.identity.public, _now() + 60_000)
    env = seal(alice.identity, cert, bob.identity.public, alice.encrypt(bob.address, b"psst"))
    opened = unseal(bob.identity, env, TRUSTED, _now())
    assert opened.sender == alice.address
    assert bob.decrypt(opened.sender, opened.inner) == b"psst"


def test_sealed_sender_rejects_expired_untrusted_and_mismatched_certificates() -> None:
    """Expired, untrusted-signer and wrong-identity certificates all fail opaquely."""
    alice, bob, mallory = make_device("alice", 1), make_device("bob", 1), make_device("m", 1)
    now = _now()
    expired = SenderCertificate.issue(SERVER, 7, "alice", "1", alice.identity.public, now - 1)
    rogue = SenderCertificate.issue(
        Ed25519PrivateKey.generate(), 7, "alice", "1", alice.identity.public, now + 60_000
    )
    too_long = SenderCertificate.issue(
        SERVER, 7, "alice", "1", alice.identity.public, now + 30 * 86_400_000
    )
    for cert in (expired, rogue, too_long):
        env = seal(alice.identity, cert, bob.identity.public, b"inner")
        with pytest.raises(DecryptionError):
            unseal(bob.identity, env, TRUSTED, now)
    # Mallory cannot use Alice's certificate: seal refuses, and a hand-made one fails.
    good = SenderCertificate.issue(SERVER, 7, "alice", "1", alice.identity.public, now + 60_000)
    with pytest.raises(InvalidKeyError):
        seal(mallory.identity, good, bob.identity.public, b"x")
    object.__setattr__(good, "identity", mallory.identity.public)  # signature now invalid
    env = seal(mallory.identity, good, bob.identity.public, b"x")
    with pytest.raises(DecryptionError):
        unseal(bob.identity, env, TRUSTED, now)


def test_sealed_envelope_tampering_rejected() -> None:
    """Any flipped byte in a sealed envelope gives the opaque error."""
    alice, bob = make_device("alice", 1), make_device("bob", 1)
    cert = SenderCertificate.issue(SERVER, 7, "alice", "1", alice.identity.public, _now() + 60_000)
    env = seal(alice.identity, cert, bob.identity.public, b"inner message")
    for pos in range(0, len(env), 9):
        bad = bytearray(env)
        bad[pos] ^= 0x20
        with pytest.raises(DecryptionError):
            unseal(bob.identity, bytes(bad), TRUSTED, _now())
    with pytest.raises(DecryptionError):
        unseal(make_device("carol", 1).identity, env, TRUSTED, _now())


def test_device_sealed_round_trip_and_identity_binding() -> None:
    """Device.decrypt_sealed accepts only inner messages from the certified identity."""
    alice, bob, mallory = (Device.create(n, "1") for n in ("alice", "bob", "mallory"))
    alice.sessions.process_bundle(bundle_of(bob.sessions))
    mallory.sessions.process_bundle(bundle_of(bob.sessions))
    now = _now()
    cert_a = SenderCertificate.issue(SERVER, 7, "alice", "1", alice.identity.public, now + 60_000)
    env = alice.encrypt_sealed(bob.sessions.address, cert_a, b"sealed hi")
    assert bob.decrypt_sealed(env, TRUSTED, now) == (alice.sessions.address, b"sealed hi")
    # A (mis-)issued certificate naming "alice" with Mallory's identity cannot ride on
    # Alice's session: the inner message must match the certified identity.
    cert_m = SenderCertificate.issue(SERVER, 7, "alice", "1", mallory.identity.public, now + 60_000)
    inner_from_alice = alice.sessions.encrypt(bob.sessions.address, b"x")
    env2 = seal(mallory.identity, cert_m, bob.identity.public, inner_from_alice)
    with pytest.raises(DecryptionError):
        bob.decrypt_sealed(env2, TRUSTED, now)
    assert bob.sessions.decrypt(alice.sessions.address, inner_from_alice) == b"x"


@settings(max_examples=25, deadline=None)
@given(
    st.binary(max_size=6000),
    st.sampled_from([MIN_CHUNK_SIZE, 2048]),
    st.integers(min_value=1, max_value=3000),
)
def test_streaming_attachment_matches_in_memory_format(data: bytes, chunk: int, piece: int) -> None:
    """Streaming encrypt/decrypt interoperate with the in-memory functions in both directions."""
    enc = AttachmentEncryptor(len(data), chunk_size=chunk)
    parts: list[bytes] = []
    for i in range(0, len(data), piece):
        parts += enc.update(data[i : i + piece])
    tail, ptr = enc.finalize()
    blob = b"".join(parts + tail)
    assert decrypt_attachment(blob, ptr) == data
    blob2, ptr2 = encrypt_attachment(data, chunk_size=chunk)
    dec = AttachmentDecryptor(ptr2)
    got = b"".join(dec.update(blob2[i : i + piece]) for i in range(0, len(blob2), piece))
    assert got + dec.finalize() == data


def test_streaming_decrypt_rejects_truncation_and_tampering() -> None:
    """The streaming decryptor fails on a dropped last chunk, a flipped bit or a bad digest."""
    data = b"z" * 5000
    blob, ptr = encrypt_attachment(data, chunk_size=MIN_CHUNK_SIZE)
    step = MIN_CHUNK_SIZE + 16
    for bad in (blob[:-step], blob[:-1], blob[:100] + bytes([blob[100] ^ 1]) + blob[101:]):
        dec = AttachmentDecryptor(ptr)
        with pytest.raises(DecryptionError):
            dec.update(bad)
            dec.finalize()
    dec = AttachmentDecryptor(AttachmentPointer(ptr.key, bytes(32), ptr.size))
    dec.update(blob)
    with pytest.raises(DecryptionError):
        dec.finalize()
    with pytest.raises(ValueError):
        AttachmentEncryptor(10).update(b"x" * 11)
    with pytest.raises(ValueError):
        AttachmentEncryptor(10).finalize()
