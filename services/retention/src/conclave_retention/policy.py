"""Policy values, validation against the deployment bounds, and resolution (pure logic).

A policy level (account or conversation) is a mapping from field name to whole seconds,
with absent fields inheriting. Resolution is per field: conversation, else account, else
the deployment default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from conclave.retention.v1 import retention_pb2 as R
from conclave_kit.errors import InvalidArgument
from google.protobuf.duration_pb2 import Duration

from conclave_retention.config import FIELDS, FieldBounds

Level = dict[str, int]  # field name -> seconds; absent = inherit
CONVERSATION_FIELDS = FIELDS[:3]  # audit_log_ttl is account-level only


def _duration(seconds: int) -> Duration:
    return Duration(seconds=seconds)


def to_proto(level: Mapping[str, int]) -> R.RetentionPolicy:
    """A RetentionPolicy with the set fields of ``level``."""
    policy = R.RetentionPolicy()
    for name, seconds in level.items():
        getattr(policy, name).CopyFrom(_duration(seconds))
    return policy


def _human(seconds: int) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds} s ({seconds // size} {unit})"
    return f"{seconds} s"


def validate(
    policy: R.RetentionPolicy, bounds: Mapping[str, FieldBounds], *, conversation: bool
) -> Level:
    """The set fields of ``policy`` as seconds, checked against the deployment bounds.

    Raises:
        InvalidArgument: A value is negative, not whole seconds, outside the bounds, or
            ``audit_log_ttl`` is set on a conversation policy (message names the field and
            the bound).
    """
    level: Level = {}
    for name in FIELDS:
        if not policy.HasField(name):  # type: ignore[arg-type]
            continue
        if conversation and name not in CONVERSATION_FIELDS:
            raise InvalidArgument(
                f"policy.{name} is account-level only; leave it unset for a conversation",
                reason="ACCOUNT_LEVEL_ONLY",
            )
        value: Duration = getattr(policy, name)
        if value.seconds < 0 or value.nanos < 0:
            raise InvalidArgument(f"policy.{name} must not be negative", reason="OUT_OF_BOUNDS")
        if value.nanos != 0:
            raise InvalidArgument(f"policy.{name} must be whole seconds", reason="OUT_OF_BOUNDS")
        seconds = int(value.seconds)
        b = bounds[name]
        if b.zero_means_off and seconds == 0:
            level[name] = 0
            continue
        if seconds < b.minimum:
            raise InvalidArgument(
                f"policy.{name} is below the deployment minimum of {_human(b.minimum)}"
                + (" (0 turns it off)" if b.zero_means_off else ""),
                reason="OUT_OF_BOUNDS",
            )
        if seconds > b.maximum:
            raise InvalidArgument(
                f"policy.{name} is above the deployment maximum of {_human(b.maximum)}",
                reason="OUT_OF_BOUNDS",
            )
        level[name] = seconds
    return level


@dataclass(frozen=True)
class Resolved:
    """An effective policy: a value and its source per field."""

    values: dict[str, int]
    sources: dict[str, int]

    def to_proto(self) -> R.EffectivePolicy:
        """The EffectivePolicy message."""
        effective = R.EffectivePolicy(policy=to_proto(self.values))
        for name, source in self.sources.items():
            setattr(effective, f"{name}_source", source)
        return effective


def resolve(
    bounds: Mapping[str, FieldBounds],
    account: Mapping[str, int] | None,
    conversation: Mapping[str, int] | None = None,
) -> Resolved:
    """Per field: conversation, else account, else deployment default.

    Stored values outside the current bounds (an operator narrowed them after the value
    was set) are clamped into the bounds at resolution time, so the policy in force is
    always within the deployment's minimum and maximum.
    """
    values: dict[str, int] = {}
    sources: dict[str, int] = {}
    for name in FIELDS:
        b = bounds[name]
        if conversation is not None and name in conversation:
            value, source = conversation[name], R.POLICY_SOURCE_CONVERSATION
        elif account is not None and name in account:
            value, source = account[name], R.POLICY_SOURCE_ACCOUNT
        else:
            value, source = b.default, R.POLICY_SOURCE_DEPLOYMENT
        if not (b.zero_means_off and value == 0):
            value = min(max(value, b.minimum), b.maximum)
        values[name], sources[name] = value, source
    return Resolved(values, sources)


def deployment(bounds: Mapping[str, FieldBounds]) -> R.GetDeploymentPolicyResponse:
    """Defaults, minimum and maximum as the contract returns them."""
    return R.GetDeploymentPolicyResponse(
        defaults=to_proto({n: b.default for n, b in bounds.items()}),
        minimum=to_proto({n: b.minimum for n, b in bounds.items()}),
        maximum=to_proto({n: b.maximum for n, b in bounds.items()}),
    )
