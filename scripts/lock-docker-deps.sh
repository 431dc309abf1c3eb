#!/usr/bin/env bash
# Writes the lock files the Docker images install from (docker/requirements-*.txt): every
# package at an exact version with its hashes, resolved for the images' platform (Linux x86_64,
# glibc of Debian bookworm, CPython 3.11), from pyproject.toml's ranges. Run it after changing
# pyproject.toml, JAX_VERSION in the Dockerfile, or the pins in docker/*.in, and commit the result:
#
#   pip install uv          # once; any recent uv (https://docs.astral.sh/uv/)
#   scripts/lock-docker-deps.sh
#
# The images install with `pip install --require-hashes --no-deps`, so a lock that misses a
# package fails the build instead of pulling an unpinned one.
set -euo pipefail
cd "$(dirname "$0")/.."

uv="${UV:-uv}"
command -v "$uv" >/dev/null 2>&1 || { echo "uv is needed: pip install uv (or set UV=/path/to/uv)" >&2; exit 1; }

# The one source of the JAX version: the Dockerfile's ARG (the image checks it after installing).
jax_version="$(sed -n 's/^ARG JAX_VERSION=\([0-9.]*\)$/\1/p' Dockerfile)"
[ -n "$jax_version" ] || { echo "no 'ARG JAX_VERSION=x.y.z' line in the Dockerfile" >&2; exit 1; }

compile() {  # compile OUTPUT EXTRA [EXTRA_INPUT...]
  local output="$1" extra="$2"; shift 2
  "$uv" pip compile pyproject.toml "$@" --extra "$extra" \
    --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
    --generate-hashes --no-strip-extras --quiet \
    --custom-compile-command "scripts/lock-docker-deps.sh" \
    --output-file "$output"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The backend per JAX_CUDA build argument: JAX with its CUDA 12 or 13 wheels, or plain JAX for
# the CPU image, at the Dockerfile's version, plus that build's own pins (docker/backend-*.in).
for variant in cuda12 cuda13 cpu; do
  if [ "$variant" = cpu ]; then spec="jax==$jax_version"; else spec="jax[$variant]==$jax_version"; fi
  echo "$spec" > "$tmp/jax-$variant.in"
  compile "docker/requirements-backend-$variant.txt" backend "$tmp/jax-$variant.in" "docker/backend-$variant.in"
done
compile docker/requirements-scheduler.txt scheduler
compile docker/requirements-frontend.txt frontend
echo "wrote docker/requirements-*.txt (jax $jax_version)"
