"""A data set of your own, end to end, with no edit of the package: a 7-class set with its own
class names (made from the synthetic generator's labels) goes through ``prepare_data custom``,
training fine-tuned from an 11-class checkpoint (``model.init_from``), ``tools/test.py``,
``tools/infer.py`` and ``tools/export_onnx.py``; its class names reach every output. Then the
class maps: the three CelebAMask-HQ id orders and scoring across label sets."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from dml_csr.cli import run
from dml_csr.data.layout import read_identity, root_schema
from dml_csr.data.schemas import get_schema

NAMES = ["background", "skin", "left eye", "right eye", "nose", "mouth", "hair"]
TOKENS = ["bg", "skin", "left_eye", "right_eye", "nose", "mouth", "hair"]
# synthetic (Helen order) ids -> the 7 classes: brows become skin, the three mouth parts mouth
TO_SEVEN = np.array([0, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6] + [255] * 245, np.uint8)
TINY = ["model.args.layers=[1,1,1,1]", "model.args.width_mult=0.125", "data.crop_size=[48,48]",
        "data.batch_size=2", "data.workers=0", "train.epochs=3", "train.cycles=1",
        "train.cycle_epochs=1", "train.image_log_interval=0", "eval.workers=0",
        "eval.batch_size=2"]


def _tool(name):
    import importlib
    return importlib.import_module(f"tools.{name}").main


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """RAW/images (JPEG and PNG), RAW/labels with the 7 ids (a few pixels 255), label_names."""
    from dml_csr.data.synthetic import make_synthetic
    work = tmp_path_factory.mktemp("custom")
    make_synthetic(work / "syn", num_train=10, num_valid=1, num_test=1, size=48, seed=5)
    raw = work / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "labels").mkdir()
    sources = sorted((work / "syn").glob("*/images/*.jpg"))
    for k, image in enumerate(sources):
        stem = f"face {k:02d}" if k == 3 else f"face_{k:02d}"     # a name with a space
        label = cv2.imread(str(image.parent.parent / "labels" / (image.stem + ".png")),
                           cv2.IMREAD_UNCHANGED)
        seven = TO_SEVEN[label]
        seven[:2, :2] = 255                                       # ignored pixels
        cv2.imwrite(str(raw / "labels" / f"{stem}.png"), seven)
        if k % 4 == 0:                                            # some images as PNG
            cv2.imwrite(str(raw / "images" / f"{stem}.png"), cv2.imread(str(image)))
        else:
            shutil.copy(image, raw / "images" / f"{stem}.jpg")
    (raw / "label_names.txt").write_text("\n".join(NAMES) + "\n")
    return raw


@pytest.fixture(scope="module")
def eleven(tmp_path_factory):
    """An 11-class checkpoint to fine-tune from (the tiny model, random weights)."""
    from dml_csr.models import DMLCSR, ModelSpec, save_checkpoint
    kw = dict(num_classes=11, layers=[1, 1, 1, 1], width_mult=0.125)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("eleven") / "lapa_tiny.pth"
    save_checkpoint(str(path), DMLCSR(with_edges=True, **kw).state_dict(),
                    ModelSpec.for_dataset("dml_csr", kw, "lapa", crop_size=(48, 48)))
    return str(path)


def test_a_data_set_of_your_own_end_to_end(raw, eleven, tmp_path):
    before = sorted(p.name for p in raw.rglob("*"))
    out = tmp_path / "faces7"
    assert run(_tool("prepare_data"), ["custom", str(raw), str(out), "--name", "faces7",
                                       "--no-progress"]) == 0
    assert sorted(p.name for p in raw.rglob("*")) == before           # RAW untouched
    schema = root_schema(out)
    assert (schema.name, list(schema.tokens), list(schema.class_names)) == ("faces7", TOKENS,
                                                                             NAMES)
    assert schema.flip_pairs == ((2, 3),) and read_identity(out)["tool"] == "prepare_data"
    lines = sum((out / f"{s}_list.txt").read_text().count("\n") for s in ("train", "valid", "test"))
    assert lines == 12 and "face_03" in (out / "train_list.txt").read_text() + \
        (out / "valid_list.txt").read_text() + (out / "test_list.txt").read_text()
    assert list((out / "train" / "images").glob("*.png"))              # PNGs kept as PNG

    # training from the 11-class checkpoint: backbone and context load, the heads start fresh
    run_dir = tmp_path / "run"
    assert run(_tool("train"), ["synthetic", f"data.root={out}", "data.dataset=faces7",
                                f"model.init_from={eleven}", *TINY, "--output-dir",
                                str(run_dir), "--test"]) == 0
    log = (run_dir / "train.log").read_text()
    assert "model.init_from" in log and "start fresh: layer6.conv4" in log, log
    best = torch.load(run_dir / "best.pth", weights_only=True)
    assert best["class_names"] == NAMES and best["schema"]["name"] == "faces7"
    tested = json.loads((run_dir / "metrics_test.json").read_text())
    assert tested["classes"] == TOKENS and tested["labels"]["class_names"] == NAMES
    assert "overall" not in tested["f1"]            # no merged group: none was declared

    # tools/test.py, tools/infer.py, tools/export_onnx.py read everything from the files
    result = tmp_path / "test.json"
    assert run(_tool("test"), ["synthetic", "--checkpoint", str(run_dir / "best.pth"),
                               f"data.root={out}", "data.dataset=faces7", *TINY, "--out",
                               str(result)]) == 0
    assert json.loads(result.read_text())["meta"]["dataset"] == "faces7"
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(next((out / "test" / "images").iterdir()), photos / "a.jpg")
    parsed = tmp_path / "parsed"
    assert run(_tool("infer"), ["--checkpoint", str(run_dir / "best.pth"), str(photos), "--out",
                                str(parsed), "--no-detect"]) == 0
    summary = json.loads((parsed / "a.json").read_text())
    assert summary["class_names"] == NAMES and summary["dataset"] == "faces7"
    assert cv2.imread(str(parsed / "a.png"), cv2.IMREAD_UNCHANGED).max() < 7
    onnx_file = tmp_path / "faces7.onnx"
    assert run(_tool("export_onnx"), ["--checkpoint", str(run_dir / "best.pth"), "--out",
                                      str(onnx_file)]) == 0
    import dml_csr
    from dml_csr.deploy.onnx import read_onnx_metadata
    spec = read_onnx_metadata(onnx_file)
    assert spec.schema().class_names == tuple(NAMES) and spec.schema().flip_pairs == ((2, 3),)
    parser = dml_csr.FaceParser.from_onnx(str(onnx_file), detector=None)
    assert list(parser(cv2.imread(str(photos / "a.jpg")), detect=False).class_names) == NAMES


def test_prepare_custom_checks_what_it_reads(raw, tmp_path):
    from dml_csr.data.prepare import PrepareError, prepare_custom
    bad = tmp_path / "bad"
    shutil.copytree(raw, bad)
    label = next((bad / "labels").iterdir())
    ids = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    ids[5, 5] = 9                                                     # above the 7 classes
    cv2.imwrite(str(label), ids)
    with pytest.raises(PrepareError, match=rf"{label.name}: label ids \[9\] outside 0..6 and 255"):
        prepare_custom(bad, tmp_path / "o1", name="faces7", progress=False)
    label.unlink()
    with pytest.raises(PrepareError, match="image without label"):
        prepare_custom(bad, tmp_path / "o2", name="faces7", progress=False)
    with pytest.raises(PrepareError, match="flip pair"):
        prepare_custom(raw, tmp_path / "o3", name="faces7", flip_pairs=[(2, 9)], progress=False)
    (tmp_path / "lists").mkdir()
    shutil.copytree(raw, tmp_path / "lists" / "raw")
    listed = tmp_path / "lists" / "raw"
    (listed / "train_list.txt").write_text("face_00\nface_01\nnope\n")
    with pytest.raises(PrepareError, match=r"train_list.txt:3: 'nope' is not a sample"):
        prepare_custom(listed, tmp_path / "o4", name="faces7", progress=False)


# ----------------------------------------------------------------------------------------------
# class maps: the CelebAMask-HQ id orders, and scoring across label sets
CELEBA = get_schema("celebamask_hq")


def _celeba_root(tmp_path):
    """A CelebAMask-HQ-like root (the built-in description) of two hand-made label maps holding
    every class, and its ground truth."""
    from dml_csr.data.layout import label_names_text, split_list_text, write_identity
    root = tmp_path / "celeba_like"
    (root / "test" / "images").mkdir(parents=True)
    (root / "test" / "labels").mkdir()
    gts = {}
    for k in range(2):
        gt = np.repeat(np.arange(19, dtype=np.uint8)[None], 4, 0)     # every class, 4 rows
        gt = np.roll(gt, k, axis=1)
        cv2.imwrite(str(root / "test" / "labels" / f"s{k}.png"), gt)
        cv2.imwrite(str(root / "test" / "images" / f"s{k}.jpg"), np.zeros((4, 19, 3), np.uint8))
        gts[f"s{k}"] = gt
    (root / "label_names.txt").write_text(label_names_text(CELEBA.tokens))
    (root / "test_list.txt").write_text(split_list_text(sorted(gts)))
    write_identity(root, "celebamask_hq", tool="test")
    return root, gts


@pytest.mark.parametrize("order, first_ids", [
    ("celebamask_hq_official", {"skin": 1, "nose": 2, "l_brow": 6, "cloth": 18}),
    ("celebamask_hq_bisenet", {"skin": 1, "l_brow": 2, "nose": 10, "hat": 18}),
    ("celebamask_hq_farl", {"neck": 1, "skin": 2, "l_ear": 4, "neck_l": 18}),
])
def test_the_celebamask_hq_id_orders_in_circulation(order, first_ids, tmp_path):
    """Predictions written in another project's id order score 100 once mapped; unmapped they
    do not (those orders differ from ours, except the data set's own)."""
    from dml_csr.eval.classmap import load_class_map
    from dml_csr.eval.evaluate import evaluate_folder
    cmap = load_class_map(order, target=CELEBA)
    for token, foreign in first_ids.items():
        assert cmap.source[foreign] == token                            # hand-checked ids
        assert cmap.lut()[foreign] == CELEBA.tokens.index(token)
    root, gts = _celeba_root(tmp_path)
    preds = tmp_path / "preds"
    preds.mkdir()
    to_foreign = np.array([cmap.source.index(t) for t in CELEBA.tokens], np.uint8)
    for name, gt in gts.items():
        cv2.imwrite(str(preds / f"{name}.png"), to_foreign[gt])        # their order
    result = evaluate_folder(root, "test", preds, class_map=order)
    assert result["mean_f1"] == pytest.approx(100.0)
    assert result["meta"]["class_map"]["name"] == order
    plain = evaluate_folder(root, "test", preds)
    assert (plain["mean_f1"] < 100.0) == (order != "celebamask_hq_official")


def test_a_model_of_one_label_set_scored_on_another(tmp_path):
    """tools/test.py --map: a 19-class (CelebAMask-HQ order) model on an 11-class root; the
    result equals scoring its saved, mapped predictions, and records the map; ignored classes
    leave the score."""
    from dml_csr.config import load_config
    from dml_csr.data.synthetic import make_synthetic
    from dml_csr.eval.evaluate import evaluate_folder
    from dml_csr.eval.runner import run_test
    from dml_csr.models import DMLCSR, ModelSpec, save_checkpoint
    root = tmp_path / "syn"
    make_synthetic(root, num_train=2, num_valid=1, num_test=3, size=48)
    kw = dict(num_classes=19, layers=[1, 1, 1, 1], width_mult=0.125)
    torch.manual_seed(0)
    ckpt = tmp_path / "c19.pth"
    model = DMLCSR(with_edges=False, **kw).eval()
    # a model that predicts the class it ignores on about half the pixels: hair's logit made to
    # vary over the image, then moved by its median margin to the best other class
    hair = CELEBA.tokens.index("hair")
    from dml_csr.data.transforms import normalize_image
    x = torch.stack([normalize_image(cv2.imread(str(p)), "bgr")
                     for p in sorted((root / "test" / "images").iterdir())])
    with torch.no_grad():
        model.layer6.conv4.weight[hair] *= 1e4
        logits = model(x).parsing
        rest = torch.cat([logits[:, :hair], logits[:, hair + 1:]], 1).amax(1)
        model.layer6.conv4.bias[hair] += (rest - logits[:, hair]).median()
    state = model.state_dict()
    save_checkpoint(str(ckpt), state,
                    ModelSpec.for_dataset("dml_csr", kw, "synthetic19", crop_size=(48, 48)))
    helen = get_schema("synthetic")
    pairs = {"skin": "face", "l_brow": "lb", "r_brow": "rb", "l_eye": "le", "r_eye": "re",
             "mouth": "imouth", "u_lip": "ulip", "l_lip": "llip"}
    lines = [f"  {s}: {pairs.get(s, s if s in helen.tokens else 'bg')}" for s in CELEBA.tokens]
    mapping = tmp_path / "to11.yaml"
    mapping.write_text("source: synthetic19\ntarget: synthetic\nclasses:\n" + "\n".join(lines))
    cfg = load_config("synthetic", [f"data.root={root}", "data.crop_size=[48,48]",
                                    "model.args.layers=[1,1,1,1]", "model.args.width_mult=0.125"])
    with pytest.raises(ValueError, match="predicts 19 classes .* --map"):
        run_test(cfg, str(ckpt), "test", workers=0)
    preds = tmp_path / "preds"
    result = run_test(cfg, str(ckpt), "test", workers=0, pred_dir=str(preds),
                      class_map=str(mapping))
    assert result["meta"]["class_map"]["classes"]["skin"] == "face"
    assert result["classes"] == list(helen.tokens)
    again = evaluate_folder(root, "test", preds)
    assert again["confusion"] == result["confusion"]
    # an ignored class leaves the score: its predicted pixels, and only those, are not scored
    predicted_hair = int(np.asarray(result["confusion"])[:, helen.tokens.index("hair")].sum())
    assert 0 < predicted_hair < result["num_pixels"]
    mapping.write_text(mapping.read_text().replace("  hair: hair", "  hair: ignore"))
    fewer = run_test(cfg, str(ckpt), "test", workers=0, class_map=str(mapping))
    assert fewer["num_pixels"] == result["num_pixels"] - predicted_hair
    with pytest.raises(ValueError, match="its source is"):
        run_test(cfg, str(ckpt), "test", workers=0, class_map="celebamask_hq_bisenet")
