#!/usr/bin/env bash
# The main job on the embedded default: install, generate the synthetic face data set, train a
# CPU-sized DML-CSR on it with the full schedule compressed (multi-task stage + 2 self-regulation
# cycles, configs/synthetic.yaml), score the best checkpoint on the test split and print the
# per-class F1 table. Safe to run again: finished steps are reused (the run resumes / is skipped).
#   bash scripts/quickstart.sh [section.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
source scripts/env.sh          # ./.venv, or DMLCSR_PYTHON as it is
if [ ! -f data/synthetic/train_list.txt ]; then
  "$PY" tools/make_synthetic.py data/synthetic
fi
RUN=runs/quickstart
resume=()
[ -f "$RUN/last.pth" ] && resume=(--resume)
"$PY" tools/train.py synthetic --output-dir "$RUN" "${resume[@]}" --test "$@"
echo "[quickstart] done in $(( $(date +%s) - start )) s: checkpoints, logs and TensorBoard files in $RUN"
