"""Entry point: ``conclave-auth`` or ``python -m conclave_auth``."""

import sys

from conclave_kit.runtime import run_configured

from conclave_auth.config import AuthConfig
from conclave_auth.server import build_spec


def main() -> None:
    """Runs the auth service until SIGTERM/SIGINT; exits 0 after a clean shutdown.

    A bad setting exits 2 with one line on stderr (common settings are checked first).
    """
    sys.exit(run_configured("auth", 50051, 9101, lambda: build_spec(AuthConfig.from_env())))


if __name__ == "__main__":
    main()
