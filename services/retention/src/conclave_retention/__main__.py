"""Entry point: ``conclave-retention`` or ``python -m conclave_retention``."""

import sys

from conclave_kit.runtime import run_configured

from conclave_retention.config import RetentionConfig
from conclave_retention.server import build_spec


def main() -> None:
    """Runs the retention service until SIGTERM/SIGINT; exits 0 after a clean shutdown.

    A bad setting exits 2 with one line on stderr (common settings are checked first).
    """
    sys.exit(
        run_configured("retention", 50055, 9105, lambda: build_spec(RetentionConfig.from_env()))
    )


if __name__ == "__main__":
    main()
