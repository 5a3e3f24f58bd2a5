"""Entry point: ``conclave-media`` or ``python -m conclave_media``."""

import sys

from conclave_kit.runtime import run_configured

from conclave_media.config import MediaConfig
from conclave_media.server import build_spec


def main() -> None:
    """Runs the media service until SIGTERM/SIGINT; exits 0 after a clean shutdown.

    A bad setting exits 2 with one line on stderr (common settings are checked first).
    """
    sys.exit(run_configured("media", 50054, 9104, lambda: build_spec(MediaConfig.from_env())))


if __name__ == "__main__":
    main()
