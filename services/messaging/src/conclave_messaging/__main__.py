"""Entry point: ``conclave-messaging`` or ``python -m conclave_messaging``."""

import sys

from conclave_kit.runtime import run_service

from conclave_messaging.server import SPEC


def main() -> None:
    """Runs the messaging service until SIGTERM/SIGINT; exits 0 after a clean shutdown."""
    sys.exit(run_service(SPEC))


if __name__ == "__main__":
    main()
