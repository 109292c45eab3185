"""Contracts of the synthetic face data set (dml_csr.data.synthetic, tools/make_synthetic.py)."""
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest

from dml_csr.cli import run
from dml_csr.data.schemas import get_schema
from dml_csr.data.synthetic import (INFO_NAME, NOISE_KINDS, SPLITS, corrupt_label, draw_face,
                                    is_synthetic_root, make_synthetic)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = dict(num_train=6, num_valid=2, num_test=2)
SIZE = 48


def _read_label(path):
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert label is not None, path
    return label


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "clean"
    info = make_synthetic(root, size=SIZE, seed=3, **COUNTS)
    return root, info


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "noisy"
    info = make_synthetic(root, size=SIZE, seed=3, noise_fraction=0.5, **COUNTS)
    return root, info


@pytest.mark.parametrize("classes", [11, 19])
def test_layout_and_ids(tmp_path, classes):
    schema = get_schema("synthetic" if classes == 11 else "synthetic19")
    root = tmp_path / "out"
    info = make_synthetic(root, size=SIZE, classes=classes, **COUNTS)
    assert (root / "label_names.txt").read_text().split("\n")[:-1] == list(schema.tokens)
    assert info["schema"] == schema.name and info["counts"] == {"train": 6, "valid": 2, "test": 2}
    assert json.loads((root / INFO_NAME).read_text()) == info and info["complete"]
    for split, n in zip(SPLITS, (6, 2, 2)):
        lines = (root / f"{split}_list.txt").read_text().splitlines()
        assert len(lines) == n
        for i, line in enumerate(lines):
            assert line == f"images/{split}_{i:05d}.jpg labels/{split}_{i:05d}.png"
            image_rel, label_rel = line.split()
            image = cv2.imread(str(root / split / image_rel), cv2.IMREAD_COLOR)
            label = _read_label(root / split / label_rel)
            assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
            assert label.shape == (SIZE, SIZE) and label.dtype == np.uint8
            assert label.max() < schema.num_classes
        assert len(list((root / split / "images").iterdir())) == n


@pytest.mark.parametrize("classes", [11, 19])
def test_every_class_appears(classes):
    k = get_schema("synthetic" if classes == 11 else "synthetic19").num_classes
    seen = np.zeros(k, bool)
    for i in range(24):
        _, label = draw_face([11, i], 64, classes)
        assert label.max() < k
        seen[np.unique(label)] = True
    assert seen.all(), f"classes never drawn: {np.flatnonzero(~seen).tolist()}"


@pytest.mark.parametrize("classes", [11, 19])
def test_left_is_the_viewers_left(classes):
    schema = get_schema("synthetic" if classes == 11 else "synthetic19")
    checked = 0
    for i in range(12):
        _, label = draw_face([12, i], 64, classes)
        for left, right in schema.flip_pairs:
            xl, xr = np.nonzero(label == left)[1], np.nonzero(label == right)[1]
            if xl.size and xr.size:
                assert xl.mean() < xr.mean(), (i, schema.tokens[left])
                checked += 1
    assert checked >= 12


def test_image_depends_on_context_not_colour():
    # The nose is skin-coloured and background shapes take face colours: a per-colour rule cannot
    # separate the classes. Check it on one sample: skin and nose colours overlap.
    image, label = draw_face([13, 0], 128, 11)
    skin, nose = image[label == 1].astype(float), image[label == 6].astype(float)
    gap = np.linalg.norm(skin.mean(0) - nose.mean(0))
    assert gap < skin.std(0).mean()


def test_deterministic(tmp_path, clean):
    root, info = clean
    again = make_synthetic(tmp_path / "again", size=SIZE, seed=3, **COUNTS)
    assert again == info
    for split in SPLITS:
        for f in sorted((root / split / "labels").iterdir()):
            assert f.read_bytes() == (tmp_path / "again" / split / "labels" / f.name).read_bytes()
        for f in sorted((root / split / "images").iterdir()):
            assert np.array_equal(cv2.imread(str(f)), cv2.imread(str(tmp_path / "again" / split / "images" / f.name)))
    other = draw_face([4, 0, 0], SIZE, 11)[1]
    assert not np.array_equal(other, _read_label(root / "train" / "labels" / "train_00000.png"))
    # a sample does not depend on the size of the other splits
    more = make_synthetic(tmp_path / "more", size=SIZE, seed=3, num_train=7, num_valid=1, num_test=0)
    assert more["counts"]["train"] == 7
    assert ((tmp_path / "more" / "train" / "labels" / "train_00005.png").read_bytes()
            == (root / "train" / "labels" / "train_00005.png").read_bytes())


def test_noise_only_touches_recorded_training_labels(clean, noisy):
    (croot, _), (nroot, info) = clean, noisy
    names = {r["name"] for r in info["corrupted"]}
    assert len(names) == info["num_corrupted"] == 3  # round(0.5 * 6)
    for r in info["corrupted"]:
        assert r["kind"] in NOISE_KINDS and r["changed_pixels"] > 0 and r["classes"]
    for split in SPLITS:
        for f in sorted((croot / split / "labels").iterdir()):
            c, n = _read_label(f), _read_label(nroot / split / "labels" / f.name)
            changed = int(np.count_nonzero(c != n))
            if split == "train" and f.stem in names:
                record = next(r for r in info["corrupted"] if r["name"] == f.stem)
                assert changed == record["changed_pixels"]
                assert np.array_equal(_read_label(nroot / "train" / "labels_clean" / f.name), c)
            else:
                assert changed == 0, f
        for f in sorted((croot / split / "images").iterdir()):  # images are never touched
            assert f.read_bytes() == (nroot / split / "images" / f.name).read_bytes()
    assert sorted(p.stem for p in (nroot / "train" / "labels_clean").iterdir()) == sorted(names)


@pytest.mark.parametrize("classes", [11, 19])
@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_each_corruption(kind, classes):
    schema = get_schema("synthetic" if classes == 11 else "synthetic19")
    _, label = draw_face([14, 1], 64, classes)
    out, record = corrupt_label(label, 0, schema, [kind])
    assert record["kind"] == kind
    assert record["changed_pixels"] == np.count_nonzero(out != label) > 0
    assert out.dtype == np.uint8 and out.max() < schema.num_classes
    if kind == "swap_left_right":
        assert np.array_equal(np.array(schema.flip_permutation())[out], label)
    elif kind in ("erode", "dilate", "shift"):
        (token,) = record["classes"]
        c = schema.tokens.index(token)
        assert np.array_equal(out != label, (out != label) & ((out == c) | (label == c)))
        area = (np.count_nonzero(out == c), np.count_nonzero(label == c))
        if kind == "erode":
            assert area[0] < area[1]
        elif kind == "dilate":
            assert area[0] > area[1]


def test_refuses_foreign_non_empty_dir(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_synthetic(root, size=SIZE, num_train=1, num_valid=0, num_test=0)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]
    make_synthetic(root, size=SIZE, num_train=1, num_valid=0, num_test=0, overwrite=True)
    assert (root / "notes.txt").read_text() == "keep me" and is_synthetic_root(root)


def test_regenerates_into_own_output(tmp_path):
    root = tmp_path / "out"
    make_synthetic(root, size=SIZE, num_train=4, num_valid=1, num_test=1, noise_fraction=0.5)
    (root / "train" / "notes.txt").write_text("keep me")
    make_synthetic(root, size=SIZE, num_train=2, num_valid=1, num_test=1)  # no overwrite needed
    assert sorted(p.name for p in (root / "train" / "labels").iterdir()) == ["train_00000.png",
                                                                             "train_00001.png"]
    assert not (root / "train" / "labels_clean").exists()
    assert (root / "train" / "notes.txt").read_text() == "keep me"


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_synthetic(tmp_path / "a", classes=12)
    with pytest.raises(ValueError):
        make_synthetic(tmp_path / "b", noise_fraction=1.5)
    with pytest.raises(ValueError):
        make_synthetic(tmp_path / "c", noise_kinds=["blur"])


def test_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_synthetic_cli", os.path.join(REPO, "tools", "make_synthetic.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "cli"
    args = [str(out), "--num-train", "2", "--num-valid", "1", "--num-test", "1", "--size", "40",
            "--classes", "19", "--seed", "5", "--noise-fraction", "0.5"]
    assert cli.main(args) == 0
    info = json.loads((out / INFO_NAME).read_text())
    assert (info["classes"], info["size"], info["seed"], info["num_corrupted"]) == (19, 40, 5, 1)
    assert "wrote 4 images" in capsys.readouterr().out
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    assert run(cli.main, [str(tmp_path / "foreign"), "--num-train", "1"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_identity_written_and_read_back(tmp_path, clean):
    """dataset.json names the schema and the generator's parameters; the tools read it."""
    from dml_csr.data.layout import read_identity, root_schema
    root, _ = clean
    assert read_identity(root) == {
        "format": 2, "dataset": "synthetic", "num_classes": 11, "tool": "make_synthetic",
        "schema": get_schema("synthetic"),
        "options": {"seed": 3, "size": SIZE, "classes": 11,
                    "counts": {"train": 6, "valid": 2, "test": 2}, "noise_fraction": 0.0,
                    "noise_kinds": list(NOISE_KINDS)}}
    spec = importlib.util.spec_from_file_location("make_synthetic_cli", os.path.join(REPO, "tools", "make_synthetic.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "faces"  # a folder name that names no data set
    assert cli.main([str(out), "--num-train", "1", "--num-valid", "1", "--num-test", "1",
                     "--size", "32", "--classes", "19", "--seed", "2"]) == 0
    identity = read_identity(out)
    assert (identity["dataset"], identity["num_classes"], identity["options"]["seed"]) == (
        "synthetic19", 19, 2)
    (out / INFO_NAME).unlink()  # dataset.json alone tells
    assert root_schema(out).name == "synthetic19"


def test_speed():
    # The quick start draws a few hundred 128 px images; one should take well under 50 ms.
    import time
    draw_face(0, 128, 19)
    start = time.process_time()
    for i in range(10):
        draw_face([15, i], 128, 19)
    assert (time.process_time() - start) / 10 < 0.05
