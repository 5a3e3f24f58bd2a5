"""Request-field checks every service needs, answering INVALID_ARGUMENT."""

from __future__ import annotations

import uuid

from conclave_kit.errors import InvalidArgument


def parse_uuid(value: str, field: str, *, reason: str | None = None) -> str:
    """Returns the canonical (lowercase, hyphenated) form of a UUID field.

    Raises:
        InvalidArgument: ``value`` is not a UUID ("<field> must be a UUID").
    """
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(f"{field} must be a UUID", reason=reason) from None
