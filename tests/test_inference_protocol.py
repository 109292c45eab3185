"""Contracts of dml_csr.eval.inference (the evaluation protocol, TTA, saved predictions) and of
tools/test.py (dml_csr.eval.runner)."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dml_csr.data import FaceDataset, get_schema
from dml_csr.eval.evaluate import evaluate_folder
from dml_csr.eval.inference import evaluate_model
from dml_csr.predict import flip_logits, predict_logits
from dml_csr.models import DMLCSR
from dml_csr.models.contract import ParsingModel, ParsingOutput, resize_logits_to
from dml_csr.models.checkpoint import ModelSpec, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCHEMA = get_schema("synthetic")
K = SCHEMA.num_classes
PERM = SCHEMA.flip_permutation()
LE, RE = SCHEMA.tokens.index("le"), SCHEMA.tokens.index("re")
SIZES = {"a_wide": (37, 50), "b_tall": (50, 37), "c_odd": (29, 43)}  # (h, w), non-square
SUMMARY = ("f1", "iou", "mean_f1", "miou", "pixel_accuracy", "mean_accuracy", "headline")


def _label(h: int, w: int, rng) -> np.ndarray:
    """Face-like blobs with every class, left/right parts on the viewer's side, some 255."""
    lab = np.zeros((h, w), np.uint8)
    cx, cy = w // 2, h // 2
    cv2.ellipse(lab, (cx, cy - 2), (w // 2 - 1, h // 2), 0, 0, 360, 10, -1)           # hair
    cv2.ellipse(lab, (cx, cy + 2), (w // 3, h // 3 + 1), 0, 0, 360, 1, -1)            # face
    dx, dy = max(3, w // 7), max(3, h // 7)
    for cls, ox, oy, ax in ((2, -dx, -dy - 2, (3, 1)), (3, dx, -dy - 2, (3, 1)),
                            (4, -dx, -dy + 1, (2, 1)), (5, dx, -dy + 1, (2, 1)),
                            (6, 0, 1, (1, 3)), (7, 0, dy, (4, 1)), (8, 0, dy + 1, (3, 0)),
                            (9, 0, dy + 2, (4, 1))):
        cv2.ellipse(lab, (cx + ox, cy + oy), ax, 0, 0, 360, cls, -1)
    lab[rng.random((h, w)) < 0.01] = 255
    return lab


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic_tiny"
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / "test" / sub).mkdir(parents=True)
    (root / "label_names.txt").write_text("\n".join(SCHEMA.tokens) + "\n")
    lines = []
    for name, (h, w) in SIZES.items():
        lab = _label(h, w, rng)
        colours = rng.integers(0, 256, (256, 3)).astype(np.uint8)
        img = np.clip(colours[lab] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        assert cv2.imwrite(str(root / "test" / "images" / f"{name}.png"), img)
        assert cv2.imwrite(str(root / "test" / "labels" / f"{name}.png"), lab)
        lines.append(f"images/{name}.png labels/{name}.png\n")
    (root / "test_list.txt").write_text("".join(lines))
    return root


def _dataset(root, crop=64):
    return FaceDataset(str(root), "test", crop_size=(crop, crop), augment="none", schema=SCHEMA)


def _key(t: torch.Tensor) -> str:
    return hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()


class GridDouble(ParsingModel):
    """A test double keeping the model contract: ``logits(x)`` on its own grid, resized to
    ``size`` when asked (as DML-CSR does)."""

    def forward(self, x, size=None, coord=None):
        return ParsingOutput(resize_logits_to(self.logits(x), size))


class Oracle(GridDouble):
    """Logits = 10 x one-hot of the sample's warped label crop (255 -> background), looked up by
    the bytes of the input crop; at the crop size, so nothing is interpolated."""

    def __init__(self, dataset):
        super().__init__()
        self.table = {}
        for i in range(len(dataset)):
            s = dataset[i]
            self.table[_key(s["image"])] = torch.where(s["label"] == 255, 0, s["label"])

    def logits(self, x):
        labels = torch.stack([self.table[_key(img)] for img in x])
        return 10.0 * F.one_hot(labels, K).permute(0, 3, 1, 2).float()


class SymmetricConv(GridDouble):
    """A random conv whose weights make it flip-equivariant up to the schema's left/right swap,
    with the DML-CSR output stride of 4: model(flip x) = flip_logits(model(x))."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(K, 3, 5, 5, generator=g)
        b = torch.randn(K, generator=g)
        self.conv = nn.Conv2d(3, K, 5, padding=2)
        with torch.no_grad():
            self.conv.weight.copy_((w + w[PERM].flip(-1)) / 2)
            self.conv.bias.copy_((b + b[PERM]) / 2)

    def logits(self, x):
        return F.avg_pool2d(self.conv(x), 4)


def _read_preds(folder):
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(Path(folder).glob("*.png"))}


def test_oracle_scores_100_when_the_crop_upsamples(data_root, tmp_path):
    # 64 px crop of images whose longer side is <= 50: every original pixel's nearest crop pixel
    # maps back to within 0.5 / 1.28 px of it, so the round trip is exact: zero wrong pixels.
    ds = _dataset(data_root, 64)
    metrics = evaluate_model(Oracle(ds), ds, batch_size=2, pred_dir=tmp_path / "pred")
    assert metrics["num_images"] == 3
    assert metrics["pixel_accuracy"] == 100.0
    assert all(v == 100.0 for v in metrics["f1"].values())
    hist = np.array(metrics["confusion"])
    assert hist.sum() == sum(int((ds.read_label(i) != 255).sum()) for i in range(3))
    assert (hist.sum(1) > 0).all()  # every class is present, so the 100 is not vacuous
    for i, (name, pred) in enumerate(_read_preds(tmp_path / "pred").items()):
        gt = ds.read_label(ds.names.index(Path(name).stem))
        assert pred.shape == gt.shape == SIZES[Path(name).stem]  # the label's own size


def test_oracle_errors_only_on_boundaries_when_the_crop_downsamples(data_root, tmp_path):
    # 24 px crop (f = 24 / 50 = 0.48): nearest there and back moves a pixel by at most
    # 0.5 / 0.48 + 0.5 < 2 px, i.e. by at most one pixel on each axis after rounding. Every wrong
    # pixel must therefore have a differently labelled pixel (or a 255) in its 3x3 neighbourhood.
    ds = _dataset(data_root, 24)
    metrics = evaluate_model(Oracle(ds), ds, batch_size=3, pred_dir=tmp_path / "pred")
    wrong_total, band_total = 0, 0
    for name, pred in _read_preds(tmp_path / "pred").items():
        gt = ds.read_label(ds.names.index(Path(name).stem))
        kernel = np.ones((3, 3), np.uint8)
        boundary = cv2.dilate(gt, kernel) != cv2.erode(gt, kernel)
        wrong = (pred != gt) & (gt != 255)
        assert not (wrong & ~boundary).any(), f"{name}: errors away from label boundaries"
        wrong_total += int(wrong.sum())
        band_total += int((boundary & (gt != 255)).sum())
    assert 0 < wrong_total < band_total
    assert metrics["pixel_accuracy"] == pytest.approx(
        100.0 * (1 - wrong_total / metrics["num_pixels"]))


class ImplicitOracle(nn.Module):
    """Like Oracle, but takes ``size=`` (as FP-LIIF does): one-hot of the sample's label warped
    straight onto a ``size`` grid of the crop region (the crop parameters of the dataset)."""

    def __init__(self, dataset):
        super().__init__()
        self.samples = {}
        for i in range(len(dataset)):
            s = dataset[i]
            self.samples[_key(s["image"])] = (dataset.read_label(int(s["index"])), s["center"].numpy(),
                                              float(s["scale"]), float(s["rotation"]))
        self.sizes = []

    def forward(self, x, size=None, coord=None):
        from dml_csr.data.transforms import warp_label
        self.sizes.append(tuple(size))
        labels = []
        for img in x:
            lab, center, scale, rotation = self.samples[_key(img)]
            crop = warp_label(lab, center, scale, rotation, tuple(size))
            labels.append(torch.from_numpy(np.where(crop == 255, 0, crop).astype(np.int64)))
        return ParsingOutput(10.0 * F.one_hot(torch.stack(labels), K).permute(0, 3, 1, 2).float())


def test_output_scale_decodes_at_a_finer_grid_and_maps_back_exactly(data_root, tmp_path):
    # the 24 px crop loses boundary pixels (previous test); asking for the logits at 3 x 24 = 72
    # px (finer than the <= 50 px labels) makes the round trip exact again: the inverse crop is
    # computed for the 72 px grid, which covers the same region
    ds = _dataset(data_root, 24)
    coarse = evaluate_model(ImplicitOracle(ds), ds, batch_size=3)
    oracle = ImplicitOracle(ds)
    fine = evaluate_model(oracle, ds, batch_size=3, output_scale=3.0, pred_dir=tmp_path / "pred")
    assert set(oracle.sizes) == {(72, 72)}
    assert coarse["pixel_accuracy"] < 100.0
    assert fine["pixel_accuracy"] == 100.0
    for name, pred in _read_preds(tmp_path / "pred").items():
        assert pred.shape == SIZES[Path(name).stem]          # still the label's own size
    with pytest.raises(ValueError, match="output_scale"):
        evaluate_model(oracle, ds, output_scale=0)


def test_flip_tta_of_an_equivariant_model_equals_no_tta(data_root, tmp_path):
    model = SymmetricConv()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # the fake really is equivariant, and really not flip-invariant
        assert torch.allclose(model.logits(x.flip(-1)), flip_logits(model.logits(x), PERM), atol=1e-5)
        assert not torch.allclose(model.logits(x.flip(-1)), model.logits(x).flip(-1), atol=1e-3)
    ds = _dataset(data_root, 64)
    plain = evaluate_model(model, ds, pred_dir=tmp_path / "plain")
    tta = evaluate_model(model, ds, flip=True, pred_dir=tmp_path / "tta")
    assert 5.0 < plain["pixel_accuracy"] < 100.0
    for key in SUMMARY + ("confusion",):
        assert tta[key] == plain[key], key
    a, b = _read_preds(tmp_path / "plain"), _read_preds(tmp_path / "tta")
    assert a.keys() == b.keys() and all((a[n] == b[n]).all() for n in a)


class LeftEyeWhenFlipped(GridDouble):
    """'left eye' everywhere when the input is mirrored (its bright half is on the right),
    uniform logits otherwise."""

    def logits(self, x):
        w = x.shape[-1]
        mirrored = x[..., : w // 2].mean((1, 2, 3)) < x[..., w // 2:].mean((1, 2, 3))
        out = torch.zeros(x.shape[0], K, x.shape[2] // 4, x.shape[3] // 4)
        out[mirrored, LE] = 10.0
        return out


def test_flip_tta_swaps_left_and_right():
    x = torch.cat([torch.ones(1, 3, 16, 8), -torch.ones(1, 3, 16, 8)], dim=-1)
    model = LeftEyeWhenFlipped()
    assert (model(x).parsing.argmax(1) == 0).all()  # the unflipped pass has no opinion
    pred = predict_logits(model, x, (16, 16), flip=True, flip_permutation=PERM).argmax(1)
    assert (pred == RE).all()
    no_swap = predict_logits(model, x, (16, 16), flip=True, flip_permutation=range(K)).argmax(1)
    assert (no_swap == LE).all()
    with pytest.raises(ValueError, match="flip_permutation"):
        predict_logits(model, x, (16, 16), flip=True)


def test_predict_logits_sizes_forms_and_scales():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 24)
    model = SymmetricConv()
    low = model(x).parsing                                    # (2, K, 8, 6)
    out = predict_logits(model, x, (32, 24))
    assert torch.equal(out, F.interpolate(low, (32, 24), mode="bilinear", align_corners=True))

    class TrainingForm(nn.Module):                            # with edge heads: parsing used
        def forward(self, x, size=None):
            return ParsingOutput(model(x, size).parsing, torch.zeros(1), torch.zeros(1))
    assert torch.equal(predict_logits(TrainingForm(), x, (32, 24)), out)

    class SizeAware(nn.Module):                               # FP-LIIF style: asked for the size
        def __init__(self):
            super().__init__()
            self.sizes = []

        def forward(self, x, size=None):
            self.sizes.append(tuple(size))
            return ParsingOutput(torch.zeros(x.shape[0], K, *size))
    liif = SizeAware()
    predict_logits(liif, x, (32, 24), scales=(0.5, 1.0))
    assert liif.sizes == [(32, 24), (32, 24)]

    ms = predict_logits(model, x, (32, 24), scales=(0.75, 1.0, 1.25), flip=True,
                        flip_permutation=PERM)
    assert ms.shape == (2, K, 32, 24) and torch.isfinite(ms).all()
    assert torch.allclose(ms.exp().sum(1), torch.ones(2, 32, 24), atol=1e-4)  # log mean prob
    twice = predict_logits(model, x, (32, 24), scales=(1.0, 1.0))
    assert torch.allclose(twice, out.log_softmax(1), atol=1e-5)


def test_saved_predictions_score_identically_and_mode_is_restored(data_root, tmp_path):
    model = SymmetricConv(seed=3)
    model.train()
    model.conv.eval()  # a mixed state must come back as it was
    ds = _dataset(data_root, 64)
    metrics = evaluate_model(model, ds, batch_size=2, pred_dir=tmp_path / "pred",
                             overlay_dir=tmp_path / "overlay", save_logits=True)
    assert model.training and not model.conv.training
    folder = evaluate_folder(data_root, "test", tmp_path / "pred")
    for key in SUMMARY:
        assert folder[key] == metrics[key], key
    assert folder["confusion"] == metrics["confusion"]
    overlays = sorted(p.name for p in (tmp_path / "overlay").iterdir())
    assert overlays == [f"{n}.jpg" for n in sorted(SIZES)]
    assert cv2.imread(str(tmp_path / "overlay" / "a_wide.jpg")).shape == (37, 50, 3)
    saved = np.load(tmp_path / "pred" / "logits" / "b_tall.npz")
    assert saved["logits"].shape == (K, 64, 64) and tuple(saved["orig_size"]) == (50, 37)


def test_augmented_dataset_is_refused(data_root):
    ds = FaceDataset(str(data_root), "test", crop_size=(32, 32), augment="paper", schema=SCHEMA)
    with pytest.raises(ValueError, match="augment"):
        evaluate_model(SymmetricConv(), ds)


def _dist_worker(rank, world, init_file, root, out_dir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)
        metrics = evaluate_model(SymmetricConv(), _dataset(root, 64), batch_size=1)
        Path(out_dir, f"{rank}.json").write_text(json.dumps(metrics))
    finally:
        from dml_csr.distributed import destroy_group
        destroy_group()   # gloo: barrier and pause first (torch 2.6 deadlocked)


def test_distributed_shards_are_all_reduced(data_root, tmp_path):
    single = evaluate_model(SymmetricConv(), _dataset(data_root, 64))
    torch.multiprocessing.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(data_root),
                                                    str(tmp_path)), nprocs=2)
    for rank in range(2):  # 3 images over 2 processes: shards of 2 and 1, no duplicate
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got["num_images"] == 3
        assert got["confusion"] == single["confusion"]


def test_cli_end_to_end_with_both_checkpoint_formats(data_root, tmp_path):
    torch.manual_seed(0)
    kwargs = dict(num_classes=K, layers=[1, 1, 1, 1], width_mult=0.125)
    model = DMLCSR(with_edges=True, **kwargs)  # training form: its edge keys must be dropped
    with torch.no_grad():  # non-trivial running statistics, so a lost buffer would show
        for m in model.modules():
            if hasattr(m, "running_var"):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = model.state_dict()
    ours = tmp_path / "ours" / "best.pth"
    bare = tmp_path / "release" / "release.pth"
    ours.parent.mkdir()
    bare.parent.mkdir()
    save_checkpoint(str(ours), state, ModelSpec.for_dataset("dml_csr", kwargs, "synthetic",
                                                             crop_size=(64, 64)))
    torch.save({f"module.{k}": v for k, v in state.items()}, bare)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"name: tiny\ndata:\n  dataset: synthetic\n  root: {data_root}\n"
                   "  crop_size: [64, 64]\nmodel:\n  args:\n    layers: [1, 1, 1, 1]\n    width_mult: 0.125\n")

    inference = DMLCSR(with_edges=False, **kwargs)
    inference.load_state_dict({k: v for k, v in state.items() if not k.startswith("edge_layer.")})
    expected = evaluate_model(inference, _dataset(data_root, 64))

    results = []
    for ckpt in (ours, bare):
        out = ckpt.parent / "metrics.json"
        cmd = [sys.executable, str(REPO / "tools" / "test.py"), str(cfg), "--checkpoint", str(ckpt),
               "--split", "test", "--out", str(out), "--device", "cpu", "--workers", "0",
               "--save-pred", str(ckpt.parent / "pred"), "--meta", "row=dml-csr",
               "eval.batch_size=2"]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
        assert run.returncode == 0, run.stderr
        assert "mIoU" in run.stdout and "class" in run.stdout  # the per-class table was printed
        result = json.loads(out.read_text())
        for key in SUMMARY + ("protocol", "meta"):
            assert key in result, key
        assert result["meta"]["dataset"] == "synthetic" and result["meta"]["split"] == "test"
        assert result["meta"]["checkpoint"] == str(ckpt) and result["meta"]["config"] == "tiny"
        assert result["meta"]["row"] == "dml-csr" and result["meta"]["num_images"] == 3
        assert result["confusion"] == expected["confusion"]
        folder = evaluate_folder(data_root, "test", ckpt.parent / "pred")
        assert folder["f1"] == result["f1"]
        results.append(result)
    assert results[0]["f1"] == results[1]["f1"]


class RandomConv(GridDouble):
    """A random conv at the DML-CSR output stride: input-dependent maps, not flip-equivariant
    (flip TTA changes them)."""

    def __init__(self, seed=1):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, K, 5, padding=2)
        with torch.no_grad():
            self.conv.weight.mul_(6)

    def logits(self, x):
        return F.avg_pool2d(self.conv(x), 4)


@pytest.mark.parametrize("family", ["double", "dml_csr"])
def test_the_parser_map_equals_the_protocol_prediction(data_root, tmp_path, family):
    """The parser (deploy/parser.py) and the benchmark protocol (eval/inference.py) run one
    test-time path (dml_csr/predict.py): on the data set's whole-image crop the parser's map is
    the protocol's saved prediction pixel for pixel, with and without test-time augmentation."""
    from dml_csr.deploy import FaceParser
    if family == "double":
        model = RandomConv()
        parser_of = lambda **tta: FaceParser(model, SCHEMA, crop_size=(64, 64), detector=None,  # noqa: E731
                                             **tta)
    else:   # through a checkpoint file, as tools/infer.py and tools/test.py load it
        from dml_csr.utils.random_weights import calibrate_norms, randomise_norms
        kwargs = dict(num_classes=K, layers=[1, 1, 1, 1], width_mult=0.125)
        torch.manual_seed(0)
        model = randomise_norms(DMLCSR(with_edges=False, **kwargs))
        calibrate_norms(model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
        with torch.no_grad():      # a sharp classifier: maps that follow the image
            model.layer6.conv4.weight.mul_(5)
        model.eval()
        ckpt = tmp_path / "tiny.pth"
        save_checkpoint(str(ckpt), model.state_dict(),
                        ModelSpec.for_dataset("dml_csr", kwargs, "synthetic", crop_size=(64, 64)))
        parser_of = lambda **tta: FaceParser.from_checkpoint(  # noqa: E731
            ckpt, detector=None, optimize=False, **tta)
    ds = _dataset(data_root, 64)
    maps = {}
    for name, tta in (("none", {}), ("flip", {"flip": True}),
                      ("flip+scales", {"flip": True, "scales": (0.75, 1.0, 1.25)})):
        pred = tmp_path / f"pred_{name}"
        evaluate_model(model, ds, batch_size=2, pred_dir=pred, **tta)
        protocol = _read_preds(pred)
        parser = parser_of(**tta)
        for png, want in protocol.items():
            res = parser(str(data_root / "test" / "images" / png), detect=False)
            assert res.label_maps[0].shape == want.shape
            np.testing.assert_array_equal(res.label_maps[0], want, err_msg=f"{name} {png}")
        maps[name] = protocol
        assert all(len(np.unique(m)) >= 3 for m in protocol.values()), name   # not a constant map
    # the options reached the model: each augmentation changes some pixels
    for name in ("flip", "flip+scales"):
        assert any((maps[name][p] != maps["none"][p]).any() for p in maps["none"]), name
