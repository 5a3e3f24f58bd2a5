"""Delivery tokens, dedup ids and metric size classes of the messaging service."""

from __future__ import annotations

import uuid

import pytest
from conclave_kit.errors import InvalidArgument
from conclave_messaging import streams
from conclave_messaging.metrics import size_class


def test_delivery_token_round_trip_and_device_binding() -> None:
    """A token names (conversation, seq) and is only accepted from its own device."""
    device, group = str(uuid.uuid4()), str(uuid.uuid4())
    token = streams.delivery_token(device, group, 42)
    assert len(token) <= streams.MAX_TOKEN
    assert streams.parse_token(token, device) == (group, 42)
    assert streams.parse_token(streams.delivery_token(device, "direct", 7), device) == (
        "direct",
        7,
    )
    with pytest.raises(InvalidArgument) as err:
        streams.parse_token(token, str(uuid.uuid4()))
    assert err.value.reason == "FOREIGN_DELIVERY_TOKEN"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "x",
        "a.b.c",
        "{d}.direct.0",
        "{d}.direct.-3",
        "{d}.nope.1",
        "{d}.direct.1.2",
        "{d}." * 99,
    ],
)
def test_malformed_tokens_are_invalid_argument(token: str) -> None:
    """Anything that is not device.conversation.positive-seq is rejected."""
    device = str(uuid.uuid4())
    with pytest.raises(InvalidArgument) as err:
        streams.parse_token(token.format(d=device), device)
    assert err.value.reason == "BAD_DELIVERY_TOKEN"


def test_dedup_id_leaves_sealed_senders_out() -> None:
    """Ids differ per sender and device; the sealed form does not depend on the sender."""
    message, device = str(uuid.uuid4()), str(uuid.uuid4())
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    assert streams.dedup_id("d", a, message, device) != streams.dedup_id("d", b, message, device)
    assert streams.dedup_id("d", None, message, device) == streams.dedup_id(
        "d", None, message, device
    )
    assert a not in streams.dedup_id("d", a, message, device)


def test_size_classes_match_the_metrics_contract() -> None:
    """group_size label values are the five classes docs/deploy.md lists."""
    assert [size_class(n) for n in (1, 2, 10, 11, 100, 101, 1000, 1001, 10_000)] == [
        "1",
        "2-10",
        "2-10",
        "11-100",
        "11-100",
        "101-1000",
        "101-1000",
        "1001+",
        "1001+",
    ]


def test_acked_announcements_round_trip_and_skip_garbage() -> None:
    """Cursor announcements parse back; malformed parts are ignored, not fatal."""
    group = str(uuid.uuid4())
    data = streams.format_acked({"direct": 4, group: 17})
    assert streams.parse_acked(data) == [("direct", 4), (group, 17)]
    assert streams.parse_acked(b"x;=3;direct=-1;direct=2;\xff=1") == [("direct", 2)]
