"""scripts/gpu_check.sh, the first command on a GPU machine, runs every step in its dry run
(DRY_RUN=1: the CPU, tiny sizes) and reports each; a broken step fails the run."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ["versions", "pytest -m cuda", "train fp16", "train bf16", "bench_train", "latency",
         "tools/test.py", "tools/infer.py", "tools/export_onnx.py"]


def test_gpu_check_dry_run_passes_every_step(tmp_path):
    report = tmp_path / "report.json"
    env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--json", str(report)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(report.read_text())["rows"]
    assert [r["step"].split(" (")[0] for r in rows] == STEPS
    assert all(r["status"] == "ok" and "numbers" in r for r in rows), rows
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert "9 of 9 steps ok" in proc.stdout and len(table) == 1 + len(STEPS)


def test_gpu_check_refuses_an_interpreter_without_the_requirements(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHON=str(bare / "bin" / "python")))
    assert proc.returncode == 2 and "lacks: torch" in proc.stderr
