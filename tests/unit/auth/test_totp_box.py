"""Sealing of stored TOTP secrets (AES-256-GCM, account id as associated data)."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path

import pytest
from conclave_auth.credentials import new_totp_secret
from conclave_auth.totp_box import TotpSecretBox, is_sealed, load_totp_key
from conclave_kit.config import ConfigError
from hypothesis import given
from hypothesis import strategies as st


@given(st.text(min_size=1, max_size=64))
def test_seal_then_open_round_trips_and_hides_the_secret(secret: str) -> None:
    box = TotpSecretBox(os.urandom(32))
    account = str(uuid.uuid4())
    stored = box.seal(account, secret)
    assert is_sealed(stored)
    assert secret not in stored[3:] or len(secret) < 4
    assert box.open(account, stored) == secret


def test_two_seals_differ_and_each_opens() -> None:
    box = TotpSecretBox(os.urandom(32))
    account, secret = str(uuid.uuid4()), new_totp_secret()
    first, second = box.seal(account, secret), box.seal(account, secret)
    assert first != second  # fresh nonce each time
    assert box.open(account, first) == box.open(account, second) == secret


def test_a_sealed_secret_does_not_open_for_another_account_or_key_or_when_altered() -> None:
    key = os.urandom(32)
    box, account = TotpSecretBox(key), str(uuid.uuid4())
    stored = box.seal(account, new_totp_secret())
    with pytest.raises(ValueError, match="does not open"):
        box.open(str(uuid.uuid4()), stored)  # copied onto another account's row
    with pytest.raises(ValueError, match="does not open"):
        TotpSecretBox(os.urandom(32)).open(account, stored)
    raw = bytearray(base64.b64decode(stored[3:]))
    raw[-1] ^= 1
    with pytest.raises(ValueError, match="does not open"):
        box.open(account, "v1:" + base64.b64encode(bytes(raw)).decode())
    with pytest.raises(ValueError, match="no TOTP key"):
        TotpSecretBox(None).open(account, stored)


def test_without_a_key_secrets_pass_through_and_clear_legacy_values_open() -> None:
    account, secret = str(uuid.uuid4()), new_totp_secret()
    assert TotpSecretBox(None).seal(account, secret) == secret
    assert TotpSecretBox(os.urandom(32)).open(account, secret) == secret  # before sealing


def test_key_files_hold_32_raw_or_base64_bytes(tmp_path: Path) -> None:
    key = os.urandom(32)
    raw, text, short = tmp_path / "raw", tmp_path / "b64", tmp_path / "short"
    raw.write_bytes(key)
    text.write_text(base64.b64encode(key).decode() + "\n")
    short.write_bytes(os.urandom(16))
    assert load_totp_key(str(raw)) == load_totp_key(str(text)) == key
    with pytest.raises(ConfigError, match="expected 32 random bytes"):
        load_totp_key(str(short))
    with pytest.raises(ConfigError, match="cannot read"):
        load_totp_key(str(tmp_path / "missing"))
