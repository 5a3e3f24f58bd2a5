"""Conclave service kit: what every Conclave service shares, written once.

Modules, each with one job:

* :mod:`conclave_kit.config` - environment variables into frozen dataclasses, fail fast.
* :mod:`conclave_kit.logging` - structlog JSON logs with request ids and redaction.
* :mod:`conclave_kit.metrics` - Prometheus gRPC metrics on a separate HTTP port.
* :mod:`conclave_kit.errors` - domain errors carrying a gRPC status and a stable reason.
* :mod:`conclave_kit.tokens` - Ed25519 access tokens (signing for auth, verifying everywhere).
* :mod:`conclave_kit.interceptor` - one interceptor: request id, auth mode, errors, metrics.
* :mod:`conclave_kit.database` / :mod:`conclave_kit.migrations` - asyncpg pool, SQL migrations.
* :mod:`conclave_kit.messaging_bus` - NATS/JetStream connection and idempotent stream set-up.
* :mod:`conclave_kit.runtime` - builds the gRPC server, health, reflection, graceful shutdown.
* :mod:`conclave_kit.pending` - ``UNIMPLEMENTED`` answers for capabilities not built yet.
"""
