"""Entry point: ``conclave-retention`` or ``python -m conclave_retention``."""

import sys

from conclave_kit.config import ConfigError, ServiceConfig
from conclave_kit.runtime import run_service

from conclave_retention.config import RetentionConfig
from conclave_retention.server import build_spec


def main() -> None:
    """Runs the retention service until SIGTERM/SIGINT; exits 0 after a clean shutdown.

    Exit code 2 with one line on stderr for a bad setting (common settings first).
    """
    try:
        ServiceConfig.from_env("retention", default_grpc_port=50055, default_metrics_port=9105)
        config = RetentionConfig.from_env()
    except ConfigError as err:
        print(f"conclave-retention: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_service(build_spec(config)))


if __name__ == "__main__":
    main()
