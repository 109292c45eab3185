#!/usr/bin/env bash
# Install everything (if needed) and run the whole test suite on tiny synthetic data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest tests -q "$@"
