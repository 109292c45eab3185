"""Score a folder of predicted label maps against a split, and the result JSON shared by all runs.

A prediction folder holds one single-channel PNG of class ids per image of
``ROOT/<split>_list.txt``, named like the image's label file (``labels/NAME.png`` ->
``PRED_DIR/NAME.png``) and of the label's size. Any method can be scored this way.
"""
import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import cv2
import numpy as np

from dml_csr.data.layout import read_split_list, root_schema, split_list_path
from dml_csr.files import read_image, write_json

from .metrics import IGNORE_INDEX, ConfusionMatrix, compute_metrics, protocol_description

__all__ = ["EvaluationError", "parse_meta", "evaluate_folder", "build_result",
           "write_result", "load_result", "RESULT_KEYS"]

RESULT_KEYS = ("f1", "iou", "mean_f1", "miou", "pixel_accuracy", "mean_accuracy", "headline",
               "protocol", "meta")


class EvaluationError(ValueError):
    """Problems found while scoring; ``problems`` holds one line per problem."""

    def __init__(self, message: str, problems: Sequence[str] = ()):
        super().__init__(message)
        self.problems = list(problems)


def _from_layout(read, *args):
    """``read(*args)`` of ``dml_csr.data.layout`` with its errors raised as ``EvaluationError``."""
    try:
        return read(*args)
    except (OSError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise EvaluationError(str(message)) from None


def _read_map(path: Path, what: str, problems: List[str]) -> Optional[np.ndarray]:
    if not path.is_file():
        problems.append(f"missing {what}: {path}")
        return None
    try:
        img = read_image(path, cv2.IMREAD_UNCHANGED)
    except (ValueError, OSError) as exc:
        problems.append(f"unreadable {what}: {exc}")
        return None
    if img.ndim != 2:
        problems.append(f"{what} is not a single-channel id map: {path} has shape {img.shape}")
        return None
    return img


def _format_problems(problems: Sequence[str], header: str, max_listed: int) -> str:
    lines = [f"{header}: {len(problems)} problem(s)"]
    lines += [f"  - {p}" for p in problems[:max_listed]]
    if len(problems) > max_listed:
        lines.append(f"  ... and {len(problems) - max_listed} more")
    return "\n".join(lines)


def evaluate_folder(data_root, split: str, pred_dir, *, dataset: Optional[str] = None,
                    meta: Optional[Mapping[str, object]] = None,
                    max_listed: int = 20, class_map=None) -> dict:
    """Score the predictions in ``pred_dir`` against ``data_root``'s ``split``.

    Every problem is collected first (missing or extra predictions, unreadable or multi-channel
    files, size mismatches, prediction ids outside [0, K), label ids outside [0, K) other than
    255); then one ``EvaluationError`` lists the first ``max_listed`` and the count. Only
    top-level ``*.png`` files of ``pred_dir`` count as predictions (sub-folders, other files are
    ignored). ``class_map``: a mapping (path or shipped name, ``classmap.py``) from the
    predictions' id order to the root's; ``meta.class_map`` records it. Returns the result dict
    of ``build_result``.
    """
    root, pred_dir = Path(data_root), Path(pred_dir)
    meta = dict(meta or {})
    meta_dataset = meta.pop("dataset", None)
    if dataset and meta_dataset and dataset != meta_dataset:
        raise EvaluationError(f"dataset {dataset!r} and meta dataset={meta_dataset!r} disagree")
    schema = _from_layout(root_schema, root, dataset or meta_dataset)   # the one answer
    tokens = list(schema.tokens)
    cmap = None
    if class_map is not None:
        from .classmap import load_class_map
        cmap = _from_layout(load_class_map, class_map, None, schema)
        meta["class_map"] = cmap.to_dict()
    k_pred = len(cmap.source) if cmap else len(tokens)
    # a line holding only the image path gets labels/<stem>.png (as the release's scorer does)
    entries = [(image, label or f"labels/{Path(image).stem}.png") for _, image, label in
               _from_layout(read_split_list, split_list_path(root, split), "")]
    if not pred_dir.is_dir():
        raise EvaluationError(f"prediction folder {pred_dir} does not exist")

    k = len(tokens)
    problems: List[str] = []
    expected: Dict[str, str] = {}
    for _, label in entries:
        name = Path(label).name
        if name in expected:
            problems.append(f"{split}_list.txt names label file {name} twice "
                            f"({expected[name]}, {label})")
        expected[name] = label

    cm = ConfusionMatrix(k)
    for name, label in expected.items():
        label_path = root / split / label
        pred_path = pred_dir / name
        image_problems: List[str] = []
        pred = _read_map(pred_path, "prediction", image_problems)
        gt = _read_map(label_path, "label", image_problems)
        if pred is not None and gt is not None and pred.shape != gt.shape:
            image_problems.append(f"wrong size: {pred_path} is {pred.shape[1]}x{pred.shape[0]} "
                                  f"(WxH), its label {label_path} is {gt.shape[1]}x{gt.shape[0]}")
        if pred is not None:
            bad = np.unique(pred[pred >= k_pred])
            if bad.size:
                image_problems.append(f"out-of-range ids in {pred_path}: {bad[:8].tolist()} "
                                      f"(valid 0..{k_pred - 1})")
        if gt is not None:
            bad = np.unique(gt[(gt >= k) & (gt != IGNORE_INDEX)])
            if bad.size:
                image_problems.append(f"out-of-range ids in label {label_path}: "
                                      f"{bad[:8].tolist()} (valid 0..{k - 1} and {IGNORE_INDEX})")
        if image_problems:
            problems += image_problems
        else:
            if cmap is not None:          # the other id order -> the root's
                pred, gt = cmap.apply(pred, gt)
            cm.update(gt, pred)

    extra = sorted(p.name for p in pred_dir.glob("*.png") if p.name not in expected)
    problems += [f"extra prediction not in {split}_list.txt: {pred_dir / n}" for n in extra]
    if problems:
        raise EvaluationError(_format_problems(
            problems, f"cannot score {pred_dir} against {root} split {split!r}", max_listed),
            problems)

    meta.update(data_root=str(root), pred_dir=str(pred_dir))
    return build_result(cm.hist, schema, split=split, num_images=len(expected), meta=meta)


_RESERVED_META = ("dataset", "split", "num_images")


def build_result(hist, labels, *, split: str, num_images: int, dataset: Optional[str] = None,
                 meta: Optional[Mapping[str, object]] = None,
                 headline: Optional[str] = None) -> dict:
    """The result record of one run (what ``write_result`` saves and make_tables reads).

    ``labels``: the data set's description (``Schema``), or its tokens with ``dataset`` naming
    it (``metrics.compute_metrics``). Keys: every key of ``compute_metrics`` plus ``confusion``
    (the pooled histogram as lists), ``protocol`` (how it was computed), ``meta`` (``dataset``,
    ``split``, ``num_images``, then the caller's ``meta``, e.g. ``method``, ``row``,
    ``checkpoint``) and, for a description, ``labels`` (it, so a table or a reader of the result
    needs nothing else).
    """
    from ..data.schemas import Schema
    meta = dict(meta or {})
    clash = [key for key in _RESERVED_META if key in meta]
    if clash:
        raise ValueError(f"meta keys {clash} are set from the arguments, do not pass them in meta")
    if isinstance(labels, Schema):
        dataset = dataset or labels.name
    hist = np.asarray(hist, dtype=np.int64)
    result = compute_metrics(hist, labels, dataset=dataset, headline=headline)
    result["confusion"] = hist.tolist()
    result["protocol"] = protocol_description(result["headline"]["name"], result["merged_names"])
    result["meta"] = {"dataset": dataset, "split": split, "num_images": int(num_images), **meta}
    if isinstance(labels, Schema):
        result["labels"] = labels.to_dict()
    return result


def write_result(result: Mapping, path) -> None:
    """Write a result JSON atomically (``files.write_json``; strict JSON: no NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result, allow_nan=False)


def load_result(path) -> dict:
    """Read a result JSON, checking that it holds the keys the tables need."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise EvaluationError(f"cannot read result {path}: {err}") from None
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing or "dataset" not in result.get("meta", {}):
        raise EvaluationError(f"{path} is not a result JSON: missing "
                              f"{missing or ['meta.dataset']}")
    return result


def parse_meta(items) -> dict:
    """``["row=psp", "method=x"]`` (the ``--meta key=value`` options of the CLIs) -> dict."""
    meta = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--meta expects key=value, got {item!r}")
        meta[key] = value
    return meta
