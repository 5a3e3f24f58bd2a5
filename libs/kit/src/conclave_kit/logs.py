"""Structured JSON logs: one object per line, request ids, and redaction of secrets.

Security rule: keys, tokens, passwords, TOTP codes and ciphertext never reach a log line.
The :func:`redact` processor enforces it twice: by field name (anything that sounds like a
secret is replaced) and by value shape (bearer tokens, JWTs, ``otpauth://`` URIs and long
base64/hex blobs are replaced wherever they appear, even inside messages).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "[REDACTED]"

# Field names whose values are secrets or content. Matched as substrings, case-insensitive,
# so `refresh_token`, `totp_code`, `identity_private_key` and `Authorization` all match.
_SECRET_NAME = re.compile(
    r"pass(word|phrase)?|secret|token|authorization|cookie|private|signing_key|"
    r"ciphertext|plaintext|payload|totp|otpauth|recovery|(^|_)code$|(^|_)key$|_keys?_|seed|salt",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"(?i:bearer\s+)\S+"  # Authorization header values
    # key=value secrets inside free text, e.g. exception messages and DSNs
    r"|(?i:pass(?:word|wd)?|secret|token|api[_-]?key)\s*[=:]\s*[^\s,;\"'&]+"
    r"|eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}"  # JWTs (our access tokens)
    r"|otpauth://\S+"  # TOTP enrollment URIs carry the shared secret
    r"|[A-Za-z0-9+/_-]{40,}={0,2}"  # long base64/base64url blobs: keys, ciphertext
    r"|\b[0-9a-fA-F]{40,}\b"  # long hex blobs
)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    if isinstance(value, bytes | bytearray | memoryview):
        # Raw bytes in a log are almost always key material or ciphertext.
        return REDACTED
    if isinstance(value, Mapping):
        return {k: REDACTED if _SECRET_NAME.search(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in value]
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Processor (structlog) that removes secrets by field name and by value shape."""
    for key in list(event_dict):
        if key in ("event", "exception"):
            event_dict[key] = _scrub(event_dict[key])
        elif _SECRET_NAME.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(service: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Routes structlog and the standard library (grpc, asyncpg, nats) to JSON lines.

    Args:
        service: Added to every line as ``service``.
        level: Minimum level name (debug, info, warning, error).
        stream: Where lines go; defaults to stderr.
    """
    out = stream or sys.stderr
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_service(service),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


def _add_service(service: str) -> Any:
    def processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
        event_dict.setdefault("service", service)
        return event_dict

    return processor


def get_logger(name: str | None = None) -> Any:
    """Returns a lazy structlog logger (with ``component=name`` when given).

    Lazy matters: module-level loggers are created at import time, before
    :func:`configure_logging` runs, and must still render with the final configuration.
    """
    return structlog.get_logger(component=name) if name else structlog.get_logger()
