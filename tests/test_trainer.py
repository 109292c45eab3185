"""End-to-end trainer contracts on a tiny synthetic set (32 px, 4 training images, a tiny
DML-CSR): both presets run 2 + 1 x 1 epochs, resume equals an uninterrupted run, a foreign run
folder is refused, a NaN loss stops the run and keeps the last checkpoint, best.pth rebuilds."""
import importlib.util
import json
import math
import os

import pytest
import torch

from dml_csr.config import ConfigError, load_config
from dml_csr.engine.rundir import RunDirError
from dml_csr.engine.trainer import NonFiniteLossError, Trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from dml_csr.data.synthetic import make_synthetic
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(root, num_train=4, num_valid=2, num_test=2, size=32)
    return str(root)


def _cfg(root, preset="paper", *extra):
    return load_config("synthetic", [
        f"preset={preset}", f"data.root={root}", "data.crop_size=[32,32]", "data.batch_size=2",
        "data.workers=0", "model.args.layers=[1,1,1,1]", "model.args.width_mult=0.125", "train.epochs=3",
        "train.cycles=1", "train.cycle_epochs=1", "train.image_log_interval=3", "eval.workers=0",
        "eval.batch_size=2", *extra])


def _lines(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]


@pytest.fixture(scope="module")
def paper_run(data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("paper"))
    summary = Trainer(_cfg(data_root), output_dir=out).fit()
    return out, summary


def test_paper_run_end_to_end(paper_run):
    out, summary = paper_run
    assert summary["epochs_done"] == 3
    for name in ("config.yaml", "train.log", "last.pth", "best.pth", "cycle1_aggregated.pth"):
        assert os.path.exists(os.path.join(out, name)), name
    # the TensorBoard log where the optional package is installed (./.venv and CI), else none
    has_tb = importlib.util.find_spec("tensorboard") is not None
    assert os.path.exists(os.path.join(out, "tb")) == has_tb
    lines = _lines(out)
    assert [(l["epoch"], l["model"]) for l in lines] == [(1, "student"), (2, "student"),
                                                         (3, "student"), (3, "aggregated")]
    assert all(l["split"] == "valid" for l in lines)
    last = torch.load(os.path.join(out, "last.pth"), map_location="cpu", weights_only=True)
    assert last["epoch"] == 3 and last["stage"] == "csr" and last["cycle"] == 1
    for key in ("model", "optimizer", "scheduler", "rng", "snapshots", "teacher", "best", "config",
                "model_name", "model_kwargs", "dataset", "class_tokens"):
        assert key in last, key
    assert last["best"]["score"] == max(l["headline"]["value"] for l in lines)


def test_released_preset_runs(data_root, tmp_path):
    summary = Trainer(_cfg(data_root, "released"), output_dir=str(tmp_path)).fit()
    assert summary["epochs_done"] == 3
    assert (tmp_path / "cycle1_aggregated.pth").exists()


def test_resume_equals_uninterrupted(paper_run, data_root, tmp_path):
    ref_out, ref_summary = paper_run
    out = str(tmp_path / "run")
    Trainer(_cfg(data_root), output_dir=out).fit(stop_after_epoch=2)    # "interrupted"
    with pytest.raises(RunDirError):
        Trainer(_cfg(data_root), output_dir=out)                         # foreign run: refused
    summary = Trainer(_cfg(data_root), output_dir=out, resume=True).fit()
    assert summary["best"]["score"] == ref_summary["best"]["score"]
    assert [l["headline"] for l in _lines(out)] == [l["headline"] for l in _lines(ref_out)]
    a = torch.load(os.path.join(out, "last.pth"), map_location="cpu", weights_only=True)
    b = torch.load(os.path.join(ref_out, "last.pth"), map_location="cpu", weights_only=True)
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in b["teacher"]:
        assert torch.equal(a["teacher"][key], b["teacher"][key]), key


def test_resume_of_a_run_saved_before_the_poly_horizon(paper_run, data_root, tmp_path):
    """Runs saved with loss.total_scale (removed) and without train.poly_horizon resume when
    they meant today's behaviour, and are refused when they did not (x4 on the whole sum)."""
    import shutil
    for total_scale, resumes in ((1.0, True), (4.0, False)):
        out = tmp_path / f"scale{total_scale}"
        shutil.copytree(paper_run[0], out)
        last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
        last["config"]["loss"]["total_scale"] = total_scale
        del last["config"]["train"]["poly_horizon"]
        torch.save(last, out / "last.pth")
        if resumes:
            assert Trainer(_cfg(data_root), output_dir=str(out), resume=True).epoch == 3
        else:
            with pytest.raises(RunDirError, match="total_scale"):
                Trainer(_cfg(data_root), output_dir=str(out), resume=True)


def test_overwrite_only_touches_run_files(data_root, tmp_path):
    (tmp_path / "config.yaml").write_text("name: other\n")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="--resume"):
        Trainer(_cfg(data_root), output_dir=str(tmp_path))
    trainer = Trainer(_cfg(data_root), output_dir=str(tmp_path), overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert "name: synthetic" in (tmp_path / "config.yaml").read_text()
    del trainer


def test_nan_loss_stops_and_keeps_last_checkpoint(data_root, tmp_path, monkeypatch):
    trainer = Trainer(_cfg(data_root), output_dir=str(tmp_path))
    trainer.fit(stop_after_epoch=1)
    before = torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)
    loss = trainer.multitask_loss
    original = loss.forward

    def poisoned(outputs, batch):
        out = original(outputs, batch)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(loss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, iteration 1"):
        trainer.fit()
    after = torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)
    assert after["epoch"] == 1
    for key in before["model"]:
        assert torch.equal(before["model"][key], after["model"][key])


def test_bf16_training_runs(data_root, tmp_path):
    """train.precision=bf16 trains on the CPU (autocast forward, float32 losses: the stages hand
    the losses float32 outputs)."""
    from dml_csr.engine.trainer import resolve_precision
    summary = Trainer(_cfg(data_root, "paper", "train.precision=bf16", "train.epochs=2"),
                      output_dir=str(tmp_path / "bf16")).fit()
    assert summary["epochs_done"] == 2
    assert all(math.isfinite(l["headline"]["value"]) for l in _lines(str(tmp_path / "bf16")))
    assert resolve_precision("fp32", True, torch.device("cuda")) == "fp16"   # the old train.amp
    assert resolve_precision("bf16", False, torch.device("cpu")) == "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        _cfg(data_root, "paper", "train.precision=int8")


def test_fp16_trains_on_the_cpu_with_its_grad_scaler(data_root, tmp_path, caplog):
    """fp16 runs on the CPU as on CUDA (float16 autocast, GradScaler on the device): both stages;
    last.pth keeps the live scale; a forced overflow skips the step (parameters unchanged) and
    halves the scale; a last.pth without scale state (saved where fp16 did not run) resumes with
    a fresh scale and a warning."""
    out = tmp_path / "fp16"
    trainer = Trainer(_cfg(data_root, "paper", "train.precision=fp16"), output_dir=str(out))
    assert trainer.precision == "fp16" and trainer.scaler.is_enabled()
    assert trainer.fit()["epochs_done"] == 3                      # 2 multi-task + 1 CSR epoch
    assert all(math.isfinite(l["headline"]["value"]) for l in _lines(str(out)))
    last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert last["scaler"]["scale"] == trainer.scaler.get_scale() > 0

    over = tmp_path / "overflow"
    trainer = Trainer(_cfg(data_root, "paper", "train.precision=fp16", "train.epochs=1",
                           "train.cycles=0", "train.max_iters_per_epoch=1"), output_dir=str(over))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)   # float16 grads overflow
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    with caplog.at_level("INFO"):
        trainer.fit()
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.named_parameters())
    assert trainer.scaler.get_scale() == 2.0 ** 39 and "1 of 1 fp16 steps skipped" in caplog.text
    last = torch.load(over / "last.pth", map_location="cpu", weights_only=True)
    assert last["scaler"]["scale"] == 2.0 ** 39
    last["scaler"], last["epoch"] = {}, 0
    torch.save(last, over / "last.pth")
    Trainer(_cfg(data_root, "paper", "train.precision=fp16", "train.epochs=1", "train.cycles=0",
                 "train.max_iters_per_epoch=1"), output_dir=str(over), resume=True)
    assert "no fp16 loss-scale state" in caplog.text


def test_stages_give_the_losses_float32_and_the_teacher_plain_tensors():
    """Under bf16 autocast the student's outputs reach the loss as float32; the frozen teacher
    runs under inference_mode yet returns ordinary tensors (usable in the student's graph)."""
    from dml_csr.engine.stages import DistillStage, FrozenTeacher, MultiTaskStage, precision_context
    from dml_csr.models import DMLCSR
    seen = {}

    def loss(outputs, batch, soft=None, cycle=None):
        seen["out"], seen["soft"] = outputs, soft
        return {"loss": outputs.parsing.float().mean() + (0 if soft is None else soft.parsing.mean())}
    model = DMLCSR(11, layers=[1, 1, 1, 1], width_mult=0.125).train()
    teacher = FrozenTeacher(DMLCSR(11, layers=[1, 1, 1, 1], width_mult=0.125))
    batch = {"image": torch.randn(2, 3, 32, 32), "label": torch.zeros(2, 32, 32, dtype=torch.long)}
    autocast = precision_context(torch.device("cpu"), "bf16")
    losses, _ = MultiTaskStage(loss)(model, batch, autocast)
    assert all(t.dtype == torch.float32 for t in seen["out"])
    losses, _ = DistillStage(loss, teacher, cycle=1)(model, batch, autocast)
    assert all(t.dtype == torch.float32 and not t.is_inference() and not t.requires_grad
               for t in seen["soft"])
    losses["loss"].backward()
    assert model.conv1.weight.grad is not None
