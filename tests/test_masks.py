"""Editing masks (dml_csr/deploy/masks.py, FaceParsingResult.mask, dml-csr infer --mask): the
classes by name or group, grow = a disk dilation / erosion, feather = a ramp only near the edge."""
import os

import cv2
import numpy as np
import pytest

from dml_csr.data.schemas import SCHEMAS, Schema, SchemaError, get_schema
from dml_csr.deploy import MaskClassError
from dml_csr.deploy.masks import class_ids, feather_mask, grow_mask
from test_api import _colour_parser, _photo, ckpt  # noqa: F401  (a fixture)
from test_custom_dataset import _tool, raw  # noqa: F401  (a fixture)
from test_video import _face_frames, _write_clip


def _blobs(h=90, w=120, seed=0):
    """A bool set with round and straight edges, a hole and a lone pixel."""
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (40, 45), 25, 1, -1)
    cv2.rectangle(m, (70, 10), (110, 40), 1, -1)
    cv2.circle(m, (90, 25), 6, 0, -1)
    m[75, 100] = 1
    m[0:12, 0:8] = 1                                   # touches the photo's border
    return m.astype(bool)


def _disk_morphology(mask, radius):
    """Reference: the union (dilation) or intersection (erosion) of the set shifted by every
    integer offset of the disk x^2 + y^2 <= r^2; outside the photo counts as in the set for an
    erosion (as cv2.erode), out of it for a dilation."""
    r = int(abs(radius))
    h, w = mask.shape
    grow = radius > 0
    pad = np.pad(mask, r, constant_values=not grow)
    out = np.zeros_like(mask) if grow else np.ones_like(mask)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy <= radius * radius:
                shifted = pad[r + dy:r + dy + h, r + dx:r + dx + w]
                out = out | shifted if grow else out & shifted
    return out


@pytest.mark.parametrize("radius", [1, 2, 3, 4.5, 7, -1, -2, -3.5, -6])
def test_grow_is_a_disk_dilation_and_a_negative_grow_an_erosion(radius):
    m = _blobs()
    got = grow_mask(m, radius)
    np.testing.assert_array_equal(got, _disk_morphology(m, radius))
    assert (got >= m).all() if radius > 0 else (got <= m).all()


def _edge_distance(mask):
    """Distance of each pixel centre to the nearest pixel on the other side of the edge (brute
    force over the edge pixels)."""
    h, w = mask.shape
    yy, xx = np.mgrid[:h, :w]
    inside = np.argwhere(mask)
    outside = np.argwhere(~mask)
    d = np.empty((h, w))
    for side, other in ((mask, outside), (~mask, inside)):
        pts = np.argwhere(side)
        d2 = ((pts[:, None, :] - other[None, ::1, :]) ** 2).sum(-1).min(1)
        d[pts[:, 0], pts[:, 1]] = np.sqrt(d2)
    return d


@pytest.mark.parametrize("width", [2, 4, 8, 16])
def test_feather_only_near_the_edge_and_the_area_is_kept(width):
    m = np.zeros((80, 100), bool)
    cv2.circle(m.view(np.uint8), (50, 40), 30, 1, -1)
    cv2.rectangle(m.view(np.uint8), (5, 5), (30, 20), 1, -1)
    m[60:78, 8:10] = True                                   # a strand narrower than the edge
    alpha = feather_mask(m, width)
    d = _edge_distance(m)
    reach = width / 2 * np.sqrt(2) + 1e-6                   # the kernel's corner
    far = d > reach
    np.testing.assert_array_equal(alpha[far], np.where(m[far], 255, 0))
    soft = (alpha > 0) & (alpha < 255)
    assert soft.any() and (d[soft] <= reach).all()
    assert abs(alpha.sum() / 255.0 / m.sum() - 1) < 0.01
    half = np.zeros((20, 60), bool)
    half[:, 30:] = True                                     # a straight edge: 128 on it
    row = feather_mask(half, width)[10].astype(int)
    assert row[29] < 128 < row[30] and abs(row[29] + row[30] - 255) <= 1
    assert (np.diff(row) >= 0).all() and row[29 - width // 2] == 0 and row[30 + width // 2] == 255
    np.testing.assert_array_equal(feather_mask(m, 0), m * np.uint8(255))


def test_class_names_tokens_and_groups():
    helen = get_schema("helen").named_sets()
    assert class_ids("skin,nose", helen, 11) == (1, 6)
    assert class_ids(["Left Eye", "re"], helen, 11) == (4, 5)       # case and _ / space ignored
    assert class_ids("lips", helen, 11) == (7, 9) and class_ids("mouth", helen, 11) == (7, 8, 9)
    assert class_ids("inner_face", helen, 11) == tuple(range(1, 10))
    assert class_ids([10, "eyes"], helen, 11) == (4, 5, 10)
    celeba = get_schema("celebamask_hq").named_sets()
    assert class_ids("lips", celeba, 19) == (11, 12) and class_ids("mouth", celeba, 19) == (10,)
    assert 13 in class_ids("head", celeba, 19) and 17 not in class_ids("head", celeba, 19)
    with pytest.raises(MaskClassError, match=r"unknown class 'beard'.*skin.*inner_face"):
        class_ids("skin,beard", helen, 11)
    with pytest.raises(MaskClassError, match="no class given"):
        class_ids(" , ", helen, 11)
    with pytest.raises(MaskClassError, match="class id 11"):
        class_ids([11], helen, 11)


def test_groups_travel_with_the_description():
    lapa = get_schema("lapa")
    d = lapa.to_dict()
    assert d["groups"]["lips"] == ["ulip", "llip"]
    assert Schema.from_dict(d) == lapa
    del d["groups"]                         # a file written before groups existed
    assert Schema.from_dict(d).groups == SCHEMAS["lapa"].groups
    d["tokens"] = d["tokens"][:-1] + ["hair2"]       # other tokens: no built-in groups to take
    d["merged"] = {}
    assert Schema.from_dict(d).groups == ()
    with pytest.raises(SchemaError, match="group 'nose'"):           # a token's name
        Schema.from_dict(dict(lapa.to_dict(), groups={"nose": ["le"]}))
    with pytest.raises(SchemaError, match="'beard' is not a token"):
        Schema.from_dict(dict(lapa.to_dict(), groups={"chin": ["beard"]}))


def test_result_masks_follow_the_label_maps():
    parser = _colour_parser()
    photo = _photo(60, 90, seed=4)
    res = parser([photo, _photo(40, 50, seed=5)], detect=False, return_logits=True)
    ids = class_ids("skin,nose,lips", res.mask_names(), 11)
    hard = np.isin(res.combined[0], ids)
    assert 0 < hard.sum() < hard.size
    m = res.mask(0, "skin,nose,lips")
    assert m.dtype == np.uint8 and m.shape == (60, 90)
    np.testing.assert_array_equal(m, hard * np.uint8(255))
    np.testing.assert_array_equal(res.mask(0, ["face", 6, "lips"], grow=3) > 0,
                                  _disk_morphology(hard, 3))
    np.testing.assert_array_equal(res.mask(0, "skin,nose,lips", grow=-2) > 0,
                                  _disk_morphology(hard, -2))
    f = res.mask(0, "skin,nose,lips", grow=2, feather=4)
    assert set(np.unique(f)) - {0, 255} and abs(f.sum() / 255 / _disk_morphology(hard, 2).sum()
                                                - 1) < 0.03
    assert res.mask(1, "hair").shape == (40, 50)
    np.testing.assert_array_equal(res.mask(0, "hair", face=0), res.mask(0, "hair"))
    with pytest.raises(ValueError, match="face 1 is not a face of image 0"):
        res.mask(0, "hair", face=1)
    with pytest.raises(MaskClassError, match="unknown class 'ears'"):
        res.mask(0, "ears")
    with pytest.raises(ValueError, match="feather must be 0 or more"):
        res.mask(0, "hair", feather=-1)
    with pytest.raises(ValueError, match=r"grow -91 px is more than the photo's longer side \(90"):
        res.mask(0, "hair", grow=-91)
    assert res.mask(0, "hair", grow=90).min() == 255 and res.mask(0, "hair", grow=-90).max() == 0

    # soft: the classes' summed probability (the softmax of the maps), x 255
    soft = res.mask(0, "skin,nose,lips", soft=True)
    logits = res.logits[0]
    p = np.exp(logits - logits.max(0))
    p /= p.sum(0)
    np.testing.assert_allclose(soft.astype(float), np.clip(p[list(ids)].sum(0), 0, 1) * 255,
                               atol=1.0)
    assert soft[hard].mean() > soft[~hard].mean() + 100
    assert (res.mask(0, "skin,nose,lips", soft=True, grow=2) >= soft).all()
    np.testing.assert_array_equal(res.mask(0, "skin,nose,lips", soft=True, grow=2, feather=3),
                                  feather_mask(res.mask(0, "skin,nose,lips", soft=True, grow=2), 3))
    with pytest.raises(ValueError, match="return_logits=True"):
        parser(photo, detect=False).mask(0, "hair", soft=True)


def test_one_face_mask_of_two_overlapping_faces():
    class Two:
        def __call__(self, image):
            return np.array([[10, 10, 50, 50, 0.9], [30, 12, 70, 52, 0.8]], np.float32)
    parser = _colour_parser(detector=Two())
    res = parser(_photo(64, 96, seed=6))
    assert len(res) == 2
    own = [res.mask(0, "inner_face,hair", face=i) for i in range(2)]
    for i in range(2):
        np.testing.assert_array_equal(own[i] > 0, np.isin(res.paste(i), range(1, 11)))
    both = res.mask(0, "inner_face,hair")
    np.testing.assert_array_equal(both > 0, res.combined[0] > 0)


def test_infer_cli_writes_the_mask_and_refuses_unknown_names(ckpt, tmp_path, capsys):  # noqa: F811
    from dml_csr.cli import run
    from dml_csr.commands.infer import main
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), _photo(40, 60, seed=2))
    out = tmp_path / "out"
    assert run(main, ["--checkpoint", ckpt, str(src), "--out", str(out), "--no-detect",
                      "--mask", "beard,skin"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown class 'beard'" in err[0] and "inner_face" in err[0]
    assert not out.exists() or not os.listdir(out)
    assert run(main, ["--checkpoint", ckpt, str(src), "--out", str(out), "--no-detect",
                      "--mask", "inner_face,hair", "--grow", "2", "--feather", "3"]) == 0
    label = cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(out / "a_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.dtype == np.uint8 and mask.shape == label.shape == (40, 60)
    from dml_csr.deploy.masks import hard_mask
    np.testing.assert_array_equal(mask, hard_mask(label, range(1, 11), 2, 3))
    with pytest.raises(SystemExit):
        main(["--checkpoint", ckpt, str(src), "--out", str(out), "--grow", "2"])
    assert run(main, ["--checkpoint", ckpt, str(src), "--out", str(tmp_path / "soft"),
                      "--no-detect", "--mask", "skin", "--soft-mask"]) == 0
    assert cv2.imread(str(tmp_path / "soft" / "a_mask.png"), cv2.IMREAD_UNCHANGED).shape == (40, 60)


def test_a_video_gets_a_grey_mask_video(ckpt, tmp_path):  # noqa: F811
    from dml_csr.commands.infer import main
    clip = tmp_path / "in" / "clip.mp4"
    clip.parent.mkdir()
    frames = _face_frames(4)
    _write_clip(clip, frames, fps=10.0)
    out = tmp_path / "out"
    assert main([str(clip), "--checkpoint", ckpt, "--out", str(out), "--detector", "haar",
                 "--save-maps", "--mask", "inner_face,hair", "--grow", "1",
                 "--margin", "0.1"]) == 0
    cap = cv2.VideoCapture(str(out / "clip_mask.mp4"))
    got = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        got.append(f)
    assert len(got) == 4 and got[0].shape == frames[0].shape
    assert (np.ptp(got[2].astype(int), axis=2) <= 2).all()       # grey: the channels agree
    label = cv2.imread(str(out / "clip" / "000002.png"), cv2.IMREAD_UNCHANGED)
    want = grow_mask(label > 0, 1)
    assert want.any() and not want.all()
    agree = (got[2][:, :, 0] > 127) == want
    assert agree.mean() > 0.97                                    # mp4v is lossy near edges
    assert not [p for p in os.listdir(out) if p.startswith(".")]


def test_prepare_custom_takes_groups(raw, tmp_path):  # noqa: F811
    from dml_csr.cli import run
    from dml_csr.data.layout import root_schema
    out = tmp_path / "faces7"
    assert run(_tool("prepare_data"), ["custom", str(raw), str(out), "--name", "faces7",
                                       "--group", "eyes=left_eye,right_eye", "--no-progress"]) == 0
    schema = root_schema(out)
    assert schema.groups == (("eyes", ("left_eye", "right_eye")),)
    assert class_ids("eyes", schema.named_sets(), schema.num_classes) == (2, 3)
    assert run(_tool("prepare_data"), ["custom", str(raw), str(tmp_path / "bad"), "--name", "b",
                                       "--group", "chin=beard", "--no-progress"]) == 2
