"""Conclave client-side end-to-end encryption (docs/protocol.md).

Pure library: no network, no server imports. Server code must never import it.
"""

__version__ = "0.1.0"
