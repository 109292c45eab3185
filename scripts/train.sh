#!/usr/bin/env bash
# Train a config end to end (installs first; the synthetic config generates its data if missing).
#   bash scripts/train.sh DATASET [NUM_GPUS] [section.key=value ... | --resume | --overwrite | --output-dir DIR]
# DATASET: a config name in configs/ (helen, lapa, celebamask_hq, synthetic).
# Multi-GPU / multi-node (torchrun) when NUM_GPUS > 1 or NNODES > 1, from the environment:
#   NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500)
# e.g. NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash scripts/train.sh helen 4   (on each node)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/train.sh DATASET [NUM_GPUS] [overrides...]" >&2
  exit 2
fi
DATASET="$1"; shift
NUM_GPUS=1
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then NUM_GPUS="$1"; shift; fi
if [ ! -f "configs/${DATASET}.yaml" ]; then
  known=$(cd configs && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')
  echo "error: no config configs/${DATASET}.yaml: choose one of ${known% }" >&2
  exit 2
fi
bash scripts/install.sh
PY=.venv/bin/python
if [[ "$DATASET" == *synthetic* ]] && [ ! -f data/synthetic/train_list.txt ]; then
  echo "[train] generating the synthetic data set in data/synthetic"
  "$PY" tools/make_synthetic.py data/synthetic
fi
NNODES="${NNODES:-1}"
if [ "$NUM_GPUS" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
  # torchrun (dml_csr/engine/launch.py: a failed worker's error line and status, no torchrun report)
  exec "$PY" -m dml_csr.engine.launch --nproc_per_node "$NUM_GPUS" --nnodes "$NNODES" \
    --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}" \
    --master_port "${MASTER_PORT:-29500}" tools/train.py "$DATASET" "$@"
fi
exec "$PY" tools/train.py "$DATASET" "$@"
