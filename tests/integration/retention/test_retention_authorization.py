"""Authorization of every RetentionService RPC: no token, a forged token and a revoked
session are UNAUTHENTICATED; each RPC checks the auth mode its contract declares."""

from __future__ import annotations

import time

import grpc
import pytest
from conclave.common.v1 import account_data_pb2, account_data_pb2_grpc, types_pb2
from conclave.retention.v1 import retention_pb2 as R
from google.protobuf.duration_pb2 import Duration

from tests.integration.retention.conftest import RetentionHarness, User

pytestmark = pytest.mark.integration
RETENTION = R.DESCRIPTOR.services_by_name["RetentionService"]
BUILT = {
    "GetDeploymentPolicy": R.GetDeploymentPolicyRequest(),
    "GetEffectivePolicy": R.GetEffectivePolicyRequest(),
    "SetAccountPolicy": R.SetAccountPolicyRequest(
        policy=R.RetentionPolicy(media_ttl=Duration(seconds=86400))
    ),
    "SetConversationPolicy": R.SetConversationPolicyRequest(
        conversation=types_pb2.ConversationRef(peer_account_id=User().account_id),
        policy=R.RetentionPolicy(media_ttl=Duration(seconds=86400)),
    ),
}


async def _unary(
    retention: RetentionHarness, name: str, request: object, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    try:
        await getattr(retention.stub, name)(request, metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_every_built_rpc_needs_a_live_session(retention: RetentionHarness) -> None:
    """Without a token, with a forged one and with a revoked session: UNAUTHENTICATED; the
    revoked session's account policy was not changed."""
    alice = User()
    forged = (("authorization", "Bearer eyJhbGciOiJub25lIn0.e30."),)
    for name, request in BUILT.items():
        assert await _unary(retention, name, request, ()) == grpc.StatusCode.UNAUTHENTICATED
        assert await _unary(retention, name, request, forged) == grpc.StatusCode.UNAUTHENTICATED
        assert await _unary(retention, name, request, retention.auth(alice)) == (
            grpc.StatusCode.OK
        ), name

    mallory_session = User(account_id=alice.account_id)
    metadata = retention.auth(mallory_session)
    retention.runtime.resources.revocations.revoke(mallory_session.session_id, time.time() + 600)
    wipe = R.SetAccountPolicyRequest(policy=R.RetentionPolicy())
    assert await _unary(retention, "SetAccountPolicy", wipe, metadata) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    for name, request in BUILT.items():
        code = await _unary(retention, name, request, metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED, name
    # Alice's other session still works and still sees her policy.
    read = await retention.stub.GetEffectivePolicy(
        R.GetEffectivePolicyRequest(), metadata=retention.auth(alice)
    )
    assert read.effective.media_ttl_source == R.POLICY_SOURCE_ACCOUNT


async def test_every_rpc_is_built_and_checks_its_auth_mode(retention: RetentionHarness) -> None:
    """No RPC answers UNIMPLEMENTED any more; the operator, fresh and session RPCs refuse a
    missing token, GetErasureStatus (NONE) needs none."""
    alice = User()
    purge = R.RunPurgeRequest(kinds=[0])  # type: ignore[list-item]
    delete = R.DeleteAccountRequest()
    assert await _unary(retention, "RunPurge", purge, ()) == grpc.StatusCode.UNAUTHENTICATED
    assert await _unary(retention, "DeleteAccount", delete, ()) == (grpc.StatusCode.UNAUTHENTICATED)
    # A session token: RunPurge needs the operator role; DeleteAccount validates fields.
    assert await _unary(retention, "RunPurge", purge, retention.auth(alice)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert await _unary(retention, "DeleteAccount", delete, retention.auth(alice)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await retention.stub.GetErasureStatus(R.GetErasureStatusRequest(erasure_id="A" * 43))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    export = retention.stub.ExportMyData(R.ExportMyDataRequest(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _chunk in export:
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert {m.name for m in RETENTION.methods} == set(BUILT) | {
        "RunPurge",
        "ExportMyData",
        "DeleteAccount",
        "GetErasureStatus",
    }


async def test_odd_token_ids_are_rejected_not_internal(retention: RetentionHarness) -> None:
    """A validly signed token whose account id is not a UUID is UNAUTHENTICATED."""
    token = retention.signer.mint(account_id="admin", device_id="d", session_id="s")
    metadata = (("authorization", f"Bearer {token}"),)
    for name in ("GetEffectivePolicy", "SetAccountPolicy", "SetConversationPolicy"):
        code = await _unary(retention, name, BUILT[name], metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED, name
    # Retention's own AccountDataService section, and the export through RetentionService.
    section = account_data_pb2_grpc.AccountDataServiceStub(retention.channel).ExportAccountData(
        account_data_pb2.ExportAccountDataRequest(), metadata=metadata, timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _chunk in section:
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    fresh = retention.signer.mint(account_id="admin", device_id="d", session_id="s2")
    export = retention.stub.ExportMyData(
        R.ExportMyDataRequest(), metadata=(("authorization", f"Bearer {fresh}"),), timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _chunk2 in export:
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
