"""The ``conclave`` command-line interface.

Conventions every command keeps (later commands extend this parser):

* no prompts when the needed flags are given (``--password-stdin``, ``--code``);
* ``--json`` prints machine-readable output (one JSON document, or one object per line
  for streams);
* local state lives under ``$CONCLAVE_HOME`` (default ``~/.conclave``);
* server addresses come from ``--host`` or ``CONCLAVE_<SERVICE>_ADDR``, dev ports by default;
* any error exits non-zero with one line ``conclave: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from conclave_client.endpoints import Endpoints
from conclave_client.status import check_all

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing failure; printed as one line."""


def _cmd_status(args: argparse.Namespace) -> int:
    endpoints = Endpoints.resolve(args.host)
    results = check_all(endpoints, timeout=args.timeout)
    healthy = all(r.healthy for r in results)
    if args.json:
        print(json.dumps({"healthy": healthy, "services": [asdict(r) for r in results]}))
    else:
        table = Table(title="Conclave services", title_justify="left")
        for column in ("service", "address", "status", "latency"):
            table.add_column(column)
        for r in results:
            colour = "green" if r.healthy else "red"
            latency = f"{r.latency_ms:.1f} ms" if r.latency_ms is not None else "-"
            table.add_row(r.service, r.address, f"[{colour}]{r.status}[/{colour}]", latency)
        Console().print(table)
    return EXIT_OK if healthy else EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    """Returns the full argument parser (exposed for tests and docs)."""
    # Global options are accepted before or after the command (`conclave status --json`);
    # SUPPRESS keeps a subcommand's unset copy from overwriting the value given earlier.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "--host",
        default=argparse.SUPPRESS,
        help="host running all five services on their dev ports (50051-50055)",
    )
    parser = argparse.ArgumentParser(
        prog="conclave",
        parents=[common],
        description="Conclave end-to-end-encrypted messaging: command-line client.",
        epilog="State: $CONCLAVE_HOME (default ~/.conclave). "
        "Servers: --host or CONCLAVE_<SERVICE>_ADDR (default 127.0.0.1:50051-50055).",
    )
    parser.set_defaults(json=False, host=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = sub.add_parser(
        "status", parents=[common], help="health of every service (exit 1 if any unhealthy)"
    )
    status.add_argument("--timeout", type=float, default=2.0, help="seconds per service")
    status.set_defaults(handler=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``conclave``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        sys.exit(EXIT_USAGE)
    try:
        code = handler(args)
    except CliError as err:
        print(f"conclave: error: {err}", file=sys.stderr)
        code = EXIT_ERROR
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
