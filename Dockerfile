# One image for the operator and the worker: `matchops-operator`, `matchops-worker` and the
# `matchops` producer CLI, installed from uv.lock into a virtual environment.
#
# BASE_IMAGE is any Debian-based image with python3 3.11 and its venv module: the public
# Python image by default, or the one `make base-image` makes from Debian packages for
# machines without access to a registry. Builder and final stage share it, so the virtual
# environment's interpreter (/usr/local/bin or /usr/bin) is the same in both.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ARG UV_VERSION=0.13.9
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/matchops \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=0 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# The optional build secret `ca-bundle` (e.g. `--secret id=ca-bundle,src=/etc/ssl/certs/
# ca-certificates.crt`) is the trust store for downloads on networks that intercept TLS; as a
# secret it never lands in a layer.
RUN --mount=type=secret,id=ca-bundle \
    set -eu; \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi; \
    python3 -m venv /opt/uv; \
    /opt/uv/bin/pip install --quiet "uv==${UV_VERSION}"

WORKDIR /src
# Dependencies first, in a layer of their own: a source change does not reinstall them.
COPY pyproject.toml uv.lock ./
# Bytecode is compiled here, hash-checked rather than timestamp-checked: the read-only image
# never needs to write it, and copying the files between stages does not invalidate it.
RUN --mount=type=secret,id=ca-bundle --mount=type=cache,target=/root/.cache/uv \
    set -eu; \
    if [ -s /run/secrets/ca-bundle ]; then export SSL_CERT_FILE=/run/secrets/ca-bundle; fi; \
    /opt/uv/bin/uv sync --locked --no-dev --no-editable --no-install-project \
        --python "$(command -v python3)"; \
    python3 -m compileall -q -j 0 --invalidation-mode checked-hash /opt/matchops/lib
COPY README.md ./
COPY crds ./crds
COPY operator ./operator
COPY workers ./workers
# uv keys its cached build of a local project by pyproject.toml alone: without
# --reinstall-package, the cache mount hands back the wheel of the first build's sources.
RUN --mount=type=secret,id=ca-bundle --mount=type=cache,target=/root/.cache/uv \
    set -eu; \
    if [ -s /run/secrets/ca-bundle ]; then export SSL_CERT_FILE=/run/secrets/ca-bundle; fi; \
    /opt/uv/bin/uv sync --locked --no-dev --no-editable --reinstall-package matchops \
        --python "$(command -v python3)"; \
    python3 -m compileall -q -j 0 --invalidation-mode checked-hash \
        /opt/matchops/lib/python3*/site-packages/matchops_*

FROM ${BASE_IMAGE}
# A named account for the numeric user, so tools that look the user up find one; no home.
RUN groupadd --gid 65532 matchops \
 && useradd --uid 65532 --gid 65532 --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin matchops
ARG BASE_IMAGE
ARG VERSION=dev
# REVISION names the sources (a commit, or a digest of the working tree). Being set before the
# COPY below, it also keys that layer's cache: buildah 1.28 (podman 4.3) reuses a cached
# `COPY --from` layer even after the stage it copies from was rebuilt.
ARG REVISION=""
LABEL org.opencontainers.image.title="matchops" \
      org.opencontainers.image.description="Kubernetes operator and worker for a match-data ingestion pipeline (RabbitMQ to PostgreSQL)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
COPY --from=builder /opt/matchops /opt/matchops
ENV PATH=/opt/matchops/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1
# Numeric, so Kubernetes can enforce runAsNonRoot without reading /etc/passwd.
USER 65532:65532
WORKDIR /
# No ENTRYPOINT: a pod's `command` names the program (matchops-operator, matchops-worker,
# matchops) with nothing in front of it.
CMD ["matchops-operator"]
