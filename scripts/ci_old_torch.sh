#!/usr/bin/env bash
# The oldest supported torch (requirements.txt's lower bound), a fast subset, so that the range
# stays true: model parity with the release, a tiny training run through both stages with
# --test, tools/infer.py and tools/export_onnx.py (the DRY_RUN of scripts/gpu_check.sh), the
# checkpoint loaders (weights_only, the poisoned and older files), a two-process gloo run (torch
# 2.6's shutdown deadlock: distributed.destroy_group) and the interpreter checks. 36 tests, about
# 4 minutes on the 2-core machine once the venv exists.
#
#   bash scripts/ci_old_torch.sh [pytest args]
#   OLD_TORCH=2.6.0 OLD_TORCH_PYTHON=python3.11 bash scripts/ci_old_torch.sh   # the defaults
#
# The virtual environment lives outside the clone, in ${XDG_CACHE_HOME:-~/.cache}/dml_csr/
# (DMLCSR_OLD_TORCH_VENV to choose it), and is reused while requirements.txt and the torch version
# are unchanged. PyPI's torch for Linux is the CUDA build: it runs on the CPU, but imports only
# with its nvidia-* libraries (pip install torch --no-deps does not import: libcudart, libcublas,
# libcudnn ... are linked in), so the first run installs all of it (torch 2.6.0 on Python 3.11
# with requirements.txt: 236 s and 5.7 GB on the project's 2-core machine; docs/versions.md).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="${OLD_TORCH:-2.6.0}"
BASE="${OLD_TORCH_PYTHON:-python3.11}"
command -v "$BASE" > /dev/null || BASE=python3
VENV="${DMLCSR_OLD_TORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dml_csr/venv-torch$TORCH}"
stamp="$VENV/.dml_csr_installed"
want="$( (echo "torch==$TORCH"; "$BASE" -c 'import sys; print(sys.version_info[:2])'; \
          cat requirements.txt) | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[ci_old_torch] installing torch $TORCH and requirements.txt into $VENV"
  start=$(date +%s)
  if [ -e "$VENV" ] && [ ! -f "$VENV/.dml_csr_ci" ]; then
    echo "error: $VENV exists but was not made by this script: remove it or set" \
         "DMLCSR_OLD_TORCH_VENV to another folder" >&2
    exit 2
  fi
  rm -rf "$VENV"                  # ours: for another torch, other requirements, or unfinished
  mkdir -p "$(dirname "$VENV")"
  "$BASE" -m venv "$VENV"
  touch "$VENV/.dml_csr_ci"
  pins=$(mktemp)
  trap 'rm -f "$pins"' EXIT
  echo "torch==$TORCH" > "$pins"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$pins" torch
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$pins" -r requirements.txt
  echo "$want" > "$stamp"
  echo "[ci_old_torch] installed in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1)"
fi
"$VENV/bin/python" -c "import torch; print('[ci_old_torch] torch', torch.__version__)"
# DMLCSR_PYTHON: that interpreter as it is, the project from this clone (scripts/env.sh sets PY)
export DMLCSR_PYTHON="$VENV/bin/python"
source scripts/env.sh
exec "$PY" -m pytest -q -rs \
  tests/test_model.py \
  tests/test_checkpoint.py \
  "tests/test_hostile_files.py::test_the_api_refuses_poisoned_files_and_trusts_only_when_told" \
  "tests/test_hostile_files.py::test_our_files_and_older_best_files_load_without_unpickling" \
  "tests/test_abn.py::test_memory_backend_two_process_gloo" \
  tests/test_gpu_check.py \
  tests/test_devices.py \
  "$@"
