"""Entry point: ``conclave-media`` or ``python -m conclave_media``."""

import sys

from conclave_kit.config import ConfigError, ServiceConfig
from conclave_kit.runtime import run_service

from conclave_media.config import MediaConfig
from conclave_media.server import build_spec


def main() -> None:
    """Runs the media service until SIGTERM/SIGINT; exits 0 after a clean shutdown.

    Exit code 2 with one line on stderr for a bad setting (common settings are checked
    first, so their messages do not depend on the media-specific ones).
    """
    try:
        ServiceConfig.from_env("media", default_grpc_port=50054, default_metrics_port=9104)
        config = MediaConfig.from_env()
    except ConfigError as err:
        print(f"conclave-media: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_service(build_spec(config)))


if __name__ == "__main__":
    main()
