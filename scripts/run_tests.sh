#!/usr/bin/env bash
# Install everything (if needed) and run the whole test suite on tiny synthetic data.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh          # ./.venv, or DMLCSR_PYTHON as it is
exec "$PY" -m pytest tests -q "$@"
