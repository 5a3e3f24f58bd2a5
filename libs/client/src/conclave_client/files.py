"""Files sent end to end: records, on-device encryption, uploads, safe saving.

A file is encrypted on the device with ``conclave_crypto``'s attachment encryption
(docs/protocol.md §10: a random 32-byte key per file, Padmé padding, chunked AES-256-GCM,
SHA-256 of the whole ciphertext). Only the ciphertext goes to the media server; the key
travels inside the end-to-end-encrypted message as the attachment record::

    "attachment": {"v": 1, "media_id": MEDIA_ID, "pointer": BASE64(AttachmentPointer),
                   "name": FILE_NAME, "content_type": MIME_TYPE}

where ``AttachmentPointer = 0x01 || key (32) || sha256 (32) || u64 size`` (protocol §10).
The record has its own version ``v`` so it can change without a new message-frame version;
a record of an unknown version is reported, never guessed at.

Interrupted uploads: the ciphertext and the upload's state (including the key: it is this
device's secret like ``device.db``) stay in ``$CONCLAVE_HOME/uploads/`` (0700, files 0600)
until the message carrying the record is sent, so running the same ``send-file`` again
continues where the server stopped instead of starting over.

Received files go to ``$CONCLAVE_HOME/downloads/`` under a sanitised name (no directory
parts, no control characters, no leading dot, at most 200 bytes), never replacing an
existing file (`` (1)``, `` (2)``, ... before the extension); the plaintext is written to a
private temporary file and linked to its name only after every check passed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import mimetypes
import os
import secrets
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from conclave_crypto import AttachmentDecryptor, AttachmentEncryptor, AttachmentPointer
from conclave_crypto.attachments import CHUNK_SIZE, HEADER_LEN
from conclave_crypto.primitives import TAG_LEN, attachment_bucket

RECORD_VERSION = 1
UPLOADS_DIR = "uploads"
DOWNLOADS_DIR = "downloads"
READ_SIZE = 1024 * 1024
MAX_NAME_BYTES = 200
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class AttachmentError(ValueError):
    """An attachment record that is malformed or of an unknown version."""


@dataclass(frozen=True)
class Attachment:
    """What a receiver needs to fetch and decrypt a file (sent end to end only).

    Attributes:
        media_id: The media server's id of the ciphertext (a download capability).
        pointer: Key, ciphertext digest and true size (``conclave_crypto``).
        name: File name as the sender chose it (sanitised again by the receiver).
        content_type: MIME type as the sender declared it.
    """

    media_id: str
    pointer: AttachmentPointer
    name: str
    content_type: str

    @property
    def size(self) -> int:
        """The plaintext size in bytes."""
        return self.pointer.size

    def to_record(self) -> dict[str, Any]:
        """The record inside the message frame (see module docstring)."""
        return {
            "v": RECORD_VERSION,
            "media_id": self.media_id,
            "pointer": base64.b64encode(self.pointer.encode()).decode(),
            "name": self.name,
            "content_type": self.content_type,
        }

    @classmethod
    def from_record(cls, value: object) -> Attachment:
        """Parses a record.

        Raises:
            AttachmentError: Not a record of a version this client knows.
        """
        if not isinstance(value, dict):
            raise AttachmentError("attachment record is not an object")
        if value.get("v") != RECORD_VERSION:
            raise AttachmentError(f"attachment record version {value.get('v')!r} is unknown")
        fields = {k: value.get(k) for k in ("media_id", "pointer", "name", "content_type")}
        if not all(isinstance(v, str) for v in fields.values()) or not fields["media_id"]:
            raise AttachmentError("attachment record is incomplete")
        try:
            raw = base64.b64decode(str(fields["pointer"]), validate=True)
            pointer = AttachmentPointer.parse(raw)
        except (binascii.Error, ValueError) as err:
            raise AttachmentError("attachment pointer is malformed") from err
        except Exception as err:  # DecryptionError: the crypto library's opaque failure
            raise AttachmentError("attachment pointer is malformed") from err
        return cls(
            str(fields["media_id"]), pointer, str(fields["name"]), str(fields["content_type"])
        )

    def summary(self) -> dict[str, Any]:
        """What may be shown or logged: never the key or the media id."""
        return {"name": self.name, "size": self.size, "content_type": self.content_type}


def ciphertext_size(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Bytes of the attachment ciphertext of a ``size``-byte file (what gets uploaded)."""
    padded = attachment_bucket(size)
    chunks = max(1, -(-padded // chunk_size))
    return HEADER_LEN + padded + chunks * TAG_LEN


def guess_content_type(name: str) -> str:
    """MIME type from the file name, else ``application/octet-stream``."""
    return mimetypes.guess_type(name)[0] or DEFAULT_CONTENT_TYPE


def encrypt_file(
    source: Path, destination: Path, *, progress: Callable[[int], None] | None = None
) -> AttachmentPointer:
    """Encrypts ``source`` into ``destination`` (created 0600, must not exist).

    Streams in 1 MiB pieces, so memory stays flat whatever the file size.

    Args:
        source: The plaintext file.
        destination: Where the ciphertext goes.
        progress: Called with the plaintext bytes encrypted so far.

    Returns:
        The pointer (key, digest, size) to send end to end.

    Raises:
        OSError: Reading or writing failed; ValueError: the file changed while read.
    """
    size = source.stat().st_size
    encryptor = AttachmentEncryptor(size)
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    done = 0
    try:
        with source.open("rb") as src, os.fdopen(fd, "wb") as out:
            while piece := src.read(READ_SIZE):
                for part in encryptor.update(piece):
                    out.write(part)
                done += len(piece)
                if progress is not None:
                    progress(done)
            parts, pointer = encryptor.finalize()
            for part in parts:
                out.write(part)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            destination.unlink()
        raise
    return pointer


@dataclass
class PendingUpload:
    """A ``send-file`` whose message has not been sent yet (``uploads/<id>.json``).

    Attributes:
        upload_id: Local id (names the state and ciphertext files).
        target: ``USER`` or ``#GROUP`` as typed.
        path: Absolute path of the source file.
        file_size: Its size when encrypted.
        file_mtime_ns: Its modification time then (a changed file is encrypted anew).
        name: File name sent.
        content_type: MIME type sent.
        pointer: Base64 of the encoded :class:`AttachmentPointer` (contains the key).
        ciphertext_size: Bytes to upload.
        media_id: Set once CreateUpload answered.
        uploaded: True once the server confirmed the whole ciphertext.
        created: Unix time the upload started (uploads expire on the server after 24 h).
    """

    upload_id: str
    target: str
    path: str
    file_size: int
    file_mtime_ns: int
    name: str
    content_type: str
    pointer: str = ""
    ciphertext_size: int = 0
    media_id: str = ""
    uploaded: bool = False
    created: float = 0.0

    def attachment(self) -> Attachment:
        """The record to send (valid once uploaded)."""
        raw = base64.b64decode(self.pointer)
        return Attachment(self.media_id, AttachmentPointer.parse(raw), self.name, self.content_type)


class UploadStore:
    """``$CONCLAVE_HOME/uploads/``: state and ciphertext of unfinished sends."""

    def __init__(self, home: Path) -> None:
        self.directory = home / UPLOADS_DIR
        self.directory.mkdir(mode=0o700, exist_ok=True)

    def ciphertext(self, upload: PendingUpload) -> Path:
        """Where the upload's ciphertext is kept."""
        return self.directory / f"{upload.upload_id}.bin"

    def _state(self, upload_id: str) -> Path:
        return self.directory / f"{upload_id}.json"

    def new(self, target: str, path: Path, name: str, content_type: str) -> PendingUpload:
        """A fresh upload of ``path`` (not saved yet)."""
        info = path.stat()
        return PendingUpload(
            upload_id=secrets.token_hex(8),
            target=target,
            path=str(path.resolve()),
            file_size=info.st_size,
            file_mtime_ns=info.st_mtime_ns,
            name=name,
            content_type=content_type,
            created=time.time(),
        )

    def save(self, upload: PendingUpload) -> None:
        """Writes the state atomically (0600)."""
        final = self._state(upload.upload_id)
        temp = final.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(upload), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, final)

    def all(self) -> Iterator[PendingUpload]:
        """Every readable pending upload (unreadable state files are skipped)."""
        for state in sorted(self.directory.glob("*.json")):
            try:
                yield PendingUpload(**json.loads(state.read_text()))
            except (OSError, ValueError, TypeError):
                continue

    def find(self, target: str, path: Path) -> PendingUpload | None:
        """The unfinished upload of this very file (same size and mtime) to ``target``."""
        try:
            info = path.stat()
        except OSError:
            return None
        resolved = str(path.resolve())
        for upload in self.all():
            same = (upload.target, upload.path, upload.file_size, upload.file_mtime_ns) == (
                target,
                resolved,
                info.st_size,
                info.st_mtime_ns,
            )
            if same:
                return upload
        return None

    def remove(self, upload: PendingUpload) -> None:
        """Deletes the state and the ciphertext (the message went out, or starting over)."""
        for path in (self.ciphertext(upload), self._state(upload.upload_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def safe_filename(name: str) -> str:
    """A name that is safe to create in the downloads directory.

    Keeps only the last path component (slash and backslash both count), drops control and
    format characters, leading dots and spaces (no hidden files, no ``..``), and trims to
    :data:`MAX_NAME_BYTES` UTF-8 bytes keeping the extension; empty becomes ``file``.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = base.strip().lstrip(". ").rstrip(" ")
    if not base:
        return "file"
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem or len(ext.encode()) > 20:
        stem, ext = base, ""
    ext_part = f".{ext}" if ext else ""
    budget = MAX_NAME_BYTES - len(ext_part.encode())
    while len(stem.encode()) > budget:
        stem = stem[:-1]
    return (stem or "file") + ext_part


def _candidates(name: str) -> Iterator[str]:
    yield name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    ext_part = f".{ext}" if ext else ""
    for n in range(1, 10_000):
        yield f"{stem} ({n}){ext_part}"


def save_attachment(
    directory: Path,
    attachment: Attachment,
    fetch: Callable[[Callable[[bytes], None]], None],
) -> Path:
    """Decrypts what ``fetch`` streams and saves it under a safe, unused name.

    Args:
        directory: Target directory (created 0700).
        attachment: The record (key, digest, size, name).
        fetch: Calls its argument with the ciphertext, in order.

    Returns:
        The path written.

    Raises:
        DecryptionError: Digest, tag, length or padding check failed (nothing is kept).
        OSError: The file could not be written.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    decryptor = AttachmentDecryptor(attachment.pointer)
    temp = directory / f".partial-{secrets.token_hex(8)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:

            def sink(data: bytes) -> None:
                out.write(decryptor.update(data))

            fetch(sink)
            out.write(decryptor.finalize())
            out.flush()
            os.fsync(out.fileno())
        # link() never replaces an existing name, so two listeners (or a file the user
        # put there) can never be overwritten: the next free suffix is taken instead.
        for candidate in _candidates(safe_filename(attachment.name)):
            final = directory / candidate
            try:
                os.link(temp, final)
            except FileExistsError:
                continue
            return final
        raise OSError(f"no free file name for {attachment.name!r} in {directory}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
