"""FP-LIIF through the whole project pipeline on a tiny synthetic set (48 px, 4 training images, a
tiny FPLIIF via ``model.args`` overrides of configs/fp_liif_synthetic.yaml):

(a) the Trainer trains it (AdamW, no CSR cycles) and writes a best.pth that tools/test.py scores
    with the pooled-F1 protocol;
(b) the ONNX export with a fixed output size (2x the crop) matches PyTorch within 1e-3.
The checkpoint round trip and the parser API of every family: tests/test_families.py.
"""
import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch

from dml_csr.config import ConfigError, load_config
from dml_csr.engine.trainer import Trainer
from dml_csr.models import load_inference_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP = 48
TINY = "{width: 16, blocks: [1, 1, 1], reduce_dims: [32, 16], decoder_dims: [32, 32]}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from dml_csr.data.synthetic import make_synthetic
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(root, num_train=4, num_valid=2, num_test=2, size=CROP)
    cfg = load_config("fp_liif_synthetic", [
        f"data.root={root}", f"data.crop_size=[{CROP},{CROP}]", "data.batch_size=2",
        "data.workers=0", f"model.args={TINY}", "train.epochs=2", "train.image_log_interval=2",
        "train.query_samples=500",                          # the config samples 4096 of 128 x 128
        "eval.workers=0", "eval.batch_size=2"])
    out = str(tmp_path_factory.mktemp("run"))
    summary = Trainer(cfg, output_dir=out).fit()
    return out, summary


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_optimizer_field():
    for name in ("helen", "lapa", "celebamask_hq"):                  # the paper's SGD for DML-CSR
        assert load_config(name).train.optimizer == "sgd"
    assert load_config("synthetic").train.optimizer == "adamw"        # the CPU synthetic preset only
    assert load_config("fp_liif_lapa").train.optimizer == "adamw"
    with pytest.raises(ConfigError, match="train.optimizer"):
        load_config("synthetic", ["train.optimizer=adam"])


def test_model_kwarg_override_updates_the_config_mapping(tmp_path):
    """`model.args.KEY=VALUE` changes one keyword argument and keeps the config's others (it
    used to replace the whole mapping, silently training a default-size FP-LIIF)."""
    base = load_config("fp_liif_synthetic").model.args
    cfg = load_config("fp_liif_synthetic", ["model.args.stem_stride=2", "model.args.width=48"])
    assert cfg.model.args == {**base, "stem_stride": 2, "width": 48}
    derived = tmp_path / "derived.yaml"                 # a _base_ layer's mapping is updated too
    derived.write_text("_base_: %s\nmodel:\n  args:\n    blocks: [1, 1, 1]\n"
                       % os.path.join(REPO, "configs", "fp_liif_synthetic.yaml"))
    assert load_config(str(derived)).model.args == {**base, "blocks": [1, 1, 1]}


def test_sample_queries_gathers_the_pixels_it_samples():
    from dml_csr.engine.stages import sample_queries
    from dml_csr.models.fp_liif import pixel_centres
    n, h, w, q = 2, 5, 7, 11
    ids = torch.arange(h * w).view(1, h, w).repeat(n, 1, 1)
    batch = {"image": torch.randn(n, 3, h, w), "label": ids, "edge": ids * 2, "cat_edge": ids * 3,
             "name": ["a", "b"]}
    torch.manual_seed(0)
    sampled, coord = sample_queries(batch, q)
    assert coord.shape == (n, q, 2) and sampled["label"].shape == (n, 1, q)
    assert sampled["image"] is batch["image"] and batch["label"].shape == (n, h, w)   # input untouched
    for i in range(n):
        picked = sampled["label"][i, 0]
        assert picked.unique().numel() == q                                          # no repeats
        assert torch.equal(coord[i], pixel_centres(h, w)[picked])
        assert torch.equal(sampled["edge"][i, 0], picked * 2) and torch.equal(sampled["cat_edge"][i, 0], picked * 3)
    assert not torch.equal(sampled["label"][0], sampled["label"][1])                  # per image


def test_coord_forward_equals_the_grid_decode_at_those_pixels():
    from dml_csr.models.fp_liif import FPLIIF, pixel_centres
    torch.manual_seed(0)
    model = FPLIIF(4, width=8, blocks=(1, 1), reduce_dims=(16, 8), decoder_dims=(16,), cell_decode=True)
    x = torch.randn(2, 3, 12, 10)
    idx = torch.tensor([[0, 5, 119], [3, 64, 7]])
    with torch.no_grad():
        grid = model(x).parsing                                                    # (2, 4, 12, 10)
        pts = model(x, coord=pixel_centres(12, 10)[idx]).parsing                   # (2, 4, 1, 3)
    assert pts.shape == (2, 4, 1, 3)
    expect = torch.stack([grid[i].flatten(1)[:, idx[i]] for i in range(2)])
    assert torch.allclose(pts[:, :, 0], expect, atol=1e-5)


def test_query_samples_config_checks():
    with pytest.raises(ConfigError, match="query_samples"):
        load_config("synthetic", ["train.query_samples=100"])                 # DML-CSR: no queries
    with pytest.raises(ConfigError, match="query_samples"):
        load_config("fp_liif_synthetic", ["train.query_samples=100000"])      # > 128 x 128 pixels
    with pytest.raises(ConfigError, match="output_scale"):
        load_config("fp_liif_synthetic", ["eval.output_scale=0"])
    assert load_config("fp_liif_celebamask_hq").eval.output_scale == 2.0     # 256 crop -> 512 labels


def test_trainer_with_sampled_queries_in_both_stages(tmp_path):
    """1 multi-task epoch + 1 CSR cycle of 1 epoch, both on 300 sampled pixels per image: the
    student, the teacher's soft targets and the targets all arrive as 1 x 300 images."""
    from dml_csr.data.synthetic import make_synthetic
    root = tmp_path / "data"
    make_synthetic(root, num_train=4, num_valid=2, num_test=2, size=CROP)
    cfg = load_config("fp_liif_synthetic", [
        f"data.root={root}", f"data.crop_size=[{CROP},{CROP}]", "data.batch_size=2",
        "data.workers=0", f"model.args={TINY}", "train.epochs=2", "train.cycles=1",
        "train.cycle_epochs=1", "train.image_log_interval=1", "train.query_samples=300",
        "eval.workers=0", "eval.batch_size=2"])
    trainer = Trainer(cfg, output_dir=str(tmp_path / "run"))
    seen = {"multitask": [], "csr": []}
    multitask, distill = trainer.multitask_loss, trainer.distill_loss

    def spy_multitask(outputs, batch):            # what the losses receive
        seen["multitask"].append((outputs.parsing.shape, batch["label"].shape))
        return multitask(outputs, batch)

    def spy_distill(outputs, batch, soft, cycle):
        seen["csr"].append((outputs.parsing.shape, batch["label"].shape, soft.parsing.shape))
        return distill(outputs, batch, soft, cycle=cycle)
    trainer.multitask_loss, trainer.distill_loss = spy_multitask, spy_distill
    summary = trainer.fit()
    assert seen["multitask"] and all(o == (2, 11, 1, 300) and lab == (2, 1, 300)
                                     for o, lab in seen["multitask"])
    assert seen["csr"] and all(o == soft == (2, 11, 1, 300) and lab == (2, 1, 300)
                               for o, lab, soft in seen["csr"])
    assert summary["epochs_done"] == 2 and os.path.isfile(os.path.join(trainer.out, "best.pth"))


def test_trainer_best_checkpoint_rebuilds_and_scores(run, tmp_path):
    out, summary = run
    assert summary["epochs_done"] == 2
    assert not os.path.exists(os.path.join(out, "cycle1_aggregated.pth"))   # no CSR cycles
    last = torch.load(os.path.join(out, "last.pth"), map_location="cpu", weights_only=True)
    assert "betas" in last["optimizer"]["param_groups"][0]                  # AdamW, not SGD
    assert last["stage"] == "multitask" and last["teacher"] is None
    ckpt = torch.load(os.path.join(out, "best.pth"), map_location="cpu", weights_only=True)
    assert ckpt["model_kwargs"]["width"] == 16 and ckpt["model_kwargs"]["num_classes"] == 11
    # the checkpoint round trip and the parser API of every family: tests/test_families.py

    result_path = tmp_path / "test.json"
    rc = _load_tool("test").main([os.path.join(out, "config.yaml"), "--checkpoint",
                                  os.path.join(out, "best.pth"), "--split", "test",
                                  "--out", str(result_path), "--device", "cpu"])
    assert rc == 0
    result = json.loads(result_path.read_text())
    assert result["meta"]["model"] == "fp_liif" and result["meta"]["num_images"] == 2
    assert math.isfinite(result["mean_f1"]) and 0.0 <= result["mean_f1"] <= 100.0
    assert "pooled" in json.dumps(result["protocol"]).lower()


def test_onnx_fixed_output_size_matches_pytorch(run, tmp_path):
    import onnxruntime as ort
    from dml_csr.deploy import export_onnx, read_onnx_metadata
    out, _ = run
    model, spec = load_inference_model(os.path.join(out, "best.pth"))
    size = (2 * CROP, 2 * CROP)                       # output at 2x the input: a LIIF property
    path = str(tmp_path / "fp_liif.onnx")
    export_onnx(model, path, spec, output_size=size, exporter="torchscript")
    meta = read_onnx_metadata(path)
    assert meta.family == "fp_liif" and meta.crop_size == (CROP, CROP)
    x = torch.randn(1, 3, CROP, CROP, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x, size=size).parsing.numpy()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == (1, 11, *size)
    assert np.abs(got - ref).max() < 1e-3
