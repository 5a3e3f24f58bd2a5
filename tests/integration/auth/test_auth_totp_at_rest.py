"""TOTP secrets are stored sealed (AES-256-GCM) and never in clear once a key is set."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from conclave.auth.v1 import auth_pb2 as A
from conclave_auth.manager import AuthManager
from conclave_auth.server import build_spec
from conclave_auth.totp_box import TotpSecretBox, is_sealed
from conclave_kit.runtime import ServiceRuntime, StartupError

from tests.integration.auth.conftest import TOTP_KEY, AuthHarness, bearer, unique

pytestmark = pytest.mark.integration


async def _stored(auth: AuthHarness, account_id: str) -> tuple[str, str | None]:
    row = await auth.runtime.resources.pool.fetchrow(
        "SELECT totp_secret, pending_totp_secret FROM accounts WHERE account_id = $1",
        uuid.UUID(account_id),
    )
    assert row is not None
    return row["totp_secret"], row["pending_totp_secret"]


async def test_registered_and_changed_secrets_are_sealed_and_still_verify(
    auth: AuthHarness,
) -> None:
    """Register and ChangeTotp store only sealed secrets; codes still verify; the clear
    secret appears nowhere in the row."""
    name = unique("sealy")
    tokens = await auth.user(name)
    account_id = (
        await auth.stub.GetAccount(A.GetAccountRequest(), metadata=bearer(tokens))
    ).account_id
    current, _ = await _stored(auth, account_id)
    assert is_sealed(current)
    assert auth.users[name] not in current
    assert TotpSecretBox(TOTP_KEY).open(account_id, current) == auth.users[name]

    change = await auth.stub.ChangeTotp(A.ChangeTotpRequest(), metadata=bearer(tokens))
    _, pending = await _stored(auth, account_id)
    assert pending is not None and is_sealed(pending)
    assert change.totp_secret not in pending
    auth.next_step()
    await auth.stub.ConfirmTotpChange(
        A.ConfirmTotpChangeRequest(totp_code=auth.code(change.totp_secret)),
        metadata=bearer(tokens),
    )
    current, pending = await _stored(auth, account_id)
    assert pending is None and is_sealed(current)
    assert TotpSecretBox(TOTP_KEY).open(account_id, current) == change.totp_secret


async def test_start_up_seals_clear_secrets_and_refuses_to_run_without_the_key(
    auth: AuthHarness,
) -> None:
    """A deployment that adds the key later: the next start seals every clear secret, and
    logins keep working. Starting without the key once secrets are sealed is refused."""
    name = unique("legacy")
    await auth.user(name)
    pool = auth.runtime.resources.pool
    account_id = str(
        await pool.fetchval("SELECT account_id FROM accounts WHERE username = $1", name)
    )
    await pool.execute(  # as stored before the key existed
        "UPDATE accounts SET totp_secret = $2 WHERE account_id = $1",
        uuid.UUID(account_id),
        auth.users[name],
    )
    manager = auth.runtime.spec.account_data.provider._m  # type: ignore[union-attr]
    assert isinstance(manager, AuthManager)
    assert await manager.seal_stored_totp_secrets() >= 1
    current, _ = await _stored(auth, account_id)
    assert is_sealed(current)
    auth.next_step()
    await auth.login(name, device="after-sealing")

    without_key = dataclasses.replace(auth.config, totp_key=None)
    runtime = ServiceRuntime(build_spec(without_key), without_key.service)
    try:
        with pytest.raises(StartupError, match="CONCLAVE_AUTH_TOTP_KEY_FILE"):
            await runtime.start()
    finally:
        await runtime.stop()
