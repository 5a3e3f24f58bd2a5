"""Where the client finds each service.

Resolution order per service: ``--host`` flag (dev ports on that host), then the variable
``CONCLAVE_<SERVICE>_ADDR`` (``host:port``), then the dev default ``127.0.0.1:5005x``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEV_PORTS = {"auth": 50051, "keys": 50052, "messaging": 50053, "media": 50054, "retention": 50055}


@dataclass(frozen=True)
class Endpoints:
    """gRPC addresses (``host:port``) of the five services."""

    addresses: Mapping[str, str]

    def __getitem__(self, service: str) -> str:
        return self.addresses[service]

    @classmethod
    def resolve(
        cls, host: str | None = None, environ: Mapping[str, str] | None = None
    ) -> Endpoints:
        """Builds the address map (see module docstring for precedence)."""
        env = os.environ if environ is None else environ
        addresses: dict[str, str] = {}
        for service, port in DEV_PORTS.items():
            if host:
                addresses[service] = f"{host}:{port}"
            else:
                addresses[service] = (
                    env.get(f"CONCLAVE_{service.upper()}_ADDR") or f"127.0.0.1:{port}"
                )
        return cls(addresses)
