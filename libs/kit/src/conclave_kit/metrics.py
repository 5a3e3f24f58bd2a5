"""Prometheus metrics shared by every service, served on a separate HTTP port.

Names follow the grpc-ecosystem convention (``grpc_server_handled_total`` ...) so stock
dashboards work; Conclave's own metrics are prefixed ``conclave_``. Labels never carry
account, device, session or group ids: cardinality stays bounded and metrics leak no
metadata. Process metrics (CPU, memory, fds) come from the default registry's collectors.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_RPC_LABELS = ("grpc_service", "grpc_method", "grpc_type")

GRPC_STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _RPC_LABELS)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    (*_RPC_LABELS, "grpc_code"),
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from RPC start to completion (for streams: until the stream ends).",
    (*_RPC_LABELS, "grpc_code"),
    # Unary targets are a few ms; the tail buckets catch Argon2 logins and long streams.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BUILD_INFO = Gauge("conclave_build_info", "Always 1; labels say what runs.", ("service", "version"))
DEPENDENCY_UP = Gauge(
    "conclave_dependency_up", "1 while the named dependency is connected.", ("dependency",)
)


def start_metrics_server(host: str, port: int) -> tuple[WSGIServer, int]:
    """Serves ``/metrics`` from a daemon thread.

    Args:
        host: Bind address.
        port: Bind port; 0 picks a free one.

    Returns:
        The HTTP server (call ``shutdown()`` to stop it) and the port it bound.
    """
    server, _thread = start_http_server(port, addr=host)
    assert isinstance(_thread, threading.Thread)
    return server, int(server.server_port)
