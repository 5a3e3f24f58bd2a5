"""GDPR end to end through the CLI: ``conclave export`` is complete, ``delete-account`` erases.

Export: an account that has used every feature (devices and sessions, keys, 1:1 and group
messages sent, received, pending, a file, account and conversation policies) exports with
``conclave export``; every item docs/data-map.md lists is mapped *explicitly* here to where
the export carries it (:data:`EXPORTED`), or to the reason it is not personal data of the
account (:data:`NOT_ACCOUNT_DATA`), or named as a known gap (:data:`GAPS`, reported by the
client engineer, not silently accepted). A data-map row none of these name fails the test,
so a new stored column cannot ship without deciding how it is exported.

Erasure: ``conclave delete-account --wait`` until every server reports completion, then
every column of every table of every schema (text, uuid, arrays, JSON, bytea, compared as
text and as raw bytes) and every message of every JetStream stream (subjects, headers,
payloads; the media object store is the stream ``OBJ_conclave_media``) is searched for the
account id and the username: nothing may remain. A positive control (bob, who was not
erased) must be found by the same search.

The stack is this module's own (the erasure scan reads every stored message, so a small
store keeps it quick); export and erasure go through retention to every other server.
"""

from __future__ import annotations

import json
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import nats
import pytest
from conclave.common.v1 import types_pb2
from conclave.media.v1 import media_pb2, media_pb2_grpc
from conclave.retention.v1 import retention_pb2, retention_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from nats.js.errors import NotFoundError

from tests.integration.client.test_cli_messaging import Device
from tests.integration.stack.conftest import (
    SERVICES,
    RunningStack,
    launcher_env,
    private_data_dir,
    start_stack,
)
from tests.integration.stack.test_data_map import DATA_MAP, covered_columns, covered_nats

pytestmark = pytest.mark.integration

# -- data map -> export ------------------------------------------------------------------

A = "account_id"  # the export's top-level account id stands for every account_id column
EXPORTED: dict[str, str] = {
    # auth
    "auth.accounts.account_id": "auth.account.account_id",
    "auth.accounts.username": "auth.account.username",
    "auth.accounts.password_hash": "auth.account.password.set",
    "auth.accounts.password_changed_at": "auth.account.password.changed_at",
    "auth.accounts.totp_secret": "auth.account.totp.enrolled",
    "auth.accounts.totp_confirmed_at": "auth.account.totp.confirmed_at",
    "auth.accounts.device_approval_required": "auth.account.device_approval_required",
    "auth.accounts.audit_log_ttl_seconds": "auth.account.audit_log_ttl_seconds",
    "auth.accounts.created_at": "auth.account.created_at",
    "auth.recovery_codes.account_id": A,
    "auth.recovery_codes.code_hash": "auth.account.recovery_codes[].used_at",
    "auth.recovery_codes.used_at": "auth.account.recovery_codes[].used_at",
    "auth.accounts.enrollment_token_hash": "auth.account.enrollment.token_outstanding",
    "auth.accounts.enrollment_expires_at": "auth.account.enrollment.expires_at",
    "auth.accounts.totp_last_step": "auth.account.totp.last_used_time_step",
    "auth.accounts.pending_totp_secret": "auth.account.totp.change_pending",
    "auth.accounts.pending_totp_expires_at": "auth.account.totp.change_expires_at",
    "auth.sessions.auth_time": "auth.sessions[].auth_time",
    "auth.sessions.access_expires_at": "auth.sessions[].access_expires_at",
    "auth.refresh_tokens.session_id": "auth.sessions[].refresh_tokens[].issued_at",
    "auth.refresh_tokens.issued_at": "auth.sessions[].refresh_tokens[].issued_at",
    "auth.refresh_tokens.used_at": "auth.sessions[].refresh_tokens[].used_at",
    "auth.rate_limit_buckets.bucket": "auth.rate_limit_buckets?",
    "auth.rate_limit_buckets.tokens": "auth.rate_limit_buckets?",
    "auth.rate_limit_buckets.updated_at": "auth.rate_limit_buckets?",
    "keys.rate_limit_buckets.bucket": "keys.rate_limit_buckets?",
    "keys.rate_limit_buckets.tokens": "keys.rate_limit_buckets?",
    "keys.rate_limit_buckets.updated_at": "keys.rate_limit_buckets?",
    "media.rate_limit_buckets.bucket": "media.rate_limit_buckets?",
    "media.rate_limit_buckets.tokens": "media.rate_limit_buckets?",
    "media.rate_limit_buckets.updated_at": "media.rate_limit_buckets?",
    "auth.devices.device_id": "auth.devices[].device_id",
    "auth.devices.account_id": A,
    "auth.devices.name": "auth.devices[].name",
    "auth.devices.platform": "auth.devices[].platform",
    "auth.devices.approval_state": "auth.devices[].approval_state",
    "auth.devices.created_at": "auth.devices[].created_at",
    "auth.devices.last_seen_at": "auth.devices[].last_seen_at",
    "auth.sessions.session_id": "auth.sessions[].session_id",
    "auth.sessions.account_id": A,
    "auth.sessions.device_id": "auth.sessions[].device_id",
    "auth.sessions.created_at": "auth.sessions[].created_at",
    "auth.sessions.last_used_at": "auth.sessions[].last_used_at",
    "auth.sessions.absolute_expires_at": "auth.sessions[].absolute_expires_at",
    "auth.sessions.ended_at": "auth.sessions[].ended_at",
    "auth.sessions.end_reason": "auth.sessions[].end_reason",
    "auth.audit_events.*": "auth.audit_log[].event_id",
    "auth.audit_events.event_id": "auth.audit_log[].event_id",
    "auth.audit_events.account_id": A,
    "auth.audit_events.kind": "auth.audit_log[].kind",
    "auth.audit_events.occurred_at": "auth.audit_log[].occurred_at",
    "auth.audit_events.session_id": "auth.audit_log[].session_id",
    "auth.audit_events.device_id": "auth.audit_log[].device_id",
    "auth.audit_events.device_name": "auth.audit_log[].device_name",
    "auth.audit_events.detail": "auth.audit_log[].detail",
    # keys
    "keys.devices.account_id": A,
    "keys.devices.device_id": "keys.devices[].device_id",
    "keys.devices.registration_id": "keys.devices[].registration_id",
    "keys.devices.signing_public_key": "keys.devices[].signing_public_key",
    "keys.devices.agreement_public_key": "keys.devices[].agreement_public_key",
    "keys.devices.leaf_index": "keys.devices[].leaf_index",
    "keys.devices.published_at": "keys.devices[].published_at",
    "keys.devices.low_notified_at": "keys.devices[].low_notified_at",
    "keys.signed_prekeys.account_id": A,
    "keys.signed_prekeys.device_id": "keys.signed_prekeys[].device_id",
    "keys.signed_prekeys.kind": "keys.signed_prekeys[].kind",
    "keys.signed_prekeys.key_id": "keys.signed_prekeys[].key_id",
    "keys.signed_prekeys.public_key": "keys.signed_prekeys[].public_key",
    "keys.signed_prekeys.signature": "keys.signed_prekeys[].signature",
    "keys.signed_prekeys.uploaded_at": "keys.signed_prekeys[].uploaded_at",
    "keys.signed_prekeys.replaced_at": "keys.signed_prekeys[].replaced_at",
    "keys.one_time_prekeys.account_id": A,
    "keys.one_time_prekeys.device_id": "keys.one_time_prekeys[].device_id",
    "keys.one_time_prekeys.kind": "keys.one_time_prekeys[].kind",
    "keys.one_time_prekeys.key_id": "keys.one_time_prekeys[].key_id",
    "keys.one_time_prekeys.public_key": "keys.one_time_prekeys[].public_key",
    "keys.one_time_prekeys.signature": "keys.one_time_prekeys[].signature",
    "keys.one_time_prekeys.uploaded_at": "keys.one_time_prekeys[].uploaded_at",
    "keys.kt_leaves.leaf_index": "keys.transparency_log_leaves[].leaf_index",
    "keys.kt_leaves.leaf_hash": "keys.transparency_log_leaves[].leaf_hash",
    "keys.kt_leaves.action": "keys.transparency_log_leaves[].action",
    "keys.kt_leaves.account_id": A,
    "keys.kt_leaves.device_id": "keys.transparency_log_leaves[].device_id",
    "keys.kt_leaves.signing_public_key": "keys.transparency_log_leaves[].signing_public_key",
    "keys.kt_leaves.agreement_public_key": "keys.transparency_log_leaves[].agreement_public_key",
    "keys.kt_leaves.timestamp_ms": "keys.transparency_log_leaves[].timestamp_ms",
    # messaging
    "messaging.groups.group_id": "messaging.groups[].group_id",
    "messaging.groups.membership_version": "messaging.groups[].membership_version",
    "messaging.groups.member_count": "messaging.groups[].member_count",
    "messaging.groups.max_members": "messaging.groups[].max_members",
    "messaging.groups.created_by": "messaging.groups[].created_by",
    "messaging.groups.encrypted_metadata": "messaging.groups[].encrypted_metadata",
    "messaging.groups.created_at": "messaging.groups[].created_at",
    "messaging.groups.updated_at": "messaging.groups[].updated_at",
    "messaging.members.added_by": "messaging.groups[].added_by",
    "messaging.members.group_id": "messaging.groups[].group_id",
    "messaging.members.account_id": A,
    "messaging.members.role": "messaging.groups[].role",
    "messaging.members.joined_at": "messaging.groups[].joined_at",
    "messaging.cursors.device_id": "messaging.device_cursors[].device_id",
    "messaging.cursors.account_id": A,
    "messaging.cursors.conversation": "messaging.device_cursors[].conversation",
    "messaging.cursors.acked_seq": "messaging.device_cursors[].acked_seq",
    "messaging.cursors.delivered_seq": "messaging.device_cursors[].delivered_seq",
    "messaging.cursors.updated_at": "messaging.device_cursors[].updated_at",
    "messaging.stored_messages.message_id": "messaging.sent_messages_stored[].message_id",
    "messaging.stored_messages.stream": "messaging.sent_messages_stored[].stream",
    "messaging.stored_messages.seq": "messaging.sent_messages_stored[].stream_seq",
    "messaging.stored_messages.subject": "messaging.sent_messages_stored[].to_device",
    "messaging.stored_messages.size_bytes": "messaging.sent_messages_stored[].size_bytes",
    "messaging.stored_messages.expires_at": "messaging.sent_messages_stored[].expire_time",
    "messaging.stored_messages.sender_account_id": A,
    "messaging.stored_messages.recipient_account_id": "messaging.pending_messages[].message_id",
    "messaging.stored_messages.named_account_ids": "messaging.pending_messages[].conversation",
    # media
    "media.blobs.id_hash": "media.blobs[].media_id_sha256",
    "media.blobs.account_id": A,
    "media.blobs.size_bytes": "media.blobs[].size_bytes",
    "media.blobs.chunk_size": "media.blobs[].chunk_size",
    "media.blobs.ciphertext_sha256": "media.blobs[].ciphertext_sha256",
    "media.blobs.state": "media.blobs[].state",
    "media.blobs.chunks_received": "media.blobs[].chunks_received",
    "media.blobs.created_at": "media.blobs[].created_at",
    "media.blobs.completed_at": "media.blobs[].completed_at",
    "media.blobs.expires_at": "media.blobs[].expires_at",
    # retention
    "retention.account_policies.account_id": A,
    "retention.account_policies.undelivered_message_ttl_seconds": (
        "retention.account_policy.undelivered_message_ttl_seconds"
    ),
    "retention.account_policies.disappearing_timer_seconds": (
        "retention.account_policy.disappearing_message_timer_seconds"
    ),
    "retention.account_policies.media_ttl_seconds": "retention.account_policy.media_ttl_seconds",
    "retention.account_policies.audit_log_ttl_seconds": (
        "retention.account_policy.audit_log_ttl_seconds"
    ),
    "retention.account_policies.updated_at": "retention.account_policy.updated_at",
    "retention.conversation_policies.conversation_key": (
        "retention.conversation_policies[].conversation"
    ),
    "retention.conversation_policies.group_id": "retention.conversation_policies[].conversation",
    "retention.conversation_policies.account_low": "retention.conversation_policies[].conversation",
    "retention.conversation_policies.account_high": (
        "retention.conversation_policies[].conversation"
    ),
    "retention.conversation_policies.undelivered_message_ttl_seconds": (
        "retention.conversation_policies[].undelivered_message_ttl_seconds"
    ),
    "retention.conversation_policies.disappearing_timer_seconds": (
        "retention.conversation_policies[].disappearing_message_timer_seconds"
    ),
    "retention.conversation_policies.media_ttl_seconds": (
        "retention.conversation_policies[].media_ttl_seconds"
    ),
    "retention.conversation_policies.updated_by": "retention.conversation_policies[].set_by_me",
    "retention.conversation_policies.updated_at": "retention.conversation_policies[].updated_at",
    "retention.group_members.group_id": "retention.group_memberships[].group_id",
    "retention.group_members.account_id": A,
    "retention.group_members.is_member": "retention.group_memberships[].is_member",
    "retention.group_members.is_admin": "retention.group_memberships[].is_admin",
    "retention.group_members.membership_version": (
        "retention.group_memberships[].membership_version"
    ),
    "retention.rate_limit_buckets.bucket": "retention.rate_limit_buckets?",
    "retention.rate_limit_buckets.tokens": "retention.rate_limit_buckets?",
    "retention.rate_limit_buckets.updated_at": "retention.rate_limit_buckets?",
    # NATS
    "nats.MSG_DIRECT": "messaging.pending_messages[].message_id",
    "nats.MSG_GROUPS": "messaging.sent_messages_stored[].group_id",
    "nats.conclave_media": "media.blobs[].size_bytes",
    "nats.OBJ_conclave_media": "media.blobs[].chunks_received",
    "nats.CONCLAVE_EVENTS": "retention.events[].event",
}
"""Data-map item -> where the export carries it (``?``: the section, possibly empty)."""

NOT_ACCOUNT_DATA: dict[str, str] = {
    "*.schema_migrations.*": "migration bookkeeping of the deployment, no user data",
    "*.outbox.*": "events queued for seconds until published; CONCLAVE_EVENTS is the stream",
    "auth.refresh_tokens.token_hash": "hashes of single-use secrets (times are exported)",
    "keys.one_time_prekeys.id": "claim-order sequence number",
    "keys.kt_nodes.level": "subtree hashes of the whole log, derived from leaf hashes",
    "keys.kt_nodes.node_index": "as above",
    "keys.kt_nodes.hash": "as above",
    "keys.kt_log_keys.key_id": "the log's public signing keys (deployment data)",
    "keys.kt_log_keys.public_key": "as above",
    "keys.kt_log_keys.first_used_at": "as above",
    "keys.kt_tree_heads.tree_size": "signed heads of the whole log (deployment data)",
    "keys.kt_tree_heads.key_id": "as above",
    "keys.kt_tree_heads.root_hash": "as above",
    "keys.kt_tree_heads.timestamp_ms": "as above",
    "keys.kt_tree_heads.signature": "as above",
    "messaging.members.join_seq": "stream position (no history for new members)",
    "retention.erasure_requests.*": "exists only once erasure started, when no session can export",
    "retention.erasure_progress.*": "as above",
}
"""Data-map items that are not data about the account (or cannot exist while it can export)."""

GAPS: dict[str, str] = {}
"""Data-map items that are about the account but absent from the export (reported)."""


def _is_listed(item: str, table: dict[str, str]) -> bool:
    schema, _, rest = item.partition(".")
    table_name = rest.split(".")[0]
    return (
        item in table
        or f"*.{rest}" in table
        or f"*.{table_name}.*" in table
        or f"{schema}.{table_name}.*" in table
    )


def data_map_items() -> list[str]:
    """Every column (``schema.table.column``) and stream (``nats.NAME``) the map lists."""
    text = DATA_MAP.read_text()
    items = [f"{s}.{c}" for s in SERVICES for c in sorted(covered_columns(text, s))]
    return items + [f"nats.{n}" for n in sorted(covered_nats(text))]


def resolve(document: Any, path: str) -> bool:
    """True when ``path`` (``a.b[].c``; ``?`` suffix: may be empty) exists in ``document``."""
    optional = path.endswith("?")
    parts = path.removesuffix("?").split(".")
    values = [document]
    for part in parts:
        is_list = part.endswith("[]")
        key = part.removesuffix("[]")
        values = [v[key] for v in values if isinstance(v, dict) and key in v]
        if is_list:
            values = [item for v in values if isinstance(v, list) for item in v]
        if not values:
            return optional and part == parts[-1] and not is_list
    return True


# -- the module's stack --------------------------------------------------------------------


def _own_stack(extra: dict[str, str] | None = None) -> Iterator[RunningStack]:
    base = private_data_dir()
    running = start_stack(base / "data", launcher_env(extra))
    yield running
    running.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def peered_stack() -> Iterator[RunningStack]:
    """This module's own stack (on free ports; the launcher points retention at its peers).

    Its own, so the erasure scan reads every message of every stream of a small store.
    """
    yield from _own_stack()


def _retention_stub(stack: RunningStack) -> retention_pb2_grpc.RetentionServiceStub:
    return retention_pb2_grpc.RetentionServiceStub(grpc.insecure_channel(stack.grpc["retention"]))


def _bearer(device: Device) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {device.credentials()['access_token']}"),)


def use_every_feature(
    stack: RunningStack, tmp_path: Path
) -> tuple[Device, Device, str, dict[str, Any]]:
    """alice: keys, 1:1 and group messages, a file, policies; a message read, one pending."""
    alice, bob = Device(stack, tmp_path / "alice"), Device(stack, tmp_path / "bob")
    for user in (alice, bob):
        user.register()
        user.login()
    alice.json("send", bob.username, "hello bob")
    group = alice.json("group", "create", "family", bob.username)
    alice.json("send", "#family", "hello family")
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8 not really a jpeg " * 500)
    sent_file = alice.json("send-file", bob.username, str(tmp_path / "photo.jpg"))
    bob.json("send", alice.username, "read this")
    assert [m["text"] for m in alice.listen(1)] == ["read this"]  # acked: a cursor
    bob.json("send", alice.username, "still waiting")  # pending for alice's device
    stub = _retention_stub(stack)
    day = Duration(seconds=86400)
    stub.SetAccountPolicy(
        retention_pb2.SetAccountPolicyRequest(
            policy=retention_pb2.RetentionPolicy(
                undelivered_message_ttl=Duration(seconds=7 * 86400)
            )
        ),
        metadata=_bearer(alice),
        timeout=10,
    )
    stub.SetConversationPolicy(
        retention_pb2.SetConversationPolicyRequest(
            conversation=types_pb2.ConversationRef(group_id=group["group_id"]),
            policy=retention_pb2.RetentionPolicy(disappearing_message_timer=day),
        ),
        metadata=_bearer(alice),
        timeout=10,
    )
    return alice, bob, str(group["group_id"]), sent_file


# -- export --------------------------------------------------------------------------------


def test_every_data_map_item_is_mapped_to_the_export() -> None:
    """The map's items each have a decision: exported, not account data, or a known gap."""
    undecided = [
        item
        for item in data_map_items()
        if not any(_is_listed(item, t) for t in (EXPORTED, NOT_ACCOUNT_DATA, GAPS))
    ]
    assert undecided == [], (
        "docs/data-map.md lists items with no export decision (add them to the export and "
        f"to EXPORTED here): {undecided}"
    )


def test_export_contains_everything_the_data_map_lists(
    peered_stack: RunningStack, tmp_path: Path
) -> None:
    alice, _, group_id, _ = use_every_feature(peered_stack, tmp_path)
    output = tmp_path / "out" / "export.json"
    output.parent.mkdir()
    summary = alice.json("export", "--output", str(output))
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    document = json.loads(output.read_bytes())
    assert summary["file"] == str(output) and summary["bytes"] == output.stat().st_size
    assert document["format"] == "conclave-export-v1"
    assert document["account_id"] == summary["account_id"] == alice.credentials()["account_id"]
    assert set(document["services"]) == set(SERVICES)
    assert summary["sections"]["auth"]["devices"] == 1
    assert summary["sections"]["media"]["blobs"] == 1

    missing = [
        f"{item} -> {path}"
        for item, path in EXPORTED.items()
        if path != A and not resolve(document["services"], path)
    ]
    assert missing == [], f"the export lacks: {missing}"
    assert document["services"]["auth"]["account"]["username"] == alice.username
    assert any(g["group_id"] == group_id for g in document["services"]["messaging"]["groups"])

    # The human form: a table of sections, the file named; a second export is rate limited
    # (one line, the retry time once).
    again = alice.run("export", "--output", str(tmp_path / "again.json"))
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert again.stderr.startswith("conclave: error: ") and again.stderr.count("retry in") == 1
    assert not (tmp_path / "again.json").exists()


# -- erasure -------------------------------------------------------------------------------


async def postgres_hits(stack: RunningStack, needles: list[str]) -> dict[str, list[str]]:
    """Needle -> ``schema.table.column`` whose value contains it (text or raw bytes)."""
    lines = (stack.data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    url = f"postgresql://postgres@/postgres?host={lines[4].strip()}&port={lines[3].strip()}"
    conn = await asyncpg.connect(url)
    hits: dict[str, list[str]] = {n: [] for n in needles}
    try:
        columns = await conn.fetch(
            "SELECT table_schema, table_name, column_name, data_type FROM "
            "information_schema.columns c JOIN information_schema.tables t "
            "USING (table_schema, table_name) WHERE t.table_type = 'BASE TABLE' AND "
            "table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3"
        )
        for col in columns:
            ident = f'"{col["table_schema"]}"."{col["table_name"]}"'
            name = f'"{col["column_name"]}"'
            where = f"{col['table_schema']}.{col['table_name']}.{col['column_name']}"
            for needle in needles:
                if col["data_type"] == "bytea":
                    raw = [needle.encode()]
                    with_uuid = _uuid_bytes(needle)
                    if with_uuid is not None:
                        raw.append(with_uuid)
                    query = f"SELECT count(*) FROM {ident} WHERE " + " OR ".join(
                        f"position(${i + 1}::bytea in {name}) > 0" for i in range(len(raw))
                    )
                    found = await conn.fetchval(query, *raw)
                else:
                    found = await conn.fetchval(
                        f"SELECT count(*) FROM {ident} WHERE {name}::text ILIKE $1",
                        f"%{needle}%",
                    )
                if found:
                    hits[needle].append(where)
    finally:
        await conn.close()
    return hits


def _uuid_bytes(text: str) -> bytes | None:
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        return None


async def nats_hits(stack: RunningStack, needles: list[str]) -> dict[str, list[str]]:
    """Needle -> ``STREAM#seq`` whose subject, headers or payload contain it."""
    nats_url = json.loads((stack.data_dir / "endpoints.json").read_text())["nats"]
    patterns: dict[str, list[bytes]] = {}
    for needle in needles:
        patterns[needle] = [needle.encode()]
        raw = _uuid_bytes(needle)
        if raw is not None:
            patterns[needle].append(raw)
    hits: dict[str, list[str]] = {n: [] for n in needles}
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            first, last = info.state.first_seq, info.state.last_seq
            for seq in range(first, last + 1) if info.state.messages else ():
                try:
                    msg = await js.get_msg(name, seq)
                except NotFoundError:
                    continue  # deleted or purged: not stored any more
                blob = (msg.subject or "").encode() + b"\n" + (msg.data or b"")
                for key, value in (msg.headers or {}).items():
                    blob += f"\n{key}: {value}".encode()
                for needle, forms in patterns.items():
                    if any(form in blob for form in forms):
                        hits[needle].append(f"{name}#{seq} ({msg.subject})")
    finally:
        await nc.close()
    return hits


async def test_delete_account_erases_the_account_everywhere(
    peered_stack: RunningStack, tmp_path: Path
) -> None:
    alice, bob, _, sent_file = use_every_feature(peered_stack, tmp_path)
    assert bob.totp is not None and alice.totp is not None
    account_id = alice.credentials()["account_id"]
    bob_id = bob.credentials()["account_id"]

    # Guards first: a wrong confirmation never reaches the server, nothing is removed.
    wrong = alice.run(
        "delete-account", "--confirm", bob.username, "--password-stdin", "--code", "000000",
        "--yes", stdin=alice.password + "\n",
    )  # fmt: skip
    assert wrong.returncode == 1
    assert (
        wrong.stderr
        == f"conclave: error: --confirm must be this account's username ({alice.username})\n"
    )
    no_yes = alice.run(
        "delete-account", "--confirm", alice.username, "--password-stdin", "--code", "000000",
        stdin=alice.password + "\n",
    )  # fmt: skip
    assert no_yes.returncode == 1 and "--yes" in no_yes.stderr
    assert (alice.home / "device.db").exists()

    # The login spent this step's code; the request re-checks a code, so the next one.
    code = alice.totp.at(time.time() + 30)
    started = time.monotonic()
    done = alice.run(
        "delete-account", "--confirm", alice.username, "--password-stdin", "--code", code,
        "--yes", "--wait", "--timeout", "60", "--json", stdin=alice.password + "\n",
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["status"]["state"] == "complete", reply
    assert {s["service"] for s in reply["status"]["services"]} == set(SERVICES)
    assert all(s["state"] == "complete" for s in reply["status"]["services"])
    assert {"credentials.json", "device.db", "client.db"} <= set(reply["local_state_removed"])
    assert not (alice.home / "credentials.json").exists()
    assert not (alice.home / "device.db").exists()
    print(f"delete-account --wait took {seconds:.1f} s")

    # erasure-status needs no session: the id is the credential.
    status = alice.json("erasure-status", reply["erasure_id"])
    assert status["state"] == "complete"
    table = alice.ok("erasure-status", reply["erasure_id"])
    assert "complete (5/5 servers done" in table.replace("\n", " ")
    unknown = alice.run("erasure-status", "A" * 43)
    assert unknown.returncode == 1 and unknown.stderr.startswith("conclave: error: ")

    # Nothing about alice anywhere; bob (not erased) is found by the very same search.
    needles = [account_id, alice.username, bob_id, bob.username]
    pg = await postgres_hits(peered_stack, needles)
    js = await nats_hits(peered_stack, needles)
    assert pg[bob_id] and pg[bob.username], "positive control: bob must be found in PostgreSQL"
    assert js[bob_id], "positive control: bob must be found in NATS"
    left = {
        needle: {"postgres": pg[needle], "nats": js[needle]}
        for needle in (account_id, alice.username)
        if pg[needle] or js[needle]
    }
    assert left == {}, f"erased account still stored: {left}"
    # alice's file is gone from the media server (bob holds its id, from her message).
    with grpc.insecure_channel(peered_stack.grpc["media"]) as channel:
        download = media_pb2_grpc.MediaServiceStub(channel).Download(
            media_pb2.DownloadRequest(media_id=sent_file["media_id"]),
            metadata=_bearer(bob),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError) as gone_blob:
            list(download)
    assert gone_blob.value.code() == grpc.StatusCode.NOT_FOUND
    # bob's session still works, and alice is gone from his point of view.
    gone = bob.run("send", alice.username, "anyone there?")
    assert (
        gone.returncode == 1
        and gone.stderr == f"conclave: error: no account named {alice.username}\n"
    )


FRESH_SECONDS = 4


@pytest.fixture
def short_fresh_stack() -> Iterator[RunningStack]:
    """A stack whose FRESH RPCs accept a sign-in of the last few seconds only."""
    yield from _own_stack({"CONCLAVE_FRESH_AUTH_SECONDS": str(FRESH_SECONDS)})


def test_export_re_authenticates_a_stale_session(
    short_fresh_stack: RunningStack, tmp_path: Path
) -> None:
    alice = Device(short_fresh_stack, tmp_path / "alice")
    alice.register()
    alice.login()
    assert alice.totp is not None
    time.sleep(FRESH_SECONDS + 1)
    output = tmp_path / "export.json"

    # Without credentials and without a terminal: one line saying what to add.
    stale = alice.run("export", "--output", str(output))
    assert stale.returncode == 1 and not output.exists()
    assert stale.stderr == (
        "conclave: error: this needs a recent password + code check: repeat with "
        "--password-stdin --code CODE\n"
    )
    # A wrong password is refused by auth, one line, nothing written.
    wrong = alice.run(
        "export", "--output", str(output), "--password-stdin", "--code", alice.totp.now(),
        stdin="not-the-password\n",
    )  # fmt: skip
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1 and not output.exists()
    # Password + a code not used yet: re-authenticated, then exported.
    fresh = alice.json(
        "export", "--output", str(output), "--password-stdin",
        "--code", alice.totp.at(time.time() + 30), stdin=alice.password + "\n",
    )  # fmt: skip
    assert fresh["account_id"] == alice.credentials()["account_id"]
    assert json.loads(output.read_bytes())["services"]["auth"]["account"]["username"] == (
        alice.username
    )
