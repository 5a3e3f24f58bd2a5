"""Logs are one JSON object per line, and secrets never reach them."""

from __future__ import annotations

import io
import json
import logging

import structlog
from conclave_kit.logs import REDACTED, configure_logging, get_logger
from conclave_kit.tokens import TokenSigner


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_are_json_with_service_and_request_id() -> None:
    """Every line parses as JSON and carries service, level, timestamp and bound context."""
    out = io.StringIO()
    configure_logging("auth", "debug", stream=out)
    structlog.contextvars.bind_contextvars(request_id="req-1")
    try:
        get_logger("t").info("hello", count=3)
        logging.getLogger("grpc._cython").warning("stdlib %s", "too")
    finally:
        structlog.contextvars.clear_contextvars()
    first, second = _lines(out)
    assert first["event"] == "hello"
    assert first["service"] == "auth"
    assert first["request_id"] == "req-1"
    assert first["level"] == "info"
    assert "timestamp" in first
    assert second["event"] == "stdlib too"
    assert second["service"] == "auth"


def test_planted_secrets_are_redacted() -> None:
    """Passwords, tokens, keys, TOTP URIs and ciphertext never appear in a log line."""
    out = io.StringIO()
    configure_logging("auth", "info", stream=out)
    token = TokenSigner.generate().mint(account_id="a", device_id="d", session_id="s")
    secret_b64 = "q8Zr0vWl3o2mJm8yX5bPp4gkQ1cF0s9eNw7tYuHaLdE="
    log = get_logger("t")
    log.info("login", password="hunter2-correct-horse", refresh_token="r" * 43)
    log.info("headers", metadata={"authorization": f"Bearer {token}", "user-agent": "cli"})
    log.info(f"received token {token} for upload {secret_b64}")
    log.info("enroll", uri="otpauth://totp/Conclave:alice?secret=JBSWY3DPEHPK3PXP")
    log.info("blob", body=b"\x00\x01ciphertext", items=[token], identity_key="abc")
    text = out.getvalue()
    for planted in (
        "hunter2-correct-horse",
        "r" * 43,
        token,
        secret_b64,
        "JBSWY3DPEHPK3PXP",
        "ciphertext",
    ):
        assert planted not in text
    lines = _lines(out)
    assert lines[0]["password"] == REDACTED
    assert lines[1]["metadata"] == {"authorization": REDACTED, "user-agent": "cli"}
    assert lines[4]["identity_key"] == REDACTED
    assert "upload" in str(lines[2]["event"])
