# One Dockerfile with three targets (backend, scheduler, frontend), built by docker-compose.yml.
# One file rather than three: the services share the pinned base, the non-root user and the way
# dependencies are installed from pyproject.toml, and the build context must be the repository
# root anyway (every image needs pyproject.toml and the shared `playground` package).
#
#   docker build --target backend -t dalle-playground/backend:local .
#
# Layer order: pyproject.toml → requirements of one extra → pip install → code. Editing code
# rebuilds only the last layers; the multi-GB CUDA layer is reused until pyproject.toml or the
# JAX build arguments change.

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
# The mount points exist in the image owned by that user: a new named volume copies this ownership.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HOME=/home/app \
    PYTHONPATH=/app
RUN set -eux; \
    if [ "${APP_UID}" = "0" ] || [ "${APP_GID}" = "0" ]; then echo "APP_UID/APP_GID must not be 0 (root)" >&2; exit 1; fi; \
    getent group "${APP_GID}" >/dev/null || groupadd --gid "${APP_GID}" app; \
    useradd --no-log-init --uid "${APP_UID}" --gid "${APP_GID}" --home-dir /home/app --create-home --shell /usr/sbin/nologin app; \
    mkdir -p /app /library /cache; \
    chown "${APP_UID}:${APP_GID}" /library /cache
WORKDIR /app
COPY pyproject.toml ./
# One requirements file per extra, generated from pyproject.toml, so the dependency layers are
# built before (and cached apart from) the code. The project itself is not pip-installed: its
# packages are copied into /app (on PYTHONPATH) and run with `python -m`.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; [open(f'/tmp/requirements-{extra}.txt', 'w').write('\n'.join(p['dependencies'] + p['optional-dependencies'][extra]) + '\n') for extra in ('backend', 'scheduler', 'frontend')]" \
    && cat /tmp/requirements-*.txt


FROM base AS backend
# JAX from PyPI with its CUDA wheels (cuBLAS, cuDNN, NCCL, ptxas ...): no CUDA base image is
# needed, the host's driver is mounted in by the NVIDIA Container Toolkit.
# cuda12 runs on NVIDIA drivers >= 525; cuda13 needs >= 580. Pinned for a reproducible image,
# inside pyproject.toml's jax range (tests/test_compose.py checks that).
ARG JAX_VERSION=0.10.2
ARG JAX_CUDA=cuda12
RUN pip install -r /tmp/requirements-backend.txt "jax[${JAX_CUDA}]==${JAX_VERSION}"
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
# Every image gets all four packages (a few hundred KB of source): a service importing a shared
# constant from another package must not break only inside Docker. Its own package goes last.
COPY playground ./playground
COPY scheduler ./scheduler
COPY frontend ./frontend
COPY backend ./backend
ARG APP_UID
ARG APP_GID
USER ${APP_UID}:${APP_GID}
EXPOSE 8080
# 200 once the model is loaded and compiled; 503 while it loads (urlopen raises on 503).
HEALTHCHECK --interval=15s --timeout=10s --start-period=30m --retries=4 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=8)"]
CMD ["python", "-m", "backend"]


FROM base AS scheduler
RUN pip install -r /tmp/requirements-scheduler.txt
ENV LIBRARY_DIR=/library \
    REDIS_URL=redis://redis:6379/0 \
    BACKEND_URLS=http://backend:8080
COPY playground ./playground
COPY backend ./backend
COPY frontend ./frontend
COPY scheduler ./scheduler
ARG APP_UID
ARG APP_GID
USER ${APP_UID}:${APP_GID}
CMD ["python", "-m", "scheduler"]


FROM base AS frontend
RUN pip install -r /tmp/requirements-frontend.txt
ENV LIBRARY_DIR=/library \
    REDIS_URL=redis://redis:6379/0 \
    FRONTEND_HOST=0.0.0.0 \
    FRONTEND_PORT=8000
COPY playground ./playground
COPY backend ./backend
COPY scheduler ./scheduler
COPY frontend ./frontend
ARG APP_UID
ARG APP_GID
USER ${APP_UID}:${APP_GID}
EXPOSE 8000
# Any answer of /health (503 there means a backend is not ready, not that this server is down).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import http.client as h; c = h.HTTPConnection('127.0.0.1', 8000, timeout=4); c.request('GET', '/health'); assert c.getresponse().status in (200, 503)"]
CMD ["python", "-m", "frontend"]
