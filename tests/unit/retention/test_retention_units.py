"""Retention settings, policy validation and resolution (no servers)."""

from __future__ import annotations

import pytest
from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.config import ConfigError
from conclave_kit.errors import InvalidArgument
from conclave_retention.config import RetentionConfig
from conclave_retention.policy import resolve, validate
from google.protobuf.duration_pb2 import Duration

DAY = 86400


def test_defaults_match_the_contract() -> None:
    """30-day message and media TTLs, disappearing off (30 s … 4 weeks), 365-day audit log."""
    b = RetentionConfig.from_env({}).bounds
    assert b["undelivered_message_ttl"].default == 30 * DAY
    assert b["disappearing_message_timer"].default == 0
    assert (b["disappearing_message_timer"].minimum, b["disappearing_message_timer"].maximum) == (
        30,
        2_419_200,
    )
    assert b["media_ttl"].default == 30 * DAY
    assert b["audit_log_ttl"].default == 365 * DAY


def test_settings_are_read_and_checked() -> None:
    """Each variable is honoured; inconsistent ones are one-line errors naming them."""
    b = RetentionConfig.from_env(
        {
            "CONCLAVE_RETENTION_MEDIA_TTL_SECONDS": "86400",
            "CONCLAVE_RETENTION_MEDIA_TTL_MIN_SECONDS": "3600",
            "CONCLAVE_RETENTION_DISAPPEARING_TIMER_SECONDS": "3600",
        }
    ).bounds
    assert b["media_ttl"].default == DAY
    assert b["disappearing_message_timer"].default == 3600
    bad = [
        ({"CONCLAVE_RETENTION_MEDIA_TTL_SECONDS": "60"}, "CONCLAVE_RETENTION_MEDIA_TTL_SECONDS"),
        (
            {"CONCLAVE_RETENTION_AUDIT_LOG_TTL_MIN_SECONDS": str(800 * DAY)},
            "CONCLAVE_RETENTION_AUDIT_LOG_TTL_MIN_SECONDS",
        ),
        (
            {"CONCLAVE_RETENTION_DISAPPEARING_TIMER_MAX_SECONDS": str(40 * DAY)},
            "CONCLAVE_RETENTION_DISAPPEARING_TIMER",
        ),
        ({"CONCLAVE_RETENTION_MEDIA_TTL_MAX_SECONDS": "soon"}, "MEDIA_TTL_MAX_SECONDS"),
    ]
    for env, name in bad:
        with pytest.raises(ConfigError, match=name):
            RetentionConfig.from_env(env)


def test_validation_names_field_and_bound() -> None:
    """Out of bounds, negative, fractional and account-only fields are rejected."""
    bounds = RetentionConfig().bounds

    def check(conversation: bool = False, **fields: Duration) -> dict[str, int]:
        return validate(R.RetentionPolicy(**fields), bounds, conversation=conversation)

    assert check(disappearing_message_timer=Duration(seconds=0)) == {
        "disappearing_message_timer": 0
    }
    assert check(media_ttl=Duration(seconds=3600)) == {"media_ttl": 3600}
    with pytest.raises(InvalidArgument, match=r"policy\.media_ttl .*minimum of 3600 s"):
        check(media_ttl=Duration(seconds=3599))
    with pytest.raises(InvalidArgument, match="whole seconds"):
        check(media_ttl=Duration(seconds=4000, nanos=5))
    with pytest.raises(InvalidArgument, match="account-level only"):
        check(conversation=True, audit_log_ttl=Duration(seconds=DAY))


def test_resolution_is_per_field_and_within_bounds() -> None:
    """Conversation > account > deployment per field; stored values the operator's
    narrowed bounds no longer allow are brought within them."""
    bounds = RetentionConfig().bounds
    r = resolve(bounds, {"media_ttl": DAY, "audit_log_ttl": 10 * DAY}, {"media_ttl": 3600})
    assert r.values["media_ttl"] == 3600
    assert r.sources["media_ttl"] == R.POLICY_SOURCE_CONVERSATION
    assert r.sources["audit_log_ttl"] == R.POLICY_SOURCE_ACCOUNT
    assert r.sources["undelivered_message_ttl"] == R.POLICY_SOURCE_DEPLOYMENT
    narrowed = RetentionConfig.from_env({"CONCLAVE_RETENTION_MEDIA_TTL_MIN_SECONDS": "7200"})
    assert resolve(narrowed.bounds, {"media_ttl": 3600}).values["media_ttl"] == 7200
    assert (
        resolve(bounds, None, {"disappearing_message_timer": 0}).values[
            "disappearing_message_timer"
        ]
        == 0
    )
