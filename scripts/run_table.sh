#!/usr/bin/env bash
# Train, test and tabulate every row of one of the paper's ablation tables (docs/ablations.md).
#   bash scripts/run_table.sh TABLE DATASET [NUM_GPUS] [section.key=value ...]
#   bash scripts/run_table.sh 5 lapa 4
#   bash scripts/run_table.sh 5 synthetic              # CPU, a few minutes per row
# TABLE: 4, 5 or 6. DATASET: helen | lapa | celebamask_hq | synthetic. NUM_GPUS: processes for
# torchrun (default 1: plain python, on the GPU when there is one, else on the CPU). The rows are
# the paper's (dml_csr/eval/paper.py); row ROW trains configs/ablations/DATASET/ROW.yaml into its
# output_dir. A row whose run folder already holds last.pth is resumed (a finished run is only
# re-tested); RETRAIN=1 starts every row afresh. Each best.pth is scored on the test split into
# OUTPUT_DIR/metrics_test.json (meta.row = ROW; the row's earlier result is replaced), then
# tools/make_tables.py prints the table beside the paper's (synthetic has no paper column: see the
# per-row summary printed before it). The overrides go to both tools/train.py and tools/test.py.
# Installs what is missing into ./.venv (scripts/install.sh; DMLCSR_PYTHON: that interpreter).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/run_table.sh TABLE DATASET [NUM_GPUS] [section.key=value ...]" >&2
  exit 2
fi
table="$1"
dataset="$2"
shift 2
gpus=1
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  gpus="$1"
  shift
fi
overrides=("$@")
cd "$(dirname "$0")/.."

case "$table" in 4|5|6) ;; *) echo "error: TABLE must be 4, 5 or 6, got '$table'" >&2; exit 2 ;; esac
if [ ! -d "configs/ablations/$dataset" ]; then
  known=$(cd configs/ablations && ls -d */ | tr -d / | tr '\n' ' ')
  echo "error: no ablation configs for data set '$dataset' (configs/ablations/$dataset/): choose one of ${known% }" >&2
  exit 2
fi
# installs what is missing, as every script does, once the arguments are known to be usable
source scripts/env.sh          # ./.venv, or DMLCSR_PYTHON as it is
py="$PY"
# config_value KEY CONFIG [overrides]: errors end in one line and status 2 (dml_csr/cli.py)
config_value() {
  "$py" -c "import functools, sys; from dml_csr.cli import run; from dml_csr.config import load_config as L
sys.exit(run(lambda a: print(functools.reduce(getattr, a[0].split('.'), L(a[1], a[2:])))))" "$@"
}
rows=$("$py" -c "import sys; from dml_csr.eval.paper import ABLATION_TABLES as T; print(*T[int(sys.argv[1])][1])" "$table")

# The synthetic set is generated on first use (its root comes from the config or an override).
if [ "$dataset" = synthetic ]; then
  root=$(config_value data.root "configs/ablations/synthetic/baseline.yaml" "${overrides[@]}")
  if [ ! -f "$root/test_list.txt" ]; then
    "$py" tools/make_synthetic.py "$root"
  fi
fi

if [ "$gpus" -gt 1 ]; then
  train=("$py" -m dml_csr.engine.launch --standalone --nproc_per_node "$gpus" tools/train.py)
else
  train=("$py" tools/train.py)
fi

results=()
for row in $rows; do
  config="configs/ablations/$dataset/$row.yaml"
  out=$(config_value output_dir "$config" "${overrides[@]}")
  flag=()
  if [ "${RETRAIN:-0}" = 1 ]; then
    flag=(--overwrite)
  elif [ -f "$out/last.pth" ]; then
    flag=(--resume)
  fi
  echo "=== table $table, $dataset, row $row: $config -> $out"
  start=$(date +%s)
  "${train[@]}" "$config" "${overrides[@]}" "${flag[@]}"
  "$py" tools/test.py "$config" "${overrides[@]}" --checkpoint "$out/best.pth" --split test \
    --out "$out/metrics_test.json" --overwrite --meta "row=$row"   # this row's own result
  echo "=== row $row done in $(( $(date +%s) - start )) s"
  results+=("$out/metrics_test.json")
done

# One line per row (also for synthetic, which has no column in the paper's tables).
"$py" - "${results[@]}" <<'PY'
import json, sys
print("\n| row | headline | mIoU | result |\n|:---|---:|---:|:---|")
for path in sys.argv[1:]:
    r = json.load(open(path))
    value = r["headline"]["value"]
    value = "n/a" if value is None else f"{value:.2f}"
    print(f"| {r['meta'].get('row', '')} | {r['headline']['name']} {value} | {r['miou']:.2f} | {path} |")
print()
PY
"$py" tools/make_tables.py "${results[@]}" --table "$table"
