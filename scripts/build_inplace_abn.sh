#!/usr/bin/env bash
# Optional: build the compiled inplace-abn package (1.1.0) into ./.venv (or DMLCSR_PYTHON's
# environment).
# Nothing needs it: without it the pure-PyTorch ABN (same names, same maths) is used.
# With it, ABN layers on CUDA tensors use its kernels (model.args.norm_backend=auto|compiled).
# It compiles C++ (and CUDA when nvcc and a CUDA build of torch are present): a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh          # ./.venv, or DMLCSR_PYTHON as it is
PIP=("$PY" -m pip install --disable-pip-version-check)
# Step 1: its build needs setuptools_scm and the already-installed torch (hence no build isolation).
"${PIP[@]}" setuptools wheel setuptools_scm
# Step 2: build from source against the installed torch; no cache, so a CPU-only build made
# earlier is never reused on a GPU machine.
"${PIP[@]}" --no-build-isolation --no-cache-dir inplace-abn==1.1.0
"$PY" - <<'PY'
import torch
from dml_csr.layers.abn import compiled_abn_available
print("inplace-abn importable:", compiled_abn_available(), "| CUDA:", torch.cuda.is_available())
PY
