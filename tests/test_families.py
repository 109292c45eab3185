"""One set of contracts over every registered model family (``dml_csr.models.FAMILIES``: DML-CSR,
FP-LIIF) and an ablation context module: the trainer's two stages, the checkpoint round trip, the
parser API and the ONNX export.

The cases come from the registry and the facts each family declares (``example_config``,
``tiny_args``, ``decodes_any_size``): a family added to the package gets these tests with no
edit here. A family from outside the package: tests/test_own_family.py.
"""
import json
import os

import numpy as np
import pytest
import torch

import dml_csr
from dml_csr.config import load_config
from dml_csr.engine.trainer import Trainer
from dml_csr.models import FAMILIES as REGISTERED
from dml_csr.models import ParsingOutput, load_inference_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP = 32


def tiny_case(cls, extra=()):
    """(config, overrides) of a CPU-sized run of family ``cls``: its quick-start config with its
    ``tiny_args``; a family that decodes at query points is trained on 128 of them."""
    overrides = [f"model.name={cls.family}", f"model.args={json.dumps(cls.tiny_args)}"]
    if cls.decodes_any_size:
        overrides.append("train.query_samples=128")
    return cls.example_config, overrides + list(extra)


FAMILIES = {name: tiny_case(cls) for name, cls in REGISTERED.items()}
FAMILIES["psp_context"] = tiny_case(REGISTERED["dml_csr"], ["model.args.context=psp"])
# the cases whose model pools adaptively to sizes that do not divide its input at CROP (the PSP
# context's bins 3 and 6 on C5 of a 32 x 32 crop): their ONNX export needs
# exports_uneven_pooling()
UNEVEN_POOLING = {"psp_context"}


def _skip_unless_exportable(run):
    """Skip an ONNX export of a case in UNEVEN_POOLING where this torch cannot export it (a
    feature check: dml_csr.deploy.onnx.exports_uneven_pooling runs one small export)."""
    from dml_csr.deploy.onnx import exports_uneven_pooling
    if run[0] in UNEVEN_POOLING and not exports_uneven_pooling():
        pytest.skip(f"torch {torch.__version__}'s ONNX exporters cannot export adaptive pooling "
                    f"to a size that does not divide its input (exports_uneven_pooling() is "
                    f"False: TorchScript refuses it, the dynamo exporter fails; docs/versions.md)")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from dml_csr.data.synthetic import make_synthetic
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(root, num_train=4, num_valid=2, num_test=2, size=CROP)
    return str(root)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def run(request, data_root, tmp_path_factory):
    """A finished 1 + 1 x 1 epoch run (multi-task stage, one CSR cycle) of the family."""
    name, extra = FAMILIES[request.param]
    cfg = load_config(name, [f"data.root={data_root}", f"data.crop_size=[{CROP},{CROP}]",
                             "data.batch_size=2", "data.workers=0", "train.epochs=2",
                             "train.cycles=1", "train.cycle_epochs=1", "eval.workers=0",
                             "eval.batch_size=2", "train.image_log_interval=1", *extra])
    out = tmp_path_factory.mktemp(request.param)
    seen = []
    trainer = Trainer(cfg, output_dir=str(out))
    for stage_loss in ("multitask_loss", "distill_loss"):        # what the losses receive
        loss = getattr(trainer, stage_loss)

        def spy(outputs, *args, _loss=loss, _name=stage_loss, **kw):
            seen.append((_name, outputs))
            return _loss(outputs, *args, **kw)
        setattr(trainer, stage_loss, spy)
    summary = trainer.fit()
    return request.param, cfg, out, summary, seen


def test_both_stages_train_through_the_contract(run):
    family, cfg, out, summary, seen = run
    assert summary["epochs_done"] == 2
    stages = {name for name, _ in seen}
    assert stages == {"multitask_loss", "distill_loss"}
    for _, outputs in seen:
        assert isinstance(outputs, ParsingOutput) and torch.isfinite(outputs.parsing).all()
        has_edges = outputs.binary_edge is not None
        training_form = REGISTERED[cfg.model.name].build({"num_classes": 3, **cfg.model.args},
                                                         training=True)
        assert has_edges == training_form.has_edge_heads      # DML-CSR's training form only


def test_checkpoint_round_trip(run):
    family, cfg, out, _, _ = run
    model, spec = load_inference_model(str(out / "best.pth"))
    assert spec.family == cfg.model.name and spec.dataset == cfg.data.dataset
    assert spec.crop_size == (CROP, CROP)
    saved = torch.load(out / "best.pth", map_location="cpu", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    with torch.no_grad():
        logits = model(torch.randn(1, 3, CROP, CROP), size=(CROP, CROP)).parsing
    assert logits.shape == (1, spec.num_classes, CROP, CROP)


def test_parser_api(run):
    _, _, out, _, _ = run
    photo = np.random.default_rng(0).integers(0, 255, size=(40, 50, 3), dtype=np.uint8)
    res = dml_csr.FaceParser.from_checkpoint(str(out / "best.pth"), detector=None)(
        photo, detect=False, return_logits=True)
    assert len(res) == 1 and res.label_maps[0].shape == (40, 50)
    assert res.logits[0].shape == (len(res.class_names), 40, 50)


def test_onnx_export_matches_pytorch(run, tmp_path):
    from tools.export_onnx import main as export_main   # the user's command; exit 1 on mismatch
    _skip_unless_exportable(run)
    _, _, out, _, _ = run
    onnx_path = tmp_path / "model.onnx"
    assert export_main(["--checkpoint", str(out / "best.pth"), "--out", str(onnx_path),
                        "--tol", "1e-3"]) == 0
    res = dml_csr.FaceParser.from_onnx(str(onnx_path), detector=None)(
        np.zeros((20, 30, 3), np.uint8), detect=False)
    assert res.label_maps[0].shape == (20, 30)


def test_bf16_parses_like_float32(run, data_root):
    """The parser in bfloat16 labels the faces as float32 does on nearly every pixel (these
    two-epoch models: 97.3-99.5 %; the quick-start model: 99.8 %, docs/inference.md); the ONNX
    backend refuses bf16."""
    import glob
    family, cfg, out, _, _ = run
    photos = sorted(glob.glob(os.path.join(data_root, "*", "images", "*.jpg")))
    ckpt = str(out / "best.pth")
    fp32 = dml_csr.FaceParser.from_checkpoint(ckpt, detector=None)(photos, detect=False,
                                                                   return_logits=True)
    bf16 = dml_csr.FaceParser.from_checkpoint(ckpt, detector=None, precision="bf16")(
        photos, detect=False, return_logits=True)
    same = np.mean([(a == b).mean() for a, b in zip(fp32.label_maps, bf16.label_maps)])
    diff = max(np.abs(a - b).max() for a, b in zip(fp32.logits, bf16.logits))
    assert same > 0.95 and diff > 0, (same, diff)
    with pytest.raises(ValueError, match="torch backend"):
        dml_csr.FaceParser.from_checkpoint(ckpt, detector=None, precision="bf16", backend="onnx")


def test_int8_onnx_export_is_calibrated_and_parses(run, data_root, tmp_path):
    """tools/export_onnx.py --int8: a QDQ file calibrated on the data root's images, carrying the
    label facts and leaving the family's float_layers in float32; the parser runs it and labels
    most pixels as float32 does (measured on the quick-start models: 99.56 % / 99.05 %,
    docs/inference.md)."""
    import glob

    import onnx

    from tools.export_onnx import main as export_main
    from dml_csr.deploy.onnx import read_onnx_metadata
    _skip_unless_exportable(run)
    family, cfg, out, _, _ = run
    path = tmp_path / "int8.onnx"
    assert export_main(["--checkpoint", str(out / "best.pth"), "--out", str(path), "--int8",
                        "--calibrate", data_root, "--calibrate-count", "3"]) == 0
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["dml_csr.precision"] == '"int8"' and meta["dml_csr.calibration_images"] == "3"
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    _assert_float_layers_kept(proto, cfg.model.name)
    assert read_onnx_metadata(path).dataset == cfg.data.dataset
    photos = sorted(glob.glob(os.path.join(data_root, "*", "images", "*.jpg")))
    fp32 = dml_csr.FaceParser.from_checkpoint(str(out / "best.pth"), detector=None)(
        photos, detect=False)
    int8 = dml_csr.FaceParser.from_onnx(str(path), detector=None)(photos, detect=False)
    same = np.mean([(a == b).mean() for a, b in zip(fp32.label_maps, int8.label_maps)])
    assert len(np.unique(np.concatenate([m.ravel() for m in fp32.label_maps]))) >= 3
    assert same > 0.75, same        # two-epoch models sit near their boundaries: 85-95 % here


def test_int8_calibration_sources(data_root, tmp_path):
    from dml_csr.deploy.quantize import calibration_images
    picked = calibration_images(data_root, 3)                   # a data root: its train list
    assert len(picked) == 3 and all("train" in p and os.path.isfile(p) for p in picked)
    with pytest.raises(ValueError, match="holds no images"):
        calibration_images(tmp_path, 4)
    from tools.export_onnx import main as export_main
    with pytest.raises(SystemExit):                             # --int8 needs --calibrate
        export_main(["--checkpoint", "x.pth", "--out", str(tmp_path / "a.onnx"), "--int8"])


def _assert_float_layers_kept(proto, family):
    """The convolutions of the family's ``float_layers`` read float weights, the others int8 weights."""
    import re

    from dml_csr.deploy.quantize import _top_module, float_layers
    inits = {i.name for i in proto.graph.initializer}
    from_dq = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    kept = [n for n in convs if re.fullmatch(float_layers(family), _top_module(n, inits) or "")]
    assert kept and len(kept) < len(convs)
    for n in convs:
        assert (n.input[1] in from_dq) != (n in kept), n.name


def test_int8_parser_calibrates_once(run, data_root, tmp_path, monkeypatch):
    """precision="int8": the first call needs calibration images, writes the int8 file into the
    cache and parses like float32 on most pixels; later calls for the same weights reuse the file
    without ``calibrate``; another calibration count calibrates again and replaces it."""
    import glob

    import onnx
    _skip_unless_exportable(run)
    _, cfg, out, _, _ = run
    monkeypatch.setenv("DMLCSR_CACHE", str(tmp_path / "cache"))
    ckpt = str(out / "best.pth")
    with pytest.raises(ValueError, match="calibrate=DIR"):
        dml_csr.FaceParser.from_checkpoint(ckpt, detector=None, precision="int8")
    with pytest.raises(ValueError, match="goes with precision='int8'"):
        dml_csr.FaceParser.from_checkpoint(ckpt, detector=None, calibrate=data_root)
    parser = dml_csr.FaceParser.from_checkpoint(ckpt, detector=None, precision="int8",
                                                calibrate=data_root, calibrate_count=3)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].name.endswith(".int8.onnx") and parser.backend_name == "onnx"
    _assert_float_layers_kept(onnx.load(str(files[0])), cfg.model.name)
    stamp = files[0].stat().st_mtime_ns
    photos = sorted(glob.glob(os.path.join(data_root, "*", "images", "*.jpg")))
    fp32 = dml_csr.FaceParser.from_checkpoint(ckpt, detector=None)(photos, detect=False)
    int8 = parser(photos, detect=False)
    same = np.mean([(a == b).mean() for a, b in zip(fp32.label_maps, int8.label_maps)])
    assert same > 0.8, same
    again = dml_csr.FaceParser.from_checkpoint(ckpt, detector=None, precision="int8")
    assert sorted((tmp_path / "cache").glob("*.int8.onnx")) == files and files[0].stat().st_mtime_ns == stamp
    assert all((a == b).all() for a, b in zip(again(photos, detect=False).label_maps,
                                              int8.label_maps))
    dml_csr.FaceParser.from_checkpoint(ckpt, detector=None, precision="int8",
                                       calibrate=data_root, calibrate_count=2)
    meta = {p.key: p.value for p in onnx.load(str(files[0]), load_external_data=False).metadata_props}
    assert '"count": 2' in meta["dml_csr.calibration"] and len(list(files[0].parent.glob("*.int8.onnx"))) == 1


def test_int8_scored_by_the_protocol(run, data_root, tmp_path, monkeypatch):
    """run_test(precision="int8") scores the cached int8 file with the benchmark protocol: the
    mean F1 near float32's, ``meta.precision`` saying int8; other scales than 1 are refused."""
    from dml_csr.eval.runner import run_test
    _skip_unless_exportable(run)
    _, cfg, out, _, _ = run
    monkeypatch.setenv("DMLCSR_CACHE", str(tmp_path / "cache"))
    ckpt = str(out / "best.pth")
    fp32 = run_test(cfg, ckpt, "test", workers=0)
    int8 = run_test(cfg, ckpt, "test", workers=0, precision="int8", calibrate=data_root,
                    calibrate_count=3)
    assert int8["meta"]["precision"] == "int8"
    assert abs(int8["mean_f1"] - fp32["mean_f1"]) < 10, (int8["mean_f1"], fp32["mean_f1"])
    with pytest.raises(ValueError, match="one scale"):
        run_test(cfg, ckpt, "test", workers=0, precision="int8", scales=[0.75, 1.0])
