"""Access tokens: Ed25519 signatures, key rotation by id, lifetime, and one opaque failure."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from conclave_kit.errors import Unauthenticated
from conclave_kit.tokens import TokenSigner, TokenVerifier


def _claims(signer: TokenSigner, **kw: int) -> str:
    return signer.mint(account_id="acc", device_id="dev", session_id="ses", **kw)  # type: ignore[arg-type]


def test_round_trip_and_rotation() -> None:
    """A verifier holding old and new keys accepts tokens from both."""
    old, new = TokenSigner.generate("k1"), TokenSigner.generate("k2")
    verifier = TokenVerifier({"k1": old.public_key, "k2": new.public_key})
    for signer in (old, new):
        claims = verifier.verify(_claims(signer))
        assert (claims.account_id, claims.device_id, claims.session_id) == ("acc", "dev", "ses")
        assert claims.expires_at - claims.issued_at == 300


def test_expired_token_rejected() -> None:
    """A token past exp (+5 s leeway) is rejected."""
    signer = TokenSigner.generate("k1")
    verifier = TokenVerifier({"k1": signer.public_key})
    token = _claims(signer, now=int(time.time()) - 400)
    with pytest.raises(Unauthenticated, match="invalid or expired"):
        verifier.verify(token)


def test_unknown_key_wrong_key_tamper_and_alg_none_rejected() -> None:
    """Unknown kid, a different key under a known kid, edited payload and alg=none all fail."""
    good = TokenSigner.generate("k1")
    verifier = TokenVerifier({"k1": good.public_key})
    with pytest.raises(Unauthenticated):
        verifier.verify(_claims(TokenSigner.generate("k9")))
    with pytest.raises(Unauthenticated):
        verifier.verify(_claims(TokenSigner.generate("k1")))
    header, payload, sig = _claims(good).split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=="))
    data["sub"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    with pytest.raises(Unauthenticated):
        verifier.verify(f"{header}.{forged}.{sig}")
    unsigned = jwt.encode(data, key="", algorithm="none", headers={"kid": "k1"})
    with pytest.raises(Unauthenticated):
        verifier.verify(unsigned)
    with pytest.raises(Unauthenticated):
        verifier.verify("not-a-token")
