"""Entry point: ``conclave-auth`` or ``python -m conclave_auth``."""

import sys

from conclave_kit.config import ConfigError
from conclave_kit.runtime import run_service

from conclave_auth.config import AuthConfig
from conclave_auth.server import build_spec


def main() -> None:
    """Runs the auth service until SIGTERM/SIGINT; exits 0 after a clean shutdown."""
    try:
        config = AuthConfig.from_env()
    except ConfigError as err:
        print(f"conclave-auth: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_service(build_spec(config), config=config.service))


if __name__ == "__main__":
    main()
