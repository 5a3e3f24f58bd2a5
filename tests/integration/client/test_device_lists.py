"""1:1 envelopes must address exactly the devices the key directory publishes."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from conclave.common.v1 import types_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave.messaging.v1 import messaging_pb2_grpc

from tests.integration.client.test_cli_keys import user
from tests.integration.stack.conftest import RunningStack

pytestmark = pytest.mark.integration


def test_wrong_device_list_gets_device_mismatch(stack: RunningStack, tmp_path: Path) -> None:
    """Missing, extra and unknown devices come back as device_mismatch; nothing is stored."""
    alice, bob = user(stack, tmp_path / "alice"), user(stack, tmp_path / "bob")
    alice.login()
    bob_login = bob.login()
    stranger = str(uuid.uuid4())
    request = M.SendDirectMessageRequest(
        message_id=str(uuid.uuid4()),
        recipient_account_id=bob_login["account_id"],
        ciphertexts=[
            M.DeviceCiphertext(
                device=types_pb2.DeviceAddress(
                    account_id=bob_login["account_id"], device_id=stranger
                ),
                kind=M.CIPHERTEXT_KIND_PREKEY,
                ciphertext=b"\x01" * 64,
            )
        ],
    )
    with grpc.insecure_channel(stack.grpc["messaging"]) as channel:
        stub = messaging_pb2_grpc.MessagingServiceStub(channel)
        reply = stub.SendDirectMessage(request, metadata=alice.metadata(), timeout=10)
        assert reply.WhichOneof("result") == "device_mismatch"
        mismatch = reply.device_mismatch
        assert [d.device_id for d in mismatch.missing_devices] == [bob_login["device_id"]]
        assert [d.device_id for d in mismatch.extra_devices] == [stranger]
        # A recipient without any published device is a precondition failure.
        request.recipient_account_id = str(uuid.uuid4())
        for ct in request.ciphertexts:
            ct.device.account_id = request.recipient_account_id
        with pytest.raises(grpc.RpcError) as err:
            stub.SendDirectMessage(request, metadata=alice.metadata(), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
