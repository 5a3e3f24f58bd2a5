"""Unit tests for padding, safety numbers, KDF labels and encoding helpers."""

from __future__ import annotations

import pytest
from conclave_crypto import primitives as p
from conclave_crypto.errors import DecryptionError, InvalidKeyError
from conclave_crypto.fingerprint import SafetyNumber
from conclave_crypto.keys import IdentityKey, IdentityKeyPair
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2000))
def test_message_padding_round_trip_and_bucket(data: bytes) -> None:
    """Message padding round-trips and always lands on a 160-byte bucket."""
    padded = p.pad_message(data)
    assert len(padded) % p.MESSAGE_PAD_BLOCK == 0
    assert len(padded) > len(data)
    assert p.unpad_message(padded) == data


def test_message_padding_hides_length_within_bucket() -> None:
    """Plaintexts of 0 and 159 bytes produce equally long padded messages."""
    assert len(p.pad_message(b"")) == len(p.pad_message(b"x" * 159)) == 160
    assert len(p.pad_message(b"x" * 160)) == 320


@pytest.mark.parametrize("bad", [b"", b"\x00" * 160, b"abc\x81\x00"])
def test_unpad_rejects_malformed_padding(bad: bytes) -> None:
    """Malformed padding is rejected with the opaque DecryptionError."""
    with pytest.raises(DecryptionError):
        p.unpad_message(bad)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=1 << 40))
def test_padme_bucket_bounds(n: int) -> None:
    """Attachment buckets never shrink the data and add at most 12 % (Padmé)."""
    b = p.attachment_bucket(n)
    assert b >= n
    if n > p.ATTACHMENT_MIN_BUCKET:
        assert b - n <= n * 0.12


def test_padme_reduces_distinct_sizes() -> None:
    """Padmé maps 100k distinct sizes onto far fewer buckets."""
    assert len({p.attachment_bucket(n) for n in range(1, 100_001)}) < 400


def test_kdf_labels_are_distinct() -> None:
    """Every HKDF info string and signature context is unique (domain separation)."""
    labels = [getattr(p, n) for n in dir(p) if n.startswith(("INFO_", "SIG_"))]
    assert len(labels) == len(set(labels)) >= 12


def test_seal_rejects_wrong_ad_opaquely() -> None:
    """Message AEAD binds the associated data; failures are the one opaque error."""
    seed = p.random_bytes(32)
    ct = p.seal(seed, p.INFO_MESSAGE_KEYS, b"hi", b"ad")
    assert p.open_sealed(seed, p.INFO_MESSAGE_KEYS, ct, b"ad") == b"hi"
    with pytest.raises(DecryptionError) as e1:
        p.open_sealed(seed, p.INFO_MESSAGE_KEYS, ct, b"AD")
    with pytest.raises(DecryptionError) as e2:
        p.open_sealed(seed, p.INFO_SENDER_KEY_MESSAGE, ct, b"ad")
    assert str(e1.value) == str(e2.value) == "decryption failed"


def test_x25519_rejects_small_order_point() -> None:
    """A small-order peer key (all-zero shared secret) is rejected."""
    k = IdentityKeyPair.generate().dh
    with pytest.raises(DecryptionError):
        p.x25519(k, bytes(32))


def test_safety_number_is_60_digits_and_symmetric() -> None:
    """Both parties compute the same 60-digit safety number regardless of order."""
    a, b = IdentityKeyPair.generate().public, IdentityKeyPair.generate().public
    sa = SafetyNumber.compute("alice", a, "bob", b)
    sb = SafetyNumber.compute("bob", b, "alice", a)
    assert sa.digits() == sb.digits()
    assert len(sa.digits()) == 60 and sa.digits().isdigit()
    assert len(sa.display().split(" ")) == 12
    assert sa.matches_scanned(sb.scannable())
    assert sb.matches_scanned(sa.scannable())


def test_safety_number_changes_with_any_key_half() -> None:
    """Changing either half of an identity (or the user id) changes the safety number."""
    a, b = IdentityKeyPair.generate().public, IdentityKeyPair.generate().public
    base = SafetyNumber.compute("alice", a, "bob", b)
    other = IdentityKeyPair.generate().public
    swapped_dh = IdentityKey(b.signing, other.dh)
    assert SafetyNumber.compute("alice", a, "bob", swapped_dh).digits() != base.digits()
    assert SafetyNumber.compute("alice", a, "bob2", b).digits() != base.digits()
    assert not base.matches_scanned(SafetyNumber.compute("bob", other, "alice", a).scannable())
    with pytest.raises(InvalidKeyError):
        base.matches_scanned(b"\x02" + bytes(64))


def test_safety_number_fixed_vector() -> None:
    """The safety number algorithm is frozen: a fixed input gives a fixed output."""
    a = IdentityKey(bytes(range(32)), bytes(range(32, 64)))
    b = IdentityKey(bytes(range(64, 96)), bytes(range(96, 128)))
    sn = SafetyNumber.compute("alice", a, "bob", b)
    assert sn.digits() == FROZEN_SAFETY_NUMBER


FROZEN_SAFETY_NUMBER = "055017744545510573133314189203664649691545290176124314338609"
