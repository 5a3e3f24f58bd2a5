"""Issue #7's data-map check: everything a running stack stores is listed in
docs/data-map.md.

The real stack (``conclave-run``) is started, then its PostgreSQL is asked for every
column of the five service schemas (``information_schema.columns``) and its NATS server
for every JetStream stream, key-value bucket and object-store bucket. Anything the map
does not list fails the test, so a new table, column, stream or bucket cannot ship without
its purpose, TTL and deleter written down.

How the map is read (tolerant of the styles in the file): a schema's rows are the table
rows under ``### <schema> schema`` plus those under ``### Every schema``. The first cell
of a row holds backticked names; the first names a column (``table.col``, optionally
prefixed by the schema, or ``<schema>.table.col``) or a whole table (``table.*``); further
names in the same cell (``col2``, ``.col2`` or ``table.col2``) are more columns of the
same table. Streams and buckets are covered by a backticked name in the first cell of a
row of the ``## NATS JetStream`` section (a bucket also by its stream, ``OBJ_<name>`` /
``KV_<name>``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncpg
import nats
import pytest

from tests.integration.stack.conftest import SERVICES, RunningStack

pytestmark = pytest.mark.integration
DATA_MAP = Path(__file__).resolve().parents[3] / "docs" / "data-map.md"
_NAME = re.compile(r"`([^`]+)`")


def _sections(text: str) -> dict[str, str]:
    """Heading text -> body, for every ``##`` and ``###`` heading."""
    parts = re.split(r"^(#{2,3} .+)$", text, flags=re.MULTILINE)
    return {parts[i].lstrip("#").strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _first_cells(body: str) -> list[str]:
    """The first cell of every markdown table row that is not a header or separator."""
    cells = []
    for line in body.splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-", " ", ":"}:
            continue
        cells.append(line.split("|")[1])
    return cells


def covered_columns(text: str, schema: str) -> set[str]:
    """``table.column`` (or ``table.*``) names the map lists for ``schema``."""
    sections = _sections(text)
    body = sections.get(f"{schema} schema", "") + "".join(
        b for heading, b in sections.items() if heading.startswith("Every schema")
    )
    covered: set[str] = set()
    for cell in _first_cells(body):
        table = None
        for name in _NAME.findall(cell):
            parts = name.split(".")
            if parts[0] in (schema, "<schema>"):
                parts = parts[1:]
            if len(parts) >= 2 and parts[0]:
                table, column = parts[0], parts[1]
            elif table is not None:
                column = parts[-1]
            else:
                continue
            covered.add(f"{table}.{column}")
    return covered


def covered_nats(text: str) -> set[str]:
    """Stream and bucket names in the first cells of the NATS section."""
    body = _sections(text).get("NATS JetStream", "")
    return {name for cell in _first_cells(body) for name in _NAME.findall(cell)}


def _database_url(data_dir: Path) -> str:
    """URL of the stack's running PostgreSQL, from its postmaster.pid (Unix socket)."""
    lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    port, socket_dir = lines[3].strip(), lines[4].strip()
    return f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"


def test_parser_reads_the_styles_the_map_uses() -> None:
    """Guards the parser itself: each style in the file counts, prose does not."""
    text = (
        "### x schema\n\n| Table.field | Purpose |\n|---|---|\n"
        "| `a.b` | one |\n| `x.c.d`, `.e` | prefixed, continued |\n"
        "| `f.g`, `h` | continued without dot |\n| `t.*` (`u`, `v`) | whole table |\n"
        "`p.q` in prose is not a row.\n"
    )
    assert covered_columns(text, "x") == {"a.b", "c.d", "c.e", "f.g", "f.h", "t.*", "t.u", "t.v"}


async def test_everything_stored_is_in_the_data_map(stack: RunningStack) -> None:
    """Every column of the five schemas and every stream/bucket is listed."""
    text = DATA_MAP.read_text()
    missing: list[str] = []

    conn = await asyncpg.connect(_database_url(stack.data_dir))
    try:
        rows = await conn.fetch(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = ANY($1::text[]) ORDER BY 1, 2, 3",
            list(SERVICES),
        )
    finally:
        await conn.close()
    assert {r["table_schema"] for r in rows} == set(SERVICES)  # every service migrated
    for schema in SERVICES:
        covered = covered_columns(text, schema)
        for row in rows:
            table, column = row["table_name"], row["column_name"]
            if row["table_schema"] != schema:
                continue
            if f"{table}.{column}" not in covered and f"{table}.*" not in covered:
                missing.append(f"{schema}.{table}.{column}")

    nats_url = json.loads((stack.data_dir / "endpoints.json").read_text())["nats"]
    nc = await nats.connect(nats_url)
    try:
        streams = await nc.jetstream().streams_info()
    finally:
        await nc.close()
    listed = covered_nats(text)
    assert streams
    for info in streams:
        name = info.config.name or ""
        bucket = re.sub(r"^(OBJ|KV)_", "", name)
        if name not in listed and not (bucket != name and bucket in listed):
            missing.append(f"NATS stream {name}")

    assert missing == [], "stored but not in docs/data-map.md: " + ", ".join(missing)
