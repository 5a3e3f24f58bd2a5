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
``CONCLAVE_MEDIA_UPLOAD_BURST``        120             CreateUpload calls per account in a
                                                       burst
``CONCLAVE_MEDIA_UPLOAD_PER_SECOND``   0.5             ... refilled at this rate (1,800/h)
=====================================  ==============  ====================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from conclave_kit.config import ConfigError, Env
from conclave_kit.ratelimit import Limit

MIB = 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 100 * MIB
DEFAULT_QUOTA_BYTES = 2048 * MIB
DEFAULT_BLOB_TTL_SECONDS = 30 * 24 * 3600.0
DEFAULT_UPLOAD_TTL_SECONDS = 24 * 3600.0
# Operators may lower the per-file limit, or raise it up to 1 GiB: one download stream of a
# larger blob would outlive typical client deadlines, and clients pad sizes into buckets
# that grow with the size, so bigger files belong in another product.
MAX_FILE_BYTES_CEILING = 1024 * MIB
# A person attaches a few files at a time; a script creating uploads in a loop (to fill
# storage or to probe) is slowed to one every two seconds after the burst.
DEFAULT_UPLOAD_LIMIT = Limit("media uploads", 120.0, 0.5)


@dataclass(frozen=True)
class MediaConfig:
    """Media-service settings.

    Attributes:
        max_file_bytes: Largest ciphertext blob accepted by CreateUpload.
        quota_bytes: Bytes an account may hold (complete blobs plus reservations of
            incomplete uploads); 0 means unlimited.
        blob_ttl_seconds: How long a completed blob is served (then purged).
        upload_ttl_seconds: How long an incomplete upload is kept after CreateUpload.
        upload_limit: CreateUpload calls per account (token bucket).
    """

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    quota_bytes: int = DEFAULT_QUOTA_BYTES
    blob_ttl_seconds: float = DEFAULT_BLOB_TTL_SECONDS
    upload_ttl_seconds: float = DEFAULT_UPLOAD_TTL_SECONDS
    upload_limit: Limit = DEFAULT_UPLOAD_LIMIT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MediaConfig:
        """Reads the media settings.

        Raises:
            ConfigError: A setting is malformed or out of range (one line naming it).
        """
        env = Env(environ)
        rate = env.seconds(
            "CONCLAVE_MEDIA_UPLOAD_PER_SECOND", DEFAULT_UPLOAD_LIMIT.refill_per_second
        )
        if rate <= 0:
            raise ConfigError("CONCLAVE_MEDIA_UPLOAD_PER_SECOND: must be greater than 0")
        burst = env.integer(
            "CONCLAVE_MEDIA_UPLOAD_BURST", int(DEFAULT_UPLOAD_LIMIT.capacity), minimum=1
        )
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
            upload_limit=Limit(DEFAULT_UPLOAD_LIMIT.name, float(burst), rate),
        )
