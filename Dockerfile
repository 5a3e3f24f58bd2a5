# syntax=docker/dockerfile:1
# Conclave: ONE image with the five service entrypoints (conclave-auth, conclave-keys,
# conclave-messaging, conclave-media, conclave-retention); each Deployment picks its own with
# `command:`. Why one image and not five: docs/decisions/0003-kubernetes.md.
#
#   docker build -t conclave:dev .
#   docker run --rm --env-file conclave.env conclave:dev conclave-auth
#
# Settings are environment variables only (docs/operations.md). Pin PYTHON_IMAGE to a digest
# in your release pipeline.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: generate the gRPC code, then install the services into /opt/conclave ----------
FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "errexit", "-o", "nounset", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
RUN python -m pip install "uv==0.13.8"
WORKDIR /src
COPY . .
# hatchling leaves out files matched by .gitignore, and the generated protobuf code is
# git-ignored: without this the conclave-proto wheel would be empty.
RUN rm -f .gitignore
# Code generation needs grpcio-tools (dev group of the lock file) in a throwaway venv.
RUN uv sync --locked --only-group dev \
 && rm -rf libs/proto/src/conclave \
 && find proto -name '*.proto' -print0 | sort -z \
  | xargs -0 .venv/bin/python -m grpc_tools.protoc -Iproto \
      --python_out=libs/proto/src --grpc_python_out=libs/proto/src
# Runtime venv: third-party packages exactly as locked (hashes checked), then the workspace
# members the services need, as regular (non-editable) wheels. The dev stack (embedded
# NATS and PostgreSQL binaries), the client and the crypto library stay out of the image.
RUN uv venv --python /usr/local/bin/python3.11 /opt/conclave \
 && uv export --locked --no-dev --no-emit-workspace --format requirements-txt \
      --package conclave-auth --package conclave-keys --package conclave-messaging \
      --package conclave-media --package conclave-retention \
      --output-file /tmp/requirements.txt \
 && uv pip install --python /opt/conclave/bin/python --require-hashes -r /tmp/requirements.txt \
 && uv pip install --python /opt/conclave/bin/python --no-deps \
      libs/proto libs/kit \
      services/auth services/keys services/messaging services/media services/retention

# ---- runtime: the interpreter, the venv and nothing to build or install with ----------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="conclave" \
      org.opencontainers.image.description="Conclave services: auth, keys, messaging, media, retention"
# No package manager for Python in the final image, and a fixed unprivileged user
# (10001 matches runAsUser in deploy/k8s).
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && groupadd --system --gid 10001 conclave \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin conclave
COPY --from=build /opt/conclave /opt/conclave
# Bytecode was compiled at build time; the root filesystem is read-only at run time.
ENV PATH="/opt/conclave/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONCLAVE_GRPC_HOST=0.0.0.0 \
    CONCLAVE_METRICS_HOST=0.0.0.0
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 50052 50053 50054 50055 9101 9102 9103 9104 9105
CMD ["python", "-c", "raise SystemExit('choose a service: conclave-auth | conclave-keys | conclave-messaging | conclave-media | conclave-retention')"]
