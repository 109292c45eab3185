#!/usr/bin/env bash
# Install everything into ./.venv (created if missing). Safe to run any number of times: when
# requirements.txt and setup.py are unchanged since the last successful install, it does nothing.
#   PYTHON=python3.11 bash scripts/install.sh     # choose the interpreter (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
stamp="$VENV/.dml_csr_installed"
want="$(cat requirements.txt setup.py | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
echo "[install] installing torch and requirements into $VENV (about a minute the first time)"
# torch first, alone: the pin resolves to the CPU wheel here and to the CUDA build on GPU machines.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
"$VENV/bin/python" -c "import torch, cv2, dml_csr; print('[install] torch', torch.__version__, '| opencv', cv2.__version__, '| cuda', torch.cuda.is_available())"
echo "$want" > "$stamp"
