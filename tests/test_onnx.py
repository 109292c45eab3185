"""ONNX export of the inference form (tools/export_onnx.py, api.export_onnx) against PyTorch."""
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dml_csr.deploy import FaceParser, export_onnx, read_onnx_metadata
from dml_csr.models import load_inference_model
from dml_csr.models import DMLCSR
from dml_csr.models.checkpoint import ModelSpec, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KW = dict(num_classes=11, layers=[1, 1, 1, 1], width_mult=0.125)
CROP = (64, 64)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = DMLCSR(with_edges=False, **KW)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_var"):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
        for name in ("gamma", "gamma1"):
            for m in model.modules():
                if hasattr(m, name):
                    getattr(m, name).fill_(0.5)
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.pth")
    save_checkpoint(path, model.state_dict(),
                    ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=CROP, channel_order="rgb"))
    return path


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    model, spec = load_inference_model(ckpt)
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    used = export_onnx(model, path, spec, dynamic_batch=True)
    return model, path, used


def test_logits_match_pytorch_with_dynamic_batch(exported):
    model, path, used = exported
    assert used in ("torchscript", "dynamo")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for n in (1, 2, 3):
        x = torch.randn(n, 3, *CROP, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            ref = model(x).parsing.numpy()
        out = sess.run(None, {"image": x.numpy()})[0]
        assert out.shape == ref.shape == (n, 11, 16, 16)
        assert np.abs(out - ref).max() < 1e-3


def test_metadata_round_trip(exported):
    meta = read_onnx_metadata(exported[1])
    assert meta.dataset == "helen" and meta.channel_order == "rgb" and meta.family == "dml_csr"
    assert meta.crop_size == tuple(CROP) and meta.class_tokens[:2] == ["bg", "face"]
    assert len(meta.class_names) == len(meta.schema().palette) == 11
    assert meta.mean == (0.485, 0.456, 0.406) and meta.std == (0.229, 0.224, 0.225)


def test_api_onnx_backend_matches_torch(ckpt, exported):
    photo = (np.random.default_rng(0).random((48, 70, 3)) * 255).astype(np.uint8)
    boxes = np.array([[5, 5, 35, 35], [30, 8, 66, 44]], np.float32)
    ref = FaceParser.from_checkpoint(ckpt, detector=lambda im: boxes)(photo, return_logits=True)
    for parser in (FaceParser.from_onnx(exported[1], detector=lambda im: boxes),
                   FaceParser.from_checkpoint(ckpt, detector=lambda im: boxes, backend="onnx")):
        assert parser.backend_name == "onnx" and parser.channel_order == "rgb"
        res = parser(photo, return_logits=True)
        assert res.image_ids.tolist() == ref.image_ids.tolist()
        for a, b in zip(res.logits, ref.logits):
            assert np.abs(a - b).max() < 1e-3
        np.testing.assert_array_equal(res.combined[0], ref.combined[0])


def test_fixed_batch_export_and_cli(ckpt, tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("export_tool", os.path.join(REPO, "tools", "export_onnx.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = str(tmp_path / "fixed.onnx")
    assert tool.main(["--checkpoint", ckpt, "--out", out, "--size", "32", "48"]) == 0
    shape = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    assert shape == [1, 3, 32, 48]
    # a fixed-batch file still parses several faces (the backend runs them one by one)
    boxes = np.array([[0, 0, 20, 20], [10, 10, 30, 30], [5, 0, 25, 20]], np.float32)
    res = FaceParser.from_onnx(out, detector=lambda im: boxes)(np.zeros((30, 30, 3), np.uint8))
    assert len(res) == 3 and res.label_maps[0].shape == (30, 30)


def test_fp_liif_exports_at_a_fixed_output_size(tmp_path):
    from dml_csr.models.fp_liif import FPLIIF
    kw = dict(num_classes=11, width=8, blocks=[1, 1, 1], reduce_dims=[16, 8], decoder_dims=[16])
    torch.manual_seed(0)
    path = str(tmp_path / "liif.pth")
    save_checkpoint(path, FPLIIF(**kw).state_dict(),
                    ModelSpec.for_dataset("fp_liif", kw, "helen", crop_size=(32, 32)))
    model, spec = load_inference_model(path)
    out = str(tmp_path / "liif.onnx")
    export_onnx(model, out, spec, output_size=(40, 36))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x, size=(40, 36)).parsing.numpy()
    got = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert got.shape == (1, 11, 40, 36) and np.abs(got - ref).max() < 1e-3
    res = FaceParser.from_onnx(out, detector=None)(np.zeros((20, 30, 3), np.uint8), detect=False)
    assert res.label_maps[0].shape == (20, 30)
