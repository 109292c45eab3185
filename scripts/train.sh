#!/usr/bin/env bash
# Train a config end to end (installs first; the synthetic config generates its data if missing).
#   bash scripts/train.sh DATASET [NUM_GPUS] [section.key=value ... | --resume | --overwrite |
#                                             --output-dir DIR | --device cpu]
# DATASET: a config name in configs/ (helen, lapa, celebamask_hq, synthetic).
# NUM_GPUS given: that many GPUs are required (an error says what torch found when CUDA does not
# work or the node has fewer GPUs); --device cpu runs the processes on the CPU instead (gloo).
# NUM_GPUS left out: one process, on the GPU when there is one, else on the CPU.
# Several processes run under torchrun (dml_csr/engine/launch.py). One machine: a free port is
# picked (--standalone), so two runs on one machine do not collide. Several machines, from the
# environment on each node: NNODES, NODE_RANK (0), MASTER_ADDR (required), MASTER_PORT (29500);
# the output folder must be on a file system that every node mounts (checked at start).
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash scripts/train.sh helen 4   (on each node)
# DMLCSR_PYTHON=/path/to/python uses that interpreter as it is (scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/train.sh DATASET [NUM_GPUS] [overrides...]" >&2
  exit 2
fi
DATASET="$1"; shift
NUM_GPUS=""
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then NUM_GPUS="$1"; shift; fi
if [ ! -f "configs/${DATASET}.yaml" ]; then
  known=$(cd configs && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')
  echo "error: no config configs/${DATASET}.yaml: choose one of ${known% }" >&2
  exit 2
fi
NNODES="${NNODES:-1}"
if ! [[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || { [ -n "$NUM_GPUS" ] && [ "$NUM_GPUS" -lt 1 ]; }; then
  echo "error: NNODES (${NNODES}) and NUM_GPUS (${NUM_GPUS}) must be positive whole numbers" >&2
  exit 2
fi
if [ "$NNODES" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
  echo "error: NNODES=$NNODES needs MASTER_ADDR, the address of the node with NODE_RANK=0 that" \
       "every node can reach (the same on all nodes)" >&2
  exit 2
fi
device=()
if [ -n "$NUM_GPUS" ] && [[ " $* " != *" --device"* ]]; then
  device=(--device cuda)         # GPUs were asked for: no silent fall-back to the CPU
fi
source scripts/env.sh            # ./.venv, or DMLCSR_PYTHON as it is
if [[ "$DATASET" == *synthetic* ]] && [ ! -f data/synthetic/train_list.txt ]; then
  echo "[train] generating the synthetic data set in data/synthetic"
  "$PY" tools/make_synthetic.py data/synthetic
fi
NPROC="${NUM_GPUS:-1}"
if [ "$NPROC" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
  if [ "$NNODES" -gt 1 ]; then
    where=(--nnodes "$NNODES" --node_rank "${NODE_RANK:-0}" --master_addr "$MASTER_ADDR"
           --master_port "${MASTER_PORT:-29500}")
  elif [ -n "${MASTER_PORT:-}" ]; then
    where=(--master_addr 127.0.0.1 --master_port "$MASTER_PORT")
  else
    where=(--standalone)         # a free port on this machine
  fi
  # torchrun (dml_csr/engine/launch.py: a failed worker's error line and status, no torchrun report)
  exec "$PY" -m dml_csr.engine.launch --nproc_per_node "$NPROC" "${where[@]}" \
    tools/train.py "$DATASET" "$@" "${device[@]}"
fi
exec "$PY" tools/train.py "$DATASET" "$@" "${device[@]}"
