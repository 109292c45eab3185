"""A model family of your own, from your own file, with no edit of the package: defined here,
added with ``dml_csr.models.register_family``, then trained by ``tools/train.py``'s main with
``--test``, parsed with ``FaceParser`` (onnxruntime and torch), exported to ONNX (float32 and
int8) by ``tools/export_onnx.py``'s main. Everything the package needs to know about the family
is on its class (``models/contract.py``)."""
import json
import os

import numpy as np
import pytest
import torch.nn as nn

import dml_csr
from dml_csr.config import ConfigError, load_config
from dml_csr.models import FAMILIES, ParsingModel, ParsingOutput, register_family
from dml_csr.models.contract import resize_logits_to

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CROP = 32


class TinySegNet(ParsingModel):
    """Two convolutions with batch norms at half resolution and a 1x1 classifier."""

    family = "tiny_segnet"
    classifier = r"head\.weight"
    float_layers = r"head"              # int8: the classifier stays float32
    example_config = "synthetic"
    tiny_args = {"width": 8}

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)

    @classmethod
    def check_args(cls, args):
        out = super().check_args(args)
        if not (isinstance(out.get("width", 16), int) and out.get("width", 16) > 0):
            raise ValueError(f"model.args.width must be a positive integer, got {out['width']!r}")
        return out

    def forward(self, x, size=None, coord=None):
        self.check_coord(coord)
        return ParsingOutput(resize_logits_to(self.head(self.body(x)), size))


@pytest.fixture
def registered():
    assert "tiny_segnet" not in FAMILIES
    register_family(TinySegNet)
    yield TinySegNet
    FAMILIES.pop("tiny_segnet", None)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from dml_csr.data.synthetic import make_synthetic
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(root, num_train=4, num_valid=2, num_test=2, size=CROP)
    return str(root)


def _tool(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        f"{name}_tool", os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_a_family_of_your_own_trains_tests_parses_and_exports(registered, data_root, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("DMLCSR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert _tool("train")([
        "synthetic", f"data.root={data_root}", f"data.crop_size=[{CROP},{CROP}]",
        "data.batch_size=2", "data.workers=0", "model.name=tiny_segnet",
        f"model.args={json.dumps(TinySegNet.tiny_args)}", "model.pretrained=",
        "loss.tasks=[binary_attention, category_attention]", "train.epochs=2", "train.cycles=1",
        "train.cycle_epochs=1", "eval.workers=0", "eval.batch_size=2",
        "train.image_log_interval=1", "--output-dir", str(out), "--device", "cpu", "--test"]) == 0
    result = json.loads((out / "metrics_test.json").read_text())
    assert result["meta"]["model"] == "tiny_segnet" and result["meta"]["row"] == "tiny-segnet"
    assert result["meta"]["num_images"] == 2 and "mean_f1" in result
    ckpt = str(out / "best.pth")

    photos = [np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)
              for i in range(2)]
    fast = dml_csr.FaceParser.from_checkpoint(ckpt, detector=None)       # onnxruntime, cached
    plain = dml_csr.FaceParser.from_checkpoint(ckpt, detector=None, backend="torch")
    assert (fast.backend_name, plain.backend_name) == ("onnx", "torch")
    a, b = (p(photos, detect=False, return_logits=True) for p in (fast, plain))
    assert a.label_maps[0].shape == (40, 50) and a.dataset == "synthetic"
    assert max(np.abs(x - y).max() for x, y in zip(a.logits, b.logits)) < 1e-4
    assert np.mean([(x == y).mean() for x, y in zip(a.label_maps, b.label_maps)]) > 0.99

    export = _tool("export_onnx")
    assert export(["--checkpoint", ckpt, "--out", str(tmp_path / "own.onnx"), "--tol", "1e-4"]) == 0
    res = dml_csr.FaceParser.from_onnx(str(tmp_path / "own.onnx"), detector=None)(
        photos, detect=False)
    assert np.mean([(x == y).mean() for x, y in zip(res.label_maps, b.label_maps)]) > 0.99
    assert export(["--checkpoint", ckpt, "--out", str(tmp_path / "own_int8.onnx"), "--int8",
                   "--calibrate", data_root, "--calibrate-count", "3"]) == 0
    import onnx
    proto = onnx.load(str(tmp_path / "own_int8.onnx"))
    quantized = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    convs = {n.name: n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    head = [w for name, w in convs.items() if "head" in name]
    assert head and not any(w.endswith("_DequantizeLinear_Output") or w in quantized
                            for w in head)                       # its float_layers stayed float
    assert dml_csr.FaceParser.from_onnx(str(tmp_path / "own_int8.onnx"), detector=None)(
        photos, detect=False).label_maps[0].shape == (40, 50)


def test_the_family_checks_its_config_arguments(registered):
    # naming another family drops the base config's DML-CSR arguments (layers, width_mult, ...)
    cfg = load_config("synthetic", ["model.name=tiny_segnet", "model.args={width: 4}"])
    assert cfg.model.args == {"width": 4}
    assert load_config("synthetic", ["model.name=tiny_segnet"]).model.args == {}
    with pytest.raises(ConfigError, match=r"model.args.depth is not an argument of the "
                                          r"'tiny_segnet' family; its arguments: \['width'\]"):
        load_config("synthetic", ["model.name=tiny_segnet", "model.args={depth: 4}"])
    with pytest.raises(ConfigError, match="model.args.width must be a positive integer"):
        load_config("synthetic", ["model.name=tiny_segnet", "model.args={width: -1}"])


def test_register_family_refuses_what_it_cannot_take(registered):
    register_family(TinySegNet)                              # the same class again: fine
    with pytest.raises(TypeError, match="ParsingModel subclass"):
        register_family(nn.Conv2d)

    class Other(TinySegNet):
        pass
    with pytest.raises(ValueError, match="already registered"):
        register_family(Other)

    class Nameless(ParsingModel):
        pass
    with pytest.raises(ValueError, match="must name the family"):
        register_family(Nameless)
    with pytest.raises(ValueError, match="model.name"):
        load_config("synthetic", ["model.name=no_such_family"])
