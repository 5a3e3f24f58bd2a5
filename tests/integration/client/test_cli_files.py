"""``conclave send-file`` and the saving ``listen`` end to end, on the real stack.

Every command is a separate CLI process with its own ``CONCLAVE_HOME`` (as in
test_cli_messaging.py). A file must arrive byte for byte on every device it is meant for,
in ``$CONCLAVE_HOME/downloads/`` under a safe name that never replaces another file, while
the media server holds ciphertext only. An interrupted upload (the state a killed
``send-file`` leaves behind) resumes from the server's last stored chunk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from conclave.media.v1 import media_pb2, media_pb2_grpc
from conclave_client.auth_client import AuthClient, ClientError
from conclave_client.credentials import CredentialStore
from conclave_client.files import (
    Attachment,
    AttachmentError,
    UploadStore,
    encrypt_file,
    safe_filename,
)
from conclave_client.media_client import MediaClient

from tests.integration.client.test_cli_messaging import Device
from tests.integration.stack.conftest import RunningStack

pytestmark = pytest.mark.integration


def distinctive(size: int, marker: bytes) -> bytes:
    """Random bytes with ``marker`` planted at the start, middle and end."""
    data = bytearray(secrets.token_bytes(size))
    for at in (0, size // 2, size - len(marker)):
        data[at : at + len(marker)] = marker
    return bytes(data)


def windows(data: bytes, width: int = 48) -> list[bytes]:
    """A few distinctive slices of ``data`` (start, quarters, end)."""
    return [data[at : at + width] for at in (0, len(data) // 4, len(data) // 2, len(data) - width)]


def media_blob(stack: RunningStack, device: Device, media_id: str) -> bytes:
    """The blob as the media server serves it, downloaded with ``device``'s session."""
    token = device.credentials()["access_token"]
    with grpc.insecure_channel(stack.grpc["media"]) as channel:
        stub = media_pb2_grpc.MediaServiceStub(channel)
        items = stub.Download(
            media_pb2.DownloadRequest(media_id=media_id),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=30,
        )
        return b"".join(bytes(i.data) for i in items)


def received_file(device: Device) -> tuple[dict[str, Any], bytes]:
    """Runs ``listen --json --count 1``; returns the object and the saved file's bytes."""
    (message,) = device.listen(1)
    saved = Path(message["file"])
    assert saved.parent == device.home / "downloads"
    return message, saved.read_bytes()


def test_send_file_direct_and_group_round_trip(stack: RunningStack, tmp_path: Path) -> None:
    alice, bob, carol = (Device(stack, tmp_path / n) for n in ("alice", "bob", "carol"))
    for user in (alice, bob, carol):
        user.register()
        user.login()

    data = distinctive(300_000, b"CONCLAVE-FILE-MARKER-" + secrets.token_hex(8).encode())
    source = tmp_path / "report.pdf"
    source.write_bytes(data)

    sent = alice.json("send-file", bob.username, str(source), "--text", "the report")
    assert sent["to"] == bob.username and sent["devices"] == 1
    assert sent["file"] == {
        "name": "report.pdf",
        "size": len(data),
        "content_type": "application/pdf",
    }
    assert sent["ciphertext_bytes"] > len(data) and sent["resumed_from"] is None
    assert list((alice.home / "uploads").iterdir()) == []  # nothing left once sent

    message, saved = received_file(bob)
    assert saved == data
    assert message["file"] == str(bob.home / "downloads" / "report.pdf")
    assert message["text"] == "the report" and message["from"] == alice.username
    assert message["attachment"] == sent["file"]  # name, size, type: never the key
    assert "key" not in json.dumps(message) and "pointer" not in json.dumps(message)

    # The server's copy is ciphertext only: right size, none of the plaintext in it.
    blob = media_blob(stack, bob, sent["media_id"])
    assert len(blob) == sent["ciphertext_bytes"]
    for window in windows(data):
        assert window not in blob
    assert base64.b64encode(data[:3000]) not in blob

    # Same name again: saved next to the first, never over it.
    alice.json("send-file", bob.username, str(source))
    again, saved_again = received_file(bob)
    assert saved_again == data
    assert again["file"] == str(bob.home / "downloads" / "report (1).pdf")
    assert (bob.home / "downloads" / "report.pdf").read_bytes() == data

    # A hostile name cannot leave the downloads directory.
    alice.json("send-file", bob.username, str(source), "--name", "../../../.bashrc")
    hostile, _ = received_file(bob)
    assert hostile["file"] == str(bob.home / "downloads" / "bashrc")
    assert not (bob.home / ".bashrc").exists() and not (tmp_path / ".bashrc").exists()

    # A group: one upload, one sender-key message, every member saves the same file.
    alice.json("group", "create", "team", bob.username, carol.username)
    photo = distinctive(70_000, b"GROUP-PHOTO-" + secrets.token_hex(6).encode())
    (tmp_path / "photo.jpg").write_bytes(photo)
    to_group = alice.json("send-file", "#team", str(tmp_path / "photo.jpg"))
    assert to_group["file"]["content_type"] == "image/jpeg"
    for member in (bob, carol):
        got, content = received_file(member)
        assert content == photo
        assert got["conversation"] == "#team" and got["file"].endswith("/photo.jpg")
    group_blob = media_blob(stack, carol, to_group["media_id"])
    assert all(w not in group_blob for w in windows(photo))

    for user in (alice, bob, carol):
        user.nothing_left()

    # Human output: one line naming the file; a missing file is a one-line error.
    human = alice.ok("send-file", bob.username, str(tmp_path / "photo.jpg"))
    assert human.startswith("Sent photo.jpg (70.0 kB") and human.count("\n") == 1
    listened = bob.ok("listen", "--count", "1", "--timeout", "40")
    assert f"[file] photo.jpg (70.0 kB) saved as {bob.home / 'downloads' / 'photo (1).jpg'}" in (
        listened
    )
    # Escape sequences from the other side never reach the reader's terminal.
    alice.json("send-file", bob.username, str(tmp_path / "photo.jpg"), "--name", "\x1b[2Jx.jpg",
               "--text", "\x1b]0;owned\x07caption")  # fmt: skip
    shown = bob.ok("listen", "--count", "1", "--timeout", "40")
    assert "\x1b" not in shown and "\x07" not in shown
    assert "[file] [2Jx.jpg (70.0 kB)" in shown and "\ufffd]0;owned\ufffdcaption" in shown
    missing = alice.run("send-file", bob.username, str(tmp_path / "nope.bin"))
    assert missing.returncode == 1
    assert missing.stderr == f"conclave: error: {tmp_path / 'nope.bin'}: no such file\n"


def test_interrupted_upload_resumes_from_the_last_stored_chunk(
    stack: RunningStack, tmp_path: Path
) -> None:
    alice, bob = Device(stack, tmp_path / "alice"), Device(stack, tmp_path / "bob")
    for user in (alice, bob):
        user.register()
        user.login()
    data = distinctive(5 * 1024 * 1024 + 12345, b"RESUME-" + secrets.token_hex(6).encode())
    source = tmp_path / "big.bin"
    source.write_bytes(data)

    # What a send-file killed after two chunks leaves behind: the encrypted copy, its
    # state, and a server upload holding the first 2 MiB.
    store = UploadStore(alice.home)
    upload = store.new(bob.username, source, "big.bin", "application/octet-stream")
    pointer = encrypt_file(source, store.ciphertext(upload))
    upload.pointer = base64.b64encode(pointer.encode()).decode()
    ciphertext = store.ciphertext(upload).read_bytes()
    upload.ciphertext_size = len(ciphertext)
    token = alice.credentials()["access_token"]
    metadata = (("authorization", f"Bearer {token}"),)
    chunk = 1024 * 1024
    with grpc.insecure_channel(stack.grpc["media"]) as channel:
        stub = media_pb2_grpc.MediaServiceStub(channel)
        created = stub.CreateUpload(
            media_pb2.CreateUploadRequest(
                size_bytes=len(ciphertext), chunk_size_bytes=chunk, ciphertext_sha256=pointer.digest
            ),
            metadata=metadata,
            timeout=10,
        )
        first_two = (
            media_pb2.UploadChunksRequest(
                media_id=created.media_id,
                offset=i * chunk,
                data=ciphertext[i * chunk : (i + 1) * chunk],
            )
            for i in range(2)
        )
        partial = stub.UploadChunks(first_two, metadata=metadata, timeout=30)
        assert partial.next_offset == 2 * chunk and not partial.complete
    upload.media_id = created.media_id
    store.save(upload)

    resumed = alice.json("send-file", bob.username, str(source), "--resume")
    assert resumed["resumed_from"] == 2 * chunk
    assert resumed["media_id"] == created.media_id
    _, content = received_file(bob)
    assert hashlib.sha256(content).digest() == hashlib.sha256(data).digest()

    # Nothing left to resume now.
    again = alice.run("send-file", bob.username, str(source), "--resume")
    assert again.returncode == 1
    assert again.stderr.startswith("conclave: error: no interrupted send of ")


def test_a_failed_download_is_one_line_and_listen_goes_on(
    stack: RunningStack, tmp_path: Path
) -> None:
    alice, bob = Device(stack, tmp_path / "alice"), Device(stack, tmp_path / "bob")
    for user in (alice, bob):
        user.register()
        user.login()
    (tmp_path / "gone.txt").write_bytes(b"soon deleted " * 100)
    sent = alice.json("send-file", bob.username, str(tmp_path / "gone.txt"))
    token = alice.credentials()["access_token"]
    with grpc.insecure_channel(stack.grpc["media"]) as channel:
        media_pb2_grpc.MediaServiceStub(channel).DeleteMedia(
            media_pb2.DeleteMediaRequest(media_id=sent["media_id"]),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    alice.json("send", bob.username, "after the file")
    done = bob.run("listen", "--json", "--count", "2", "--timeout", "40")
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first["file"] is None and first["file_error"] == "media not found"
    assert (
        done.stderr
        == f"conclave: error: message {first['id']}: gone.txt not saved: media not found\n"
    )
    assert second["text"] == "after the file" and "file" not in second
    downloads = bob.home / "downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []  # no partial file left


def test_safe_filename_and_record_parsing() -> None:
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("..\\..\\boot.ini") == "boot.ini"
    assert safe_filename(".hidden") == "hidden"
    assert safe_filename("..") == "file"
    assert safe_filename("a\x00b\nc\u202etxt.exe") == "abctxt.exe"
    assert safe_filename("") == "file"
    long = safe_filename("x" * 500 + ".tar")
    assert long.endswith(".tar") and len(long.encode()) <= 200
    assert safe_filename("ünïcödé résumé.pdf") == "ünïcödé résumé.pdf"
    with pytest.raises(AttachmentError):
        Attachment.from_record({"v": 2, "media_id": "x"})
    with pytest.raises(AttachmentError):
        Attachment.from_record(
            {"v": 1, "media_id": "x", "pointer": "!!", "name": "a", "content_type": ""}
        )
    with pytest.raises(AttachmentError):
        Attachment.from_record("not an object")


def test_upload_continues_across_streams_from_the_server_status(
    stack: RunningStack, tmp_path: Path
) -> None:
    """The library's resume loop: every stream starts where GetUploadStatus says."""
    alice = Device(stack, tmp_path / "alice")
    alice.register()
    alice.login()
    data = secrets.token_bytes(3 * 1024 * 1024 + 7)
    (tmp_path / "plain").write_bytes(data)
    pointer = encrypt_file(tmp_path / "plain", tmp_path / "cipher")
    ciphertext = (tmp_path / "cipher").read_bytes()
    seen: list[int] = []
    with (
        AuthClient(stack.grpc["auth"], CredentialStore(alice.home)) as auth,
        MediaClient(stack.grpc["media"], auth) as media,
    ):
        media_id, chunk = media.create_upload(len(ciphertext), pointer.digest)
        with (tmp_path / "cipher").open("rb") as source:
            final = media.upload(media_id, source, progress=seen.append, max_chunks_per_stream=1)
        assert final.complete and final.next_offset == len(ciphertext)
        # One stream per chunk, each resumed from the server's offset.
        starts = sorted({s for s in seen if s % chunk == 0 and s < len(ciphertext)})
        assert starts == [i * chunk for i in range(-(-len(ciphertext) // chunk))]
        received = bytearray()
        media.download(media_id, received.extend, expected_digest=pointer.digest)
        assert bytes(received) == ciphertext
        with pytest.raises(ClientError, match="different file"):
            media.download(media_id, received.extend, expected_digest=bytes(32))


def test_a_killed_send_file_resumes_when_run_again(stack: RunningStack, tmp_path: Path) -> None:
    """A real interruption: the CLI is frozen mid-upload, killed, and run again."""
    alice, bob = Device(stack, tmp_path / "alice"), Device(stack, tmp_path / "bob")
    for user in (alice, bob):
        user.register()
        user.login()
    data = distinctive(40 * 1024 * 1024, b"KILLED-" + secrets.token_hex(6).encode())
    source = tmp_path / "video.mp4"
    source.write_bytes(data)
    env = stack.client_env()
    env["CONCLAVE_HOME"] = str(alice.home)
    sender = subprocess.Popen(
        [sys.executable, "-c", "from conclave_client.cli import main; main()", "send-file",
         bob.username, str(source), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    metadata = (("authorization", f"Bearer {alice.credentials()['access_token']}"),)
    stored = 0
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(stack.grpc["media"]) as channel:
        stub = media_pb2_grpc.MediaServiceStub(channel)
        while time.monotonic() < deadline and sender.poll() is None:
            states = list((alice.home / "uploads").glob("*.json"))
            media_id = json.loads(states[0].read_text())["media_id"] if states else ""
            if media_id:
                # Frozen, the process cannot move on while we look: no race with completion.
                os.kill(sender.pid, signal.SIGSTOP)
                status = stub.GetUploadStatus(
                    media_pb2.GetUploadStatusRequest(media_id=media_id),
                    metadata=metadata,
                    timeout=10,
                )
                if 0 < status.next_offset < status.size_bytes:
                    stored = int(status.next_offset)
                    break
                os.kill(sender.pid, signal.SIGCONT)
            time.sleep(0.01)
    sender.kill()
    sender.wait(10)
    if not stored:
        pytest.fail("the upload was never caught half done")

    resumed = alice.json("send-file", bob.username, str(source))
    assert resumed["resumed_from"] is not None and resumed["resumed_from"] >= stored
    _, content = received_file(bob)
    assert content == data
    assert list((alice.home / "uploads").iterdir()) == []


class _LostConnection(grpc.RpcError):
    """What a dropped connection raises mid-stream."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset"


def test_a_dropped_stream_is_retried_in_place(stack: RunningStack, tmp_path: Path) -> None:
    """The first stream dies after two chunks: the client asks where the server stands and
    continues in the same call, without the user running anything again."""
    alice = Device(stack, tmp_path / "alice")
    alice.register()
    alice.login()
    (tmp_path / "plain").write_bytes(secrets.token_bytes(4 * 1024 * 1024))
    pointer = encrypt_file(tmp_path / "plain", tmp_path / "cipher")
    ciphertext = (tmp_path / "cipher").read_bytes()
    pauses: list[float] = []
    with (
        AuthClient(stack.grpc["auth"], CredentialStore(alice.home)) as auth,
        MediaClient(stack.grpc["media"], auth, sleep=pauses.append) as media,
    ):
        real = media._stub.UploadChunks
        attempts: list[int] = []

        def flaky(chunks: Any, **kwargs: Any) -> Any:
            attempts.append(1)
            if len(attempts) == 1:
                first_two = [next(chunks), next(chunks)]
                real(iter(first_two), **kwargs)  # stored on the server...
                raise _LostConnection  # ...but the answer never arrives
            return real(chunks, **kwargs)

        media._stub.UploadChunks = flaky  # type: ignore[assignment]
        media_id, _ = media.create_upload(len(ciphertext), pointer.digest)
        with (tmp_path / "cipher").open("rb") as source:
            final = media.upload(media_id, source)
        assert final.complete and len(attempts) == 2
        assert pauses == [0.0]  # progress was made: retried at once
        received = bytearray()
        media.download(media_id, received.extend, expected_digest=pointer.digest)
        assert bytes(received) == ciphertext
