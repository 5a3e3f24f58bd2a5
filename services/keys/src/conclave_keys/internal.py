"""Internal NATS request/reply: other servers ask the key directory for identity keys.

Subject ``conclave.internal.keys.identity`` (a contract, see docs/api.md): the request is a
serialized ``keys.v1.LookupIdentityKeysRequest`` (account, and optionally one device), the
reply a ``keys.v1.LookupIdentityKeysResponse`` with the current identity key and
registration id of that device (or of every published device of the account), or no
devices. Auth uses it to put the right identity key into a sealed-sender certificate;
messaging uses it to check that a 1:1 envelope addresses exactly the published devices.
Replicas answer as one queue group, so each request is answered once.
"""

from __future__ import annotations

import uuid

from conclave.keys.v1 import keys_pb2
from conclave_kit.logs import get_logger
from conclave_kit.runtime import Resources
from nats.aio.msg import Msg

from conclave_keys import store

IDENTITY_SUBJECT = "conclave.internal.keys.identity"
_log = get_logger("conclave.keys.internal")


async def serve_identity_requests(resources: Resources) -> None:
    """Subscribes to identity-key requests (call once NATS and Postgres are connected)."""

    async def answer(msg: Msg) -> None:
        reply = keys_pb2.LookupIdentityKeysResponse()
        try:
            request = keys_pb2.LookupIdentityKeysRequest.FromString(msg.data)
            uuid.UUID(request.account_id)
            if request.device_id:
                uuid.UUID(request.device_id)
        except Exception:  # malformed (bad protobuf or ids): answer "nothing known"
            await msg.respond(reply.SerializeToString())
            return
        async with resources.pool.acquire() as conn:
            rows = await store.published_devices(
                conn, request.account_id, request.device_id or None
            )
        for row in rows:
            reply.devices.add(
                device_id=str(row["device_id"]),
                registration_id=int(row["registration_id"]),
                identity_key=keys_pb2.IdentityKey(
                    signing_public_key=bytes(row["signing_public_key"]),
                    agreement_public_key=bytes(row["agreement_public_key"]),
                ),
            )
        await msg.respond(reply.SerializeToString())

    await resources.nats.subscribe(IDENTITY_SUBJECT, queue="keys", cb=answer)
    _log.info("serving_identity_requests", subject=IDENTITY_SUBJECT)
