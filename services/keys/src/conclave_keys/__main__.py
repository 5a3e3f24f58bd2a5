"""Entry point: ``conclave-keys`` or ``python -m conclave_keys``."""

import sys

from conclave_kit.runtime import run_service

from conclave_keys.server import SPEC


def main() -> None:
    """Runs the keys service until SIGTERM/SIGINT; exits 0 after a clean shutdown."""
    sys.exit(run_service(SPEC))


if __name__ == "__main__":
    main()
