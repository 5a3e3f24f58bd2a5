"""The servers never store plaintext: a whole conversation, then every stored byte scanned.

Three users talk through the real stack with the real CLI (separate processes, own
``CONCLAVE_HOME`` each): 1:1 text both ways, group text, a caption and a file of
distinctive bytes, under a group name and a file name that exist only on devices. While the
recipients have not fetched anything yet (so everything is still stored on the servers),
every file under the stack's data directory is read raw: PostgreSQL's data directory
(tables, WAL, after a CHECKPOINT), the NATS JetStream store (streams, object store), the
service logs. None of the plaintexts may appear, raw or base64-encoded.

A scan that finds nothing proves nothing unless it can find something, so positive
controls must be found by the same scan in the same files: the usernames (stored
unencrypted by auth, in PostgreSQL), the group id (a MSG_GROUPS subject) and a message id
(routing metadata inside the stored delivery), both in the NATS store. Afterwards every
message is fetched and compared, so what was scanned for is what was really sent.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import asyncpg
import pytest

from tests.integration.client.test_cli_messaging import Device
from tests.integration.stack.conftest import RunningStack

pytestmark = pytest.mark.integration

SCAN_SECONDS = 20.0
"""How long to wait for the positive controls to reach the disk (NATS writes behind)."""


def database_url(data_dir: Path) -> str:
    """URL of the stack's PostgreSQL, from its postmaster.pid (Unix socket)."""
    lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres@/postgres?host={lines[4].strip()}&port={lines[3].strip()}"


def scan(root: Path, needles: dict[str, bytes]) -> dict[str, set[str]]:
    """Label -> files under ``root`` (relative) whose raw bytes contain that needle."""
    pattern = re.compile(b"|".join(re.escape(n) for n in set(needles.values())))
    by_bytes: dict[bytes, list[str]] = {}
    for label, needle in needles.items():
        by_bytes.setdefault(needle, []).append(label)
    found: dict[str, set[str]] = {label: set() for label in needles}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            content = path.read_bytes()
        except OSError:  # a file removed while walking (WAL recycling, compaction)
            continue
        for match in set(pattern.findall(content)):
            for label in by_bytes[match]:
                found[label].add(str(path.relative_to(root)))
    return found


def variants(label: str, plaintext: bytes) -> dict[str, bytes]:
    """The plaintext raw and base64-encoded (a server storing it as text would do that)."""
    return {
        f"{label} (raw)": plaintext,
        f"{label} (base64)": base64.b64encode(plaintext)[:-4],  # unpadded tail varies
    }


def file_windows(label: str, data: bytes, width: int = 40) -> dict[str, bytes]:
    """Distinctive slices of a file: start, quarters, end; plus base64 of the start."""
    out = {
        f"{label} @{at}": data[at : at + width]
        for at in (0, len(data) // 4, len(data) // 2, 3 * len(data) // 4, len(data) - width)
    }
    out[f"{label} (base64)"] = base64.b64encode(data[:3000])
    return out


def in_any(found: dict[str, set[str]], labels: Iterable[str], where: str) -> bool:
    """True when every label was found in some file under ``where``."""
    return all(any(f.startswith(where) for f in found[label]) for label in labels)


async def test_no_plaintext_anywhere_in_the_stores(stack: RunningStack, tmp_path: Path) -> None:
    tag = secrets.token_hex(6)
    alice, bob, carol = (Device(stack, tmp_path / n) for n in ("alice", "bob", "carol"))
    for user in (alice, bob, carol):
        user.register()
        user.login()

    texts = {
        "alice->bob": f"alice to bob: the vault code is {tag}-7413",
        "bob->alice": f"bob to alice: meet at the old mill {tag}",
        "alice->group": f"group from alice: budget draft {tag} attached",
        "carol->group": f"group from carol: ünïcödé and emoji \U0001f510 {tag}",
        "caption": f"caption of the file {tag}",
    }
    group_name = f"skunkworks-{tag}"
    file_name = f"merger-plan-{tag}.pdf"
    file_data = bytearray(secrets.token_bytes(200_000))
    marker = f"FILE-PLAINTEXT-MARKER-{tag}".encode()
    for at in range(0, len(file_data) - len(marker), 50_000):
        file_data[at : at + len(marker)] = marker
    (tmp_path / file_name).write_bytes(bytes(file_data))

    direct = alice.json("send", bob.username, texts["alice->bob"])
    bob.json("send", alice.username, texts["bob->alice"])
    created = alice.json("group", "create", group_name, bob.username, carol.username)
    alice.json("send", f"#{group_name}", texts["alice->group"])
    sent_file = alice.json(
        "send-file", bob.username, str(tmp_path / file_name), "--text", texts["caption"]
    )
    # carol learns the group's name from alice's sender key only when she listens; she can
    # address it by id meanwhile.
    carol.json("send", f"#{created['group_id']}", texts["carol->group"])

    secrets_to_find: dict[str, bytes] = {}
    for label, text in texts.items():
        secrets_to_find.update(variants(label, text.encode()))
    secrets_to_find.update(variants("group name", group_name.encode()))
    secrets_to_find.update(variants("file name", file_name.encode()))
    secrets_to_find.update(file_windows("file", bytes(file_data)))
    secrets_to_find["file marker"] = marker
    controls = {
        "username alice (PostgreSQL)": alice.username.encode(),
        "username carol (PostgreSQL)": carol.username.encode(),
        "group id (NATS subject)": created["group_id"].encode(),
        "1:1 message id (NATS payload)": direct["id"].encode(),
    }

    # Flush PostgreSQL's dirty pages into the table files (WAL has them already).
    conn = await asyncpg.connect(database_url(stack.data_dir))
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()

    # NATS writes its file store behind the acknowledgement: rescan until the controls
    # are on disk, so the negative result below is about a store that holds our data.
    deadline = time.monotonic() + SCAN_SECONDS
    started = time.monotonic()
    while True:
        found = scan(stack.data_dir, {**controls, **secrets_to_find})
        pg_ok = in_any(found, [k for k in controls if "PostgreSQL" in k], "postgres/")
        nats_ok = in_any(found, [k for k in controls if "NATS" in k], "nats/")
        if (pg_ok and nats_ok) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    scanned = sum(p.stat().st_size for p in stack.data_dir.rglob("*") if p.is_file())
    took = time.monotonic() - started
    print(f"scanned {scanned / 1e6:.0f} MB under {stack.data_dir} in {took:.1f} s")
    assert pg_ok, {k: sorted(v)[:5] for k, v in found.items() if k in controls}
    assert nats_ok, {k: sorted(v)[:5] for k, v in found.items() if k in controls}
    leaks = {
        label: sorted(files) for label, files in found.items() if label not in controls and files
    }
    assert leaks == {}, f"plaintext found in server storage: {leaks}"

    # What was scanned for is what the recipients really get.
    got_bob = bob.listen(4)
    assert Counter(m["text"] for m in got_bob) == Counter(
        [texts["alice->bob"], texts["alice->group"], texts["caption"], texts["carol->group"]]
    )
    saved = next(m["file"] for m in got_bob if m.get("file"))
    assert Path(saved).read_bytes() == bytes(file_data) and Path(saved).name == file_name
    assert sent_file["file"]["name"] == file_name
    got_alice = alice.listen(2)
    assert Counter(m["text"] for m in got_alice) == Counter(
        [texts["bob->alice"], texts["carol->group"]]
    )
    got_carol = carol.listen(1)
    assert [m["text"] for m in got_carol] == [texts["alice->group"]]
    assert got_carol[0]["conversation"] == f"#{group_name}"
