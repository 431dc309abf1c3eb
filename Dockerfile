# One Dockerfile with three targets (backend, scheduler, frontend), built by docker-compose.yml.
# One file rather than three: the services share the pinned base, the user they run as and the
# way dependencies are installed, and the build context must be the repository root anyway
# (every image needs the shared `playground` package).
#
#   docker build --target backend -t dalle-playground/backend:local .
#
# Dependencies come from lock files (docker/requirements-*.txt: every package at an exact
# version with its hashes, written by scripts/lock-docker-deps.sh from pyproject.toml), so a
# rebuild next year installs the same bytes. Layer order: lock file → pip install → code;
# editing code rebuilds only the last layers, the multi-GB CUDA layer is reused until the lock
# changes.
#
# The containers start as root only to run playground/container_entrypoint.py: it makes the
# service's data folder (a host folder owned by root or by the user) writable for APP_UID:APP_GID,
# then drops root for good and execs the service.

# A specific patch release on a specific Debian release, so a rebuild gets the same system.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
# The user the services run as. Set APP_UID/APP_GID (in .env) to your own `id -u`/`id -g`
# when the library or the model cache is a host folder, so the files there stay yours. Set them
# before the first build: every layer after the user's creation is rebuilt when they change.
ARG APP_UID=10001
ARG APP_GID=10001

FROM ${PYTHON_IMAGE} AS base
ARG APP_UID
ARG APP_GID
# APP_UID/APP_GID stay in the environment: the entrypoint drops to them.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HOME=/home/app \
    PYTHONPATH=/app \
    APP_UID=${APP_UID} \
    APP_GID=${APP_GID}
# The mount points exist in the image owned by that user: a new named volume copies this ownership.
RUN set -eux; \
    if [ "${APP_UID}" = "0" ] || [ "${APP_GID}" = "0" ]; then echo "APP_UID/APP_GID must not be 0 (root)" >&2; exit 1; fi; \
    getent group "${APP_GID}" >/dev/null || groupadd --gid "${APP_GID}" app; \
    useradd --no-log-init --uid "${APP_UID}" --gid "${APP_GID}" --home-dir /home/app --create-home --shell /usr/sbin/nologin app; \
    mkdir -p /app /library /cache; \
    chown "${APP_UID}:${APP_GID}" /library /cache
WORKDIR /app


FROM base AS backend
# JAX from PyPI with its CUDA wheels (cuBLAS, cuDNN, NCCL, ptxas ...): no CUDA base image is
# needed, the host's driver is mounted in by the NVIDIA Container Toolkit.
# JAX_CUDA picks the lock: cuda12 (driver >= 525, compute capability >= 5.2; cuDNN pinned to
# 9.10 for Pascal/Volta), cuda13 (driver >= 580, compute capability >= 7.5) or cpu (no GPU,
# docker-compose.cpu.yml). JAX_VERSION is what the locks were made for; scripts/lock-docker-deps.sh
# reads it from here and the check below fails the build if the lock disagrees.
ARG JAX_VERSION=0.10.2
ARG JAX_CUDA=cuda12
COPY docker/requirements-backend-${JAX_CUDA}.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements.txt \
    && python -c "import importlib.metadata as m, sys; v = m.version('jax'); sys.exit(None if v == '${JAX_VERSION}' else f'jax {v} is locked, the Dockerfile says JAX_VERSION=${JAX_VERSION}: run scripts/lock-docker-deps.sh')"
# NVIDIA_DRIVER_CAPABILITIES: the driver libraries the container needs (compute: CUDA;
# utility: nvidia-smi). HF_*: whatever the Hugging Face client keeps besides the model files
# goes to the cache volume, not the container's own layer, and without a second (chunk) copy
# of the downloaded gigabytes.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HOME=/cache/hf-home \
    HF_XET_CHUNK_CACHE_SIZE_BYTES=0 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MODEL_CACHE_DIR=/cache \
    BACKEND_HOST=0.0.0.0 \
    BACKEND_PORT=8080
# Each image gets the packages its service imports (tests/test_compose.py follows the imports):
# playground, the shared code, then its own package last. The backend's 20 MB (the demo model)
# stays out of the scheduler and frontend images.
COPY playground ./playground
COPY backend ./backend
EXPOSE 8080
# Healthy while the model downloads, compiles or is ready; unhealthy once /health says "error"
# (or does not answer). A short start period: a success during it ends it, and a load that
# fails must turn the container unhealthy within interval x retries, not after an hour.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "backend.healthcheck"]
ENTRYPOINT ["python", "-m", "playground.container_entrypoint", "--data-dir-from", "MODEL_CACHE_DIR", "--"]
CMD ["python", "-m", "backend"]


FROM base AS scheduler
COPY docker/requirements-scheduler.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements.txt
ENV LIBRARY_DIR=/library \
    REDIS_URL=redis://redis:6379/0 \
    BACKEND_URLS=http://backend:8080
COPY playground ./playground
COPY scheduler ./scheduler
ENTRYPOINT ["python", "-m", "playground.container_entrypoint", "--data-dir-from", "LIBRARY_DIR", "--"]
CMD ["python", "-m", "scheduler"]


FROM base AS frontend
COPY docker/requirements-frontend.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements.txt
ENV LIBRARY_DIR=/library \
    REDIS_URL=redis://redis:6379/0 \
    FRONTEND_HOST=0.0.0.0 \
    FRONTEND_PORT=8000
COPY playground ./playground
COPY frontend ./frontend
EXPOSE 8000
# Any answer of /health (503 there means a backend is not ready, not that this server is down).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import http.client as h; c = h.HTTPConnection('127.0.0.1', 8000, timeout=4); c.request('GET', '/health'); assert c.getresponse().status in (200, 503)"]
ENTRYPOINT ["python", "-m", "playground.container_entrypoint", "--data-dir-from", "LIBRARY_DIR", "--"]
CMD ["python", "-m", "frontend"]
