"""Everything the media service stores is listed in docs/data-map.md (its share of the
stack-wide check issue #7 asks for): every column of the real ``media`` schema, and the
object-store bucket with its subjects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.media.conftest import MediaHarness

pytestmark = pytest.mark.integration
DATA_MAP = Path(__file__).resolve().parents[3] / "docs" / "data-map.md"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    following = re.search(r"^##+ ", text[start + len(heading) :], re.MULTILINE)
    return text[start : start + len(heading) + (following.start() if following else len(text))]


async def test_every_stored_field_is_in_the_data_map(media: MediaHarness) -> None:
    """Columns come from information_schema of the migrated schema, not from a list kept in
    this test, so a new column without a data-map row fails here."""
    text = DATA_MAP.read_text()
    section = _section(text, "### media schema")
    rows = await media.runtime.resources.pool.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'media' AND table_name <> 'schema_migrations'"
    )
    assert rows
    missing = []
    for row in rows:
        table, column = row["table_name"], row["column_name"]
        lines = [line for line in section.splitlines() if line.startswith(f"| `media.{table}.")]
        if not any(f"`media.{table}.{column}`" in line or f"`.{column}`" in line for line in lines):
            missing.append(f"media.{table}.{column}")
    assert missing == []

    nats = _section(text, "## NATS JetStream")
    info = await media.runtime.resources.js.stream_info("OBJ_conclave_media")
    assert "`conclave_media`" in nats and "`OBJ_conclave_media`" in nats
    for subject in info.config.subjects or []:
        prefix = subject.removesuffix(">")  # $O.conclave_media.C. / $O.conclave_media.M.
        assert f"`{prefix}" in nats, subject
