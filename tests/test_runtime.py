"""The runtime choice (dml_csr/deploy/runtime.py) on its own: the backend rule, the precision
checks, the ONNX file's facts, where warnings point, and the parser built from a runtime equal
to the parser's own builders."""
import numpy as np
import pytest
import torch

from dml_csr.deploy import (FaceParser, Runtime, export_onnx, runtime_from_checkpoint,
                            runtime_from_model, runtime_from_onnx)
from dml_csr.deploy import parser, runtime
from dml_csr.models import load_inference_model
from test_api import CROP, _photo, ckpt  # noqa: F401  (the tiny Helen checkpoint, bgr; a photo)


def test_auto_backend_rule_on_the_cpu(ckpt):
    fast = runtime_from_checkpoint(ckpt)
    assert isinstance(fast, Runtime) and fast.backend_name == "onnx"
    assert fast.crop_size == CROP and fast.channel_order == "bgr" and fast.schema.name == "helen"
    for kw in (dict(precision="bf16"), dict(optimize=False), dict(scales=(0.75, 1.0)),
               dict(backend="torch")):
        assert runtime_from_checkpoint(ckpt, **kw).backend_name == "torch", kw
    bf16 = runtime_from_checkpoint(ckpt, precision="bf16").model
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_the_onnx_path_frees_the_loaded_module(ckpt):
    model, spec = load_inference_model(ckpt)
    rt = runtime_from_model(model, spec)
    assert rt.backend_name == "onnx" and next(model.parameters()).device.type == "meta"
    model, spec = load_inference_model(ckpt)
    assert runtime_from_model(model, spec, backend="torch").model.model is model  # in place


@pytest.mark.parametrize("kw, message", [
    (dict(precision="int8", device="cuda"), "runs on the CPU"),
    (dict(precision="int4"), "precision must be one of"),
    (dict(calibrate="photos"), "goes with precision='int8'"),
    (dict(backend="tensorrt"), "backend must be one of"),
    (dict(backend="onnx", precision="bf16"), "runs on the torch backend"),
    (dict(backend="onnx", device="cuda"), "the ONNX backend runs on the CPU"),
])
def test_impossible_choices_are_refused(ckpt, kw, message):
    with pytest.raises(ValueError, match=message):
        runtime_from_checkpoint(ckpt, **kw)
    model, spec = load_inference_model(ckpt)
    with pytest.raises(ValueError, match=message):
        runtime_from_model(model, spec, **kw)


def test_an_onnx_file_carries_its_facts(ckpt, tmp_path):
    model, spec = load_inference_model(ckpt)
    path = str(tmp_path / "tiny.onnx")
    export_onnx(model, path, spec)                       # fixed crop size
    facts = Runtime.of(model, spec, "torch").input_facts()
    for rt in (runtime_from_onnx(path), runtime_from_checkpoint(path)):
        assert rt.backend_name == "onnx" and rt.input_facts() == facts
    with pytest.raises(ValueError, match="multi-scale TTA"):
        runtime_from_onnx(path, scales=(0.75, 1.0))


def test_a_parser_from_a_runtime_is_the_builders_parser(ckpt):
    photo = _photo()
    for kw in (dict(), dict(backend="torch")):
        ref = FaceParser.from_checkpoint(ckpt, detector=None, **kw)
        made = FaceParser.from_runtime(runtime_from_checkpoint(ckpt, **kw), detector=None)
        assert made.backend_name == ref.backend_name
        assert (made.crop_size, made.channel_order, made.mean) == (ref.crop_size, ref.channel_order,
                                                                   ref.mean)
        np.testing.assert_array_equal(made(photo, detect=False).label_maps[0],
                                      ref(photo, detect=False).label_maps[0])


def test_warnings_point_at_the_callers_line(ckpt, monkeypatch, tmp_path):
    with pytest.warns(DeprecationWarning, match="optimize") as got:
        FaceParser.from_checkpoint(ckpt, detector=None, fold_bn=False)
    assert got[0].filename == __file__

    def refuse(*args, **kwargs):
        raise runtime.OnnxExportError("ONNX export failed: Unsupported")
    monkeypatch.setattr(runtime, "float32_model", refuse)
    with pytest.warns(UserWarning, match="cannot export") as got:
        assert runtime_from_checkpoint(ckpt).backend_name == "torch"
    assert got[0].filename == __file__


def test_the_parser_module_still_names_the_precisions():
    assert parser.PARSER_PRECISIONS is runtime.PARSER_PRECISIONS == ("fp32", "bf16", "int8")
