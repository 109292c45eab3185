import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dml_csr.data import FaceDataset, get_schema
from dml_csr.data.transforms import crop_params, normalize_image, warp_back, warp_image, warp_label


H, W = 40, 32
CROP = (48, 48)
HELEN = get_schema("helen")


def slow_binary_edges(label, width=1, ignore=255):
    """Per-pixel loop over the edge rule of docs/data.md (kept here so this file stands alone)."""
    h, w = label.shape
    base = np.zeros((h, w), np.int64)
    for y in range(h):
        for x in range(w):
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and ignore not in (label[y, x], label[ny, nx]) \
                        and label[y, x] != label[ny, nx]:
                    base[y, x] = 1
    r = width - 1
    out = np.array([[base[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].max()
                     for x in range(w)] for y in range(h)])
    out[label == ignore] = ignore
    return out


def slow_category_edges(label, binary, ignore=255):
    return np.where(label == ignore, ignore, np.where(binary == 1, label, 0))


def make_label(h=H, w=W, seed=0):
    """Toy face: skin, hair, brows/eyes only on fixed sides so that a flip is visible."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.uint8)
    lab[4:36, 4:28] = 1
    lab[:5, :] = 10
    lab[10:13, 6:12] = 2         # left brow (viewer's left)
    lab[10:13, 18:26] = 3        # right brow
    lab[15:19, 7:11] = 4         # left eye
    lab[15:20, 19:24] = 5        # right eye
    lab[22:27, 14:17] = 6
    lab[29:31, 11:21] = 7
    lab[31, 12:20] = 8
    lab[32:34, 11:21] = 9
    lab[rng.random((h, w)) < 0.02] = 255
    return lab


def make_image(label, seed=0):
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(256, 3)).astype(np.uint8)
    img = colours[label]
    img[..., 0] = np.clip(img[..., 0].astype(int) + np.arange(label.shape[1])[None] * 3, 0, 255)
    return img


def make_root(tmp_path, splits=("train", "test"), n=3, tokens=HELEN.tokens):
    root = tmp_path / "data"
    root.mkdir()
    (root / "label_names.txt").write_text("\n".join(tokens) + "\n")
    if tuple(tokens) == HELEN.tokens:          # a root declares its data set (dataset.json)
        from dml_csr.data.layout import write_identity
        write_identity(root, "helen", tool="test")
    for split in splits:
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir()
        lines = []
        for k in range(n):
            name = f"{split}_{k:02d}"
            lab = make_label(seed=k)
            cv2.imwrite(str(root / split / "images" / f"{name}.jpg"), make_image(lab, k))
            cv2.imwrite(str(root / split / "labels" / f"{name}.png"), lab)
            lines.append(f"images/{name}.jpg labels/{name}.png")
        (root / f"{split}_list.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path)


def test_sample_dict_train(root):
    ds = FaceDataset(str(root), "train", crop_size=CROP, augment="paper", seed=0)
    assert len(ds) == 3 and ds.num_classes == 11 and ds.schema.name == "helen"
    assert ds.names == ["train_00", "train_01", "train_02"]
    assert ds.image_path(1).endswith(os.path.join("train", "images", "train_01.jpg"))
    assert ds.label_path(1).endswith(os.path.join("train", "labels", "train_01.png"))
    s = ds[1]
    assert set(s) == {"image", "label", "edge", "cat_edge", "center", "scale", "rotation",
                      "orig_size", "name", "index"}
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 48, 48)
    for key in ("label", "edge", "cat_edge"):
        assert s[key].dtype == torch.int64 and s[key].shape == (48, 48)
    assert s["center"].dtype == torch.float32 and s["center"].shape == (2,)
    assert s["scale"].dtype == torch.float32 and s["scale"].shape == ()
    assert s["rotation"].dtype == torch.float32 and s["rotation"].shape == ()
    assert s["orig_size"].dtype == torch.int64 and s["orig_size"].tolist() == [H, W]
    assert s["name"] == "train_01" and s["index"] == 1
    assert torch.isfinite(s["image"]).all()
    lab = s["label"]
    assert set(lab.unique().tolist()) <= set(range(11)) | {255}
    assert ((s["edge"] == 255) == (lab == 255)).all()
    assert ((s["cat_edge"] == 255) == (lab == 255)).all()


def test_eval_split_defaults_no_edges_but_label(root):
    ds = FaceDataset(str(root), "test", crop_size=CROP)
    s = ds[0]
    assert "label" in s and "edge" not in s and "cat_edge" not in s
    assert float(s["rotation"]) == 0.0 and float(s["scale"]) == 40.0
    assert torch.allclose(s["center"], torch.tensor([15.5, 19.5]))
    # the crop is exactly the documented transform of the raw files
    img = cv2.imread(ds.image_path(0), cv2.IMREAD_COLOR)
    raw = cv2.imread(ds.label_path(0), cv2.IMREAD_GRAYSCALE)
    c, sc = crop_params(H, W)
    assert torch.equal(s["label"], torch.from_numpy(warp_label(raw, c, sc, 0.0, CROP)).long())
    assert torch.equal(s["image"], normalize_image(warp_image(img, c, sc, 0.0, CROP)))
    # and the eval protocol maps it back onto the raw label
    back = warp_back(s["label"].numpy().astype(np.uint8), s["center"].numpy(), float(s["scale"]),
                     float(s["rotation"]), tuple(s["orig_size"].tolist()))
    assert np.array_equal(back, raw)
    assert FaceDataset(str(root), "test", crop_size=CROP, with_edges=True)[0]["edge"].shape == CROP


def test_default_collate(root):
    ds = FaceDataset(str(root), "train", crop_size=CROP, augment="released", seed=0)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 48, 48) and batch["label"].shape == (3, 48, 48)
    assert batch["name"] == ["train_00", "train_01", "train_02"]
    assert batch["center"].shape == (3, 2) and batch["scale"].shape == (3,)


@pytest.mark.parametrize("augment", ["none", "paper", "released"])
def test_flip_mirrors_and_swaps_pairs(root, augment):
    plain = FaceDataset(str(root), "train", crop_size=CROP, augment=augment, seed=7)
    flipped = FaceDataset(str(root), "train", crop_size=CROP, augment=augment, flip=True,
                          flip_prob=1.0, seed=7)
    perm = torch.tensor(HELEN.flip_permutation() + [0] * (256 - 11))
    perm[255] = 255
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        # the flip coin is drawn with flip off too: same crop geometry
        assert float(a["rotation"]) == float(b["rotation"]) and float(a["scale"]) == float(b["scale"])
        assert torch.equal(b["label"], perm[a["label"].flip(-1)])
        assert torch.allclose(b["image"], a["image"].flip(-1))
        assert torch.equal(b["edge"], a["edge"].flip(-1))
    # the toy face has its left brow on the viewer's left; after the flip it is still class 2
    # there, i.e. the old right brow, mirrored, became the left brow
    a, b = plain[0], flipped[0]
    left_half = b["label"][:, :24]
    if augment == "none":
        assert (a["label"][:, :24] == 2).any() and not (a["label"][:, :24] == 3).any()
        assert (left_half == 2).any() and not (left_half == 3).any()


def test_flip_probability_half(root):
    ds = FaceDataset(str(root), "train", crop_size=(16, 16), flip=True, seed=0)
    raw = FaceDataset(str(root), "train", crop_size=(16, 16))[0]["label"]
    mirrored = torch.tensor(HELEN.flip_permutation() + [0] * 244 + [255])[raw.flip(-1)]
    hits = sum(torch.equal(ds[0]["label"], mirrored) for _ in range(200))
    assert 70 < hits < 130
    never = FaceDataset(str(root), "train", crop_size=(16, 16), flip=True, flip_prob=0.0, seed=0)
    assert all(torch.equal(never[0]["label"], raw) for _ in range(5))


@pytest.mark.parametrize("width", [1, 2])
def test_edges_follow_rule_on_returned_label(root, width):
    ds = FaceDataset(str(root), "train", crop_size=CROP, augment="paper", flip=True,
                     edge_width=width, seed=3)
    for i in range(len(ds)):
        s = ds[i]
        lab = s["label"].numpy()
        ref = slow_binary_edges(lab, width)
        assert np.array_equal(s["edge"].numpy(), ref)
        assert np.array_equal(s["cat_edge"].numpy(), slow_category_edges(lab, ref))
        assert (ref == 1).any()


def test_augmentation_ranges_in_dataset(root):
    ds = FaceDataset(str(root), "train", crop_size=(8, 8), augment="paper", seed=0)
    draws = [ds[0] for _ in range(200)]
    rot = np.array([float(s["rotation"]) for s in draws])
    sc = np.array([float(s["scale"]) for s in draws]) / 40.0
    assert (np.abs(rot) <= 30).all() and rot.min() < -20 and rot.max() > 20
    assert (sc >= 0.75 - 1e-6).all() and (sc <= 1.25 + 1e-6).all() and sc.min() < 0.8 and sc.max() > 1.2
    ds = FaceDataset(str(root), "train", crop_size=(8, 8), augment="released", seed=0)
    rot = np.array([float(ds[0]["rotation"]) for _ in range(300)])
    assert (np.abs(rot) <= 60).all() and 0.25 < np.mean(rot == 0) < 0.55


def test_deterministic_with_seed(root):
    def run(seed):
        ds = FaceDataset(str(root), "train", crop_size=CROP, augment="released", flip=True, seed=seed)
        return [ds[i % 3] for i in range(6)]
    a, b, c = run(11), run(11), run(12)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        assert float(x["rotation"]) == float(y["rotation"])
    assert any(float(x["scale"]) != float(z["scale"]) for x, z in zip(a, c))


def test_workers_differ_and_reproduce(root):
    ds = FaceDataset(str(root), "train", crop_size=(8, 8), augment="paper", with_edges=False)

    def run():
        torch.manual_seed(123)
        loader = DataLoader(ds, batch_size=1, num_workers=2)
        return [(float(b["rotation"]), float(b["scale"])) for b in loader]
    first, second = run(), run()
    assert first == second
    # samples 0 and 1 are the first draws of worker 0 and worker 1
    assert first[0] != first[1]


def test_channel_order(root):
    bgr = FaceDataset(str(root), "test", crop_size=CROP)[0]["image"]
    rgb = FaceDataset(str(root), "test", crop_size=CROP, channel_order="rgb")[0]["image"]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    raw_bgr = bgr * std[:, None, None] + mean[:, None, None]     # B, G, R / 255
    raw_rgb = rgb * std[:, None, None] + mean[:, None, None]     # R, G, B / 255
    assert torch.allclose(raw_bgr, raw_rgb.flip(0), atol=1e-5)
    assert not torch.allclose(raw_bgr, raw_rgb, atol=1e-2)


def test_released_center_mode(root):
    s = FaceDataset(str(root), "test", crop_size=CROP, center_mode="released")[0]
    # the release crops around the float centre with a span of the longer side minus 1
    assert s["center"].tolist() == [15.5, 19.5] and float(s["scale"]) == 39.0


def test_image_only_list(tmp_path):
    root = make_root(tmp_path, splits=("test",))
    (root / "test_list.txt").write_text("images/test_00.jpg\nimages/test_01.jpg\n")
    ds = FaceDataset(str(root), "test", crop_size=CROP)
    s = ds[0]
    assert "label" not in s and ds.label_path(0) is None and s["image"].shape == (3, 48, 48)


def test_explicit_schema_without_label_names(tmp_path):
    root = make_root(tmp_path, splits=("test",))
    os.remove(root / "label_names.txt")
    with pytest.raises(FileNotFoundError, match="label_names.txt"):
        FaceDataset(str(root), "test")
    assert FaceDataset(str(root), "test", schema=HELEN, crop_size=CROP).num_classes == 11


# ----------------------------------------------------------------------------- bad inputs
def _expect(exc, path, fn):
    with pytest.raises(exc) as info:
        fn()
    assert str(path) in str(info.value), str(info.value)


def test_missing_list_file(root):
    _expect(FileNotFoundError, root / "valid_list.txt", lambda: FaceDataset(str(root), "valid"))


def test_unknown_label_names(tmp_path):
    root = make_root(tmp_path, splits=("test",), tokens=("bg", "foo", "bar"))
    _expect(ValueError, root / "label_names.txt", lambda: FaceDataset(str(root), "test"))


def test_malformed_and_missing_entries(root):
    lst = root / "train_list.txt"
    lst.write_text("images/train_00.jpg labels/train_00.png extra\n")
    _expect(ValueError, lst, lambda: FaceDataset(str(root), "train"))
    lst.write_text("images/nope.jpg labels/train_00.png\n")
    _expect(FileNotFoundError, root / "train" / "images" / "nope.jpg",
            lambda: FaceDataset(str(root), "train"))
    lst.write_text("images/train_00.jpg labels/nope.png\n")
    _expect(FileNotFoundError, root / "train" / "labels" / "nope.png",
            lambda: FaceDataset(str(root), "train"))
    lst.write_text("\n")
    _expect(ValueError, lst, lambda: FaceDataset(str(root), "train"))


def test_files_removed_after_listing(root):
    ds = FaceDataset(str(root), "train", crop_size=CROP)
    os.remove(ds.image_path(0))
    _expect(FileNotFoundError, ds.image_path(0), lambda: ds[0])
    os.remove(ds.label_path(1))
    _expect(FileNotFoundError, ds.label_path(1), lambda: ds[1])


def test_unreadable_files(root):
    ds = FaceDataset(str(root), "train", crop_size=CROP)
    with open(ds.image_path(0), "wb") as f:
        f.write(b"not a jpeg at all")
    _expect(ValueError, ds.image_path(0), lambda: ds[0])
    with open(ds.label_path(1), "wb") as f:
        f.write(b"\x89PNG broken")
    _expect(ValueError, ds.label_path(1), lambda: ds[1])


def test_bad_labels(root):
    ds = FaceDataset(str(root), "train", crop_size=CROP)
    cv2.imwrite(ds.label_path(0), make_label(h=H, w=W + 2))
    _expect(ValueError, ds.label_path(0), lambda: ds[0])
    lab = make_label()
    lab[5, 5] = 11                      # 11 classes: ids 0..10 and 255 only
    cv2.imwrite(ds.label_path(1), lab)
    _expect(ValueError, ds.label_path(1), lambda: ds[1])
    colour = np.stack([make_label(), make_label(), np.zeros((H, W), np.uint8)], axis=2)
    cv2.imwrite(ds.label_path(2), colour)
    _expect(ValueError, ds.label_path(2), lambda: ds[2])
    # a grey image stored with 3 equal channels is accepted
    cv2.imwrite(ds.label_path(2), np.repeat(make_label()[:, :, None], 3, axis=2))
    assert ds[2]["label"].shape == CROP


def test_bad_arguments(root):
    for kwargs in ({"augment": "strong"}, {"channel_order": "yuv"}, {"center_mode": "x"},
                   {"flip_prob": 1.5}):
        with pytest.raises(ValueError):
            FaceDataset(str(root), "train", **kwargs)
