"""``messenger.Client`` against fake stubs: device-list sync and the device_mismatch retry.

Real crypto on every side (conclave_crypto devices); only the three services are fakes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from conclave.auth.v1 import auth_pb2
from conclave.common.v1 import types_pb2
from conclave.keys.v1 import keys_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave_client.auth_client import AuthClient
from conclave_client.credentials import Credentials, CredentialStore
from conclave_client.endpoints import Endpoints
from conclave_client.keys_client import publish_request
from conclave_client.messenger import Client, decode_frame
from conclave_crypto import CryptoStore, Device, DeviceAddress

from tests.unit.client.fakes import rpc_error
from tests.unit.client.test_messenger import published_bundle

ALICE, BOB = "acct-alice", "acct-bob"


class FakeAuth:
    def LookupAccounts(self, request: auth_pb2.LookupAccountsRequest, **_: Any) -> Any:
        known = {ALICE: "alice", BOB: "bob"}
        refs = [
            auth_pb2.AccountRef(account_id=a, username=u)
            for a, u in known.items()
            if u in request.usernames or a in request.account_ids
        ]
        return auth_pb2.LookupAccountsResponse(accounts=refs)


class FakeKeys:
    def __init__(self, devices: dict[str, list[Device]]) -> None:
        self.devices = devices
        self.claims: list[tuple[str, str]] = []

    def LookupIdentityKeys(self, request: keys_pb2.LookupIdentityKeysRequest, **_: Any) -> Any:
        out = []
        for d in self.devices.get(request.account_id, []):
            p = publish_request(d, d.sessions.address.device_id)
            out.append(
                keys_pb2.DeviceIdentity(
                    device_id=d.sessions.address.device_id,
                    registration_id=p.registration_id,
                    identity_key=p.identity_key,
                )
            )
        return keys_pb2.LookupIdentityKeysResponse(devices=out)

    def ClaimPrekeyBundles(self, request: keys_pb2.ClaimPrekeyBundlesRequest, **_: Any) -> Any:
        self.claims.append((request.account_id, request.device_id))
        found = [
            published_bundle(d, True)
            for d in self.devices.get(request.account_id, [])
            if request.device_id in ("", d.sessions.address.device_id)
        ]
        if not found:
            raise rpc_error(grpc.StatusCode.NOT_FOUND, "no such device")
        return keys_pb2.ClaimPrekeyBundlesResponse(bundles=found)


class FakeMessaging:
    def __init__(self, mismatch: M.DeviceMismatch | None) -> None:
        self.mismatch = mismatch
        self.requests: list[M.SendDirectMessageRequest] = []

    def SendDirectMessage(self, request: M.SendDirectMessageRequest, **_: Any) -> Any:
        self.requests.append(request)
        if self.mismatch is not None:
            mismatch, self.mismatch = self.mismatch, None
            return M.SendDirectMessageResponse(device_mismatch=mismatch)
        return M.SendDirectMessageResponse(accepted=M.Accepted())


def client_home(tmp_path: Path) -> tuple[Path, AuthClient]:
    home = tmp_path / "alice"
    store = CredentialStore(home)
    later = datetime.now(UTC) + timedelta(hours=1)
    store.save(
        Credentials(
            account_id=ALICE,
            username="alice",
            device_id="a1",
            session_id="s1",
            access_token="token",
            access_token_expire_time=later,
            refresh_token="refresh",
            refresh_token_expire_time=later,
        )
    )
    with CryptoStore.open(home / "device.db") as crypto:
        crypto.save_device(Device.create(ALICE, "a1"))
    auth = AuthClient("127.0.0.1:9", store, stub=FakeAuth())  # type: ignore[arg-type]
    return home, auth


def test_device_mismatch_claims_the_missing_device_and_retries_once(tmp_path: Path) -> None:
    home, auth = client_home(tmp_path)
    bob1, bob2, phone = (
        Device.create(BOB, "b1"),
        Device.create(BOB, "b2"),
        Device.create(ALICE, "a2"),
    )
    # The directory shows b1 and alice's phone; the server knows b2 too (published meanwhile).
    keys = FakeKeys({BOB: [bob1], ALICE: [phone]})
    messaging = FakeMessaging(
        M.DeviceMismatch(missing_devices=[types_pb2.DeviceAddress(account_id=BOB, device_id="b2")])
    )
    client = Client(home, endpoints=Endpoints.resolve("127.0.0.1"), auth=auth)
    client._keys = keys  # type: ignore[assignment]
    client._msg = messaging  # type: ignore[assignment]
    keys.devices[BOB].append(bob2)  # claimable, though the lookup did not list it yet...
    keys_lookup = keys.LookupIdentityKeys

    def lookup_without_b2(request: keys_pb2.LookupIdentityKeysRequest, **kw: Any) -> Any:
        reply = keys_lookup(request, **kw)
        if request.account_id == BOB:
            del reply.devices[1:]
        return reply

    keys.LookupIdentityKeys = lookup_without_b2  # type: ignore[method-assign]
    try:
        sent = client.send_direct("bob", "hello")
    finally:
        client.close()

    first, second = messaging.requests
    assert first.message_id == second.message_id == sent.id
    assert {c.device.device_id for c in first.ciphertexts} == {"b1", "a2"}
    assert {c.device.device_id for c in second.ciphertexts} == {"b1", "b2", "a2"}
    assert sent.devices == 3
    assert (BOB, "b2") in keys.claims
    # Every device decrypts its copy of the retried envelope (the first was never stored).
    sender = DeviceAddress(ALICE, "a1")
    for target in (bob1, bob2, phone):
        wanted = target.sessions.address.device_id
        (ct,) = [c for c in second.ciphertexts if c.device.device_id == wanted]
        assert ct.kind == M.CIPHERTEXT_KIND_PREKEY
        frame = decode_frame(target.sessions.decrypt(sender, bytes(ct.ciphertext)))
        assert frame is not None
        assert (frame["type"], frame["text"], frame["to"]) == ("text", "hello", "bob")


def test_extra_devices_are_dropped(tmp_path: Path) -> None:
    home, auth = client_home(tmp_path)
    bob1, bob2 = Device.create(BOB, "b1"), Device.create(BOB, "b2")
    keys = FakeKeys({BOB: [bob1, bob2]})
    messaging = FakeMessaging(
        M.DeviceMismatch(extra_devices=[types_pb2.DeviceAddress(account_id=BOB, device_id="b2")])
    )
    client = Client(home, endpoints=Endpoints.resolve("127.0.0.1"), auth=auth)
    client._keys = keys  # type: ignore[assignment]
    client._msg = messaging  # type: ignore[assignment]
    try:
        client.send_direct("bob", "hi")
    finally:
        client.close()
    first, second = messaging.requests
    assert {c.device.device_id for c in first.ciphertexts} == {"b1", "b2"}
    assert {c.device.device_id for c in second.ciphertexts} == {"b1"}
