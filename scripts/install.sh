#!/usr/bin/env bash
# Make sure everything the project needs imports, then return. Safe to run any number of times.
#
#   bash scripts/install.sh                          # ./.venv, created if missing (default)
#   DMLCSR_PYTHON=/path/to/python bash scripts/install.sh
#                                                    # that interpreter as it is (e.g. a cluster's
#                                                    # CUDA torch): nothing already importable is
#                                                    # installed again, its torch is never replaced,
#                                                    # and nothing needs a registry when all is there
#   PYTHON=python3.11 bash scripts/install.sh        # the interpreter that creates ./.venv
#
# ./.venv: torch at the version CI tests (scripts/constraints.txt), then requirements.txt and the
# project (editable); skipped when requirements.txt, constraints.txt and setup.py are unchanged
# since the last successful install. DMLCSR_PYTHON: only the requirements that do not import
# (scripts/requirements_check.py) are pip-installed, with the interpreter's own torch version
# pinned; a missing optional one ("# optional:" in requirements.txt) is a warning instead; the
# project is not installed (scripts/env.sh puts it on PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_FLAGS=(-q --disable-pip-version-check)

if [ -n "${DMLCSR_PYTHON:-}" ]; then
  if ! "$DMLCSR_PYTHON" -c "import sys; assert sys.version_info >= (3, 10)" 2>/dev/null; then
    echo "error: DMLCSR_PYTHON=$DMLCSR_PYTHON does not run, or is older than Python 3.10" >&2
    exit 2
  fi
  missing=$("$DMLCSR_PYTHON" scripts/requirements_check.py requirements.txt)
  if [ -n "$missing" ]; then
    echo "[install] $DMLCSR_PYTHON lacks: $(echo "$missing" | tr '\n' ' ')" >&2
    pins=$(mktemp)
    trap 'rm -f "$pins"' EXIT
    # the interpreter's torch stays as it is (a CUDA build must not be swapped for another)
    "$DMLCSR_PYTHON" - > "$pins" <<'PY'
import importlib.metadata as m
try:
    print(f"torch=={m.version('torch')}")
except m.PackageNotFoundError:
    pass
PY
    mapfile -t wanted <<< "$missing"
    "$DMLCSR_PYTHON" -m pip install "${PIP_FLAGS[@]}" -c "$pins" "${wanted[@]}"
  fi
  exit 0
fi

PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
stamp="$VENV/.dml_csr_installed"
want="$(cat requirements.txt scripts/constraints.txt setup.py | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
echo "[install] installing torch and requirements into $VENV (about a minute the first time)"
# torch first, alone, at the tested version: the CPU wheel here, the CUDA build on GPU machines
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" -c scripts/constraints.txt torch
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" -c scripts/constraints.txt -r requirements.txt
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" --no-deps -e .
"$VENV/bin/python" -c "import torch, cv2, dml_csr; print('[install] torch', torch.__version__, '| opencv', cv2.__version__, '| cuda', torch.cuda.is_available())"
echo "$want" > "$stamp"
