#!/usr/bin/env bash
# Sets up .venv if needed and runs the whole playground locally: Redis, backend (CPU),
# scheduler and frontend. Configuration: environment variables or .env (see .env.example).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh local
exec .venv/bin/python -m playground "$@"
