"""Media metrics (the kit adds per-RPC counts and latencies).

Labels never carry media ids, account ids or sizes of individual blobs: only totals and
durations, with the outcome of the stream.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Transfers of 1 MiB to 100 MiB take from milliseconds to minutes on slow links.
_TRANSFER_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

UPLOADED_BYTES = Counter(
    "conclave_media_uploaded_bytes_total", "Ciphertext bytes stored by UploadChunks."
)
DOWNLOADED_BYTES = Counter(
    "conclave_media_downloaded_bytes_total", "Ciphertext bytes sent by Download."
)
UPLOAD_SECONDS = Histogram(
    "conclave_media_upload_seconds",
    "Duration of one UploadChunks stream, by outcome (complete, partial, failed).",
    ("outcome",),
    buckets=_TRANSFER_BUCKETS,
)
DOWNLOAD_SECONDS = Histogram(
    "conclave_media_download_seconds",
    "Duration of one Download stream, by outcome (complete, failed).",
    ("outcome",),
    buckets=_TRANSFER_BUCKETS,
)
PURGED_BLOBS = Counter(
    "conclave_media_purged_blobs_total",
    "Blobs deleted by the purge (expired) or account erasure, by kind.",
    ("kind",),
)
