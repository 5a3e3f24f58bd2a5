"""Entry point: ``conclave-keys`` or ``python -m conclave_keys``."""

import sys

from conclave_kit.runtime import run_configured

from conclave_keys.config import KeysConfig
from conclave_keys.server import build_spec


def main() -> None:
    """Runs the keys service until SIGTERM/SIGINT; exits 0 after a clean shutdown.

    A bad setting exits 2 with one line on stderr (common settings are checked first).
    """
    sys.exit(run_configured("keys", 50052, 9102, lambda: build_spec(KeysConfig.from_env())))


if __name__ == "__main__":
    main()
