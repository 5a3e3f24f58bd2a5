"""Entry point: ``conclave-keys`` or ``python -m conclave_keys``."""

import sys

from conclave_kit.config import ConfigError, ServiceConfig
from conclave_kit.runtime import run_service

from conclave_keys.config import KeysConfig
from conclave_keys.server import build_spec


def main() -> None:
    """Runs the keys service until SIGTERM/SIGINT; exits 0 after a clean shutdown.

    Exit code 2 with one line on stderr for a bad setting (common settings are checked
    first, so their messages do not depend on the keys-specific ones).
    """
    try:
        ServiceConfig.from_env("keys", default_grpc_port=50052, default_metrics_port=9102)
        config = KeysConfig.from_env()
    except ConfigError as err:
        print(f"conclave-keys: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_service(build_spec(config)))


if __name__ == "__main__":
    main()
