"""Small helpers shared by tests."""

from __future__ import annotations

from typing import Any


def trailers(err: Any) -> dict[str, str]:
    """Trailing metadata of a failed gRPC call (sync or aio) as a plain dict."""
    return {str(key): str(value) for key, value in (err.trailing_metadata() or ())}
