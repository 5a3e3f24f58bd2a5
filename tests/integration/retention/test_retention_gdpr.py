"""RunPurge, ExportMyData, DeleteAccount and GetErasureStatus against real auth and
retention (stand-ins on the real kit for keys, messaging and media), on real NATS and
PostgreSQL: authorization, per-server reports, all-or-nothing exports, erasure through
the real events, and the scrub of CONCLAVE_EVENTS."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from conclave.auth.v1 import auth_pb2 as A
from conclave.common.v1 import account_data_pb2 as D
from conclave.common.v1 import types_pb2
from conclave.events.v1 import events_pb2
from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.nats_bus import EVENTS_STREAM
from conclave_kit.outbox import OutboxRelay
from conclave_retention.scrub import events_naming
from google.protobuf.duration_pb2 import Duration
from nats.js import api
from prometheus_client import REGISTRY

from tests.integration.retention.conftest import Deployment, bearer
from tests.support import trailers

pytestmark = pytest.mark.integration
AUTH, KEYS, MESSAGING, MEDIA, RETENTION = (
    types_pb2.SERVICE_NAME_AUTH,
    types_pb2.SERVICE_NAME_KEYS,
    types_pb2.SERVICE_NAME_MESSAGING,
    types_pb2.SERVICE_NAME_MEDIA,
    types_pb2.SERVICE_NAME_RETENTION,
)
PASSWORD = "correct horse battery staple 42"


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def _export(
    deployment: Deployment, metadata: tuple[tuple[str, str], ...], timeout: float = 10
) -> bytes:
    call = deployment.retention.stub.ExportMyData(
        R.ExportMyDataRequest(), metadata=metadata, timeout=timeout
    )
    return b"".join([bytes(chunk.json_chunk) async for chunk in call])


async def _erasure_rows(deployment: Deployment, account_id: str) -> int:
    count = await deployment.retention.runtime.resources.pool.fetchval(
        "SELECT count(*) FROM erasure_requests WHERE account_id = $1", account_id
    )
    return int(count)


async def _events_naming(deployment: Deployment, account_id: str) -> list[str]:
    """Subjects of every CONCLAVE_EVENTS message whose bytes contain the account id."""
    js = deployment.retention.runtime.resources.js
    sub = await js.pull_subscribe(
        "conclave.events.>",
        stream=EVENTS_STREAM,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, mem_storage=True),
    )
    found: list[str] = []
    try:
        while True:
            try:
                batch = await sub.fetch(1000, timeout=0.5)
            except Exception:
                break
            found += [m.subject for m in batch if account_id.encode() in m.data]
            if (await sub.consumer_info()).num_pending == 0 and len(batch) < 1000:
                break
    finally:
        await sub.unsubscribe()
    return found


# -- RunPurge -------------------------------------------------------------------------------


async def test_run_purge_needs_a_live_operator_session(deployment: Deployment) -> None:
    """No token: UNAUTHENTICATED; a user's session: PERMISSION_DENIED; a revoked operator
    session: UNAUTHENTICATED; nothing was purged by any of them."""
    stub = deployment.retention.stub
    _, _, tokens = await deployment.user("purger")
    assert await _code(stub.RunPurge(R.RunPurgeRequest())) == grpc.StatusCode.UNAUTHENTICATED
    assert await _code(stub.RunPurge(R.RunPurgeRequest(), metadata=bearer(tokens))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    revoked = "00000000-0000-4000-8000-00000000dead"
    deployment.retention.runtime.resources.revocations.revoke(revoked, time.time() + 600)
    metadata = deployment.operator(session_id=revoked)
    assert await _code(stub.RunPurge(R.RunPurgeRequest(), metadata=metadata)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    unspecified = R.RunPurgeRequest(kinds=[D.PURGE_KIND_UNSPECIFIED])
    assert await _code(stub.RunPurge(unspecified, metadata=deployment.operator())) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert all(not s.purges for s in deployment.stand_ins.values())


async def test_run_purge_reports_every_server_and_totals(deployment: Deployment) -> None:
    """All five servers purge; counts per server; totals per kind; the operator's token
    reached each server (auth checked it itself); requested kinds are forwarded."""
    reply = await deployment.retention.stub.RunPurge(
        R.RunPurgeRequest(), metadata=deployment.operator(), timeout=20
    )
    assert [s.service for s in reply.services] == [AUTH, KEYS, MESSAGING, MEDIA, RETENTION]
    assert all(s.completed and not s.error for s in reply.services), reply
    by_server = {s.service: {c.kind: c.items for c in s.counts} for s in reply.services}
    assert by_server[KEYS] == {D.PURGE_KIND_PREKEYS: 1, D.PURGE_KIND_BOOKKEEPING: 1}
    assert D.PURGE_KIND_SESSIONS in by_server[AUTH]  # auth's own kinds, from the real auth
    assert set(by_server[RETENTION]) == {D.PURGE_KIND_BOOKKEEPING}
    totals = {c.kind: c.items for c in reply.totals}
    assert totals[D.PURGE_KIND_PREKEYS] == 1
    assert totals[D.PURGE_KIND_BOOKKEEPING] == sum(
        counts.get(D.PURGE_KIND_BOOKKEEPING, 0) for counts in by_server.values()
    )
    assert reply.end_time.ToDatetime() >= reply.start_time.ToDatetime()
    assert len(reply.run_id) == 36

    only = R.RunPurgeRequest(kinds=[D.PURGE_KIND_MEDIA_BLOBS])
    keys_runs = len(deployment.stand_ins["keys"].purges)
    reply = await deployment.retention.stub.RunPurge(only, metadata=deployment.operator())
    assert deployment.stand_ins["media"].purges[-1] == frozenset({D.PURGE_KIND_MEDIA_BLOBS})
    # A server holding none of the requested kinds purges nothing (auth and keys).
    assert len(deployment.stand_ins["keys"].purges) == keys_runs
    assert {c.kind: c.items for c in reply.totals if c.items} == {D.PURGE_KIND_MEDIA_BLOBS: 1}


async def test_run_purge_reports_a_down_or_slow_server_instead_of_failing(
    deployment: Deployment,
) -> None:
    """media unreachable: reported 'unavailable'; keys slower than the call's deadline:
    reported 'deadline exceeded' and the answer still arrives within the deadline."""
    down = await deployment.start_retention(peers={**deployment.peers, "media": "127.0.0.1:1"})
    try:
        deployment.stand_ins["keys"].delay = 5.0
        started = time.monotonic()
        reply = await down.stub.RunPurge(
            R.RunPurgeRequest(), metadata=deployment.operator(), timeout=2.5
        )
        elapsed = time.monotonic() - started
    finally:
        deployment.stand_ins["keys"].delay = 0.0
        await down.channel.close(None)
        await down.runtime.stop()
    assert elapsed < 2.5
    results = {s.service: s for s in reply.services}
    assert not results[MEDIA].completed and results[MEDIA].error == "unavailable"
    assert not results[KEYS].completed and results[KEYS].error == "deadline exceeded"
    assert not results[KEYS].counts
    assert results[AUTH].completed and results[MESSAGING].completed
    assert results[RETENTION].completed
    totals = {c.kind: c.items for c in reply.totals}
    assert D.PURGE_KIND_PREKEYS not in totals  # only completed servers count
    assert totals[D.PURGE_KIND_DIRECT_MESSAGES] == 1
    failed = REGISTRY.get_sample_value(
        "conclave_retention_run_purge_server_results_total",
        {"server": "media", "outcome": "unavailable"},
    )
    assert failed is not None and failed >= 1


# -- ExportMyData -----------------------------------------------------------------------------


async def test_export_needs_fresh_auth(deployment: Deployment) -> None:
    """A session whose password + TOTP check is older than the fresh window: UNAUTHENTICATED
    with FRESH_AUTH_REQUIRED (the tokens are refreshed, so the session itself is live)."""
    _, _, tokens = await deployment.user("stale")
    deployment.auth.clock.advance(700)
    refreshed = await deployment.auth.stub.RefreshSession(
        A.RefreshSessionRequest(refresh_token=tokens.refresh_token), timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _export(deployment, bearer(refreshed.tokens))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert trailers(err.value)["conclave-error-reason"] == "FRESH_AUTH_REQUIRED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _export(deployment, ())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_export_assembles_every_section_and_is_rate_limited(
    deployment: Deployment,
) -> None:
    """The documented envelope with all five sections (auth's real one, retention's with
    the account policy); a second export within the hour is RESOURCE_EXHAUSTED with a
    retry-after close to an hour."""
    username, account_id, tokens = await deployment.user("exporter")
    await deployment.retention.stub.SetAccountPolicy(
        R.SetAccountPolicyRequest(policy=R.RetentionPolicy(media_ttl=Duration(seconds=86400))),
        metadata=bearer(tokens),
    )
    # The policy change reaches CONCLAVE_EVENTS through retention's outbox relay.
    js = deployment.auth.runtime.resources.js
    for _ in range(100):
        if any(
            e["subject"] == "conclave.events.retention.policy_changed"
            for e in await events_naming(js, account_id)
        ):
            break
        await asyncio.sleep(0.1)
    raw = await _export(deployment, bearer(tokens), timeout=20)
    document = json.loads(raw)
    assert list(document) == ["format", "account_id", "generated_at", "services"]
    assert document["format"] == "conclave-export-v1"
    assert document["account_id"] == account_id
    assert document["generated_at"].endswith("Z")
    assert list(document["services"]) == ["auth", "keys", "messaging", "media", "retention"]
    assert document["services"]["auth"]["account"]["username"] == username
    assert "password_hash" not in raw.decode()
    for name in ("keys", "messaging", "media"):
        assert document["services"][name] == {
            "server": name,
            "account_id": account_id,
            "note": "stand-in",
        }
    mine = document["services"]["retention"]
    assert mine["account_policy"]["media_ttl_seconds"] == 86400
    assert mine["erasure_requests"] == []
    # Every CONCLAVE_EVENTS message naming the account, decoded: here at least auth's audit
    # events and retention's policy change.
    subjects = {e["subject"] for e in mine["events"]}
    assert {
        "conclave.events.audit.recorded",
        "conclave.events.retention.policy_changed",
    } <= subjects
    changed = next(
        e for e in mine["events"] if e["subject"] == "conclave.events.retention.policy_changed"
    )
    assert changed["event"]["accountId"] == account_id

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _export(deployment, bearer(tokens))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 3000 < int(trailers(err.value)["retry-after"]) <= 3600


async def test_export_is_all_or_nothing(deployment: Deployment) -> None:
    """One server unreachable: UNAVAILABLE, no chunk delivered, and the hourly export is
    not spent (the next export, with every server up, succeeds)."""
    _, account_id, tokens = await deployment.user("partial")
    down = await deployment.start_retention(peers={**deployment.peers, "keys": "127.0.0.1:1"})
    try:
        call = down.stub.ExportMyData(R.ExportMyDataRequest(), metadata=bearer(tokens))
        chunks: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for chunk in call:
                chunks.append(chunk.json_chunk)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "keys" in (err.value.details() or "")
        assert chunks == []
    finally:
        await down.channel.close(None)
        await down.runtime.stop()
    document = json.loads(await _export(deployment, bearer(tokens)))
    assert document["account_id"] == account_id


async def test_export_splits_large_documents_into_mib_chunks(deployment: Deployment) -> None:
    """Chunks are at most 1 MiB; their concatenation is the document."""
    _, account_id, tokens = await deployment.user("bigexport")
    # A large section: many group memberships learned for the account.
    pool = deployment.retention.runtime.resources.pool
    await pool.execute(
        "INSERT INTO group_members (group_id, account_id, is_member, is_admin, "
        "membership_version) SELECT gen_random_uuid(), $1, true, false, 1 "
        "FROM generate_series(1, 20000)",
        account_id,
    )
    call = deployment.retention.stub.ExportMyData(
        R.ExportMyDataRequest(), metadata=bearer(tokens), timeout=30
    )
    chunks = [bytes(c.json_chunk) async for c in call]
    assert len(chunks) >= 2
    assert all(len(c) <= 1024 * 1024 for c in chunks)
    document = json.loads(b"".join(chunks))
    assert len(document["services"]["retention"]["group_memberships"]) == 20000


# -- DeleteAccount and GetErasureStatus --------------------------------------------------


async def test_delete_account_refuses_bad_input_and_writes_nothing(
    deployment: Deployment,
) -> None:
    """Missing fields and a wrong confirmation: INVALID_ARGUMENT (the code is not spent);
    wrong password or code: PERMISSION_DENIED; no erasure row and no account.deleted."""
    username, account_id, tokens = await deployment.user("careful")
    stub = deployment.retention.stub
    deployment.auth.next_step()
    secret = deployment.auth.users[username]
    code = deployment.auth.code(secret)
    cases = [
        (R.DeleteAccountRequest(totp_code=code, confirm_username=username), "INVALID_ARGUMENT"),
        (R.DeleteAccountRequest(password=PASSWORD, confirm_username=username), "INVALID_ARGUMENT"),
        (R.DeleteAccountRequest(password=PASSWORD, totp_code=code), "INVALID_ARGUMENT"),
        (
            R.DeleteAccountRequest(
                password=PASSWORD, totp_code="12ab56", confirm_username=username
            ),
            "INVALID_ARGUMENT",
        ),
        (
            R.DeleteAccountRequest(
                password=PASSWORD, totp_code=code, confirm_username=username + "x"
            ),
            "INVALID_ARGUMENT",
        ),
        (
            R.DeleteAccountRequest(
                password=PASSWORD, totp_code=code, confirm_username=username.upper()
            ),
            "INVALID_ARGUMENT",
        ),
        (
            R.DeleteAccountRequest(
                password=PASSWORD + "!", totp_code=code, confirm_username=username
            ),
            "PERMISSION_DENIED",
        ),
    ]
    for request, expected in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.DeleteAccount(request, metadata=bearer(tokens))
        assert err.value.code().name == expected, request
    deployment.auth.next_step()
    wrong = f"{(int(deployment.auth.code(secret)) + 1) % 1_000_000:06d}"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteAccount(
            R.DeleteAccountRequest(password=PASSWORD, totp_code=wrong, confirm_username=username),
            metadata=bearer(tokens),
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert trailers(err.value)["conclave-error-reason"] == "BAD_CREDENTIALS"
    assert await _erasure_rows(deployment, account_id) == 0
    outbox = await deployment.retention.runtime.resources.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE subject = 'conclave.events.account.deleted'"
    )
    assert outbox == 0
    assert "conclave.events.account.deleted" not in await _events_naming(deployment, account_id)
    # The account is untouched: the session still works.
    await deployment.auth.stub.GetAccount(A.GetAccountRequest(), metadata=bearer(tokens))


async def test_repeated_delete_returns_the_same_erasure_id(deployment: Deployment) -> None:
    """While the erasure is pending, a repeat (with a new code) answers the same id and
    writes no second request or event."""
    retention = deployment.retention
    relay = retention.servicer.erasure._relay  # type: ignore[union-attr]
    await relay.stop()  # hold the event back, so auth has not ended the session yet
    username, account_id, tokens = await deployment.user("twice")
    secret = deployment.auth.users[username]
    replies = []
    for _ in range(2):
        deployment.auth.next_step()
        request = R.DeleteAccountRequest(
            password=PASSWORD, totp_code=deployment.auth.code(secret), confirm_username=username
        )
        replies.append(await retention.stub.DeleteAccount(request, metadata=bearer(tokens)))
    assert replies[0].erasure_id == replies[1].erasure_id
    assert replies[0].request_time == replies[1].request_time
    assert len(replies[0].erasure_id) == 43
    assert await _erasure_rows(deployment, account_id) == 1
    pool = retention.runtime.resources.pool
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    # Let it go and finish, so later tests start without a pending erasure.
    await OutboxRelay(pool, retention.runtime.resources.js).relay_once()
    await _wait_complete(deployment, replies[0].erasure_id)


async def _wait_complete(deployment: Deployment, erasure_id: str) -> R.GetErasureStatusResponse:
    for _ in range(400):
        status = await deployment.retention.stub.GetErasureStatus(
            R.GetErasureStatusRequest(erasure_id=erasure_id)
        )
        if status.state == R.ERASURE_STATE_COMPLETE:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"erasure not complete within 20 s: {status}")


async def test_erasure_goes_from_pending_to_complete_and_scrubs_the_events(
    deployment: Deployment,
) -> None:
    """DeleteAccount → pending (every server listed) → each server erases on the real
    account.deleted event and reports → COMPLETE; afterwards no CONCLAVE_EVENTS message
    names the account, the record holds no account id, the sessions are gone, and the id
    answers NOT_FOUND once the record is purged 30 days later."""
    username, account_id, tokens = await deployment.user("leaver")
    _, other_id, other_tokens = await deployment.user("stayer")
    stub = deployment.retention.stub
    # Data retention holds about the account, and an event naming it from someone else.
    await stub.SetAccountPolicy(
        R.SetAccountPolicyRequest(policy=R.RetentionPolicy(media_ttl=Duration(seconds=7200))),
        metadata=bearer(tokens),
    )
    await stub.SetConversationPolicy(
        R.SetConversationPolicyRequest(
            conversation=types_pb2.ConversationRef(peer_account_id=account_id),
            policy=R.RetentionPolicy(media_ttl=Duration(seconds=7200)),
        ),
        metadata=bearer(other_tokens),
    )
    deployment.auth.next_step()
    reply = await stub.DeleteAccount(
        R.DeleteAccountRequest(
            password=PASSWORD,
            totp_code=deployment.auth.code(deployment.auth.users[username]),
            confirm_username=username,
        ),
        metadata=bearer(tokens),
    )
    status = await stub.GetErasureStatus(R.GetErasureStatusRequest(erasure_id=reply.erasure_id))
    assert status.state == R.ERASURE_STATE_PENDING
    assert [s.service for s in status.services] == [AUTH, KEYS, MESSAGING, MEDIA, RETENTION]
    assert status.request_time == reply.request_time
    assert not status.HasField("complete_time")

    status = await _wait_complete(deployment, reply.erasure_id)
    assert all(s.state == R.ERASURE_STATE_COMPLETE for s in status.services)
    assert all(s.HasField("complete_time") for s in status.services)
    assert status.complete_time.ToDatetime() >= max(
        s.complete_time.ToDatetime() for s in status.services
    )
    for name in ("keys", "messaging", "media"):
        assert account_id in deployment.stand_ins[name].erased
    assert await _events_naming(deployment, account_id) == []
    pool = deployment.retention.runtime.resources.pool
    row = await pool.fetchrow(
        "SELECT * FROM erasure_requests WHERE completed_at IS NOT NULL "
        "ORDER BY completed_at DESC LIMIT 1"
    )
    assert row is not None and row["account_id"] is None and row["erasure_id"] is None
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM account_policies WHERE account_id = $1", account_id
        )
        == 0
    )
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM conversation_policies "
            "WHERE account_low = $1 OR account_high = $1",
            account_id,
        )
        == 0
    )
    # The erased account's session is refused (auth ended it; retention heard of it).
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetEffectivePolicy(R.GetEffectivePolicyRequest(), metadata=bearer(tokens))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The other party still works and falls back to their own level.
    await stub.GetEffectivePolicy(R.GetEffectivePolicyRequest(), metadata=bearer(other_tokens))
    assert other_id != account_id

    # 30 days after completion the bookkeeping purge drops the record: NOT_FOUND.
    deployment.auth.clock.advance(31 * 86400)
    purge = await stub.RunPurge(
        R.RunPurgeRequest(kinds=[D.PURGE_KIND_BOOKKEEPING]), metadata=deployment.operator()
    )
    retention_counts = {s.service: s for s in purge.services}[RETENTION]
    assert retention_counts.completed and retention_counts.counts[0].items >= 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetErasureStatus(R.GetErasureStatusRequest(erasure_id=reply.erasure_id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_or_malformed_erasure_ids(deployment: Deployment) -> None:
    """An id never issued: NOT_FOUND; not an id at all: INVALID_ARGUMENT; no token needed."""
    stub = deployment.retention.stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetErasureStatus(R.GetErasureStatusRequest(erasure_id="B" * 43))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for bad in ("", "short", "!" * 43, "A" * 44):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetErasureStatus(R.GetErasureStatusRequest(erasure_id=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


async def test_completion_events_for_other_accounts_are_ignored(deployment: Deployment) -> None:
    """An erasure.completed naming a different account than the erasure's is not counted."""
    retention = deployment.retention
    relay = retention.servicer.erasure._relay  # type: ignore[union-attr]
    await relay.stop()
    username, account_id, tokens = await deployment.user("guarded")
    deployment.auth.next_step()
    reply = await retention.stub.DeleteAccount(
        R.DeleteAccountRequest(
            password=PASSWORD,
            totp_code=deployment.auth.code(deployment.auth.users[username]),
            confirm_username=username,
        ),
        metadata=bearer(tokens),
    )
    erasure = retention.servicer.erasure
    assert erasure is not None
    forged = events_pb2.ErasureCompleted(
        event_id="x",
        erasure_id=reply.erasure_id,
        account_id="00000000-0000-4000-8000-000000000001",
        service=KEYS,
    )
    assert await erasure.apply_completion(forged) is False
    status = await retention.stub.GetErasureStatus(
        R.GetErasureStatusRequest(erasure_id=reply.erasure_id)
    )
    assert all(s.state == R.ERASURE_STATE_PENDING for s in status.services)
    pool = retention.runtime.resources.pool
    await OutboxRelay(pool, retention.runtime.resources.js).relay_once()
    await _wait_complete(deployment, reply.erasure_id)
    assert account_id
