"""Entry point: ``conclave-retention`` or ``python -m conclave_retention``."""

import sys

from conclave_kit.runtime import run_service

from conclave_retention.server import SPEC


def main() -> None:
    """Runs the retention service until SIGTERM/SIGINT; exits 0 after a clean shutdown."""
    sys.exit(run_service(SPEC))


if __name__ == "__main__":
    main()
