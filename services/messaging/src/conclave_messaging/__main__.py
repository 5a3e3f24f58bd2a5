"""Entry point: ``conclave-messaging`` or ``python -m conclave_messaging``."""

import sys

from conclave_kit.runtime import run_configured

from conclave_messaging.config import MessagingConfig
from conclave_messaging.server import build_spec


def main() -> None:
    """Runs the messaging service until SIGTERM/SIGINT; exits 0 after a clean shutdown.

    A bad setting exits 2 with one line on stderr (common settings are checked first).
    """
    sys.exit(
        run_configured("messaging", 50053, 9103, lambda: build_spec(MessagingConfig.from_env()))
    )


if __name__ == "__main__":
    main()
