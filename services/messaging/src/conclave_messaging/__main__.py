"""Entry point: ``conclave-messaging`` or ``python -m conclave_messaging``."""

import sys

from conclave_kit.config import ConfigError
from conclave_kit.runtime import run_service

from conclave_messaging.config import MessagingConfig
from conclave_messaging.server import build_spec


def main() -> None:
    """Runs the messaging service until SIGTERM/SIGINT; exits 0 after a clean shutdown."""
    try:
        config = MessagingConfig.from_env()
    except ConfigError as err:
        print(f"conclave-messaging: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_service(build_spec(config), config=config.service))


if __name__ == "__main__":
    main()
