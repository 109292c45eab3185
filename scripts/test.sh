#!/usr/bin/env bash
# Evaluate a checkpoint with the release's protocol and print the paper's table beside it.
#   bash scripts/test.sh DATASET CHECKPOINT [extra tools/test.py args]
#   bash scripts/test.sh lapa runs/lapa/best.pth --flip --device cuda
# DATASET is a config name (configs/DATASET.yaml). The result JSON goes to
# <checkpoint dir>/metrics_<split>.json unless --out is given; an earlier result there is kept and
# the run stops with one error line, unless --overwrite is given. Runs from the repository root, so
# relative paths among the extra arguments are relative to it (CHECKPOINT may be relative to the
# current folder).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/test.sh DATASET CHECKPOINT [tools/test.py args]" >&2
  exit 2
fi
dataset="$1"
if [ ! -f "$2" ]; then
  echo "error: checkpoint $2 does not exist: check the path" >&2
  exit 2
fi
ckpt="$(realpath "$2")"
shift 2
cd "$(dirname "$0")/.."
source scripts/env.sh          # ./.venv, or DMLCSR_PYTHON as it is

split=test
have_out=0
prev=""
for arg in "$@"; do
  case "$arg" in
    --out|--out=*) have_out=1 ;;
    --split=*) split="${arg#--split=}" ;;
  esac
  if [ "$prev" = "--split" ]; then split="$arg"; fi
  prev="$arg"
done
extra=()
if [ "$have_out" = 0 ]; then
  extra=(--out "$(dirname "$ckpt")/metrics_${split}.json")
fi
exec "$PY" tools/test.py "$dataset" --checkpoint "$ckpt" "${extra[@]}" "$@"
