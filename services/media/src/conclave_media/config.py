"""Settings specific to the media service (the common ones are in ``conclave_kit.config``).

Every variable is read once at start-up; a bad value is a one-line :class:`ConfigError`.

=====================================  ==============  ====================================
variable                               default         meaning
=====================================  ==============  ====================================
``CONCLAVE_MEDIA_MAX_FILE_BYTES``      104,857,600     largest blob (ciphertext) accepted
``CONCLAVE_MEDIA_QUOTA_BYTES``         2 GiB           stored + reserved bytes per account;
                                                       0 = unlimited
``CONCLAVE_MEDIA_BLOB_TTL_SECONDS``    30 days         life of a completed blob
``CONCLAVE_MEDIA_UPLOAD_TTL_SECONDS``  24 hours        an incomplete upload is discarded
                                                       this long after CreateUpload
=====================================  ==============  ====================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from conclave_kit.config import Env

MIB = 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 100 * MIB
DEFAULT_QUOTA_BYTES = 2048 * MIB
DEFAULT_BLOB_TTL_SECONDS = 30 * 24 * 3600.0
DEFAULT_UPLOAD_TTL_SECONDS = 24 * 3600.0
# The contract caps blobs at what one chunk index space and one int64 comfortably hold;
# an operator may lower the limit, and raise it up to 1 GiB (the download stream of a
# larger blob would outlive most client deadlines).
MAX_FILE_BYTES_CEILING = 1024 * MIB


@dataclass(frozen=True)
class MediaConfig:
    """Media-service settings.

    Attributes:
        max_file_bytes: Largest ciphertext blob accepted by CreateUpload.
        quota_bytes: Bytes an account may hold (complete blobs plus reservations of
            incomplete uploads); 0 means unlimited.
        blob_ttl_seconds: How long a completed blob is served (then purged).
        upload_ttl_seconds: How long an incomplete upload is kept after CreateUpload.
    """

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    quota_bytes: int = DEFAULT_QUOTA_BYTES
    blob_ttl_seconds: float = DEFAULT_BLOB_TTL_SECONDS
    upload_ttl_seconds: float = DEFAULT_UPLOAD_TTL_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MediaConfig:
        """Reads the media settings.

        Raises:
            ConfigError: A setting is malformed or out of range (one line naming it).
        """
        env = Env(environ)
        return cls(
            max_file_bytes=env.integer(
                "CONCLAVE_MEDIA_MAX_FILE_BYTES",
                DEFAULT_MAX_FILE_BYTES,
                minimum=1,
                maximum=MAX_FILE_BYTES_CEILING,
            ),
            quota_bytes=env.integer("CONCLAVE_MEDIA_QUOTA_BYTES", DEFAULT_QUOTA_BYTES, minimum=0),
            blob_ttl_seconds=env.seconds(
                "CONCLAVE_MEDIA_BLOB_TTL_SECONDS", DEFAULT_BLOB_TTL_SECONDS, minimum=60
            ),
            upload_ttl_seconds=env.seconds(
                "CONCLAVE_MEDIA_UPLOAD_TTL_SECONDS", DEFAULT_UPLOAD_TTL_SECONDS, minimum=60
            ),
        )
