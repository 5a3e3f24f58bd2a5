"""Entry point: ``conclave-media`` or ``python -m conclave_media``."""

import sys

from conclave_kit.runtime import run_service

from conclave_media.server import SPEC


def main() -> None:
    """Runs the media service until SIGTERM/SIGINT; exits 0 after a clean shutdown."""
    sys.exit(run_service(SPEC))


if __name__ == "__main__":
    main()
