"""The messaging service's JetStream layout, delivery tokens and history reads.

Two streams, both file storage (a send that returned ``accepted`` survives a restart):

* ``MSG_GROUPS``, subjects ``conclave.msg.group.<group_id>``: the group log. A group
  message is appended **once**, whatever the group size; devices keep a cursor into it.
* ``MSG_DIRECT``, subjects ``conclave.msg.device.<device_id>``: per-device mailboxes for
  1:1 envelopes (one copy per addressed device, each its own ciphertext).

Each stored message is a serialized ``messaging.v1.SubscribeResponse`` holding a
``message`` (or, in group logs, a ``membership_change``, appended through the outbox in
order with the messages) and no delivery token, which depends on the reader.
``Nats-Msg-Id`` makes retried sends idempotent within the streams' duplicate window.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

from conclave_kit.errors import InvalidArgument
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

GROUPS_STREAM = "MSG_GROUPS"
DIRECT_STREAM = "MSG_DIRECT"
GROUP_PREFIX = "conclave.msg.group."
DEVICE_PREFIX = "conclave.msg.device."
RING_PREFIX = "conclave.msg.ring."
ACKED_PREFIX = "conclave.msg.acked."
DIRECT = "direct"
MAX_TOKEN = 256
# Header on group-log messages: the group's size class at send (metrics label only).
SIZE_HEADER = "Conclave-Size-Class"


def group_subject(group_id: str) -> str:
    """Subject of a group's log."""
    return GROUP_PREFIX + group_id


def ring_subject(device_id: str) -> str:
    """Core-NATS subject rung after a copy for ``device_id`` is stored (not a stream)."""
    return RING_PREFIX + device_id


def acked_subject(device_id: str) -> str:
    """Core-NATS subject announcing a device's new cursors (payload: :func:`format_acked`)."""
    return ACKED_PREFIX + device_id


def format_acked(positions: dict[str, int]) -> bytes:
    """``conversation=seq`` pairs separated by ``;``."""
    return ";".join(f"{c}={s}" for c, s in positions.items()).encode()


def parse_acked(data: bytes) -> list[tuple[str, int]]:
    """The pairs of :func:`format_acked`; malformed parts are skipped."""
    pairs = []
    for part in data.decode(errors="replace").split(";"):
        conversation, _, seq = part.partition("=")
        if seq.isdigit() and (conversation == DIRECT or _is_uuid(conversation)):
            pairs.append((conversation, int(seq)))
    return pairs


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def device_subject(device_id: str) -> str:
    """Subject of a device's 1:1 mailbox."""
    return DEVICE_PREFIX + device_id


def locate(conversation: str, device_id: str) -> tuple[str, str]:
    """(stream, subject) holding a device's conversation (``direct`` or a group id)."""
    if conversation == DIRECT:
        return DIRECT_STREAM, device_subject(device_id)
    return GROUPS_STREAM, group_subject(conversation)


def stream_configs(
    replicas: int, dedup_seconds: float, ttl_seconds: float
) -> list[api.StreamConfig]:
    """Both message streams.

    Limits retention with ``max_age``: messages older than the undelivered-message TTL are
    dropped whether delivered or not; the duplicate window is the idempotency window.
    """
    common = {
        "storage": api.StorageType.FILE,
        "retention": api.RetentionPolicy.LIMITS,
        "max_age": ttl_seconds,
        "duplicate_window": dedup_seconds,
        "num_replicas": replicas,
        # 256 KiB ciphertext + ids and times; nats-server's default max_payload is 1 MiB.
        "max_msg_size": 300 * 1024,
    }
    return [
        api.StreamConfig(name=GROUPS_STREAM, subjects=[GROUP_PREFIX + "*"], **common),  # type: ignore[arg-type]
        api.StreamConfig(name=DIRECT_STREAM, subjects=[DEVICE_PREFIX + "*"], **common),  # type: ignore[arg-type]
    ]


def dedup_id(kind: str, sender_account_id: str | None, message_id: str, device_id: str = "") -> str:
    """``Nats-Msg-Id`` of one stored copy.

    For sealed-sender messages the sender is left out: the header is stored with the
    message, and sealed sender promises the sender is not recorded with it. A SHA-256 keeps
    the header short and free of raw ids.
    """
    raw = f"{kind}|{sender_account_id or ''}|{message_id}|{device_id}".encode()
    return hashlib.sha256(raw).hexdigest()


def delivery_token(device_id: str, conversation: str, seq: int) -> str:
    """Opaque token naming one delivered item: ``<device>.<conversation>.<seq>``."""
    return f"{device_id}.{conversation}.{seq}"


def parse_token(token: str, device_id: str) -> tuple[str, int]:
    """(conversation, seq) of a token issued to ``device_id``.

    Raises:
        InvalidArgument: Malformed, or issued to another device.
    """
    parts = token.split(".")
    try:
        if len(token) > MAX_TOKEN or len(parts) != 3:
            raise ValueError
        device, conversation, seq_text = parts
        if str(uuid.UUID(device)) != device_id:
            raise InvalidArgument(
                "delivery token belongs to another device", reason="FOREIGN_DELIVERY_TOKEN"
            )
        if conversation != DIRECT:
            conversation = str(uuid.UUID(conversation))
        seq = int(seq_text)
        if seq <= 0:
            raise ValueError
    except ValueError:
        raise InvalidArgument("malformed delivery token", reason="BAD_DELIVERY_TOKEN") from None
    return conversation, seq


async def read_after(
    js: JetStreamContext, stream: str, subject: str, after: int
) -> AsyncIterator[tuple[int, bytes]]:
    """Stored messages of ``subject`` with sequence above ``after``, oldest first.

    One JetStream "next message by subject" request per message: a backlog read, not the
    live path (live items arrive through the process's ordered consumers).
    """
    seq = after + 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return
        assert msg.seq is not None
        yield msg.seq, msg.data or b""
        seq = msg.seq + 1


async def last_seq(js: JetStreamContext, stream: str) -> int:
    """The stream's last sequence (0 when empty)."""
    info = await js.stream_info(stream)
    return int(info.state.last_seq)
