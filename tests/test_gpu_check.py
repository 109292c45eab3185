"""scripts/gpu_check.sh, the first command on a GPU machine, runs every step in its dry run
(DRY_RUN=1: the CPU, tiny sizes) and reports each; a broken step fails the run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    python = str(bare / "bin" / "python")
    for variable in ("PYTHON", "DMLCSR_PYTHON"):     # DMLCSR_PYTHON, as every other script
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "DMLCSR_PYTHON")}
        proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, capture_output=True,
                              text=True, env=dict(env, **{variable: python}))
        assert proc.returncode == 2 and f"{python} lacks: torch" in proc.stderr, variable


def test_gpu_check_without_cuda_fails_its_cuda_steps(tmp_path):
    """Outside the dry run, a machine without working CUDA is no pass: 'versions' fails (it was
    'ok' with cuda_available false) and nothing else runs; the CUDA-tests step fails when every
    test skipped (it was 'ok' with 7 skipped)."""
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "DRY_RUN"}
    env.update(DMLCSR_PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--json", str(report)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = json.loads(report.read_text())["rows"]
    assert [r["step"] for r in rows] == ["versions", "the other steps"]
    assert rows[0]["status"].startswith("FAILED") and "no working CUDA" in rows[0]["tail"]
    assert rows[1]["status"].startswith("not run")
    import importlib
    gpu_check = importlib.import_module("tools.gpu_check")
    skipped = "sssssss\n7 skipped, 600 deselected in 9.10s\n"
    with pytest.raises(gpu_check.StepFailed, match="no CUDA test ran"):
        gpu_check._pytest_summary(skipped, dry=False)
    assert gpu_check._pytest_summary(skipped, dry=True)["summary"].startswith("7 skipped")
    ran = "..s\n2 passed, 1 skipped, 600 deselected in 9.10s\n"
    assert gpu_check._pytest_summary(ran, dry=False)["summary"].startswith("2 passed")
