"""Local client state directory: ``$CONCLAVE_HOME`` (default ``~/.conclave``).

Each user (or test) points ``CONCLAVE_HOME`` at its own directory, so several users can run
the CLI side by side on one machine. The directory is created private (0700): it will hold
identity keys and session state.
"""

from __future__ import annotations

import os
from pathlib import Path


def conclave_home(create: bool = True) -> Path:
    """Returns the client state directory, creating it with mode 0700 if asked."""
    home = Path(os.environ.get("CONCLAVE_HOME") or Path.home() / ".conclave").expanduser()
    if create:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home
