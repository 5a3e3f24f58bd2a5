"""Messenger pieces without servers: content frames, ciphertext kinds, bundle conversion."""

from __future__ import annotations

import base64
import json

from conclave.keys.v1 import keys_pb2
from conclave.messaging.v1 import messaging_pb2 as M
from conclave_client.keys_client import publish_request
from conclave_client.messenger import (
    FRAME_VERSION,
    bundle_from_pb,
    ciphertext_kind,
    decode_frame,
    encode_frame,
)
from conclave_crypto import Device, DeviceAddress


def test_frames_round_trip_and_reject_unknown_versions() -> None:
    data = encode_frame("text", text="héllo", to="bob", **{"from": "alice"})
    assert json.loads(data) == {
        "v": FRAME_VERSION,
        "type": "text",
        "text": "héllo",
        "to": "bob",
        "from": "alice",
    }
    assert decode_frame(data) == {"type": "text", "text": "héllo", "to": "bob", "from": "alice"}
    assert decode_frame(b'{"v": 2, "type": "text", "text": "x"}') is None
    assert decode_frame(b'{"v": 1, "type": "text", "text": 5}') is None
    assert decode_frame(b"\xff\xfe") is None
    assert decode_frame(b"[1]") is None


def published_bundle(device: Device, with_one_time: bool) -> keys_pb2.PrekeyBundle:
    """What KeyService would hand out for ``device`` (from what login publishes)."""
    publish = publish_request(device, device.sessions.address.device_id)
    upload = device.prekey_upload(one_time=1, kem_one_time=1)
    ((key_id, public),) = upload.one_time_prekeys.items()
    one_time_kem = next(k for k in upload.kem_prekeys if not k.last_resort)
    bundle = keys_pb2.PrekeyBundle(
        device_id=device.sessions.address.device_id,
        registration_id=publish.registration_id,
        identity_key=publish.identity_key,
        signed_prekey=publish.signed_prekey,
        pq_prekey=keys_pb2.SignedKemPrekey(
            key_id=one_time_kem.key_id,
            public_key=one_time_kem.public,
            signature=one_time_kem.signature,
        ),
    )
    if with_one_time:
        bundle.one_time_prekey.CopyFrom(keys_pb2.EcPrekey(key_id=key_id, public_key=public))
    return bundle


def test_bundle_conversion_starts_a_session_both_ways() -> None:
    for with_one_time in (True, False):
        alice = Device.create("acct-a", "dev-a")
        bob = Device.create("acct-b", "dev-b")
        bundle = bundle_from_pb("acct-b", published_bundle(bob, with_one_time))
        assert (bundle.one_time_prekey is not None) is with_one_time
        alice.sessions.process_bundle(bundle)
        first = alice.sessions.encrypt(DeviceAddress("acct-b", "dev-b"), b"one")
        assert ciphertext_kind(first) == M.CIPHERTEXT_KIND_PREKEY
        assert bob.sessions.decrypt(DeviceAddress("acct-a", "dev-a"), first) == b"one"
        reply = bob.sessions.encrypt(DeviceAddress("acct-a", "dev-a"), b"two")
        assert ciphertext_kind(reply) == M.CIPHERTEXT_KIND_RATCHET
        assert alice.sessions.decrypt(DeviceAddress("acct-b", "dev-b"), reply) == b"two"


def test_sender_key_frame_carries_a_distribution() -> None:
    alice, bob = Device.create("a", "1"), Device.create("b", "1")
    key = base64.b64encode(alice.groups.distribution("g-1")).decode()
    frame = decode_frame(encode_frame("sender_key", group_id="g-1", group_name="team", key=key))
    assert frame is not None and frame["type"] == "sender_key"
    group = bob.groups.process_distribution(DeviceAddress("a", "1"), base64.b64decode(frame["key"]))
    assert group == "g-1"
    ciphertext = alice.groups.encrypt("g-1", b"hi all")
    assert bob.groups.decrypt(DeviceAddress("a", "1"), ciphertext) == ("g-1", b"hi all")
