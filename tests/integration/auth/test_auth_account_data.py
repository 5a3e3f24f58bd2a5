"""Auth through the kit's account-data machinery: erasure events, scheduled purge, metrics."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from conclave.auth.v1 import auth_pb2 as A
from conclave.common.v1 import account_data_pb2 as D
from conclave.common.v1 import types_pb2
from conclave.common.v1.account_data_pb2_grpc import AccountDataServiceStub
from conclave.events.v1 import events_pb2
from conclave_auth.account_data import AuthAccountData
from conclave_auth.policies import POLICY_CHANGED
from conclave_kit.account_data import ACCOUNT_DELETED, ERASURE_COMPLETED, PurgeScheduler
from conclave_kit.nats_bus import EVENTS_STREAM
from conclave_kit.tokens import TokenSigner
from nats.aio.client import Client as NatsClient
from prometheus_client import REGISTRY

from tests.integration.auth.conftest import AuthHarness, bearer, unique

pytestmark = pytest.mark.integration


async def _erase(
    auth: AuthHarness, account_id: str, erasure_id: str
) -> events_pb2.ErasureCompleted:
    """Publishes AccountDeleted and waits for auth's ErasureCompleted of that erasure."""
    nc = NatsClient()
    await nc.connect(auth.runtime.config.nats_urls[0])
    js = nc.jetstream()
    done: asyncio.Future[events_pb2.ErasureCompleted] = asyncio.get_running_loop().create_future()

    async def on_completed(msg: object) -> None:
        event = events_pb2.ErasureCompleted.FromString(msg.data)  # type: ignore[attr-defined]
        if event.erasure_id == erasure_id and not done.done():
            done.set_result(event)

    sub = await nc.subscribe(ERASURE_COMPLETED, cb=on_completed)
    event = events_pb2.AccountDeleted(
        event_id=str(uuid.uuid4()), account_id=account_id, erasure_id=erasure_id
    )
    await js.publish(ACCOUNT_DELETED, event.SerializeToString(), stream=EVENTS_STREAM)
    try:
        return await asyncio.wait_for(done, 20)
    finally:
        await sub.unsubscribe()
        await nc.close()


async def test_account_deleted_revokes_sessions_and_erases_every_row(auth: AuthHarness) -> None:
    """On conclave.events.account.deleted auth ends every session (the token stops working
    at once), deletes every row that names the account and reports completion; a repeat is
    harmless and reports nothing more."""
    name = unique("erin")
    tokens = await auth.user(name)
    auth.next_step()  # each TOTP code works once
    await auth.login(name, device="phone")
    reply = await auth.stub.GetAccount(A.GetAccountRequest(), metadata=bearer(tokens))
    account_id = reply.account_id
    erasure_id = uuid.uuid4().hex

    completed = await _erase(auth, account_id, erasure_id)
    assert completed.service == types_pb2.SERVICE_NAME_AUTH
    assert completed.account_id == account_id
    assert completed.items_deleted >= 5  # account, 2 devices, 2 sessions, audit entries

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await auth.stub.GetAccount(A.GetAccountRequest(), metadata=bearer(tokens))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    pool = auth.runtime.resources.pool
    for table in ("accounts", "devices", "sessions", "audit_events", "recovery_codes"):
        left = await pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE account_id = $1",
            uuid.UUID(account_id),
        )
        assert left == 0, table
    buckets = await pool.fetchval(
        "SELECT count(*) FROM rate_limit_buckets WHERE bucket LIKE '%' || $1", account_id
    )
    assert buckets == 0

    again = await _erase(auth, account_id, uuid.uuid4().hex)
    assert again.items_deleted == 0


async def test_scheduled_purge_runs_on_one_replica_at_a_time(auth: AuthHarness) -> None:
    """The scheduler skips a run while another replica holds the service's purge lock, and
    otherwise purges and reports counts and lag in the metrics."""
    await auth.register(unique("unconfirmed"))
    auth.clock.advance(25 * 3600)  # past the 24 h enrollment window
    manager = auth.runtime.spec.account_data.provider  # type: ignore[union-attr]
    assert isinstance(manager, AuthAccountData)
    pool = auth.runtime.resources.pool
    scheduler = PurgeScheduler(manager, pool, interval_seconds=3600)
    async with pool.acquire() as other_replica:
        await other_replica.execute("SELECT pg_advisory_lock(hashtext('conclave-purge-auth'))")
        assert await scheduler.run_once() is None
        await other_replica.execute("SELECT pg_advisory_unlock(hashtext('conclave-purge-auth'))")
    before = REGISTRY.get_sample_value(
        "conclave_retention_purged_items_total", {"data": "unconfirmed_accounts"}
    )
    counts = await scheduler.run_once()
    assert counts is not None
    assert counts[D.PURGE_KIND_UNCONFIRMED_ACCOUNTS] >= 1
    after = REGISTRY.get_sample_value(
        "conclave_retention_purged_items_total", {"data": "unconfirmed_accounts"}
    )
    assert after is not None and after - (before or 0) >= 1
    assert REGISTRY.get_sample_value(
        "conclave_retention_purge_lag_seconds", {"data": "unconfirmed_accounts"}
    ) == pytest.approx(0.0)


async def test_purge_expired_rejects_unspecified_kind_and_needs_a_token(
    auth: AuthHarness,
) -> None:
    """PurgeExpired: no token is UNAUTHENTICATED; an unspecified kind INVALID_ARGUMENT."""
    stub = AccountDataServiceStub(auth.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PurgeExpired(D.PurgeExpiredRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    signer = TokenSigner(auth.config.signing_key_id, auth.config.signing_key)
    token = signer.mint(
        account_id=str(uuid.uuid4()),
        device_id=str(uuid.uuid4()),
        session_id=str(uuid.uuid4()),
        roles=("operator",),
        now=int(auth.clock().timestamp()),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PurgeExpired(
            D.PurgeExpiredRequest(kinds=[D.PURGE_KIND_UNSPECIFIED]), metadata=bearer(token)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_account_audit_ttl_follows_the_retention_policy(auth: AuthHarness) -> None:
    """An account policy's audit_log_ttl (conclave.events.retention.policy_changed) decides
    when that account's audit entries are purged; other accounts keep the deployment TTL."""
    short_name, default_name = unique("sam"), unique("dana")
    short = await auth.user(short_name)
    await auth.user(default_name)
    short_id = (
        await auth.stub.GetAccount(A.GetAccountRequest(), metadata=bearer(short))
    ).account_id
    event = events_pb2.RetentionPolicyChanged(event_id=str(uuid.uuid4()), account_id=short_id)
    event.policy.audit_log_ttl.FromSeconds(2 * 86400)
    nc = NatsClient()
    await nc.connect(auth.runtime.config.nats_urls[0])
    await nc.jetstream().publish(POLICY_CHANGED, event.SerializeToString(), stream=EVENTS_STREAM)
    await nc.close()
    pool = auth.runtime.resources.pool
    for _ in range(100):
        ttl = await pool.fetchval(
            "SELECT audit_log_ttl_seconds FROM accounts WHERE account_id = $1",
            uuid.UUID(short_id),
        )
        if ttl is not None:
            break
        await asyncio.sleep(0.05)
    assert ttl == 2 * 86400

    auth.clock.advance(3 * 86400)
    provider = auth.runtime.spec.account_data.provider  # type: ignore[union-attr]
    assert provider is not None
    await provider.purge(frozenset({D.PURGE_KIND_AUDIT_EVENTS}))
    counts = {
        name: await pool.fetchval(
            "SELECT count(*) FROM audit_events e JOIN accounts a USING (account_id) "
            "WHERE a.username = $1",
            name,
        )
        for name in (short_name, default_name)
    }
    assert counts[short_name] == 0
    assert counts[default_name] >= 1


async def test_purge_of_kinds_auth_does_not_hold_purges_nothing(auth: AuthHarness) -> None:
    """Asked only for media blobs, auth purges nothing (not "everything it holds")."""
    await auth.register(unique("kept"))
    auth.clock.advance(25 * 3600)  # the registration would be purged by an UNCONFIRMED run
    signer = TokenSigner(auth.config.signing_key_id, auth.config.signing_key)
    token = signer.mint(
        account_id=str(uuid.uuid4()),
        device_id=str(uuid.uuid4()),
        session_id=str(uuid.uuid4()),
        roles=("operator",),
        now=int(auth.clock().timestamp()),
    )
    reply = await AccountDataServiceStub(auth.channel).PurgeExpired(
        D.PurgeExpiredRequest(kinds=[D.PURGE_KIND_MEDIA_BLOBS]), metadata=bearer(token)
    )
    assert list(reply.counts) == []
    left = await auth.runtime.resources.pool.fetchval(
        "SELECT count(*) FROM accounts WHERE totp_confirmed_at IS NULL "
        "AND enrollment_expires_at < $1",
        auth.clock(),
    )
    assert left >= 1
