"""Internal NATS request/reply: which retention policy applies to a message or a blob.

Subject ``conclave.internal.retention.policy`` (a contract, docs/api.md): the request is
a serialized ``retention.v1.ResolvePolicyRequest`` (the account whose data it is, and the
conversation as that account sees it), the reply a serialized ``EffectivePolicy`` resolved
exactly as ``GetEffectivePolicy`` would for that account, without a membership check: the
asking server (messaging for each message, media for each blob) has already authorised
its caller. Replicas answer as one queue group (``retention``), so each request is
answered once. It costs one indexed PostgreSQL round trip; messaging caches answers for
60 s.

A malformed request (bad protobuf, account id or conversation) is answered at once with
an empty payload (no EffectivePolicy: a bug in the asker, not a policy); when PostgreSQL
is unreachable there is no answer, so the asker times out and retries instead of applying
a default that may keep data longer than the policy in force.
"""

from __future__ import annotations

from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.errors import ConclaveError
from conclave_kit.logs import get_logger
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from conclave_retention.manager import RetentionManager
from conclave_retention.metrics import POLICY_RESOLUTIONS

POLICY_SUBJECT = "conclave.internal.retention.policy"
QUEUE = "retention"
_log = get_logger("conclave.retention.internal")


async def serve_policy_requests(nc: NatsClient, manager: RetentionManager) -> Subscription:
    """Subscribes to policy requests (call once NATS and Postgres are connected)."""

    async def answer(msg: Msg) -> None:
        try:
            request = R.ResolvePolicyRequest.FromString(msg.data)
            ref = request.conversation if request.HasField("conversation") else None
            effective = await manager.resolve_for(request.account_id, ref)
        except (ConclaveError, DecodeError):
            POLICY_RESOLUTIONS.labels("malformed").inc()
            await msg.respond(b"")
            return
        except Exception as err:  # Postgres unreachable and the like
            # No answer: the asker times out and retries rather than applying a
            # default that may be longer than the policy in force.
            _log.warning("policy_request_failed", error_type=type(err).__name__)
            return
        POLICY_RESOLUTIONS.labels("ok").inc()
        await msg.respond(effective.SerializeToString())

    sub = await nc.subscribe(POLICY_SUBJECT, queue=QUEUE, cb=answer)
    _log.info("serving_policy_requests", subject=POLICY_SUBJECT)
    return sub
