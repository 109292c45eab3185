"""Contracts of tools/prepare_data.py on small fabricated raw trees (no real data)."""
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dml_csr.data import prepare as P
from dml_csr.data.schemas import get_schema

REPO = Path(__file__).resolve().parents[1]
HELEN_TOKENS = get_schema("helen").tokens
CELEBA_TOKENS = get_schema("celebamask_hq").tokens


# ----------------------------------------------------------------------------------------------
# helpers


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _snapshot(root: Path) -> dict:
    """Every entry under root (root included) with its type, mtime and content."""
    snap = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        snap[str(p.relative_to(root))] = (p.is_dir(), st.st_mtime_ns, st.st_size,
                                          p.read_bytes() if p.is_file() else None)
    return snap


def _lines(out: Path, split: str) -> list:
    return (out / f"{split}_list.txt").read_text().splitlines()


def _names(out: Path, split: str) -> list:
    return [line.split()[0][len("images/"):-len(".jpg")] for line in _lines(out, split)]


def _label(out: Path, split: str, name: str) -> np.ndarray:
    label = cv2.imread(str(out / split / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    assert label is not None and label.dtype == np.uint8 and label.ndim == 2
    return label


def _check_layout(out: Path, tokens, splits) -> None:
    assert (out / "label_names.txt").read_text().split() == list(tokens)
    for split in splits:
        for line in _lines(out, split):
            image_rel, label_rel = line.split()
            assert image_rel.startswith("images/") and label_rel.startswith("labels/")
            image = cv2.imread(str(out / split / image_rel), cv2.IMREAD_COLOR)
            label = cv2.imread(str(out / split / label_rel), cv2.IMREAD_UNCHANGED)
            assert image is not None and label is not None
            assert image.shape[:2] == label.shape and label.max() < len(tokens)
    assert not list(out.rglob("*.partial"))


# ----------------------------------------------------------------------------------------------
# fabricated raw trees


def make_lapa(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for folder, n in (("train", 3), ("val", 2), ("test", 2)):
        for i in range(n):
            name = f"{folder}_{i}"
            base = root / "LaPa" / folder
            _write(base / "images" / f"{name}.jpg", rng.integers(0, 256, (24, 20, 3), np.uint8))
            _write(base / "labels" / f"{name}.png", rng.integers(0, 11, (24, 20), np.uint8))
            _text(base / "landmarks" / f"{name}.txt", "106\n")
    return root


HELEN_SPLITS = {"exemplars.txt": ["100_1", "101_2", "102_1"], "tuning.txt": ["200_1"],
                "testing.txt": ["300_1", "301_1"]}


def make_helen_original(root: Path, seed: int = 0) -> dict:
    """Returns the expected label per name (the class whose map is brightest per pixel)."""
    rng = np.random.default_rng(seed)
    _text(root / "exemplars.txt",  # 'INDEX , NAME' as in the release
          "".join(f"{i} , {n}\n" for i, n in enumerate(HELEN_SPLITS["exemplars.txt"], 1)))
    _text(root / "tuning.txt", "".join(f"{n}\n" for n in HELEN_SPLITS["tuning.txt"]))  # bare
    _text(root / "testing.txt",
          "".join(f"{i}, {n}\n" for i, n in enumerate(HELEN_SPLITS["testing.txt"], 1)) + "\n")
    expected = {}
    for name in sum(HELEN_SPLITS.values(), []):
        _write(root / "images" / f"{name}.jpg", rng.integers(0, 256, (12, 16, 3), np.uint8))
        target = rng.integers(0, 11, (12, 16))
        maps = rng.integers(0, 150, (11, 12, 16)).astype(np.uint8)
        np.put_along_axis(maps, target[None], 200, axis=0)
        maps[:, 0, 0] = 0  # a tie at (0, 0): classes 3 and 7 both 255 -> the lower id wins
        maps[3, 0, 0] = maps[7, 0, 0] = 255
        target[0, 0] = 3
        for c in range(11):
            _write(root / "labels" / name / f"{name}_lbl{c:02d}.png", maps[c])
        expected[name] = target
    return expected


def make_helen_star(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    _text(root / "label_names.txt", "\n".join(HELEN_TOKENS) + "\n")
    for split, names, shape in (("train", ["a1", "a2", "a3", "a4"], (20, 18)),
                                ("test", ["t1", "t2"], (30, 26)),
                                ("test_resize", ["t1", "t2"], (16, 16))):
        for name in names:
            _write(root / split / f"{name}_image.jpg", rng.integers(0, 256, (*shape, 3), np.uint8))
            _write(root / split / f"{name}_label.png", rng.integers(0, 11, shape, np.uint8))
        _write(root / split / f"{names[0]}_viz.jpg", np.zeros((*shape, 3), np.uint8))  # ignored
    return root


CELEBA_SPLIT = {0: 0, 1: 0, 2000: 0, 2: 1, 4001: 1, 3: 2}  # CelebA-HQ idx -> CelebA partition


def _orig(idx: int) -> int:
    return 1000 + 7 * idx  # 1-based CelebA file number


def make_celeba(root: Path, seed: int = 0) -> Path:
    """root/CelebAMask-HQ/... (64x64 images, 32x32 masks) and root/list_eval_partition.txt."""
    rng = np.random.default_rng(seed)
    base = root / "CelebAMask-HQ"
    rows = ["idx orig_idx orig_file"]
    for idx in CELEBA_SPLIT:
        # idx 1 names its CelebA file without zero padding; the partition file pads it
        orig_file = f"{_orig(idx)}.jpg" if idx == 1 else f"{_orig(idx):06d}.jpg"
        rows.append(f"{idx} {_orig(idx) - 1} {orig_file}")
    _text(base / "CelebA-HQ-to-CelebA-mapping.txt", "\n".join(rows) + "\n")
    part_rows = [f"{_orig(i):06d}.jpg {p}" for i, p in CELEBA_SPLIT.items()]
    part_rows += ["000001.jpg 0", "000002.jpg 2"]  # CelebA images outside CelebA-HQ
    _text(root / "list_eval_partition.txt", "\n".join(sorted(part_rows)) + "\n")
    for idx in CELEBA_SPLIT:
        smooth = cv2.resize(rng.integers(0, 256, (4, 4, 3), np.uint8), (64, 64))  # JPEG-friendly
        _write(base / "CelebA-HQ-img" / f"{idx}.jpg", smooth)
        masks = _overlap_masks() if idx == 0 else {"skin": _box(8, 24, 4, 28),
                                                    "hair": _box(0, 8, 0, 32)}
        for part, mask in masks.items():
            path = base / "CelebAMask-HQ-mask-anno" / str(idx // 2000) / f"{idx:05d}_{part}.png"
            _write(path, mask)
    return root


def _box(y0, y1, x0, x1, value=255) -> np.ndarray:
    mask = np.zeros((32, 32), np.uint8)
    mask[y0:y1, x0:x1] = value
    return mask


def _overlap_masks() -> dict:
    r_eye = np.zeros((32, 32), np.uint8)
    r_eye[12, 20], r_eye[12, 22] = 200, 100  # above / below the threshold
    return {
        "skin": _box(8, 24, 4, 28), "hair": _box(0, 8, 0, 32), "hat": _box(0, 3, 8, 24),
        "eye_g": cv2.cvtColor(_box(10, 14, 6, 14), cv2.COLOR_GRAY2BGR),  # a 3-channel mask
        "l_eye": _box(11, 13, 8, 12), "r_eye": r_eye,
        "neck": _box(24, 30, 8, 24), "neck_l": _box(26, 28, 4, 28), "cloth": _box(28, 32, 0, 32),
    }


# ----------------------------------------------------------------------------------------------
# LaPa


def test_lapa_layout_copies_labels_and_keeps_raw(tmp_path, caplog):
    raw, out = make_lapa(tmp_path / "raw"), tmp_path / "out"
    before = _snapshot(raw)
    report = P.prepare_lapa(raw, out, progress=False)
    assert _snapshot(raw) == before
    assert report.counts == {"train": 3, "valid": 2, "test": 2} == report.written
    _check_layout(out, HELEN_TOKENS, ("train", "valid", "test"))
    assert _names(out, "valid") == ["val_0", "val_1"]
    assert _lines(out, "train")[0] == "images/train_0.jpg labels/train_0.png"
    for split, folder in (("train", "train"), ("valid", "val"), ("test", "test")):
        for name in _names(out, split):
            for sub, ext in (("images", "jpg"), ("labels", "png")):
                got = (out / split / sub / f"{name}.{ext}").read_bytes()
                assert got == (raw / "LaPa" / folder / sub / f"{name}.{ext}").read_bytes()
    assert any("18176" in w for w in report.warnings)
    assert any("18176" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("link", ["hardlink", "symlink"])
def test_lapa_links_then_copy_leaves_raw_alone(tmp_path, link):
    raw, out = make_lapa(tmp_path / "raw") / "LaPa", tmp_path / "out"
    before = _snapshot(raw)
    P.prepare_lapa(raw, out, link=link, progress=False)
    label_out, label_raw = out / "train/labels/train_1.png", raw / "train/labels/train_1.png"
    assert label_out.is_symlink() == (link == "symlink")
    assert os.path.samefile(label_out, label_raw)
    # switching to copies replaces the links by files; the raw files they pointed to stay as they were
    report = P.prepare_lapa(raw, out, link="copy", progress=False)
    assert report.written == report.counts
    assert not label_out.is_symlink() and not os.path.samefile(label_out, label_raw)
    assert label_out.read_bytes() == label_raw.read_bytes()
    after = _snapshot(raw)
    assert {k: v[2:] for k, v in after.items()} == {k: v[2:] for k, v in before.items()}
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in before.items()}


def test_lapa_workers_match_serial(tmp_path):
    raw = make_lapa(tmp_path / "raw")
    P.prepare_lapa(raw, tmp_path / "serial", progress=False)
    report = P.prepare_lapa(raw, tmp_path / "parallel", workers=2, progress=False)
    assert report.written == {"train": 3, "valid": 2, "test": 2}
    for split in ("train", "valid", "test"):
        assert _lines(tmp_path / "serial", split) == _lines(tmp_path / "parallel", split)
        for name in _names(tmp_path / "serial", split):
            np.testing.assert_array_equal(_label(tmp_path / "serial", split, name),
                                          _label(tmp_path / "parallel", split, name))


def _bad_label_id(raw):
    _write(raw / "LaPa/train/labels/train_1.png", np.full((24, 20), 11, np.uint8))
    return raw / "LaPa/train/labels/train_1.png"


def _bad_label_size(raw):
    _write(raw / "LaPa/val/labels/val_0.png", np.zeros((20, 20), np.uint8))
    return raw / "LaPa/val/labels/val_0.png"


def _bad_label_channels(raw):
    _write(raw / "LaPa/test/labels/test_1.png", np.zeros((24, 20, 3), np.uint8))
    return raw / "LaPa/test/labels/test_1.png"


def _missing_label(raw):
    (raw / "LaPa/train/labels/train_2.png").unlink()
    return raw / "LaPa/train/images/train_2.jpg"


def _corrupt_image(raw):
    (raw / "LaPa/test/images/test_0.jpg").write_bytes(b"not a jpeg")
    return raw / "LaPa/test/images/test_0.jpg"


@pytest.mark.parametrize("breakit", [_bad_label_id, _bad_label_size, _bad_label_channels,
                                     _missing_label, _corrupt_image])
def test_lapa_bad_input_names_the_file(tmp_path, breakit):
    raw = make_lapa(tmp_path / "raw")
    culprit = breakit(raw)
    with pytest.raises(P.PrepareError) as e:
        P.prepare_lapa(raw, tmp_path / "out", progress=False)
    assert str(e.value).startswith(str(culprit))
    assert not (tmp_path / "out" / "train_list.txt").exists()


# ----------------------------------------------------------------------------------------------
# Helen, original release


def test_helen_original_argmax_and_splits(tmp_path):
    raw, out = tmp_path / "helen", tmp_path / "out"
    expected = make_helen_original(raw)
    before = _snapshot(raw)
    report = P.prepare_helen(raw, out, progress=False)  # source detected from the layout
    assert _snapshot(raw) == before
    _check_layout(out, HELEN_TOKENS, ("train", "valid", "test"))
    assert {s: _names(out, s) for s in ("train", "valid", "test")} == {
        "train": ["100_1", "101_2", "102_1"], "valid": ["200_1"], "test": ["300_1", "301_1"]}
    for split in ("train", "valid", "test"):
        for name in _names(out, split):
            np.testing.assert_array_equal(_label(out, split, name), expected[name])
            assert ((out / split / "images" / f"{name}.jpg").read_bytes()
                    == (raw / "images" / f"{name}.jpg").read_bytes())
    assert report.counts == {"train": 3, "valid": 1, "test": 2}
    assert any("2000" in w for w in report.warnings)


def _helen_missing_map(raw):
    (raw / "labels/101_2/101_2_lbl05.png").unlink()
    return raw / "labels/101_2/101_2_lbl05.png"


def _helen_bad_split_line(raw):
    with open(raw / "tuning.txt", "a") as f:
        f.write("3, 200_2, extra\n")
    return raw / "tuning.txt"


def _helen_map_size(raw):
    _write(raw / "labels/300_1/300_1_lbl10.png", np.zeros((12, 15), np.uint8))
    return raw / "labels/300_1/300_1_lbl10.png"


def _helen_missing_image(raw):
    (raw / "images/200_1.jpg").unlink()
    return raw / "images/200_1.jpg"


def _helen_listed_twice(raw):
    with open(raw / "testing.txt", "a") as f:
        f.write("3, 100_1\n")
    return raw / "testing.txt"


@pytest.mark.parametrize("breakit", [_helen_missing_map, _helen_bad_split_line, _helen_map_size,
                                     _helen_missing_image, _helen_listed_twice])
def test_helen_original_bad_input_names_the_file(tmp_path, breakit):
    raw = tmp_path / "helen"
    make_helen_original(raw)
    culprit = breakit(raw)
    with pytest.raises(P.PrepareError) as e:
        P.prepare_helen(raw, tmp_path / "out", source="original", progress=False)
    assert str(e.value).startswith(str(culprit))


# ----------------------------------------------------------------------------------------------
# Helen, relabelled HELEN*


def test_helen_star_keeps_splits_and_valid_is_empty_by_default(tmp_path):
    raw, out = make_helen_star(tmp_path / "helenstar"), tmp_path / "out"
    before = _snapshot(raw)
    report = P.prepare_helen(raw, out, progress=False)  # detected as relabelled
    assert _snapshot(raw) == before
    assert report.counts == {"train": 4, "valid": 0, "test": 2, "test_resize": 2}
    _check_layout(out, HELEN_TOKENS, ("train", "valid", "test", "test_resize"))
    assert _lines(out, "valid") == []
    assert any("--holdout" in w for w in report.warnings)
    assert _names(out, "train") == ["a1", "a2", "a3", "a4"]
    for split in ("train", "test", "test_resize"):
        for name in _names(out, split):
            assert ((out / split / "labels" / f"{name}.png").read_bytes()
                    == (raw / split / f"{name}_label.png").read_bytes())
    assert _label(out, "test_resize", "t1").shape == (16, 16)
    assert _label(out, "test", "t1").shape == (30, 26)


def test_helen_star_holdout_is_deterministic(tmp_path):
    raw = make_helen_star(tmp_path / "helenstar")
    report = P.prepare_helen(raw, tmp_path / "out", source="relabelled", holdout=2,
                             progress=False)
    assert report.counts["train"] == 2 and report.counts["valid"] == 2
    by_hash = sorted(["a1", "a2", "a3", "a4"], key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    assert _names(tmp_path / "out", "valid") == sorted(by_hash[:2])
    assert _names(tmp_path / "out", "train") == sorted(by_hash[2:])
    with pytest.raises(ValueError):
        P.prepare_helen(raw, tmp_path / "out2", holdout=4, progress=False)


def test_helen_star_bad_inputs(tmp_path):
    raw = make_helen_star(tmp_path / "helenstar")
    (raw / "test/t2_label.png").unlink()
    with pytest.raises(P.PrepareError) as e:
        P.prepare_helen(raw, tmp_path / "out", progress=False)
    assert str(e.value).startswith(str(raw / "test/t2_image.jpg"))

    raw = make_helen_star(tmp_path / "helenstar2")
    _text(raw / "label_names.txt", "\n".join(reversed(HELEN_TOKENS)) + "\n")
    with pytest.raises(P.PrepareError) as e:
        P.prepare_helen(raw, tmp_path / "out", progress=False)
    assert str(e.value).startswith(str(raw / "label_names.txt"))


def test_helen_source_detection_fails_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(P.PrepareError, match="no Helen layout"):
        P.prepare_helen(tmp_path / "empty", tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------------------------
# CelebAMask-HQ


def test_celeba_merge_order_resize_and_splits(tmp_path):
    raw, out = make_celeba(tmp_path / "raw"), tmp_path / "out"
    before = _snapshot(raw)
    report = P.prepare_celebamask_hq(raw, out, mask_size=32, progress=False)
    assert _snapshot(raw) == before
    _check_layout(out, CELEBA_TOKENS, ("train", "valid", "test"))
    assert {s: _names(out, s) for s in ("train", "valid", "test")} == {
        "train": ["0", "1", "2000"], "valid": ["2", "4001"], "test": ["3"]}
    assert report.counts == {"train": 3, "valid": 2, "test": 1}

    label = _label(out, "train", "0")
    cls = {t: i for i, t in enumerate(CELEBA_TOKENS)}
    expect = {(20, 1): "bg", (20, 10): "skin", (5, 10): "hair", (1, 10): "hat",  # hat over hair
              (10, 6): "eye_g", (11, 9): "l_eye",  # eye over glasses
              (12, 20): "r_eye", (12, 22): "skin",  # mask value 200 counts, 100 does not
              (26, 5): "neck_l", (26, 10): "neck",  # neck over necklace
              (29, 10): "cloth", (31, 0): "cloth"}  # cloth over neck
    assert {p: CELEBA_TOKENS[label[p]] for p in expect} == expect
    assert cls["hat"] > cls["hair"] and cls["neck"] > cls["neck_l"]

    image = cv2.imread(str(out / "train/images/0.jpg"))
    assert image.shape == (32, 32, 3)
    src = cv2.imread(str(raw / "CelebAMask-HQ/CelebA-HQ-img/0.jpg"))
    area = cv2.resize(src, (32, 32), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(image - area).mean() < 4  # JPEG re-encoding error only


def test_celeba_count_warning(tmp_path, caplog, monkeypatch):
    raw = make_celeba(tmp_path / "raw")
    report = P.prepare_celebamask_hq(raw, tmp_path / "out", mask_size=32, progress=False)
    assert any("24183" in w and "2993" in w and "2824" in w for w in report.warnings)
    assert any("24183" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    monkeypatch.setitem(P.EXPECTED_COUNTS, "celebamask_hq", {"train": 3, "valid": 2, "test": 1})
    report = P.prepare_celebamask_hq(raw, tmp_path / "out2", mask_size=32, progress=False)
    assert report.warnings == []


def test_celeba_restart_skips_done_and_redoes_broken(tmp_path):
    raw, out = make_celeba(tmp_path / "raw"), tmp_path / "out"
    P.prepare_celebamask_hq(raw, out, mask_size=32, progress=False)
    done = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".jpg", ".png")}
    report = P.prepare_celebamask_hq(raw, out, mask_size=32, progress=False)
    assert report.written == {"train": 0, "valid": 0, "test": 0}
    assert report.skipped == report.counts
    assert {p: p.stat().st_mtime_ns for p in done} == done

    (out / "valid/labels/4001.png").write_bytes(b"\x89PNG truncated")
    (out / "test/images/3.jpg").unlink()
    stale = out / "train/labels/.1.png.12345.partial"
    stale.write_bytes(b"half")
    report = P.prepare_celebamask_hq(raw, out, mask_size=32, progress=False)
    assert report.written == {"train": 0, "valid": 1, "test": 1}
    assert not stale.exists()
    _check_layout(out, CELEBA_TOKENS, ("train", "valid", "test"))


def _celeba_mask_size(raw):
    path = raw / "CelebAMask-HQ/CelebAMask-HQ-mask-anno/1/02000_hair.png"
    _write(path, np.zeros((16, 16), np.uint8))
    return path


def _celeba_mapping_line(raw):
    path = raw / "CelebAMask-HQ/CelebA-HQ-to-CelebA-mapping.txt"
    path.write_text(path.read_text() + "7 8\n")
    return path


def _celeba_partition_missing(raw):
    path = raw / "list_eval_partition.txt"
    path.write_text("".join(l + "\n" for l in path.read_text().splitlines()
                            if not l.startswith(f"{_orig(3):06d}")))
    return path


def _celeba_missing_image(raw):
    path = raw / "CelebAMask-HQ/CelebA-HQ-img/4001.jpg"
    path.unlink()
    return path


def _celeba_no_masks(raw):
    for p in (raw / "CelebAMask-HQ/CelebAMask-HQ-mask-anno/0").glob("00003_*.png"):
        p.unlink()
    return raw / "CelebAMask-HQ/CelebA-HQ-img/3.jpg"


def _celeba_unknown_part(raw):
    path = raw / "CelebAMask-HQ/CelebAMask-HQ-mask-anno/0/00001_beard.png"
    _write(path, np.zeros((32, 32), np.uint8))
    return path


def _celeba_corrupt_mask(raw):
    path = raw / "CelebAMask-HQ/CelebAMask-HQ-mask-anno/0/00002_skin.png"
    path.write_bytes(b"garbage")
    return path


@pytest.mark.parametrize("breakit", [_celeba_mask_size, _celeba_mapping_line,
                                     _celeba_partition_missing, _celeba_missing_image,
                                     _celeba_no_masks, _celeba_unknown_part, _celeba_corrupt_mask])
def test_celeba_bad_input_names_the_file(tmp_path, breakit):
    raw = make_celeba(tmp_path / "raw")
    culprit = breakit(raw)
    with pytest.raises(P.PrepareError) as e:
        P.prepare_celebamask_hq(raw, tmp_path / "out", mask_size=32, progress=False)
    assert str(e.value).startswith(str(culprit))


def test_celeba_partition_file_option(tmp_path):
    raw = make_celeba(tmp_path / "raw")
    elsewhere = tmp_path / "celeba" / "Eval" / "list_eval_partition.txt"
    elsewhere.parent.mkdir(parents=True)
    (raw / "list_eval_partition.txt").rename(elsewhere)
    with pytest.raises(P.PrepareError, match="list_eval_partition.txt not found"):
        P.prepare_celebamask_hq(raw, tmp_path / "out", mask_size=32, progress=False)
    report = P.prepare_celebamask_hq(raw, tmp_path / "out", mask_size=32, partition_file=elsewhere,
                                     progress=False)
    assert report.counts == {"train": 3, "valid": 2, "test": 1}


# ----------------------------------------------------------------------------------------------
# shared rules


def test_interrupted_run_leaves_no_file_that_looks_complete(tmp_path, monkeypatch):
    raw, out = make_lapa(tmp_path / "raw"), tmp_path / "out"
    real_replace, calls = os.replace, []

    def dying_replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # train_0 complete, train_1 image renamed, dies on train_1 label
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        P.prepare_lapa(raw, out, progress=False)
    monkeypatch.undo()
    assert not list(out.glob("*.txt"))  # no list file: the tree is not complete
    assert not list(out.rglob("*.partial"))
    assert sorted(p.name for p in (out / "train/labels").iterdir()) == ["train_0.png"]
    report = P.prepare_lapa(raw, out, progress=False)
    assert report.skipped["train"] == 1 and report.written["train"] == 2
    _check_layout(out, HELEN_TOKENS, ("train", "valid", "test"))


@pytest.mark.parametrize("where", ["same", "inside", "split_inside"])
def test_refuses_output_inside_raw(tmp_path, where):
    if where == "split_inside":  # OUT/train/images would land inside RAW = OUT/train
        raw, out = tmp_path / "x" / "train", tmp_path / "x"
    else:
        raw = tmp_path / "raw"
        out = raw if where == "same" else raw / "LaPa" / "prepared"
    make_lapa(raw)
    before = _snapshot(raw)
    with pytest.raises(P.PrepareError, match="inside the raw directory"):
        P.prepare_lapa(raw, out, progress=False)
    assert _snapshot(raw) == before


def test_raw_inside_out_is_fine(tmp_path):
    raw = make_lapa(tmp_path / "data" / "raw")
    report = P.prepare_lapa(raw, tmp_path / "data", progress=False)
    assert report.counts["train"] == 3


def test_refuses_out_dir_of_another_dataset(tmp_path):
    make_celeba(tmp_path / "celeba")
    P.prepare_celebamask_hq(tmp_path / "celeba", tmp_path / "out", mask_size=32, progress=False)
    with pytest.raises(P.PrepareError, match="another data set"):
        P.prepare_lapa(make_lapa(tmp_path / "lapa"), tmp_path / "out", progress=False)


def test_cli_runs_from_repo_root(tmp_path):
    raw = make_lapa(tmp_path / "raw")
    cmd = [sys.executable, "tools/prepare_data.py", "lapa", str(raw), str(tmp_path / "out")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout and "valid" in done.stdout and "lapa/train" in done.stderr
    assert [line.split()[:2] for line in done.stdout.splitlines()[1:]] == [
        ["train", "3"], ["valid", "2"], ["test", "2"]]

    (raw / "LaPa/val/labels/val_1.png").unlink()
    done = subprocess.run(cmd[:-1] + [str(tmp_path / "out2")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert f"error: {raw / 'LaPa/val/images/val_1.jpg'}" in done.stderr


# ----------------------------------------------------------------------------------------------
# dataset.json: the identity every preparation writes


def _identity(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def test_each_preparer_writes_its_identity(tmp_path):
    raw = make_lapa(tmp_path / "lapa")
    P.prepare_lapa(raw, tmp_path / "out_lapa", link="hardlink", progress=False)
    assert _identity(tmp_path / "out_lapa") == {
        "format": 2, "dataset": "lapa", "num_classes": 11, "tool": "prepare_data",
        "schema": get_schema("lapa").to_dict(),       # the whole description travels with it
        "raw_dir": os.path.abspath(raw), "source": "lapa", "options": {"link": "hardlink"}}

    make_helen_original(tmp_path / "helen")
    P.prepare_helen(tmp_path / "helen", tmp_path / "out_helen", progress=False)
    identity = _identity(tmp_path / "out_helen")
    assert (identity["dataset"], identity["source"]) == ("helen", "original")
    assert identity["options"] == {"holdout": 0, "link": "copy"}

    make_helen_star(tmp_path / "star")
    P.prepare_helen(tmp_path / "star", tmp_path / "out_star", holdout=1, progress=False)
    identity = _identity(tmp_path / "out_star")
    assert (identity["dataset"], identity["source"], identity["options"]["holdout"]) == (
        "helen", "relabelled", 1)

    make_celeba(tmp_path / "celeba")
    P.prepare_celebamask_hq(tmp_path / "celeba", tmp_path / "out_celeba", mask_size=32,
                            progress=False)
    identity = _identity(tmp_path / "out_celeba")
    assert (identity["dataset"], identity["num_classes"], identity["options"]) == (
        "celebamask_hq", 19, {"mask_size": 32, "jpeg_quality": 95})

    from dml_csr.data.layout import root_schema
    for name, dataset in (("out_lapa", "lapa"), ("out_star", "helen"),
                          ("out_celeba", "celebamask_hq")):
        assert root_schema(tmp_path / name).name == dataset


def test_refuses_out_dir_whose_identity_names_another_dataset(tmp_path):
    """Helen and LaPa share their tokens: only dataset.json tells their roots apart."""
    out = tmp_path / "out"
    P.prepare_lapa(make_lapa(tmp_path / "lapa"), out, progress=False)
    make_helen_star(tmp_path / "star")
    with pytest.raises(P.PrepareError, match=r"dataset\.json: OUT_DIR already holds another "
                                             r"data set \(lapa, not helen\)"):
        P.prepare_helen(tmp_path / "star", out, progress=False)
    assert _identity(out)["dataset"] == "lapa"
    (out / "dataset.json").unlink()       # a root prepared before dataset.json existed
    report = P.prepare_lapa(tmp_path / "lapa", out, progress=False)
    assert report.skipped["train"] == 3 and _identity(out)["dataset"] == "lapa"
