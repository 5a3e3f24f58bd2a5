"""Keys' account data through the kit: export of published keys, operator purge."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest
from conclave.common.v1 import account_data_pb2 as D
from conclave.common.v1.account_data_pb2_grpc import AccountDataServiceStub

from tests.integration.keys.conftest import Device, KeysHarness

pytestmark = pytest.mark.integration


async def test_export_lists_devices_prekeys_and_log_leaves(keys: KeysHarness) -> None:
    """The keys section holds each published device with its public identity keys, the
    signed and one-time prekeys and the log leaves of the account, and nobody else's."""
    alice = Device()
    published = await keys.publish(alice, one_time=2, pq_one_time=1)
    await keys.publish(Device())
    chunks = [
        c.json_chunk
        async for c in AccountDataServiceStub(keys.channel).ExportAccountData(
            D.ExportAccountDataRequest(), metadata=keys.auth(alice)
        )
    ]
    section = json.loads(b"".join(chunks))
    (device,) = section["devices"]
    assert device["device_id"] == alice.device_id
    assert device["leaf_index"] == published.leaf_index
    assert len(section["one_time_prekeys"]) == 3
    assert {k["kind"] for k in section["signed_prekeys"]} == {
        "X25519_SIGNED",
        "ML_KEM_1024_LAST_RESORT",
    }
    assert [leaf["leaf_index"] for leaf in section["transparency_log_leaves"]] == [
        published.leaf_index
    ]


async def test_purge_is_operator_only_and_reports_prekeys(keys: KeysHarness) -> None:
    """A user's PurgeExpired is PERMISSION_DENIED; an operator's reports both kinds."""
    alice = Device()
    stub = AccountDataServiceStub(keys.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PurgeExpired(D.PurgeExpiredRequest(), metadata=keys.auth(alice))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    token = keys.signer.mint(
        account_id=str(uuid.uuid4()),
        device_id=str(uuid.uuid4()),
        session_id=str(uuid.uuid4()),
        roles=("operator",),
    )
    reply = await stub.PurgeExpired(
        D.PurgeExpiredRequest(kinds=[D.PURGE_KIND_PREKEYS, D.PURGE_KIND_MEDIA_BLOBS]),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    # Kinds keys does not hold are ignored, not an error.
    assert [c.kind for c in reply.counts] == [D.PURGE_KIND_PREKEYS]
