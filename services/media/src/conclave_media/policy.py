"""The uploader's media TTL, asked of retention over NATS request/reply.

Subject ``conclave.internal.retention.policy`` (docs/api.md): the request is a
``retention.v1.ResolvePolicyRequest`` for the uploader's account, the reply an
``EffectivePolicy``. Asked once per completed upload. When no retention server answers
(not deployed) or the request fails, the media server's configured TTL applies; a failure
never fails an upload, because the configured TTL is also the ceiling a policy can set.
"""

from __future__ import annotations

from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.logs import get_logger
from nats.aio.client import Client as NatsClient

from conclave_media.manager import MediaTtl

POLICY_SUBJECT = "conclave.internal.retention.policy"
_log = get_logger("conclave.media.policy")


def media_ttl_resolver(nats: NatsClient, timeout_seconds: float = 1.0) -> MediaTtl:
    """A ``MediaTtl`` callable for :class:`conclave_media.manager.MediaManager`."""

    async def media_ttl(account_id: str) -> float | None:
        request = R.ResolvePolicyRequest(account_id=account_id)
        try:
            reply = await nats.request(
                POLICY_SUBJECT, request.SerializeToString(), timeout=timeout_seconds
            )
            policy = R.EffectivePolicy.FromString(reply.data).policy
        except Exception as err:  # no responders, timeout, bad reply: the default applies
            _log.warning("media_ttl_lookup_failed", error_type=type(err).__name__)
            return None
        if not policy.HasField("media_ttl"):
            return None
        seconds = policy.media_ttl.ToTimedelta().total_seconds()
        return seconds if seconds > 0 else None

    return media_ttl
