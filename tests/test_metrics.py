import numpy as np
import pytest
import torch

from dml_csr.data.schemas import get_schema
from dml_csr.eval.metrics import ConfusionMatrix, compute_metrics, confusion_histogram

HELEN = list(get_schema("helen").tokens)
CELEBA = list(get_schema("celebamask_hq").tokens)


# ---------------------------------------------------------------- hand-computed histograms

def test_three_classes_by_hand():
    # rows = gt, columns = prediction
    hist = np.array([[5, 1, 0],
                     [2, 6, 2],
                     [0, 1, 3]])
    m = compute_metrics(hist, ["bg", "a", "b"])
    # F1 = 2 TP / (gt count + pred count)
    assert m["f1"]["bg"] == pytest.approx(100 * 10 / 13)        # 2*5 / (6 + 7)
    assert m["f1"]["a"] == pytest.approx(100 * 12 / 18)         # 2*6 / (10 + 8)
    assert m["f1"]["b"] == pytest.approx(100 * 6 / 9)           # 2*3 / (4 + 5)
    assert m["mean_f1"] == pytest.approx(100 * (12 / 18 + 6 / 9) / 2)  # background excluded
    # IoU = TP / (gt + pred - TP)
    assert m["iou"] == pytest.approx({"bg": 62.5, "a": 50.0, "b": 50.0})
    assert m["miou"] == pytest.approx((62.5 + 50 + 50) / 3)     # background included
    assert m["pixel_accuracy"] == pytest.approx(70.0)           # 14 / 20
    assert m["mean_accuracy"] == pytest.approx(100 * (5 / 6 + 6 / 10 + 3 / 4) / 3)
    assert m["headline"] == {"name": "mean_f1", "value": m["mean_f1"]}
    assert m["absent"] == [] and m["num_pixels"] == 20
    assert set(m["f1"]) == {"bg", "a", "b"}  # no merged names without Helen tokens


def _helen_eye_hist():
    hist = np.zeros((11, 11), dtype=np.int64)
    bg, le, re = 0, 4, 5
    hist[bg, bg] = 9
    hist[bg, le] = 1   # background predicted as left eye
    hist[le, le] = 3
    hist[le, re] = 1   # left eye predicted as right eye: a hit for "eyes"
    hist[re, re] = 4
    hist[re, bg] = 2   # right eye missed
    return hist


def test_merged_names_and_absent_classes_by_hand():
    m = compute_metrics(_helen_eye_hist(), HELEN, dataset="helen")
    f1 = m["f1"]
    assert f1["le"] == pytest.approx(100 * 6 / 8)     # 2*3 / (4 + 4)
    assert f1["re"] == pytest.approx(100 * 8 / 11)    # 2*4 / (6 + 5)
    # eyes: G = P = {le, re}; hits 3+1+4 = 8, gt 10, pred 9
    assert f1["eyes"] == pytest.approx(100 * 16 / 19)
    assert f1["overall"] == pytest.approx(100 * 16 / 19)  # only the eyes are present
    for absent in ("face", "lb", "rb", "nose", "ulip", "imouth", "llip", "hair", "brows", "mouth"):
        assert f1[absent] is None
    assert m["absent"] == ["face", "lb", "rb", "nose", "ulip", "imouth", "llip", "hair"]
    # mean F1 over the defined non-background classes only
    assert m["mean_f1"] == pytest.approx((75 + 800 / 11) / 2)
    # IoU keeps the release's max(1, .) guard: absent classes score 0 and count in mIoU
    assert m["iou"]["nose"] == 0.0
    assert m["miou"] == pytest.approx((75 + 60 + 400 / 7) / 11)  # 9/12, 3/5, 4/7
    assert m["headline"] == {"name": "overall_f1", "value": f1["overall"]}
    lapa = compute_metrics(_helen_eye_hist(), HELEN, dataset="lapa")
    assert lapa["headline"] == {"name": "mean_f1", "value": m["mean_f1"]}


def test_gt_only_or_pred_only_class_has_f1_zero():
    hist = np.array([[4, 0, 2],    # class b predicted but never in gt
                     [3, 0, 0],    # class a in gt but never predicted
                     [0, 0, 0]])
    m = compute_metrics(hist, ["bg", "a", "b"])
    assert m["f1"]["a"] == 0.0 and m["f1"]["b"] == 0.0
    assert m["mean_f1"] == 0.0 and m["absent"] == []


def test_no_defined_class_gives_none_mean():
    m = compute_metrics(np.array([[7, 0], [0, 0]]), ["bg", "a"])
    assert m["f1"]["a"] is None and m["mean_f1"] is None and m["headline"]["value"] is None


def test_compute_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.ones((3, 3)), ["bg", "a"])
    with pytest.raises(ValueError, match="empty"):
        compute_metrics(np.zeros((2, 2)), ["bg", "a"])
    with pytest.raises(ValueError, match="headline"):
        compute_metrics(np.ones((2, 2)), ["bg", "a"], headline="miou")
    with pytest.raises(ValueError, match="overall"):
        compute_metrics(np.ones((19, 19)), CELEBA, headline="overall_f1")


# ---------------------------------------------------------------- the accumulator

def test_histogram_ignores_255_and_counts_pairs():
    gt = np.array([[0, 1, 255], [2, 2, 1]], dtype=np.uint8)
    pred = np.array([[0, 2, 7], [2, 1, 1]], dtype=np.uint8)  # 7 sits on an ignored pixel
    expected = np.zeros((3, 3), dtype=np.int64)
    for g, p in [(0, 0), (1, 2), (2, 2), (2, 1), (1, 1)]:
        expected[g, p] += 1
    hist = confusion_histogram(gt, pred, 3)
    assert hist.dtype == np.int64
    np.testing.assert_array_equal(hist, expected)


def test_confusion_matrix_numpy_torch_batches_and_merge():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(3, 6, 5))
    gt[0, 0, :] = 255
    pred = rng.integers(0, 4, size=(3, 6, 5))
    whole = ConfusionMatrix(4).update(gt, pred)
    assert whole.num_pixels == 3 * 30 - 5 and whole.hist.dtype == np.int64
    per_image = [ConfusionMatrix(4).update(torch.from_numpy(g), torch.from_numpy(p))
                 for g, p in zip(gt, pred)]
    summed = per_image[0] + per_image[1] + per_image[2]
    np.testing.assert_array_equal(summed.hist, whole.hist)
    assert per_image[0].num_pixels == 25  # "+" did not modify its operands
    merged = ConfusionMatrix(4)
    for part in per_image:
        merged.merge(part)
    np.testing.assert_array_equal(merged.hist, whole.hist)
    mixed = ConfusionMatrix(4).update(torch.from_numpy(gt).to(torch.uint8), pred)
    np.testing.assert_array_equal(mixed.hist, whole.hist)
    with pytest.raises(ValueError, match="merge"):
        merged.merge(ConfusionMatrix(5))
    merged.reset()
    assert merged.num_pixels == 0


@pytest.mark.parametrize("gt, pred, error", [
    (np.array([0, 3]), np.array([0, 1]), ValueError),        # gt id out of range
    (np.array([0, -1]), np.array([0, 1]), ValueError),       # negative gt id
    (np.array([0, 1]), np.array([0, 3]), ValueError),        # pred id out of range
    (np.array([0, 1]), np.array([0, 1, 1]), ValueError),     # shape mismatch
    (np.array([0, 1]), np.array([0.0, 1.0]), TypeError),     # float predictions
    (torch.tensor([0, 1]), torch.tensor([0, 9]), ValueError),
    (torch.tensor([0, 1]), torch.tensor([0.0, 1.0]), TypeError),
])
def test_confusion_matrix_rejects_bad_labels(gt, pred, error):
    with pytest.raises(error):
        ConfusionMatrix(3).update(gt, pred)


def test_all_reduce_single_process(tmp_path):
    import torch.distributed as dist

    cm = ConfusionMatrix(3).update(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]))
    before = cm.hist.copy()
    cm.all_reduce()  # not initialised: no-op
    np.testing.assert_array_equal(cm.hist, before)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        cm.all_reduce()
    finally:
        from dml_csr.distributed import destroy_group
        destroy_group()   # gloo: barrier and pause first (torch 2.6 deadlocked)
    np.testing.assert_array_equal(cm.hist, before)
    assert cm.hist.dtype == np.int64


# ---------------------------------------------------------------- the release's formula

def _release_scorer(gts, preds, names):
    """Straightforward re-implementation of the release's scorer (docs/evaluation.md)."""
    n = len(names)
    hist_sum = np.zeros((n, n))
    for gt, pred in zip(gts, preds):
        keep = gt != 255
        g, p = gt[keep], pred[keep]
        hist = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                hist[i, j] = np.sum((g == i) & (p == j))
        hist_sum += hist
    eval_names = {name: ([i], [i]) for i, name in enumerate(names)}
    for merged, parts in (("eyes", ["le", "re"]), ("brows", ["lb", "rb"]),
                          ("mouth", ["ulip", "imouth", "llip"])):
        if all(p in eval_names for p in parts):
            ids = [names.index(p) for p in parts]
            eval_names[merged] = (ids, ids)
    if all(k in eval_names for k in ("eyes", "brows", "nose", "mouth")):
        ids = sum((eval_names[k][0] for k in ("eyes", "brows", "nose", "mouth")), [])
        eval_names["overall"] = (ids, ids)
    f1 = {}
    with np.errstate(invalid="ignore"):
        for name, (gt_ids, pred_ids) in eval_names.items():
            a = hist_sum[gt_ids, :].sum()
            b = hist_sum[:, pred_ids].sum()
            inter = hist_sum[gt_ids, :][:, pred_ids].sum()
            f1[name] = 2 * inter / (a + b) * 100
    pos, res, tp = hist_sum.sum(1), hist_sum.sum(0), np.diag(hist_sum)
    iou = tp / np.maximum(1.0, pos + res - tp) * 100
    return {
        "f1": f1, "iou": dict(zip(names, iou)), "miou": iou.mean(),
        "mean_f1": np.mean([f1[name] for name in names[1:]]),
        "pixel_accuracy": tp.sum() / pos.sum() * 100,
        "mean_accuracy": (tp / np.maximum(1.0, pos)).mean() * 100,
    }


def _random_split(num_classes, seed):
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for h, w in [(21, 17), (9, 30), (16, 16), (25, 11)]:
        gt = rng.integers(0, num_classes, size=(h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        noise = rng.integers(0, num_classes, size=(h, w))
        pred = np.where(rng.random((h, w)) < 0.6, np.where(gt == 255, 0, gt), noise)
        gts.append(gt)
        preds.append(pred.astype(np.uint8))
    return gts, preds


@pytest.mark.parametrize("dataset, seed", [("helen", 0), ("celebamask_hq", 1)])
def test_matches_release_formula_on_random_predictions(dataset, seed):
    tokens = get_schema(dataset).tokens
    gts, preds = _random_split(len(tokens), seed)
    cm = ConfusionMatrix(len(tokens))
    for gt, pred in zip(gts, preds):
        cm.update(gt, pred)
    ours = cm.compute(get_schema(dataset))      # its merged groups (Helen's) come with it
    ref = _release_scorer(gts, preds, tokens)
    assert ours["absent"] == []
    assert set(ours["f1"]) == set(ref["f1"])
    for name, value in ref["f1"].items():
        assert ours["f1"][name] == pytest.approx(value, abs=1e-6), name
    for token in tokens:
        assert ours["iou"][token] == pytest.approx(ref["iou"][token], abs=1e-6)
    for key in ("miou", "mean_f1", "pixel_accuracy", "mean_accuracy"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key


def test_absent_class_release_gives_nan_we_give_none_and_skip_it():
    gts, preds = _random_split(11, 2)
    for gt, pred in zip(gts, preds):  # remove nose (6) from gt and prediction
        gt[gt == 6] = 0
        pred[pred == 6] = 0
    ref = _release_scorer(gts, preds, HELEN)
    ours = compute_metrics(sum(confusion_histogram(g, p, 11) for g, p in zip(gts, preds)), HELEN)
    assert np.isnan(ref["f1"]["nose"]) and ours["f1"]["nose"] is None
    assert ours["absent"] == ["nose"]
    assert ours["mean_f1"] == pytest.approx(np.nanmean([ref["f1"][t] for t in HELEN[1:]]),
                                            abs=1e-6)
    assert ours["miou"] == pytest.approx(ref["miou"], abs=1e-6)
