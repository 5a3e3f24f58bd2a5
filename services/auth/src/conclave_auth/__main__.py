"""Entry point: ``conclave-auth`` or ``python -m conclave_auth``."""

import sys

from conclave_kit.runtime import run_service

from conclave_auth.server import SPEC


def main() -> None:
    """Runs the auth service until SIGTERM/SIGINT; exits 0 after a clean shutdown."""
    sys.exit(run_service(SPEC))


if __name__ == "__main__":
    main()
