"""Contracts of the user API (dml_csr/deploy/parser.py) and tools/infer.py on a tiny DML-CSR and
tiny photos."""
import json
import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dml_csr.deploy import FaceParser, NoFaceWarning
from dml_csr.data.schemas import get_schema
from dml_csr.models import DMLCSR
from dml_csr.models.checkpoint import ModelSpec, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP = (64, 64)
KW = dict(num_classes=11, layers=[1, 1, 1, 1], width_mult=0.125)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = DMLCSR(with_edges=True, **KW)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random norms and a sharp classifier: input-dependent label maps
        for m in model.modules():
            if hasattr(m, "running_var"):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
        model.layer6.conv4.weight.mul_(5)
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pth")
    save_checkpoint(path, model.state_dict(),
                    ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=CROP, channel_order="bgr"))
    return path


def _photo(h=50, w=80, seed=0):
    """Random 8x8-pixel colour blocks (structure the colour parser below can label)."""
    blocks = np.random.default_rng(seed).random((h // 8 + 1, w // 8 + 1, 3)) * 255
    return np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:h, :w].astype(np.uint8)


def _colour_parser(detector=None, **kw):
    """FaceParser over a stand-in network whose 1/4-size logits are a fixed linear map of the
    pixel colours: label maps then follow the photo's content (a random tiny DML-CSR predicts one
    class everywhere)."""
    weight = torch.randn(11, 3, generator=torch.Generator().manual_seed(0)) * 4

    def backend(x, size):
        return F.avg_pool2d(torch.einsum("kc,nchw->nkhw", weight, x), 4, ceil_mode=True)
    return FaceParser(backend, get_schema("helen"), crop_size=CROP, detector=detector, **kw)


def _draw_face(img, cx, cy, s):
    """A cartoon face OpenCV's frontal Haar cascade finds (checked for the sizes used below)."""
    cv2.ellipse(img, (cx, cy), (int(0.42 * s), int(0.55 * s)), 0, 0, 360, (150, 180, 220), -1, cv2.LINE_AA)
    for dx in (-1, 1):
        ex, ey = cx + dx * int(0.18 * s), cy - int(0.1 * s)
        cv2.ellipse(img, (ex, ey - int(0.1 * s)), (int(0.11 * s), int(0.03 * s)), 0, 0, 360, (40, 40, 60), -1, cv2.LINE_AA)
        cv2.ellipse(img, (ex, ey), (int(0.09 * s), int(0.045 * s)), 0, 0, 360, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(img, (ex, ey), int(0.04 * s), (30, 30, 30), -1, cv2.LINE_AA)
    cv2.line(img, (cx, cy - int(0.05 * s)), (cx - int(0.04 * s), cy + int(0.12 * s)), (100, 120, 170), max(1, s // 40))
    cv2.ellipse(img, (cx, cy + int(0.27 * s)), (int(0.14 * s), int(0.04 * s)), 0, 0, 360, (60, 60, 160), -1, cv2.LINE_AA)
    return img


def test_label_facts_travel_with_the_weights(ckpt):
    parser = FaceParser.from_checkpoint(ckpt, detector=None)
    assert parser.crop_size == CROP and parser.channel_order == "bgr"
    res = parser(_photo(), detect=False)
    assert res.dataset == "helen" and res.tokens[0] == "bg" and len(res.palette) == 11


def test_whole_image_mode_returns_the_photo_size(ckpt):
    parser = FaceParser.from_checkpoint(ckpt, detector=None)
    photo = _photo(50, 80)
    assert parser(photo, detect=False).logits is None                 # logits only when asked
    res = parser(photo, detect=False, return_logits=True)
    assert len(res) == 1 and res.image_ids.tolist() == [0] and res.no_face == [False]
    assert res.label_maps[0].shape == (50, 80) and res.combined[0].shape == (50, 80)
    assert res.logits[0].shape == (11, 50, 80) and np.isfinite(res.logits[0]).all()
    assert res.boxes[0].tolist() == [0, 0, 80, 50] and res.regions[0].tolist() == [0, 0, 80, 50]
    assert res.angles.tolist() == [0.0] and np.isnan(res.landmarks).all()
    np.testing.assert_array_equal(res.combined[0], res.label_maps[0])
    res = _colour_parser()(photo, detect=False, return_logits=True)
    assert res.label_maps[0].shape == (50, 80) and len(np.unique(res.label_maps[0])) > 3
    # whole photo, one face: the combined map is that face's map; logits argmax agrees
    np.testing.assert_array_equal(res.combined[0], res.label_maps[0])
    agree = (res.logits[0].argmax(0) == res.label_maps[0]).mean()
    assert agree > 0.9
    # RGB input with rgb=True equals the BGR input
    res_rgb = _colour_parser()(photo[:, :, ::-1].copy(), detect=False, rgb=True)
    np.testing.assert_array_equal(res_rgb.label_maps[0], res.label_maps[0])
    probs = _colour_parser()(photo, detect=False, return_logits=True, probabilities=True).logits[0]
    assert probs.min() >= 0 and probs.max() <= 1 + 1e-6


def test_two_faces_get_their_own_maps_and_overlaps_are_resolved():
    boxes = np.array([[10, 10, 50, 50, 0.9], [40, 20, 90, 70, 0.8]], np.float32)
    parser = _colour_parser(detector=lambda img: boxes, margin=0.25)
    photo = _photo(80, 100, seed=1)
    res = parser(photo, return_logits=True)
    assert len(res) == 2 and res.image_ids.tolist() == [0, 0]
    np.testing.assert_allclose(res.boxes, boxes[:, :4])
    # each face's maps cover its own region: the box around its square, clipped to the photo
    # (sides 1.5 x 40 = 60 around (29.5, 29.5) and 1.5 x 50 = 75 around (64.5, 44.5))
    assert res.regions.tolist() == [[0, 0, 60, 60], [27, 7, 100, 80]]
    assert res.label_maps[0].shape == (60, 60) and res.label_maps[1].shape == (73, 73)
    assert res.logits[1].shape == (11, 73, 73)
    a, b = res.paste(0), res.paste(1)
    assert a.shape == b.shape == (80, 100)
    np.testing.assert_array_equal(a[:60, :60], res.label_maps[0])
    # each face's map is background outside its own square region (side 1.5 x 40 = 60 around (29.5, 29.5))
    assert (a[:, 65:] == 0).all() and (b[:, :25] == 0).all()
    assert (a[:5, 5:55] > 0).any() and (b[:, 70:] > 0).any()
    comb = res.combined[0]
    only_a, only_b = (a > 0) & (b == 0), (b > 0) & (a == 0)
    np.testing.assert_array_equal(comb[only_a], a[only_a])
    np.testing.assert_array_equal(comb[only_b], b[only_b])
    assert (comb[(a == 0) & (b == 0)] == 0).all()
    both = (a > 0) & (b > 0) & (a != b)
    assert both.any()
    # overlap rule: the higher max-probability wins
    pa, pb = res.paste(0, res.logits[0]), res.paste(1, res.logits[1])
    conf_a = torch.softmax(torch.from_numpy(pa), 0).max(0).values.numpy()
    conf_b = torch.softmax(torch.from_numpy(pb), 0).max(0).values.numpy()
    assert np.isin(comb[both], [0] + list(range(1, 11))).all()
    agree = np.where(conf_a[both] >= conf_b[both], a[both], b[both]) == comb[both]
    assert agree.mean() > 0.8  # bilinear vs nearest warping of the confidences differ at a few pixels


def test_no_face_gives_an_empty_result_and_a_warning(ckpt):
    parser = FaceParser.from_checkpoint(ckpt)                 # the real Haar cascade
    flat = np.full((60, 90, 3), 128, np.uint8)
    with pytest.warns(NoFaceWarning):
        res = parser([flat, _photo()])
    assert len(res) == 0 and res.no_face == [True, True]
    assert res.label_maps == [] and res.boxes.shape == (0, 4)
    assert [c.shape for c in res.combined] == [(60, 90), (50, 80)] and not res.combined[0].any()


def test_opencv_cascade_finds_a_drawn_face(ckpt):
    img = cv2.GaussianBlur(_draw_face(np.full((300, 300, 3), 90, np.uint8), 150, 150, 160), (5, 5), 0)
    parser = FaceParser.from_checkpoint(ckpt, detector="haar")
    res = parser(img)
    assert len(res) == 1 and res.no_face == [False]
    x1, y1, x2, y2 = res.boxes[0]
    assert x1 < 150 < x2 and y1 < 150 < y2
    assert np.isnan(res.landmarks).all() and res.angles.tolist() == [0.0]   # boxes only: upright
    assert res.scales[0] == pytest.approx(2.0 * max(x2 - x1, y2 - y1))
    x0, y0, x1, y1 = res.regions[0]
    assert res.label_maps[0].shape == (y1 - y0, x1 - x0) and res.paste(0).shape == (300, 300)


def test_batching_equals_one_by_one(ckpt):
    boxes = np.array([[5, 5, 40, 40], [30, 10, 70, 50]], np.float32)
    photos = [_photo(60, 80, seed=s) for s in range(2)]
    batched = FaceParser.from_checkpoint(ckpt, detector=lambda img: boxes, max_batch=8)
    single = FaceParser.from_checkpoint(ckpt, detector=lambda img: boxes, max_batch=1)
    many = batched(photos, return_logits=True)
    assert many.image_ids.tolist() == [0, 0, 1, 1]
    for j, photo in enumerate(photos):
        one = single(photo, return_logits=True)
        for k, i in enumerate(many.faces_of(j)):
            np.testing.assert_allclose(many.logits[i], one.logits[k], atol=1e-4)
        np.testing.assert_array_equal(many.combined[j], one.combined[0])


def test_release_state_dict_schema_comes_from_its_class_count(tmp_path, monkeypatch, caplog):
    import dml_csr.models.checkpoint as checkpoint
    # the release's DMLCSR(K), CPU-sized
    monkeypatch.setattr(checkpoint, "RELEASE_ARCHITECTURE", {"layers": [1, 1, 1, 1], "width_mult": 0.125})
    monkeypatch.setattr(logging.getLogger("dml_csr"), "propagate", True)
    paths = {}
    for k in (11, 19):
        state = DMLCSR(with_edges=False, **dict(KW, num_classes=k)).state_dict()
        paths[k] = str(tmp_path / f"release{k}.pth")
        torch.save({f"module.{key}": v for key, v in state.items()}, paths[k])
    def load(k, **kw):
        return FaceParser.from_checkpoint(paths[k], detector=None, optimize=False, **kw)

    with caplog.at_level(logging.INFO, logger="dml_csr"):          # 19 classes decide the schema
        assert load(19).schema.name == "celebamask_hq"
    assert "19 classes" in caplog.text and "celebamask_hq" in caplog.text
    with pytest.raises(ValueError) as err:                         # 11 classes: Helen or LaPa
        load(11)
    assert all(s in str(err.value) for s in (paths[11], "--dataset helen", "--dataset lapa",
                                             "dataset="))
    assert load(11, dataset="lapa").schema.name == "lapa"
    with pytest.raises(ValueError) as err:                         # insightface #2620
        load(11, dataset="celebamask_hq")
    assert all(s in str(err.value) for s in (paths[11], "11 classes", "has 19"))
    with pytest.raises(ValueError, match="has 11"):
        load(19, dataset="helen")
    torch.save({"conv1.weight": torch.zeros(1)}, str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="layer6.conv4.weight"):   # not a DML-CSR state_dict
        FaceParser.from_checkpoint(str(tmp_path / "other.pth"))


def test_our_checkpoint_refuses_a_dataset_with_another_class_count(ckpt):
    with pytest.raises(ValueError) as err:
        FaceParser.from_checkpoint(ckpt, dataset="celebamask_hq", detector=None, optimize=False)
    assert ckpt in str(err.value) and "11 classes" in str(err.value) and "helen" in str(err.value)


def test_infer_cli_on_a_folder_with_an_unreadable_file(ckpt, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), _photo(40, 60, seed=2))
    cv2.imwrite(str(src / "b.jpg"), _photo(30, 30, seed=3))
    (src / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "tools", "infer.py"), "--checkpoint", ckpt, str(src),
           "--out", str(out), "--no-detect", "--save-logits", "--batch-size", "2", "--threads", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr      # the others parsed, the failure counted at the end
    assert "broken.jpg" in run.stderr and "1 of 3 images failed" in run.stderr
    label = cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED)
    assert label.shape == (40, 60) and label.max() < 11
    assert cv2.imread(str(out / "b_overlay.jpg")).shape[0] >= 30
    assert np.load(out / "a_logits.npz")["face0"].shape == (11, 40, 60)
    np.testing.assert_array_equal(cv2.imread(str(out / "a_face0.png"), cv2.IMREAD_UNCHANGED), label)
    meta = json.loads((out / "a.json").read_text())
    assert meta["image_size"] == [40, 60] and meta["dataset"] == "helen"
    assert len(meta["class_names"]) == 11 and meta["faces"][0]["region"] == [0, 0, 60, 40]
    assert not (out / "broken.png").exists()
    # in-process for the quick refusals: --out equal to an input folder, nothing processable -> 1
    import importlib.util
    spec = importlib.util.spec_from_file_location("infer_tool", os.path.join(REPO, "tools", "infer.py"))
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    with pytest.raises(ValueError, match="input folder"):
        infer.main(["--checkpoint", ckpt, str(src), "--out", str(src)])
    assert infer.main(["--checkpoint", ckpt, str(src / "broken.jpg"), "--out", str(tmp_path / "o2")]) == 1
    assert sorted(os.listdir(src)) == ["a.png", "b.jpg", "broken.jpg"]


def test_a_large_photo_gives_face_sized_maps():
    """What the parser returns per face grows with the face, not with the photo: a small face on
    a 12 MP photo gets maps of its region only, and no logits unless asked for."""
    photo = np.zeros((3000, 4000, 3), np.uint8)
    photo[1000:1064, 2000:2064] = _photo(64, 64, seed=4)
    boxes = np.array([[2016, 1016, 2048, 1048]], np.float32)
    res = _colour_parser(detector=lambda img: boxes)(photo)
    x0, y0, x1, y1 = res.regions[0]
    assert (x0, y0, x1, y1) == (2000, 1000, 2064, 1064) and res.logits is None
    assert res.label_maps[0].shape == (64, 64) and res.label_maps[0].any()
    assert res.combined[0].shape == (3000, 4000)
    np.testing.assert_array_equal(res.combined[0][y0:y1, x0:x1], res.label_maps[0])
    assert not res.combined[0][:y0].any() and not res.combined[0][:, x1:].any()


def test_infer_cli_int8_needs_calibration_once(ckpt, tmp_path, monkeypatch):
    """tools/infer.py --precision int8: the first run without --calibrate is one error line
    (exit 2) naming what to pass; with --calibrate it writes the outputs and caches the int8
    file, which the next run without --calibrate uses; --calibrate alone is a usage error."""
    from dml_csr.cli import run as run_tool
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"p{i}.png"), _photo(40, 60, seed=10 + i))
    monkeypatch.setenv("DMLCSR_CACHE", str(tmp_path / "cache"))
    import importlib.util
    spec = importlib.util.spec_from_file_location("infer_tool", os.path.join(REPO, "tools", "infer.py"))
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    base = ["--checkpoint", ckpt, str(src / "p0.png"), "--no-detect", "--precision", "int8"]
    assert run_tool(infer.main, base + ["--out", str(tmp_path / "o1")]) == 2
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")
    assert infer.main(base + ["--out", str(tmp_path / "o2"), "--calibrate", str(src)]) == 0
    assert len(os.listdir(tmp_path / "cache")) == 1
    assert infer.main(base + ["--out", str(tmp_path / "o3")]) == 0
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "o2" / "p0.png"), cv2.IMREAD_UNCHANGED),
                                  cv2.imread(str(tmp_path / "o3" / "p0.png"), cv2.IMREAD_UNCHANGED))
    with pytest.raises(SystemExit):
        infer.main(["--checkpoint", ckpt, str(src), "--out", str(tmp_path / "o4"),
                    "--calibrate", str(src)])
    assert sorted(os.listdir(src)) == ["p0.png", "p1.png", "p2.png"]


def test_float32_on_the_cpu_runs_onnxruntime_from_a_checked_cache(ckpt, tmp_path, monkeypatch,
                                                                  caplog):
    """The default float32 parser on the CPU runs the folded model's ONNX file with onnxruntime
    (docs/inference.md, "The float32 fast path"): exported once into the cache, opened by later
    parsers, never used when planted or truncated; it labels like the torch module."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DMLCSR_CACHE", str(cache))
    parser = FaceParser.from_checkpoint(ckpt, detector=None)
    files = sorted(cache.glob("*.fp32.onnx"))
    assert parser.backend_name == "onnx" and len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    torch_parser = FaceParser.from_checkpoint(ckpt, detector=None, backend="torch")
    assert torch_parser.backend_name == "torch"
    photo = _photo(50, 80)
    a = parser(photo, detect=False, return_logits=True)
    b = torch_parser(photo, detect=False, return_logits=True)
    scale = float(np.abs(b.logits[0]).max())
    assert np.abs(a.logits[0] - b.logits[0]).max() < 1e-4 * max(1.0, scale)
    assert (a.label_maps[0] == b.label_maps[0]).mean() > 0.99
    again = FaceParser.from_checkpoint(ckpt, detector=None)
    assert sorted(cache.glob("*.fp32.onnx")) == files and files[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again(photo, detect=False).label_maps[0], a.label_maps[0])
    # the plain module, bf16 and multi-scale TTA stay on torch
    assert FaceParser.from_checkpoint(ckpt, detector=None, optimize=False).backend_name == "torch"
    assert FaceParser.from_checkpoint(ckpt, detector=None, scales=(0.75, 1)).backend_name == "torch"
    with pytest.raises(ValueError, match="multi-scale TTA"):
        FaceParser.from_checkpoint(ckpt, detector=None, backend="onnx", scales=(0.75, 1))
    with pytest.warns(DeprecationWarning, match="optimize"):
        assert FaceParser.from_checkpoint(ckpt, detector=None, fold_bn=False).backend_name == "torch"
    # a file of other weights planted under the name, then a truncated one: set aside, rebuilt
    good = files[0].read_bytes()
    other = tmp_path / "other.pth"
    torch.manual_seed(5)
    save_checkpoint(str(other), DMLCSR(with_edges=False, **KW).state_dict(),
                    ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=CROP))
    FaceParser.from_checkpoint(str(other), detector=None)
    planted = [p for p in cache.glob("*.fp32.onnx") if p != files[0]]
    assert len(planted) == 1
    for bad in (planted[0].read_bytes(), good[: len(good) // 2]):
        files[0].write_bytes(bad)
        caplog.clear()
        rebuilt = FaceParser.from_checkpoint(ckpt, detector=None)
        assert "set aside" in caplog.text and str(files[0]) in caplog.text
        assert files[0].with_name(files[0].name + ".rejected").is_file()
        np.testing.assert_array_equal(rebuilt(photo, detect=False).label_maps[0], a.label_maps[0])


def test_auto_backend_runs_torch_where_the_export_fails(ckpt, tmp_path, monkeypatch):
    """Where this torch cannot export the model (torch 2.6 and the PSP context at small crops,
    docs/versions.md), backend "auto" runs it in PyTorch with a warning; "onnx" asked for fails."""
    from dml_csr.deploy import runtime
    from dml_csr.deploy.onnx import OnnxExportError

    def refuse(*args, **kwargs):
        raise OnnxExportError("ONNX export failed: torchscript (opset 17): Unsupported")
    monkeypatch.setattr(runtime, "float32_model", refuse)
    monkeypatch.setenv("DMLCSR_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="cannot export the model to ONNX.*Unsupported"):
        parser = FaceParser.from_checkpoint(ckpt, detector=None)
    assert parser.backend_name == "torch"
    assert parser(_photo(50, 80), detect=False).label_maps[0].shape == (50, 80)
    with pytest.raises(OnnxExportError):
        FaceParser.from_checkpoint(ckpt, detector=None, backend="onnx")


def test_infer_cli_flip_and_scales_are_the_protocol_tta(ckpt, tmp_path):
    """--flip / --scales reach the parser: the saved logits are the TTA's (log of the mean
    softmax of the passes), equal to FaceParser(flip=True, scales=...)'s, not the one pass's."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("infer_tool", os.path.join(REPO, "tools", "infer.py"))
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    src = tmp_path / "a.png"
    cv2.imwrite(str(src), _photo(40, 60, seed=2))
    outs = {}
    for name, extra in (("one", []), ("tta", ["--flip", "--scales", "0.75", "1.0"])):
        out = tmp_path / name
        assert infer.main(["--checkpoint", ckpt, str(src), "--out", str(out), "--no-detect",
                           "--save-logits", *extra]) == 0
        outs[name] = np.load(out / "a_logits.npz")["face0"].astype(np.float32)
    want = FaceParser.from_checkpoint(ckpt, detector=None, flip=True, scales=(0.75, 1.0))(
        str(src), detect=False, return_logits=True).logits[0]
    np.testing.assert_allclose(outs["tta"], want, atol=2e-2, rtol=2e-3)     # saved as float16
    assert np.abs(outs["tta"] - outs["one"]).max() > 0.1
    assert (np.exp(outs["tta"]).sum(0) - 1).__abs__().max() < 1e-2       # log-probabilities
    with pytest.raises(SystemExit):
        infer.main(["--checkpoint", ckpt, str(src), "--out", str(tmp_path / "x"), "--scales", "0"])
