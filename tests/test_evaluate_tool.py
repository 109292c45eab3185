import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dml_csr.cli import run
from dml_csr.data.layout import write_identity
from dml_csr.data.schemas import get_schema
from dml_csr.eval.evaluate import (EvaluationError, evaluate_folder, load_result,
                                   write_result)
from dml_csr.data.layout import root_schema
from dml_csr.eval.metrics import compute_metrics, confusion_histogram

REPO = Path(__file__).resolve().parents[1]
TOKENS = get_schema("synthetic").tokens
NAMES = ("a01", "b02", "c03")


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.fixture()
def tree(tmp_path):
    """A 3-image synthetic test split and a matching prediction folder."""
    root = tmp_path / "synthetic_tiny"
    root.mkdir()
    (root / "label_names.txt").write_text("\n".join(TOKENS) + "\n")
    (root / "test_list.txt").write_text(
        "".join(f"images/{n}.jpg labels/{n}.png\n" for n in NAMES))
    rng = np.random.default_rng(0)
    pred_dir = tmp_path / "pred"
    gts, preds = [], []
    for i, name in enumerate(NAMES):
        h, w = 8 + i, 10 - i
        gt = rng.integers(0, 11, size=(h, w)).astype(np.uint8)
        gt[0, 0] = 255
        pred = np.where(rng.random((h, w)) < 0.7, gt % 255, rng.integers(0, 11, (h, w)))
        pred = pred.astype(np.uint8)
        _write_png(root / "test" / "labels" / f"{name}.png", gt)
        _write_png(pred_dir / f"{name}.png", pred)
        gts.append(gt)
        preds.append(pred)
    return root, pred_dir, gts, preds


def test_evaluate_folder_scores_the_pooled_histogram(tree):
    root, pred_dir, gts, preds = tree
    (pred_dir / "notes.txt").write_text("not a prediction")  # non-PNG files are ignored
    (pred_dir / "vis").mkdir()
    _write_png(pred_dir / "vis" / "a01.png", np.zeros((3, 3, 3), np.uint8))  # sub-folders too
    result = evaluate_folder(root, "test", pred_dir, meta={"method": "toy", "row": "ddgcn"})
    hist = sum(confusion_histogram(g, p, 11) for g, p in zip(gts, preds))
    expected = compute_metrics(hist, TOKENS, dataset="synthetic")
    for key in ("f1", "iou", "mean_f1", "miou", "pixel_accuracy", "mean_accuracy", "headline"):
        assert result[key] == expected[key], key
    assert result["confusion"] == hist.tolist()
    assert result["meta"]["dataset"] == "synthetic"  # guessed from the folder name
    assert result["meta"]["split"] == "test" and result["meta"]["num_images"] == 3
    assert result["meta"]["method"] == "toy" and result["meta"]["row"] == "ddgcn"
    assert result["protocol"]["ignore_index"] == 255
    assert "pooled" in result["protocol"]["histogram"]


def test_cli_writes_json_and_prints_table(tree, tmp_path):
    root, pred_dir, _, _ = tree
    out = tmp_path / "out" / "metrics.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "evaluate.py"), "--data-root", str(root),
         "--split", "test", "--pred-dir", str(pred_dir), "--out", str(out),
         "--dataset", "synthetic", "--meta", "method=toy", "--meta", "row=p+b"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| 6 nose |" in proc.stdout and "overall" in proc.stdout
    saved = json.loads(out.read_text())
    for key in ("f1", "iou", "mean_f1", "miou", "pixel_accuracy", "mean_accuracy", "headline",
                "protocol", "meta"):
        assert key in saved
    assert saved["meta"]["method"] == "toy" and saved["meta"]["row"] == "p+b"
    assert saved["meta"]["num_images"] == 3
    assert saved["headline"]["name"] == "mean_f1"
    assert load_result(out)["mean_f1"] == saved["mean_f1"]


def _problems(root, pred_dir, **kwargs):
    with pytest.raises(EvaluationError) as info:
        evaluate_folder(root, "test", pred_dir, dataset="synthetic", **kwargs)
    return info.value


def test_missing_prediction(tree):
    root, pred_dir, _, _ = tree
    (pred_dir / "b02.png").unlink()
    err = _problems(root, pred_dir)
    assert len(err.problems) == 1
    assert "missing prediction" in err.problems[0] and "b02.png" in err.problems[0]


def test_extra_prediction(tree):
    root, pred_dir, _, _ = tree
    _write_png(pred_dir / "zzz.png", np.zeros((4, 4), np.uint8))
    err = _problems(root, pred_dir)
    assert len(err.problems) == 1
    assert "extra prediction" in err.problems[0] and "zzz.png" in err.problems[0]


def test_wrong_size(tree):
    root, pred_dir, _, _ = tree
    _write_png(pred_dir / "c03.png", np.zeros((5, 5), np.uint8))
    err = _problems(root, pred_dir)
    assert len(err.problems) == 1
    assert "wrong size" in err.problems[0] and "c03.png" in err.problems[0]


def test_out_of_range_prediction_ids(tree):
    root, pred_dir, _, preds = tree
    bad = preds[0].copy()
    bad[1, 1], bad[2, 2] = 11, 255
    _write_png(pred_dir / "a01.png", bad)
    err = _problems(root, pred_dir)
    assert len(err.problems) == 1
    assert "out-of-range" in err.problems[0] and "a01.png" in err.problems[0]
    assert "[11, 255]" in err.problems[0]


def test_out_of_range_label_ids(tree):
    root, pred_dir, gts, _ = tree
    bad = gts[1].copy()
    bad[1, 1] = 40
    _write_png(root / "test" / "labels" / "b02.png", bad)
    err = _problems(root, pred_dir)
    assert len(err.problems) == 1 and "label" in err.problems[0] and "[40]" in err.problems[0]


def test_colour_prediction(tree):
    root, pred_dir, gts, _ = tree
    _write_png(pred_dir / "a01.png", np.zeros(gts[0].shape + (3,), np.uint8))
    err = _problems(root, pred_dir)
    assert len(err.problems) == 1 and "single-channel" in err.problems[0]


def test_all_problems_are_collected_and_listing_is_capped(tree):
    root, pred_dir, _, _ = tree
    for name in NAMES:
        (pred_dir / f"{name}.png").unlink()
    for i in range(4):
        _write_png(pred_dir / f"extra{i}.png", np.zeros((2, 2), np.uint8))
    err = _problems(root, pred_dir, max_listed=5)
    assert len(err.problems) == 7
    message = str(err)
    assert "7 problem(s)" in message and "... and 2 more" in message
    assert message.count("\n  - ") == 5


def test_dataset_resolution(tree, tmp_path):
    root, pred_dir, _, _ = tree
    assert root_schema(root).name == "synthetic"
    with pytest.raises(EvaluationError, match="not those of the celebamask_hq description"):
        evaluate_folder(root, "test", pred_dir, dataset="celebamask_hq")
    plain = tmp_path / "faces"
    root.rename(plain)  # Helen or LaPa? The tokens cannot tell: refuse to guess.
    with pytest.raises(EvaluationError, match="--dataset"):
        evaluate_folder(plain, "test", pred_dir)
    (plain / "synthetic_info.json").write_text("{}")  # the synthetic generator's marker
    assert root_schema(plain).name == "synthetic"
    (plain / "synthetic_info.json").unlink()
    result = evaluate_folder(plain, "test", pred_dir, meta={"dataset": "helen"})
    assert result["meta"]["dataset"] == "helen"
    assert result["headline"] == {"name": "overall_f1", "value": result["f1"]["overall"]}
    with pytest.raises(EvaluationError, match="disagree"):
        evaluate_folder(plain, "test", pred_dir, dataset="lapa", meta={"dataset": "helen"})


def _cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "tools" / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


@pytest.mark.parametrize("dataset, headline", [("lapa", "mean_f1"), ("helen", "overall_f1")])
def test_cli_takes_the_dataset_from_dataset_json(tree, tmp_path, caplog, dataset, headline):
    """A folder name that names nothing (or the wrong thing): dataset.json decides, silently."""
    root, pred_dir, _, _ = tree
    plain = tmp_path / ("faces" if dataset == "lapa" else "lapa_copy")
    root.rename(plain)
    write_identity(plain, dataset, tool="test")
    caplog.set_level(logging.WARNING)
    out = tmp_path / "r.json"
    assert _cli().main(["--data-root", str(plain), "--split", "test", "--pred-dir",
                        str(pred_dir), "--out", str(out), "--meta", "row=ddgcn"]) == 0
    result = load_result(out)
    assert result["meta"]["dataset"] == dataset and result["headline"]["name"] == headline
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_folder_name_guess_warns(tree, tmp_path, caplog):
    root, pred_dir, _, _ = tree
    plain = tmp_path / "my_helen_faces"
    root.rename(plain)
    caplog.set_level(logging.WARNING)
    assert evaluate_folder(plain, "test", pred_dir)["meta"]["dataset"] == "helen"
    assert any("guessed data set 'helen'" in r.getMessage() and "dataset.json" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    (plain / "dataset.json").write_text('{"format": 1, "dataset": "helen", "num_classes": 19}')
    with pytest.raises(EvaluationError, match=r"dataset\.json: num_classes 19"):
        evaluate_folder(plain, "test", pred_dir)


def test_missing_split_list_and_pred_dir(tree, tmp_path):
    root, pred_dir, _, _ = tree
    with pytest.raises(EvaluationError, match="valid_list.txt"):
        evaluate_folder(root, "valid", pred_dir)
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_folder(root, "test", tmp_path / "nowhere")


def test_cli_main_reports_errors(tree, capsys):
    root, pred_dir, _, _ = tree
    (pred_dir / "a01.png").unlink()
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "tools" / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert run(cli.main, ["--data-root", str(root), "--split", "test", "--pred-dir",
                          str(pred_dir)]) == 2
    assert "missing prediction" in capsys.readouterr().err


def test_cli_notes_a_result_that_names_no_row(tree, tmp_path, capsys):
    """A prediction folder may come from any method: without --meta row (or model) the saved
    result has no table row, and the tool says so instead of letting make_tables guess one."""
    root, pred_dir, _, _ = tree
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "tools" / "evaluate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = ["--data-root", str(root), "--split", "test", "--pred-dir", str(pred_dir), "--out"]
    assert cli.main(args + [str(tmp_path / "a.json")]) == 0
    assert "no meta.row and no meta.model" in capsys.readouterr().err
    for meta in ("row=p+b", "model=fp_liif"):
        assert cli.main(args + [str(tmp_path / "b.json"), "--meta", meta]) == 0
        assert "note:" not in capsys.readouterr().err


def test_write_result_rejects_nan(tmp_path):
    with pytest.raises(ValueError):
        write_result({"mean_f1": float("nan")}, tmp_path / "x.json")
