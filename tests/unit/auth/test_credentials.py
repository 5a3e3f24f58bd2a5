"""Usernames, password policy, TOTP drift window, recovery codes (no servers)."""

from __future__ import annotations

import re

import pyotp
import pytest
from conclave_auth import credentials as cred
from conclave_kit.errors import InvalidArgument
from hypothesis import given
from hypothesis import strategies as st

SECRET = cred.new_totp_secret()
NOW = 1_800_000_015.0


def test_usernames_normalise_look_alikes_to_one_name() -> None:
    """Case, fullwidth forms and ligature-free Unicode variants fold to one username."""
    assert cred.normalise_username("Alice") == "alice"
    fullwidth = "\uff21\uff2c\uff29\uff23\uff25"  # ＡＬＩＣＥ  # noqa: RUF003
    assert cred.normalise_username(fullwidth) == "alice"
    assert cred.normalise_username("  alice ") == "alice"


@pytest.mark.parametrize("bad", ["\u0430lice", "al", "a" * 33, "_alice", "al ice", "alice!"])
def test_confusable_or_malformed_usernames_rejected(bad: str) -> None:
    """Cyrillic look-alikes, bad lengths and symbols are refused with INVALID_ARGUMENT."""
    with pytest.raises(InvalidArgument):
        cred.normalise_username(bad)


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("short", "too short"),
        ("password1234", "commonly used"),
        ("qwertyuiop123", "commonly used"),
        ("alice-secret-pass", "contain the username"),
        ("aaaaaaaaaaaaaaaa", "distinct"),
    ],
)
def test_weak_passwords_name_the_rule(password: str, rule: str) -> None:
    """Each weak password is refused with reason WEAK_PASSWORD and the failed rule."""
    with pytest.raises(InvalidArgument) as err:
        cred.check_password_policy(password, "alice", 12)
    assert err.value.reason == "WEAK_PASSWORD"
    assert rule in err.value.message


def test_strong_password_accepted() -> None:
    """A long passphrase not on the list passes."""
    cred.check_password_policy("correct horse battery staple 42", "alice", 12)


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_adjacent_steps_accepted(offset: int) -> None:
    """Codes from one step before or after the current one are accepted (drift)."""
    code = pyotp.TOTP(SECRET).at(NOW + offset * 30)
    assert cred.totp_matching_step(SECRET, code, NOW) == int(NOW) // 30 + offset


@pytest.mark.parametrize("offset", [-2, 2, -3, 3])
def test_steps_beyond_drift_rejected(offset: int) -> None:
    """Codes two or more steps away are rejected."""
    code = pyotp.TOTP(SECRET).at(NOW + offset * 30)
    if code in {pyotp.TOTP(SECRET).at(NOW + d * 30) for d in (-1, 0, 1)}:
        pytest.skip("code collides with an accepted step (1 in 10^5)")
    assert cred.totp_matching_step(SECRET, code, NOW) is None


@given(st.text(max_size=8))
def test_malformed_codes_never_match(code: str) -> None:
    """Anything but six ASCII digits is rejected before any comparison."""
    if re.fullmatch(r"[0-9]{6}", code):
        return
    assert cred.totp_matching_step(SECRET, code, NOW) is None


def test_recovery_codes_format_and_hashing() -> None:
    """Ten distinct XXXX-XXXX-XXXX-XXXX codes; hashing ignores case and dashes."""
    codes = cred.new_recovery_codes("acc")
    assert len(set(codes.codes)) == 10
    assert all(re.fullmatch(r"([A-Z2-7]{4}-){3}[A-Z2-7]{4}", c) for c in codes.codes)
    typed = codes.codes[0].lower().replace("-", " ")
    assert cred.recovery_code_hash("acc", typed) == codes.hashes[0]
    assert cred.recovery_code_hash("other-account", codes.codes[0]) != codes.hashes[0]


def test_otpauth_uri_carries_parameters() -> None:
    """The enrollment URI names issuer, account, algorithm, digits and period."""
    uri = cred.otpauth_uri("ABC", "alice")
    assert uri.startswith("otpauth://totp/Conclave%3Aalice?secret=ABC&issuer=Conclave")
    assert "digits=6" in uri and "period=30" in uri and "algorithm=SHA1" in uri
