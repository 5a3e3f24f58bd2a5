"""The ``conclave`` command-line interface.

Conventions every command keeps (later commands extend this parser):

* no prompts when the needed flags are given (``--password-stdin``, ``--code``);
* ``--json`` prints machine-readable output (one JSON document, or one object per line
  for streams);
* local state lives under ``$CONCLAVE_HOME`` (default ``~/.conclave``);
* server addresses come from ``--host`` or ``CONCLAVE_<SERVICE>_ADDR``, dev ports by default;
* any error exits non-zero with one line ``conclave: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import io
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import segno
from conclave_crypto import CryptoError
from rich import box
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from conclave_client.auth_client import (
    AuditEntry,
    AuthClient,
    ClientError,
    Registration,
    SessionInfo,
)
from conclave_client.credentials import CredentialsError, CredentialStore, normalise_username
from conclave_client.disappearing import Expired, ExpiryStore, Sweeper
from conclave_client.endpoints import Endpoints
from conclave_client.files import (
    DOWNLOADS_DIR,
    Attachment,
    PendingUpload,
    UploadStore,
    ciphertext_size,
    encrypt_file,
    guess_content_type,
    safe_filename,
    save_attachment,
)
from conclave_client.keys_client import (
    KeysClient,
    LogKeyError,
    Publication,
    pinned_log_key,
    status_json,
    verified_json,
)
from conclave_client.media_client import MediaClient
from conclave_client.messenger import Client, Message, PolicyChange
from conclave_client.retention_client import (
    CONVERSATION_POLICY_FIELDS,
    FRESH_AUTH_REQUIRED,
    INHERIT,
    POLICY_FIELDS,
    DeploymentPolicy,
    EffectivePolicy,
    ErasureStatus,
    RetentionClient,
    section_counts,
)
from conclave_client.status import check_all
from conclave_client.transparency import TransparencyError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing failure; printed as one line."""


def make_auth_client(args: argparse.Namespace) -> AuthClient:
    """The AuthService client for this invocation (tests replace this function).

    Args:
        args: Parsed arguments (``--host``).

    Returns:
        A client bound to ``$CONCLAVE_HOME``.
    """
    return AuthClient(Endpoints.resolve(args.host)["auth"], CredentialStore())


def make_keys_client(args: argparse.Namespace, auth: AuthClient) -> KeysClient:
    """The KeyService client for this invocation (tests replace this function).

    Args:
        args: Parsed arguments (``--host``).
        auth: The session to call with.

    Returns:
        A client bound to ``$CONCLAVE_HOME``.
    """
    return KeysClient(Endpoints.resolve(args.host)["keys"], auth)


def make_messenger(args: argparse.Namespace) -> Client:
    """The messaging client for this invocation (tests replace this function).

    Args:
        args: Parsed arguments (``--host``).

    Returns:
        A client bound to ``$CONCLAVE_HOME`` (session and device keys).
    """
    return Client(endpoints=Endpoints.resolve(args.host))


def make_media_client(args: argparse.Namespace, auth: AuthClient) -> MediaClient:
    """The MediaService client for this invocation (tests replace this function).

    Args:
        args: Parsed arguments (``--host``).
        auth: The session to call with.

    Returns:
        A client on the media service.
    """
    return MediaClient(Endpoints.resolve(args.host)["media"], auth)


def make_retention_client(args: argparse.Namespace, auth: AuthClient) -> RetentionClient:
    """The RetentionService client for this invocation (tests replace this function).

    Args:
        args: Parsed arguments (``--host``).
        auth: The session to call with.

    Returns:
        A client on the retention service.
    """
    return RetentionClient(Endpoints.resolve(args.host)["retention"], auth)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _iso(value: datetime | None) -> str | None:
    """RFC 3339 UTC with second precision, or None."""
    if value is None:
        return None
    return value.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _when(value: datetime | None) -> str:
    """Short UTC time for tables."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _read_password(args: argparse.Namespace, confirm: bool) -> str:
    """The password from one line of standard input, or from an interactive prompt.

    Never prompts when ``--password-stdin`` is given, and refuses to prompt without a
    terminal (so scripts fail instead of hanging).
    """
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CliError("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise CliError("no terminal to prompt for the password (use --password-stdin)")
    password = getpass.getpass("Password: ")
    if not password:
        raise CliError("empty password")
    if confirm and getpass.getpass("Repeat password: ") != password:
        raise CliError("the passwords do not match")
    return password


def _qr_text(uri: str) -> str | None:
    """The URI as a terminal QR code (Unicode half blocks), or None if stdout can't show it."""
    buffer = io.StringIO()
    segno.make(uri, error="m").terminal(out=buffer, compact=True, border=2)
    text = buffer.getvalue()
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return None
    return text


def _registration_json(reg: Registration) -> dict[str, Any]:
    return {
        "account_id": reg.account_id,
        "username": reg.username,
        "totp_secret": reg.totp_secret,
        "otpauth_uri": reg.otpauth_uri,
        "recovery_codes": list(reg.recovery_codes),
        "enrollment_expire_time": _iso(reg.enrollment_expire_time),
    }


def _cmd_register(args: argparse.Namespace) -> int:
    password = _read_password(args, confirm=True)
    with make_auth_client(args) as client:
        reg = client.register(args.username, password)
    if args.json:
        _print_json(_registration_json(reg))
        return EXIT_OK
    out = sys.stdout
    out.write(f"Account {reg.username} created (id {reg.account_id}).\n\n")
    out.write("Add it to your authenticator app: scan the QR code or type the secret.\n")
    qr = _qr_text(reg.otpauth_uri)
    out.write(qr if qr is not None else "(this terminal cannot show the QR code)\n")
    out.write(f"  secret: {reg.totp_secret}\n  URI:    {reg.otpauth_uri}\n\n")
    out.write(
        "Recovery codes: STORE THESE NOW in a safe place, apart from your authenticator.\n"
        "They are shown only this once; each one logs you in once if you lose the\n"
        "authenticator (they work after your first login confirms the authenticator).\n"
    )
    for code in reg.recovery_codes:
        out.write(f"  {code}\n")
    deadline = _when(reg.enrollment_expire_time)
    out.write(
        f"\nNext: conclave login {reg.username} --code CODE\n"
        f"(the first login confirms the authenticator; an account not confirmed by "
        f"{deadline} UTC is deleted)\n"
    )
    return EXIT_OK


def _cmd_login(args: argparse.Namespace) -> int:
    code: str | None = args.code
    recovery: str | None = args.recovery_code
    if code is None and recovery is None:
        raise CliError("give the second factor: --code CODE or --recovery-code CODE")
    password = _read_password(args, confirm=False)
    with make_auth_client(args) as client:
        result = client.login(
            args.username,
            password,
            totp_code=code.strip() if code is not None else None,
            recovery_code=recovery.strip() if recovery is not None else None,
            device_name=args.device_name,
        )
        published: Publication | None = None
        pending = result.approval_pending  # kit refuses a pending device's key calls
        if not pending:
            published, pending = _publish_device_keys(
                args, client, result.account_id, result.device_id
            )
    if args.json:
        _print_json(
            {
                "account_id": result.account_id,
                "username": result.username,
                "session_id": result.session_id,
                "device_id": result.device_id,
                "new_device": result.new_device,
                "approval_pending": result.approval_pending,
                "totp_enrollment_confirmed": result.totp_enrollment_confirmed,
                "recovery_codes_remaining": result.recovery_codes_remaining,
                "session_expire_time": _iso(result.session_expire_time),
                "keys": _publication_json(published, pending),
            }
        )
        return EXIT_OK
    device = "new device" if result.new_device else "device"
    print(f"Logged in as {result.username} ({device} {result.device_id}).")
    if published is not None:
        _print_publication(published)
    elif pending:
        print("This device's keys are not published until it is approved; log in again then.")
    if result.totp_enrollment_confirmed:
        print("Authenticator confirmed: your recovery codes are now active.")
    if recovery is not None:
        print(f"Recovery code used: {result.recovery_codes_remaining} left.")
    if result.approval_pending:
        print("This device waits for approval from one of your other devices.")
    if result.session_expire_time is not None:
        print(f"Session ends at the latest {_when(result.session_expire_time)} UTC.")
    return EXIT_OK


def _publish_device_keys(
    args: argparse.Namespace, auth: AuthClient, account_id: str, device_id: str
) -> tuple[Publication | None, bool]:
    """Publishes (or tops up) this device's keys right after a login.

    Returns:
        What was published, or None and True when the device awaits approval.

    Raises:
        CliError: The keys could not be published (the session stays; logging in again
            retries, keeping the keys generated so far).
    """
    try:
        with make_keys_client(args, auth) as keys:
            return keys.ensure_device_keys(account_id, device_id), False
    except ClientError as err:
        if err.reason == "DEVICE_APPROVAL_PENDING":
            return None, True
        raise CliError(
            f"logged in, but this device's keys were not published: {err} (log in again to retry)"
        ) from None
    except CryptoError as err:
        raise CliError(
            f"logged in, but this device's key state cannot be used: {err.__class__.__name__}"
        ) from None


def _publication_json(published: Publication | None, pending: bool) -> dict[str, Any]:
    if published is None:
        return {"published": False, "approval_pending": pending}
    return {
        "published": True,
        "action": published.action,
        "new_identity": published.new_identity,
        "fingerprint": published.fingerprint,
        "one_time_uploaded": published.one_time_uploaded,
        "pq_one_time_uploaded": published.pq_one_time_uploaded,
        "one_time_prekeys": published.one_time_prekeys,
        "pq_one_time_prekeys": published.pq_one_time_prekeys,
        "leaf_index": published.leaf_index,
        "signed_prekeys_rotated": published.signed_prekeys_rotated,
    }


def _print_publication(p: Publication) -> None:
    if p.action == "published":
        print(
            f"Published this device's keys ({p.one_time_prekeys} one-time X25519 and "
            f"{p.pq_one_time_prekeys} one-time ML-KEM-1024 prekeys).\n"
            f"  Identity fingerprint: {p.fingerprint}"
        )
    elif p.action == "topped_up":
        print(
            f"Added {p.one_time_uploaded} one-time X25519 and {p.pq_one_time_uploaded} "
            f"ML-KEM-1024 prekeys (now {p.one_time_prekeys} / {p.pq_one_time_prekeys})."
        )
    if p.signed_prekeys_rotated:
        print("Rotated the signed X25519 and last-resort ML-KEM-1024 prekeys.")


def _cmd_logout(args: argparse.Namespace) -> int:
    with make_auth_client(args) as client:
        ended_now = client.logout(remove_device=args.remove_device)
        if args.remove_device:
            with make_keys_client(args, client) as keys:
                keys.forget_device()
    if args.json:
        _print_json(
            {
                "logged_out": True,
                "device_removed": args.remove_device,
                "session_already_ended": not ended_now,
            }
        )
    elif ended_now:
        print("Logged out" + (" and removed this device." if args.remove_device else "."))
    else:
        print("Logged out (the session had already ended on the server).")
    return EXIT_OK


def _session_json(s: SessionInfo) -> dict[str, Any]:
    return {
        "id": s.session_id,
        "device": {"id": s.device_id, "name": s.device_name, "platform": s.platform},
        "current": s.current,
        "last_seen": _iso(s.last_seen),
        "created": _iso(s.created),
        "idle_expires": _iso(s.idle_expires),
        "expires": _iso(s.expires),
    }


def _cmd_sessions(args: argparse.Namespace) -> int:
    with make_auth_client(args) as client:
        sessions = client.list_sessions()
    if args.json:
        _print_json([_session_json(s) for s in sessions])
        return EXIT_OK
    table = Table(
        title="Sessions (* = this one; times UTC)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("", no_wrap=True)
    table.add_column("id", no_wrap=True, min_width=36)  # whole, for `sessions revoke ID`
    table.add_column("device")
    table.add_column("platform")
    table.add_column("last seen", no_wrap=True)
    for s in sessions:
        last_seen = s.last_seen.strftime("%Y-%m-%d %H:%M") if s.last_seen else "-"
        marker = "[green]*[/green]" if s.current else ""
        table.add_row(marker, s.session_id, escape(s.device_name), s.platform, last_seen)
    Console().print(table)
    return EXIT_OK


def _cmd_sessions_revoke(args: argparse.Namespace) -> int:
    with make_auth_client(args) as client:
        if args.others:
            count = client.revoke_other_sessions(remove_devices=args.remove_device)
            if args.json:
                _print_json({"revoked_count": count})
            else:
                print(f"Revoked {count} other session{'' if count == 1 else 's'}.")
            return EXIT_OK
        own = client.revoke_session(args.session_id, remove_device=args.remove_device)
    if args.json:
        _print_json({"revoked": args.session_id, "current": own})
    else:
        print(f"Revoked session {args.session_id}.")
        if own:
            print("That was this session: you are logged out.")
    return EXIT_OK


def _audit_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.event_id,
        "kind": e.kind,
        "time": _iso(e.time),
        "session_id": e.session_id,
        "device_id": e.device_id,
        "device_name": e.device_name,
        "detail": e.detail,
    }


def _cmd_audit(args: argparse.Namespace) -> int:
    with make_auth_client(args) as client:
        events = client.audit(limit=args.limit, kinds=args.kind or ())
    if args.json:
        _print_json([_audit_json(e) for e in events])
        return EXIT_OK
    table = Table(title="Security events, newest first (UTC)", title_justify="left")
    for column in ("time", "event", "device", "detail"):
        table.add_column(column)
    for e in events:
        table.add_row(_when(e.time), e.kind, escape(e.device_name or "-"), escape(e.detail))
    Console().print(table)
    return EXIT_OK


def _age(value: datetime | None) -> str:
    """How long ago, in the largest whole unit (for tables)."""
    if value is None:
        return "-"
    seconds = max(0, int((datetime.now(UTC) - value).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _cmd_keys_status(args: argparse.Namespace) -> int:
    with make_auth_client(args) as client, make_keys_client(args, client) as keys:
        devices = keys.prekey_status()
    if args.json:
        _print_json(status_json(devices, datetime.now(UTC)))
        return EXIT_OK
    table = Table(
        title="One-time prekeys left and signed prekey age per device (* = this one)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("", no_wrap=True)
    table.add_column("device", no_wrap=True, min_width=36)
    table.add_column("X25519", justify="right", no_wrap=True)
    table.add_column("ML-KEM", justify="right", no_wrap=True)
    table.add_column("signed age", justify="right", no_wrap=True)
    for d in devices:
        marker = "[green]*[/green]" if d.current else ""
        counts = []
        for value in (d.one_time_prekeys, d.pq_one_time_prekeys):
            text = str(value)
            counts.append(f"[red]{text}[/red]" if value < 10 else text)
        table.add_row(marker, d.device_id, *counts, _age(d.signed_prekey_uploaded))
    Console().print(table)
    if not devices:
        print("No published device (log in to publish this one).")
    elif any(d.low for d in devices):
        print("Some devices run low on one-time prekeys: logging in on them tops them up.")
    return EXIT_OK


def _cmd_keys_verify(args: argparse.Namespace) -> int:
    log_key = pinned_log_key(args.log_key)
    with make_auth_client(args) as client, make_keys_client(args, client) as keys:
        try:
            result = keys.verify(args.username, log_key)
        except TransparencyError as err:
            raise CliError(f"key transparency check failed for {args.username}: {err}") from None
    if args.json:
        _print_json(verified_json(result))
        return EXIT_OK
    if not result.devices:
        print(f"{result.username} has no published device: nothing to verify.")
        return EXIT_OK
    head = result.tree_head
    size = f" (log size {head.tree_size})" if head is not None else ""
    count = len(result.devices)
    print(
        f"Verified {count} device{'' if count == 1 else 's'} of {result.username} in the "
        f"key-transparency log{size}."
    )
    print("Compare each fingerprint with the one shown on that device:")
    for d in result.devices:
        print(f"  device {d.device_id}\n    {d.digest}")
    return EXIT_OK


def _cmd_keys_log_key(args: argparse.Namespace) -> int:
    with make_auth_client(args) as client, make_keys_client(args, client) as keys:
        key_id, public = keys.server_log_key()
    if args.json:
        _print_json({"key_id": key_id, "log_public_key": public.hex(), "verified": False})
        return EXIT_OK
    print(f"The key server announces log key {key_id}: {public.hex()}")
    print(
        "Pin it (CONCLAVE_KT_LOG_KEY) only after comparing it with the key your operator "
        "publishes elsewhere."
    )
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _cmd_status(args: argparse.Namespace) -> int:
    endpoints = Endpoints.resolve(args.host)
    results = check_all(endpoints, timeout=args.timeout)
    healthy = all(r.healthy for r in results)
    if args.json:
        print(json.dumps({"healthy": healthy, "services": [asdict(r) for r in results]}))
    else:
        table = Table(title="Conclave services", title_justify="left")
        for column in ("service", "address", "status", "latency"):
            table.add_column(column)
        for r in results:
            colour = "green" if r.healthy else "red"
            latency = f"{r.latency_ms:.1f} ms" if r.latency_ms is not None else "-"
            table.add_row(r.service, r.address, f"[{colour}]{r.status}[/{colour}]", latency)
        Console().print(table)
    return EXIT_OK if healthy else EXIT_ERROR


# -- files ---------------------------------------------------------------------------------


def _human_bytes(value: int) -> str:
    """1,234,567 -> ``1.2 MB`` (decimal units, as the progress bars show them)."""
    size = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{value} B"  # pragma: no cover - the loop always returns


def _stderr_console() -> Console:
    return Console(stderr=True)


@contextlib.contextmanager
def _transfer_progress(args: argparse.Namespace) -> Iterator[Progress | None]:
    """A progress display on stderr, only for a person at a terminal (never with --json)."""
    console = _stderr_console()
    if args.json or not console.is_terminal or getattr(args, "quiet", False):
        yield None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with progress:
        yield progress


def _tracker(progress: Progress | None, description: str, total: int) -> Callable[[int], None]:
    """A callback setting a new task's completed bytes (a no-op without a display)."""
    if progress is None:
        return lambda done: None
    task: TaskID = progress.add_task(description, total=total)
    return lambda done: progress.update(task, completed=done)


def _discard_upload(store: UploadStore, media: MediaClient, upload: PendingUpload) -> None:
    """Forgets an unfinished send here and (best effort) its blob on the server."""
    if upload.media_id:
        with contextlib.suppress(ClientError):
            media.delete(upload.media_id)
    store.remove(upload)


def _cmd_send_file(args: argparse.Namespace) -> int:
    target: str = args.target
    path = Path(args.path).expanduser()
    if not path.is_file():
        raise CliError(f"{args.path}: no such file")
    if not os.access(path, os.R_OK):
        raise CliError(f"{args.path}: not readable")
    with make_messenger(args) as client, make_media_client(args, client.auth) as media:
        store = UploadStore(client.home)
        for stale in store.all():  # the server drops incomplete uploads after 24 h
            if stale.created < time.time() - 23 * 3600 and not stale.uploaded:
                store.remove(stale)
        upload = store.find(target, path)
        if upload is not None and args.restart:
            _discard_upload(store, media, upload)
            upload = None
        if upload is None and args.resume:
            raise CliError(f"no interrupted send of {args.path} to {target} to resume")
        resumed_from: int | None = None
        started = time.monotonic()
        with _transfer_progress(args) as bar:
            if upload is None:
                size = path.stat().st_size
                quota = media.quota()
                needed = ciphertext_size(size)
                if quota.max_blob_bytes and needed > quota.max_blob_bytes:
                    raise CliError(
                        f"{args.path} is too large: {_human_bytes(needed)} encrypted, the "
                        f"server accepts at most {_human_bytes(quota.max_blob_bytes)}"
                    )
                name = args.name or path.name
                upload = store.new(
                    target, path, name, args.content_type or guess_content_type(name)
                )
                try:
                    pointer = encrypt_file(
                        path,
                        store.ciphertext(upload),
                        progress=_tracker(bar, "encrypting", size),
                    )
                except (OSError, ValueError) as err:
                    raise CliError(f"{args.path}: cannot encrypt: {err}") from None
                upload.pointer = base64.b64encode(pointer.encode()).decode()
                upload.ciphertext_size = store.ciphertext(upload).stat().st_size
                store.save(upload)
            if not upload.media_id:
                digest = upload.attachment().pointer.digest
                try:
                    upload.media_id, _ = media.create_upload(upload.ciphertext_size, digest)
                except ClientError as err:
                    if err.code not in (None, "UNAVAILABLE", "DEADLINE_EXCEEDED"):
                        store.remove(upload)  # refused (quota, size): nothing to resume
                    raise
                store.save(upload)
            elif not upload.uploaded:
                try:
                    resumed_from = media.status(upload.media_id).next_offset
                except ClientError as err:
                    if err.code != "NOT_FOUND":
                        raise
                    store.remove(upload)
                    raise CliError(
                        "the server no longer has the interrupted upload (expired): run the "
                        "same command again to start over"
                    ) from None
            if not upload.uploaded:
                track = _tracker(bar, "uploading", upload.ciphertext_size)
                try:
                    with store.ciphertext(upload).open("rb") as source:
                        media.upload(upload.media_id, source, progress=track)
                except ClientError as err:
                    if err.reason == "DIGEST_MISMATCH" or err.code == "NOT_FOUND":
                        store.remove(upload)  # the server discarded it: start over next time
                        raise CliError(f"upload failed: {err} (run the command again)") from None
                    raise CliError(
                        f"upload interrupted: {err} (run the same command again to resume)"
                    ) from None
                except OSError as err:
                    raise CliError(f"cannot read the encrypted copy: {err}") from None
                upload.uploaded = True
                store.save(upload)
        seconds = time.monotonic() - started
        attachment = upload.attachment()
        caption: str = args.text or ""
        if target.startswith("#"):
            sent = client.send_group(target, caption, attachment=attachment)
        else:
            sent = client.send_direct(target, caption, attachment=attachment)
        store.remove(upload)
    rate = upload.ciphertext_size / seconds / 1e6 if seconds > 0 else None
    if args.json:
        _print_json(
            {
                "id": sent.id,
                "to": target,
                "server_time": _iso(sent.server_time),
                "duplicate": sent.duplicate,
                "devices": sent.devices,
                "file": attachment.summary(),
                "media_id": attachment.media_id,
                "ciphertext_bytes": upload.ciphertext_size,
                "resumed_from": resumed_from,
                "seconds": round(seconds, 3),
                "mb_per_s": round(rate, 2) if rate is not None else None,
            }
        )
    else:
        resumed = f", resumed at {_human_bytes(resumed_from)}" if resumed_from else ""
        speed = f", {rate:.1f} MB/s" if rate else ""
        print(
            f"Sent {attachment.name} ({_human_bytes(attachment.size)}{resumed}{speed}) to "
            f"{target} as message {sent.id}."
        )
    return EXIT_OK


def _download(
    args: argparse.Namespace, client: Client, media: MediaClient, attachment: Attachment
) -> Path:
    """Fetches, verifies and saves one attachment; raises CliError with the reason."""
    directory = client.home / DOWNLOADS_DIR
    with _transfer_progress(args) as bar:
        # Progress counts ciphertext bytes: padding and tags make it a little larger.
        total = ciphertext_size(attachment.size)
        track = _tracker(bar, f"receiving {escape(safe_filename(attachment.name))}", total)

        def fetch(sink: Callable[[bytes], None]) -> None:
            media.download(
                attachment.media_id,
                sink,
                expected_digest=attachment.pointer.digest,
                progress=track,
            )

        try:
            return save_attachment(directory, attachment, fetch)
        except ClientError as err:
            raise CliError(str(err)) from None
        except CryptoError:
            raise CliError("the file failed its integrity check (digest or tag)") from None
        except OSError as err:
            raise CliError(f"cannot write to {directory}: {err.strerror or err}") from None


# -- account data ---------------------------------------------------------------------------


def _read_code(args: argparse.Namespace, prompt: str = "Authenticator code: ") -> str:
    """``--code``, else a prompt on a terminal; never prompts without one."""
    code: str | None = getattr(args, "code", None)
    if code:
        return code.strip()
    if not sys.stdin.isatty():
        raise CliError("no terminal to prompt for the authenticator code (use --code CODE)")
    entered = input(prompt).strip()
    if not entered:
        raise CliError("no code entered")
    return entered


def _fresh_call(args: argparse.Namespace, auth: AuthClient, call: Callable[[], Any]) -> Any:
    """Runs a FRESH call; re-authenticates once (password + code) if the server asks.

    The call is tried first so a session whose last sign-in is recent (a login a moment
    ago) does not spend a code; only FRESH_AUTH_REQUIRED leads to Reauthenticate, with
    ``--password-stdin``/``--code`` or prompts on a terminal.
    """
    try:
        return call()
    except ClientError as err:
        if err.reason != FRESH_AUTH_REQUIRED:
            raise
    if not (args.password_stdin or args.code or sys.stdin.isatty()):
        raise CliError(
            "this needs a recent password + code check: repeat with --password-stdin --code CODE"
        )
    password = _read_password(args, confirm=False)
    auth.reauthenticate(password, totp_code=_read_code(args))
    return call()


def _cmd_export(args: argparse.Namespace) -> int:
    with make_auth_client(args) as auth, make_retention_client(args, auth) as retention:
        username = auth.credentials().username
        with _transfer_progress(args) as bar:
            if bar is not None:
                task = bar.add_task("exporting", total=None)
                track: Callable[[int], None] = lambda done: bar.update(task, completed=done)  # noqa: E731
            else:
                track = lambda done: None  # noqa: E731
            export = _fresh_call(args, auth, lambda: retention.export(progress=track))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = Path(args.output or f"conclave-export-{username}-{stamp}.json").expanduser()
    _write_private(output, export.raw)
    rows = section_counts(export)
    if args.json:
        sections: dict[str, dict[str, int]] = {}
        for service, section, count in rows:
            sections.setdefault(service, {})[section] = count
        _print_json(
            {
                "file": str(output.resolve()),
                "bytes": len(export.raw),
                "format": export.document.get("format"),
                "account_id": export.document.get("account_id"),
                "generated_at": export.document.get("generated_at"),
                "sections": sections,
            }
        )
        return EXIT_OK
    table = Table(
        title=f"Export of {username}: what the servers hold about you",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("server", no_wrap=True)
    table.add_column("section")
    table.add_column("items", justify="right", no_wrap=True)
    previous = ""
    for service, section, count in rows:
        table.add_row(service if service != previous else "", escape(section), str(count))
        previous = service
    Console().print(table)
    print(f"Saved {_human_bytes(len(export.raw))} to {output} (readable only by you).")
    return EXIT_OK


def _write_private(path: Path, content: bytes) -> None:
    """Writes ``content`` to ``path`` atomically with mode 0600 (exports are personal data)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise CliError(f"cannot write {path}: {err.strerror or err}") from None
    path.chmod(0o600)  # os.replace keeps the temp file's mode; chmod covers odd umasks


def _erasure_json(status: ErasureStatus) -> dict[str, Any]:
    return {
        "erasure_id": status.erasure_id,
        "state": status.state,
        "request_time": _iso(status.request_time),
        "complete_time": _iso(status.complete_time),
        "services": [
            {"service": s.service, "state": s.state, "complete_time": _iso(s.complete_time)}
            for s in status.services
        ],
    }


def _erasure_table(status: ErasureStatus) -> Table:
    done = sum(1 for s in status.services if s.state == "complete")
    table = Table(
        title=f"Erasure {status.erasure_id}: {status.state} ({done}/{len(status.services)} "
        "servers done; times UTC)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("server", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("completed", no_wrap=True)
    for s in status.services:
        colour = "green" if s.state == "complete" else "yellow"
        table.add_row(s.service, f"[{colour}]{s.state}[/{colour}]", _when(s.complete_time))
    return table


def _wait_for_erasure(
    args: argparse.Namespace, retention: RetentionClient, erasure_id: str
) -> ErasureStatus:
    """Polls GetErasureStatus until complete; CliError after ``--timeout`` seconds."""
    deadline = time.monotonic() + args.timeout
    status = retention.erasure_status(erasure_id)
    console = Console()
    live = not args.json and console.is_terminal
    with (
        Live(_erasure_table(status), console=console, transient=False)
        if live
        else (contextlib.nullcontext()) as display
    ):
        while not status.complete:
            if time.monotonic() >= deadline:
                break
            time.sleep(args.interval)
            status = retention.erasure_status(erasure_id)
            if isinstance(display, Live):
                display.update(_erasure_table(status))
    if not status.complete:
        pending = ", ".join(s.service for s in status.services if s.state != "complete")
        raise CliError(
            f"erasure {erasure_id} not complete after {args.timeout:g} s (waiting for "
            f"{pending or 'the servers'}; check: conclave erasure-status {erasure_id})"
        )
    return status


LOCAL_STATE = ("credentials.json", "device.db", "device.lock", "client.db", "kt-heads.json")
"""What ``delete-account`` removes from ``$CONCLAVE_HOME`` (downloads/ stays: your files)."""


def _remove_local_state(home: Path) -> list[str]:
    removed = []
    if (home / "client.db").exists():
        # The disappearing-message schedule lives in client.db: once it is gone nothing
        # would delete those files at their expiry, so they go now, a little early.
        with ExpiryStore(home / "client.db", clock=lambda: math.inf) as schedule:
            swept = [item for item in schedule.sweep() if item.path is not None]
        if swept:
            removed.append(f"{len(swept)} file(s) of disappearing messages")
    for name in LOCAL_STATE:
        path = home / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(name)
    uploads = home / "uploads"
    if uploads.exists():
        shutil.rmtree(uploads, ignore_errors=True)
        removed.append("uploads/")
    return removed


def _cmd_delete_account(args: argparse.Namespace) -> int:
    home = CredentialStore().home
    with make_auth_client(args) as auth, make_retention_client(args, auth) as retention:
        username = auth.credentials().username
        if normalise_username(args.confirm) != username:
            raise CliError(f"--confirm must be this account's username ({username})")
        if not args.yes:
            if not sys.stdin.isatty() or args.password_stdin:
                raise CliError("add --yes to delete the account without a question")
            answer = input(
                f"Delete {username} and everything the servers hold about it, for good? Type yes: "
            )
            if answer.strip().lower() != "yes":
                raise CliError("not deleted")
        password = _read_password(args, confirm=False)
        code = _read_code(args)
        # The request carries password + code and is the step-up itself (retention checks
        # them with AuthService.Reauthenticate): however old the session, one code.
        erasure_id, requested = retention.delete_account(password, code, username)
        # The sessions are gone on the server; the keys and session files are useless now.
        removed = _remove_local_state(home)
        status: ErasureStatus | None = None
        if args.wait:
            if not args.json:
                print(
                    f"Account {username} deleted; erasure id {erasure_id}. "
                    "Waiting for every server..."
                )
            status = _wait_for_erasure(args, retention, erasure_id)
    if args.json:
        _print_json(
            {
                "erasure_id": erasure_id,
                "username": username,
                "request_time": _iso(requested),
                "local_state_removed": removed,
                "status": _erasure_json(status) if status is not None else None,
            }
        )
        return EXIT_OK
    if status is None:
        print(f"Account {username} deleted; erasure id {erasure_id}.")
        print(f"Follow the erasure with: conclave erasure-status {erasure_id}")
    else:
        if not Console().is_terminal:  # on a terminal the live table stays on screen
            Console().print(_erasure_table(status))
        print("Every server reports that nothing about the account remains.")
    print(
        f"Removed this device's local state from {home} ({', '.join(removed) or 'nothing left'}); "
        f"received files in {home / DOWNLOADS_DIR} were kept."
    )
    return EXIT_OK


def _cmd_erasure_status(args: argparse.Namespace) -> int:
    with make_auth_client(args) as auth, make_retention_client(args, auth) as retention:
        if args.wait:
            status = _wait_for_erasure(args, retention, args.erasure_id)
        else:
            status = retention.erasure_status(args.erasure_id)
    if args.json:
        _print_json(_erasure_json(status))
    elif not args.wait or not Console().is_terminal:  # else the live table stays on screen
        Console().print(_erasure_table(status))
    return EXIT_OK if status.complete or not args.wait else EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    """Returns the full argument parser (exposed for tests and docs)."""

    # Global options are accepted before or after the command (`conclave status --json`);
    # SUPPRESS keeps a subcommand's unset copy from overwriting the value given earlier. The
    # top level gets its own copies with real defaults: argparse shares action objects with
    # `parents`, so set_defaults() on the top level would reset the subcommands' copies too.
    def global_options(target: argparse.ArgumentParser, top_level: bool) -> None:
        target.add_argument(
            "--json",
            action="store_true",
            default=False if top_level else argparse.SUPPRESS,
            help="machine-readable output",
        )
        target.add_argument(
            "--host",
            default=None if top_level else argparse.SUPPRESS,
            help="host running all five services on their dev ports (50051-50055)",
        )

    common = argparse.ArgumentParser(add_help=False)
    global_options(common, top_level=False)
    parser = argparse.ArgumentParser(
        prog="conclave",
        description="Conclave end-to-end-encrypted messaging: command-line client.",
        epilog="State: $CONCLAVE_HOME (default ~/.conclave). "
        "Servers: --host or CONCLAVE_<SERVICE>_ADDR (default 127.0.0.1:50051-50055).",
    )
    global_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = sub.add_parser(
        "status", parents=[common], help="health of every service (exit 1 if any unhealthy)"
    )
    status.add_argument("--timeout", type=float, default=2.0, help="seconds per service")
    status.set_defaults(handler=_cmd_status)
    _add_auth_commands(sub, common)
    _add_keys_commands(sub, common)
    _add_messaging_commands(sub, common)
    _add_file_commands(sub, common)
    _add_account_data_commands(sub, common)
    _add_retention_commands(sub, common)
    return parser


def _password_option() -> argparse.ArgumentParser:
    password = argparse.ArgumentParser(add_help=False)
    password.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (no prompt)",
    )
    return password


def _add_file_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Files: send-file (listen saves received ones)."""
    send_file = sub.add_parser(
        "send-file",
        parents=[common],
        help="send a file end-to-end encrypted to USER or #GROUP",
        description="Encrypt PATH on this device (random key, padded, chunked AES-256-GCM), "
        "upload the ciphertext to the media server, then send USER or #GROUP a message "
        "carrying the media id, key, digest, size, name and type, encrypted like any "
        "message: the key never reaches a server. An interrupted send (network, Ctrl-C) "
        "resumes from the last stored chunk when the same command runs again. Receivers' "
        "`conclave listen` saves the file into $CONCLAVE_HOME/downloads/. Message format: "
        '{"v": 1, "type": "file", "from", ["to",] "text": CAPTION, "attachment": {"v": 1, '
        '"media_id", "pointer": BASE64(0x01 || key || sha256 || u64 size), "name", '
        '"content_type"}}.',
    )
    send_file.add_argument("target", metavar="USER|#GROUP")
    send_file.add_argument("path", metavar="PATH")
    send_file.add_argument("--text", metavar="CAPTION", help="a caption sent with the file")
    send_file.add_argument("--name", metavar="NAME", help="file name to send (default: PATH's)")
    send_file.add_argument(
        "--content-type", metavar="TYPE", help="MIME type to send (default: from the name)"
    )
    again = send_file.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="only continue an interrupted send of PATH to the target (error if none)",
    )
    again.add_argument(
        "--restart",
        action="store_true",
        help="discard an interrupted send of PATH and start over",
    )
    send_file.set_defaults(handler=_cmd_send_file)


def _add_account_data_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """GDPR: export, delete-account, erasure-status."""
    password = _password_option()
    code = argparse.ArgumentParser(add_help=False)
    code.add_argument("--code", metavar="CODE", help="current 6-digit code of your authenticator")

    export = sub.add_parser(
        "export",
        parents=[common, password, code],
        help="download everything the servers hold about your account (JSON)",
        description="RetentionService.ExportMyData: one conclave-export-v1 JSON document "
        "with every server's section, written with mode 0600; prints a summary. Needs a "
        "recent sign-in: if the last one is older than the server's fresh window, the "
        "password (--password-stdin) and a code (--code) re-authenticate first.",
    )
    export.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="where to write (default: ./conclave-export-USERNAME-TIME.json)",
    )
    export.set_defaults(handler=_cmd_export)

    wait = argparse.ArgumentParser(add_help=False)
    wait.add_argument(
        "--timeout", type=float, default=120.0, metavar="S", help="give up waiting after S s (120)"
    )
    wait.add_argument(
        "--interval", type=float, default=0.5, metavar="S", help="seconds between polls (0.5)"
    )

    delete = sub.add_parser(
        "delete-account",
        parents=[common, password, code, wait],
        help="erase your account and everything about it on every server",
        description="RetentionService.DeleteAccount: all sessions end at once and every "
        "server erases the account's data; prints the erasure id (keep it: it is the only "
        "way to follow progress). Then removes this device's local state (credentials, "
        "device keys, message state) from $CONCLAVE_HOME; downloads/ is kept.",
    )
    delete.add_argument(
        "--confirm",
        metavar="USERNAME",
        required=True,
        help="your username, typed again as a guard",
    )
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.add_argument(
        "--wait", action="store_true", help="show per-server progress until complete"
    )
    delete.set_defaults(handler=_cmd_delete_account)

    status = sub.add_parser(
        "erasure-status",
        parents=[common, wait],
        help="per-server progress of an account erasure (no login needed)",
    )
    status.add_argument("erasure_id", metavar="ID")
    status.add_argument(
        "--wait", action="store_true", help="poll until complete (exit 1 on timeout)"
    )
    status.set_defaults(handler=_cmd_erasure_status)


def _add_messaging_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Messaging: send, listen, group create|add|remove|members|list."""
    send = sub.add_parser(
        "send",
        parents=[common],
        help="send an end-to-end-encrypted message to USER or #GROUP",
        description="Encrypt TEXT for every device of USER (and your other devices), or "
        "once with your sender key for #GROUP (a group created or joined on this device).",
    )
    send.add_argument("target", metavar="USER|#GROUP")
    send.add_argument("text", metavar="TEXT")
    send.set_defaults(handler=_cmd_send)

    listen = sub.add_parser(
        "listen",
        parents=[common],
        help="print messages as they arrive (waiting ones first)",
        description="Decrypt and print this device's messages: first those waiting, then "
        "live ones. Each is acknowledged once printed, so it is not printed again. "
        "Received files are saved into $CONCLAVE_HOME/downloads/. In a conversation with a "
        "disappearing timer, messages show when they disappear, and files saved for them "
        "are deleted at that time (at start and while listening); timer changes are shown "
        "as they happen.",
    )
    listen.add_argument(
        "--count",
        type=_positive_int,
        metavar="N",
        help="exit after N messages (policy changes and deletions are not counted)",
    )
    listen.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="exit after S seconds (exit 1 if --count messages did not arrive by then)",
    )
    listen.set_defaults(handler=_cmd_listen)

    group = sub.add_parser("group", parents=[common], help="create groups, manage members")
    group_sub = group.add_subparsers(dest="group_command", metavar="ACTION", required=True)
    create = group_sub.add_parser(
        "create", parents=[common], help="create a group (you are its admin)"
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument("users", metavar="USER", nargs="*", help="initial members")
    create.set_defaults(handler=_cmd_group_create)
    for action, text in (("add", "add members (admins)"), ("remove", "remove members (admins)")):
        cmd = group_sub.add_parser(action, parents=[common], help=text)
        cmd.add_argument("name", metavar="NAME")
        cmd.add_argument("users", metavar="USER", nargs="+")
        cmd.set_defaults(handler=_cmd_group_change, group_action=action)
    members = group_sub.add_parser("members", parents=[common], help="list a group's members")
    members.add_argument("name", metavar="NAME")
    members.set_defaults(handler=_cmd_group_members)
    listing = group_sub.add_parser("list", parents=[common], help="groups known on this device")
    listing.set_defaults(handler=_cmd_group_list)


def _cmd_send(args: argparse.Namespace) -> int:
    target: str = args.target
    with make_messenger(args) as client:
        if target.startswith("#"):
            sent = client.send_group(target, args.text)
        else:
            sent = client.send_direct(target, args.text)
    if args.json:
        _print_json(
            {
                "id": sent.id,
                "to": target,
                "server_time": _iso(sent.server_time),
                "duplicate": sent.duplicate,
                "devices": sent.devices,
            }
        )
    else:
        print(f"Sent {sent.id} to {target}.")
    return EXIT_OK


def _printable(text: str) -> str:
    """``text`` without control characters (other than newline and tab).

    Message texts, captions, file and group names come from other people: an escape
    sequence in them must not drive the reader's terminal.
    """
    return "".join(
        ch if ch in "\n\t" or unicodedata.category(ch)[0] != "C" else "\ufffd" for ch in text
    )


_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def _duration_text(seconds: int) -> str:
    """``seconds`` in the largest unit that divides it exactly: ``30 s``, ``1 h``, ``28 d``."""
    for unit, size in _UNITS:
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _timer_text(seconds: int) -> str:
    """A disappearing timer for people: ``off`` or a duration."""
    return "off" if seconds <= 0 else _duration_text(seconds)


def _remaining_text(seconds: float) -> str:
    """Time left, rounded for a glance: ``30 s``, ``5 min``, ``2 h``, ``3 d``."""
    if seconds < 120:
        return f"{max(round(seconds), 0)} s"
    if seconds < 2 * 3600:
        return f"{round(seconds / 60)} min"
    if seconds < 2 * 86400:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} d"


def _disappears_hint(message: Message) -> str:
    if not message.disappearing or message.expire_time is None:
        return ""
    left = (message.expire_time - datetime.now(UTC)).total_seconds()
    if left <= 0:
        return " (disappeared)"
    return f" (disappears in {_remaining_text(left)})"


def _print_policy_change(change: PolicyChange, as_json: bool) -> None:
    if as_json:
        print(json.dumps(change.to_json()), flush=True)
        return
    when = change.change_time.strftime("%H:%M:%S") if change.change_time else "--:--:--"
    print(
        _printable(
            f"{when} {change.conversation} disappearing messages: "
            f"{_timer_text(change.timer_seconds)}, set by {change.changed_by}"
        ),
        flush=True,
    )


def _print_expired(item: Expired, as_json: bool) -> None:
    """Reports a file deleted because its message disappeared (records alone are silent)."""
    if item.path is None:
        return
    if as_json:
        value = {
            "type": "disappeared",
            "id": item.message_id,
            "file": str(item.path),
            "expire_time": _iso(datetime.fromtimestamp(item.expire_time, UTC)),
        }
        print(json.dumps(value), flush=True)
        return
    when = datetime.fromtimestamp(item.expire_time, UTC).strftime("%H:%M:%S")
    print(_printable(f"{when} [disappeared] {item.path} deleted"), flush=True)


def _print_message(
    message: Message, as_json: bool, saved: Path | None = None, error: str | None = None
) -> None:
    if as_json:
        value = message.to_json()
        if message.is_file:
            value["file"] = str(saved) if saved is not None else None
            if error:
                value["file_error"] = error
        print(json.dumps(value), flush=True)
        return
    when = message.server_time.strftime("%H:%M:%S") if message.server_time else "--:--:--"
    if message.group_id:
        where = f"{message.conversation} {message.sender}"
    elif message.outgoing:
        where = f"{message.sender} -> {message.conversation}"
    else:
        where = message.sender
    if message.is_file:
        a = message.attachment
        what = f"[file] {safe_filename(a.name)} ({_human_bytes(a.size)})" if a else "[file]"
        where_saved = f" saved as {saved}" if saved is not None else " (not saved)"
        caption = f" {message.text}" if message.text else ""
        hint = _disappears_hint(message)
        print(_printable(f"{when} {where}: {what}{where_saved}{caption}{hint}"), flush=True)
        return
    print(_printable(f"{when} {where}: {message.text}{_disappears_hint(message)}"), flush=True)


def _cmd_listen(args: argparse.Namespace) -> int:
    shown = 0
    # The sweeper thread prints too: one line at a time.
    output = threading.Lock()

    def expired(item: Expired) -> None:
        with output:
            _print_expired(item, args.json)

    with make_messenger(args) as client, contextlib.ExitStack() as closing:
        # What fell due while nothing was running goes first, then the sweeper keeps
        # deleting as messages expire while we wait on the stream.
        for item in client.expiry.sweep():
            expired(item)
        closing.enter_context(Sweeper(client.expiry, expired))
        reported = 0
        media: MediaClient | None = None
        for received in client.listen(count=args.count, timeout=args.timeout, policy_changes=True):
            if isinstance(received, PolicyChange):
                with output:
                    _print_policy_change(received, args.json)
                continue
            message = received
            saved: Path | None = None
            error: str | None = None
            if message.attachment is not None and message.expired:
                # Its plaintext must not outlive expire_time: never fetched.
                error = "the message disappeared before the file could be saved"
            elif message.attachment is not None:
                if media is None:
                    media = closing.enter_context(make_media_client(args, client.auth))
                try:
                    # Before the message is acknowledged: a crash here redelivers it.
                    saved = _download(args, client, media, message.attachment)
                except CliError as err:
                    error = str(err)
                if saved is not None and message.disappearing and message.expire_time:
                    client.expiry.track(message.id, message.expire_time.timestamp(), saved)
            elif message.is_file:
                error = message.attachment_error
            with output:
                if error:
                    name = safe_filename(message.attachment.name) if message.attachment else "file"
                    print(
                        f"conclave: error: message {message.id}: {name} not saved: {error}",
                        file=sys.stderr,
                        flush=True,
                    )
                _print_message(message, args.json, saved, error)
                for message_id, reason in client.failures[reported:]:
                    print(f"conclave: warning: message {message_id} {reason}", file=sys.stderr)
            shown += 1
            reported = len(client.failures)
        for message_id, reason in client.failures[reported:]:
            print(f"conclave: warning: message {message_id} {reason}", file=sys.stderr)
    if args.count is not None and shown < args.count:
        raise CliError(f"{shown} of {args.count} messages arrived within {args.timeout:g} s")
    return EXIT_OK


def _cmd_group_create(args: argparse.Namespace) -> int:
    with make_messenger(args) as client:
        group_id = client.create_group(args.name, args.users)
    name = args.name.removeprefix("#")
    if args.json:
        _print_json({"name": name, "group_id": group_id, "members": args.users})
    else:
        print(f"Created group #{name} ({group_id}).")
    return EXIT_OK


def _cmd_group_change(args: argparse.Namespace) -> int:
    with make_messenger(args) as client:
        if args.group_action == "add":
            changed, unchanged = client.add_members(args.name, args.users)
        else:
            changed, unchanged = client.remove_members(args.name, args.users)
    verb = "added" if args.group_action == "add" else "removed"
    if args.json:
        other = "already_members" if args.group_action == "add" else "not_members"
        _print_json({verb: changed, other: unchanged})
        return EXIT_OK
    if changed:
        print(f"{verb.capitalize()}: {', '.join(changed)}.")
    if unchanged:
        state = "already members" if args.group_action == "add" else "not members"
        print(f"Unchanged ({state}): {', '.join(unchanged)}.")
    return EXIT_OK


def _cmd_group_members(args: argparse.Namespace) -> int:
    with make_messenger(args) as client:
        members = client.members(args.name)
    if args.json:
        _print_json(
            [{"account_id": m.account_id, "username": m.username, "role": m.role} for m in members]
        )
        return EXIT_OK
    for m in members:
        role = " (admin)" if m.role == "admin" else ""
        print(f"{m.username or m.account_id}{role}")
    return EXIT_OK


def _cmd_group_list(args: argparse.Namespace) -> int:
    with make_messenger(args) as client:
        groups = client.groups()
    if args.json:
        _print_json([{"name": n, "group_id": g} for n, g in groups])
        return EXIT_OK
    for name, group_id in groups:
        print(_printable(f"#{name}  {group_id}"))  # names come from other members
    return EXIT_OK


def _add_keys_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Key directory: keys status, keys verify, keys log-key."""
    keys = sub.add_parser(
        "keys",
        parents=[common],
        help="your devices' prekeys; verify someone's keys in the transparency log",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    status = keys_sub.add_parser(
        "status",
        parents=[common],
        help="remaining one-time prekeys and signed prekey age of your devices",
    )
    status.set_defaults(handler=_cmd_keys_status)
    verify = keys_sub.add_parser(
        "verify",
        parents=[common],
        help="prove a user's device keys in the key-transparency log; show fingerprints",
        description="Fetch USERNAME's identity keys, verify each one's inclusion proof "
        "against a signed tree head, and the head's consistency with the last head this "
        "client verified. Exit 1 if any proof fails.",
    )
    verify.add_argument("username", metavar="USERNAME")
    verify.add_argument(
        "--log-key",
        metavar="KEY",
        help="the log's Ed25519 public key (hex or base64); default $CONCLAVE_KT_LOG_KEY",
    )
    verify.set_defaults(handler=_cmd_keys_verify)
    log_key = keys_sub.add_parser(
        "log-key",
        parents=[common],
        help="show the log key the server announces (to compare before pinning it)",
    )
    log_key.set_defaults(handler=_cmd_keys_log_key)


def _add_auth_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Accounts and sessions: register, login, logout, sessions, audit."""
    password = argparse.ArgumentParser(add_help=False)
    password.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (no prompt)",
    )

    register = sub.add_parser(
        "register",
        parents=[common, password],
        help="create an account (prints the TOTP secret, QR code and recovery codes)",
        description="Create an account. Shows the TOTP secret (and its QR code) for your "
        "authenticator app and ten recovery codes; then run: conclave login USERNAME --code "
        "CODE (the first login confirms the authenticator).",
    )
    register.add_argument("username", metavar="USERNAME")
    register.set_defaults(handler=_cmd_register)

    login = sub.add_parser(
        "login",
        parents=[common, password],
        help="log in with password + TOTP code (or a recovery code)",
    )
    login.add_argument("username", metavar="USERNAME")
    factor = login.add_mutually_exclusive_group()
    factor.add_argument("--code", metavar="CODE", help="current 6-digit code of your authenticator")
    factor.add_argument(
        "--recovery-code", metavar="CODE", help="one unused recovery code (instead of --code)"
    )
    login.add_argument(
        "--device-name", metavar="NAME", help="name of this device (default: HOSTNAME (cli))"
    )
    login.set_defaults(handler=_cmd_login)

    logout = sub.add_parser("logout", parents=[common], help="end this session")
    logout.add_argument(
        "--remove-device",
        action="store_true",
        help="also remove this device and its keys (the next login is a new device)",
    )
    logout.set_defaults(handler=_cmd_logout)

    sessions = sub.add_parser(
        "sessions", parents=[common], help="list your sessions; 'sessions revoke' ends them"
    )
    sessions.set_defaults(handler=_cmd_sessions)
    sessions_sub = sessions.add_subparsers(dest="sessions_command", metavar="ACTION")
    revoke = sessions_sub.add_parser(
        "revoke", parents=[common], help="end one session (ID) or all others (--others)"
    )
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("session_id", metavar="ID", nargs="?", help="session id to end")
    target.add_argument("--others", action="store_true", help="end every other session")
    revoke.add_argument(
        "--remove-device", action="store_true", help="also remove the devices of those sessions"
    )
    revoke.set_defaults(handler=_cmd_sessions_revoke)

    audit = sub.add_parser("audit", parents=[common], help="your security audit log")
    audit.add_argument(
        "--limit", type=_positive_int, default=20, metavar="N", help="events to show (20)"
    )
    audit.add_argument(
        "--kind",
        action="append",
        metavar="KIND",
        help="only this kind of event, e.g. LOGIN_SUCCEEDED (repeatable)",
    )
    audit.set_defaults(handler=_cmd_audit)


# -- retention policies ---------------------------------------------------------------------

_POLICY_LABELS = {
    "disappearing_message_timer": "disappearing messages",
    "undelivered_message_ttl": "undelivered messages kept",
    "media_ttl": "files (media) kept",
    "audit_log_ttl": "audit log kept",
}
_POLICY_FLAGS = {
    "disappearing_message_timer": "--disappearing",
    "undelivered_message_ttl": "--undelivered-ttl",
    "media_ttl": "--media-ttl",
    "audit_log_ttl": "--audit-log-ttl",
}
_DURATION = re.compile(r"(\d+)\s*(s|sec|m|min|h|d|w)?", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration_arg(allow_off: bool) -> Callable[[str], int]:
    """An argparse type: ``30s``, ``5m``, ``1h``, ``7d``, ``4w`` or plain seconds.

    ``inherit`` clears the value at this level; ``off`` (timer only) is 0. Bounds are the
    server's to check, so its limits are the only ones (and reported as they are).
    """

    def parse(text: str) -> int:
        value = text.strip().lower()
        if value == "inherit":
            return INHERIT
        if allow_off and value == "off":
            return 0
        match = _DURATION.fullmatch(value)
        if match is None:
            extra = ", off" if allow_off else ""
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration (e.g. 30s, 5m, 1h, 7d, 4w{extra}, inherit)"
            )
        return int(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "").lower()]

    return parse


def _policy_json(
    target: str | None, effective: EffectivePolicy, bounds: DeploymentPolicy
) -> dict[str, Any]:
    return {
        "conversation": target,
        "disappearing": effective.disappearing_timer > 0,
        "policy": {
            name: {
                "seconds": effective.values.get(name),
                "source": effective.sources.get(name),
                "default": bounds.defaults.get(name),
                "minimum": bounds.minimum.get(name),
                "maximum": bounds.maximum.get(name),
            }
            for name in POLICY_FIELDS
        },
    }


def _print_policy(
    target: str | None, effective: EffectivePolicy, bounds: DeploymentPolicy, title: str
) -> None:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("setting", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("allowed")
    # The timer first: it is what people come here for.
    order = ("disappearing_message_timer", "undelivered_message_ttl", "media_ttl", "audit_log_ttl")
    for name in order:
        if target is not None and name not in CONVERSATION_POLICY_FIELDS:
            continue  # the audit log is the account's, never a conversation's
        seconds = effective.values.get(name)
        low, high = bounds.minimum.get(name), bounds.maximum.get(name)
        if name == "disappearing_message_timer":
            shown = _timer_text(seconds or 0)
            allowed = f"off, {_duration_text(low or 0)} to {_duration_text(high or 0)}"
        else:
            shown = _duration_text(seconds) if seconds is not None else "-"
            allowed = f"{_duration_text(low or 0)} to {_duration_text(high or 0)}"
        table.add_row(_POLICY_LABELS[name], shown, effective.sources.get(name, "-"), allowed)
    Console().print(table)


def _conversation_title(target: str | None) -> str:
    if target is None:
        return "Retention for your account"
    name = _printable(target)
    return f"Retention in {name}" if target.startswith("#") else f"Retention with {name}"


def _retention_target(
    args: argparse.Namespace, stack: contextlib.ExitStack
) -> tuple[RetentionClient, Any]:
    """The retention client and the ConversationRef of ``args.target`` (None: account).

    A conversation needs this device's state (group names live on devices); the account
    level needs only a session.
    """
    if args.target is None:
        auth = stack.enter_context(make_auth_client(args))
        return stack.enter_context(make_retention_client(args, auth)), None
    client = stack.enter_context(make_messenger(args))
    ref = client.conversation_ref(args.target)
    return stack.enter_context(make_retention_client(args, client.auth)), ref


def _cmd_retention_show(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        retention, ref = _retention_target(args, stack)
        effective = retention.effective_policy(ref)
        bounds = retention.deployment_policy()
    if args.json:
        _print_json(_policy_json(args.target, effective, bounds))
    else:
        _print_policy(args.target, effective, bounds, _conversation_title(args.target))
    return EXIT_OK


def _policy_error(err: ClientError) -> CliError:
    """The server's INVALID_ARGUMENT in terms of this command's flags."""
    message = str(err)
    for name, flag in _POLICY_FLAGS.items():
        message = message.replace(f"policy.{name}", flag)
    return CliError(message.replace("(0 turns it off)", "(off turns it off)"))


def _cmd_retention_set(args: argparse.Namespace) -> int:
    changes = {
        name: getattr(args, name) for name in POLICY_FIELDS if getattr(args, name, None) is not None
    }
    if not changes:
        raise CliError(
            "nothing to set (give --disappearing, --undelivered-ttl, --media-ttl "
            "or --audit-log-ttl)"
        )
    if args.target is not None and "audit_log_ttl" in changes:
        raise CliError("--audit-log-ttl is account-level only (leave out USER|#GROUP)")
    with contextlib.ExitStack() as stack:
        retention, ref = _retention_target(args, stack)
        try:
            effective = retention.update_policy(changes, ref)
        except ClientError as err:
            if err.code == "INVALID_ARGUMENT":
                raise _policy_error(err) from None
            raise
        bounds = retention.deployment_policy()
    if args.json:
        _print_json(_policy_json(args.target, effective, bounds))
        return EXIT_OK
    if "disappearing_message_timer" in changes:
        where = "your account" if args.target is None else _printable(args.target)
        timer = _timer_text(effective.disappearing_timer)
        note = "" if args.target is None else " (for messages sent from now on)"
        print(f"Disappearing messages for {where}: {timer}{note}.")
    _print_policy(args.target, effective, bounds, _conversation_title(args.target))
    return EXIT_OK


def _add_retention_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Retention policies: retention show, retention set."""
    retention = sub.add_parser(
        "retention",
        parents=[common],
        help="retention policy and disappearing messages of your account or a conversation",
    )
    retention_sub = retention.add_subparsers(
        dest="retention_command", metavar="ACTION", required=True
    )
    target_help = "a conversation: USER (1:1) or #GROUP; default: your account"
    show = retention_sub.add_parser(
        "show",
        parents=[common],
        help="the policy in force and where each value comes from",
        description="RetentionService.GetEffectivePolicy: each value and its origin "
        "(conversation, account or deployment), with the deployment's allowed range.",
    )
    show.add_argument("target", metavar="USER|#GROUP", nargs="?", help=target_help)
    show.set_defaults(handler=_cmd_retention_show)
    set_ = retention_sub.add_parser(
        "set",
        parents=[common],
        help="change values of your account's or a conversation's policy",
        description="Change only the values given; the others stay as they are. "
        "DURATION: 30s, 5m, 1h, 7d, 4w or seconds; 'inherit' removes the value at this "
        "level (the account's or deployment's applies). A conversation's disappearing "
        "timer is shared by both parties (any group admin may set a group's) and applies "
        "to messages sent after the change.",
    )
    set_.add_argument("target", metavar="USER|#GROUP", nargs="?", help=target_help)
    set_.add_argument(
        "--disappearing",
        dest="disappearing_message_timer",
        type=_duration_arg(allow_off=True),
        metavar="DURATION|off",
        help="disappearing-message timer (off, or 30s to 4w by default)",
    )
    set_.add_argument(
        "--undelivered-ttl",
        dest="undelivered_message_ttl",
        type=_duration_arg(allow_off=False),
        metavar="DURATION",
        help="how long the server keeps a message nobody fetched",
    )
    set_.add_argument(
        "--media-ttl",
        dest="media_ttl",
        type=_duration_arg(allow_off=False),
        metavar="DURATION",
        help="how long the server keeps uploaded files",
    )
    set_.add_argument(
        "--audit-log-ttl",
        dest="audit_log_ttl",
        type=_duration_arg(allow_off=False),
        metavar="DURATION",
        help="how long your audit log is kept (account only)",
    )
    set_.set_defaults(handler=_cmd_retention_set)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``conclave``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        sys.exit(EXIT_USAGE)
    try:
        code = handler(args)
    except (CliError, ClientError, CredentialsError, LogKeyError) as err:
        print(f"conclave: error: {err}", file=sys.stderr)
        code = EXIT_ERROR
    except CryptoError as err:
        detail = f": {err}" if str(err) else ""
        print(
            f"conclave: error: end-to-end encryption failed ({err.__class__.__name__}{detail})",
            file=sys.stderr,
        )
        code = EXIT_ERROR
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
