import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dml_csr.models.checkpoint import ModelSpec, save_checkpoint
from dml_csr.cli import run
from dml_csr.data.schemas import get_schema
from dml_csr.eval import paper
from dml_csr.eval.evaluate import build_result, write_result
from dml_csr.eval.tables import (format_class_table, format_result_table, headline_value,
                                 make_tables)

REPO = Path(__file__).resolve().parents[1]


def _result(dataset, row="dml-csr", seed=0, meta=None, **overrides):
    """A real result record from a random histogram, with chosen numbers overridden.

    ``meta`` (default ``{"row": row}``; ``row=None`` leaves it out) is the result's extra meta."""
    tokens = get_schema(dataset).tokens
    rng = np.random.default_rng(seed)
    hist = rng.integers(1, 50, size=(len(tokens), len(tokens))) + np.diag(
        rng.integers(500, 900, size=len(tokens)))
    meta = dict(meta or {})
    if row is not None:
        meta["row"] = row
    result = build_result(hist, tokens, dataset=dataset, split="test", num_images=2, meta=meta)
    for key, value in overrides.items():
        if key.startswith("f1_"):
            result["f1"][key[3:]] = value
        else:
            result[key] = value
    return result


def _line(text, first_cell):
    """The cells of the markdown table line whose first cell is ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no line {first_cell!r} in\n{text}")


# ---------------------------------------------------------------- the paper's numbers

@pytest.mark.parametrize("dataset, row", [("lapa", "dml-csr"), ("lapa", "fp-liif"),
                                          ("celebamask_hq", "dml-csr"),
                                          ("celebamask_hq", "fp-liif")])
def test_published_mean_f1_is_the_mean_of_the_classes(dataset, row):
    numbers = paper.PER_CLASS_F1[dataset][row]
    schema = get_schema(dataset)
    classes = [numbers[t] for t in schema.tokens[1:]]  # every non-background token is there
    assert len(classes) == schema.num_classes - 1
    assert np.mean(classes) == pytest.approx(numbers["mean_f1"], abs=0.05)


def test_paper_tables_agree_where_the_paper_repeats_an_experiment():
    for ds in paper.DATASETS:
        t4, t5, t6 = paper.TABLE4, paper.TABLE5, paper.TABLE6
        assert t4["baseline"][ds]["f1"] == t5["baseline"][ds] == t6["baseline"][ds]
        assert t4["ddgcn"][ds]["f1"] == t5["ddgcn"][ds]
        assert t4["dml"][ds]["f1"] == t6["dml"][ds]
        headline = "overall" if ds == "helen" else "mean_f1"
        assert t4["dml-csr"][ds]["f1"] == pytest.approx(
            paper.PER_CLASS_F1[ds]["dml-csr"][headline], abs=0.05)
    assert paper.TABLE4["dml-csr"]["lapa"] == {"miou": 87.13, "f1": 92.38}
    assert paper.PER_CLASS_F1["helen"]["dml-csr"]["overall"] == 93.8
    assert paper.PER_CLASS_F1["celebamask_hq"]["fp-liif"]["neck_l"] == 42.2
    assert paper.PER_CLASS_F1["lapa"]["fp-liif"]["ulip"] == 87.7


def test_class_table_keys_exist_in_results():
    for number, (dataset, _, columns) in paper.CLASS_TABLES.items():
        result = _result(dataset)
        for key, _ in columns:
            assert key == "mean_f1" or key in result["f1"], (number, key)


def test_canonical_row():
    with pytest.raises(ValueError, match="no row"):
        paper.canonical_row(None)
    assert paper.canonical_row("+CSR") == "dml-csr"
    assert paper.canonical_row("all") == paper.canonical_row("+DML") == "dml"
    assert paper.canonical_row("+DDGCN") == "ddgcn"
    assert paper.canonical_row("PSP-pooling") == "psp_pooling"
    assert paper.canonical_row("fp_liif") == "fp-liif"
    assert paper.canonical_row(" my run ") == "my run"
    all_rows = set(paper.TABLE4) | set(paper.TABLE5) | set(paper.TABLE6)
    assert all_rows | {"fp-liif"} == set(paper.ROW_LABELS)


def test_row_of_a_result():
    assert paper.result_row("+DDGCN", "dml_csr") == "ddgcn"       # the row, when set, decides
    assert paper.result_row(None, "dml_csr") == "dml-csr"         # else the model family
    assert paper.result_row("", "fp_liif") == "fp-liif"
    assert paper.result_row("ddgcn", None) == "ddgcn"
    from dml_csr.models import DMLCSR, FPLIIF
    assert {DMLCSR.row(), FPLIIF.row()} <= set(paper.ROW_LABELS)     # the paper's families' rows
    with pytest.raises(ValueError, match="no meta.row and no meta.model"):
        paper.result_row(None, None)
    with pytest.raises(ValueError, match="unknown model 'unet'"):
        paper.result_row(None, "unet")


# ---------------------------------------------------------------- tables

def test_ablation_tables_place_results_beside_the_paper():
    lapa = _result("lapa", row="+CSR", mean_f1=92.0, miou=87.5)
    helen = _result("helen", row="baseline", seed=1, f1_overall=92.61, mean_f1=10.0)
    text = make_tables([lapa, helen], ["lapa.json", "helen.json"], tables=4)
    cells = _line(text, "+CSR (DML-CSR)")
    # row | Helen mIoU p d | Helen F1 p d | CelebA mIoU p d | CelebA F1 p d | LaPa mIoU p d | F1 p d
    assert cells[1:4] == ["-", "85.58", "-"]
    assert cells[13:19] == ["87.50", "87.13", "+0.37", "92.00", "92.38", "-0.38"]
    baseline = _line(text, "Baseline")
    assert baseline[4:7] == ["92.61", "92.11", "+0.50"]  # Helen's F1 is the overall F1
    assert "lapa.json" in text and "helen.json" in text
    table5 = make_tables([helen], tables=5)
    assert _line(table5, "Baseline")[1:4] == ["92.61", "92.11", "+0.50"]
    assert _line(table5, "+DDGCN")[1:4] == ["-", "92.56", "-"]
    assert "Table 4" not in table5 and "Table 6" not in table5


def test_table_six_all_row_is_the_dml_result():
    result = _result("celebamask_hq", row="all", mean_f1=85.0)
    text = make_tables([result], tables=6)
    assert _line(text, "all (+DML)")[4:7] == ["85.00", "85.98", "-0.98"]


def test_class_tables_and_extra_methods():
    ours = _result("lapa", f1_hair=96.0)
    mine = _result("lapa", row="my-method", seed=3, f1_hair=95.5)
    ablation = _result("lapa", row="p+b", seed=4)
    text = make_tables([ours, mine, ablation], tables=2)
    header = _line(text, "class")
    assert header[1:7] == ["DML-CSR ours", "DML-CSR paper", "Δ", "FP-LIIF ours",
                           "FP-LIIF paper", "Δ"]
    assert header[7:10] == ["my-method ours", "my-method paper", "Δ"]
    assert len(header) == 10  # the p+b ablation result stays out of Table 2
    hair = _line(text, "hair")
    assert hair[1:4] == ["96.00", "96.4", "-0.40"]
    assert hair[4:7] == ["-", "95.9", "-"]
    assert hair[7:10] == ["95.50", "-", "-"]


def test_undefined_f1_shows_na():
    result = _result("helen", f1_nose=None)
    text = make_tables([result], tables=1)
    assert _line(text, "nose")[1:4] == ["n/a", "95.5", "-"]


def test_duplicate_results_are_an_error():
    with pytest.raises(ValueError, match="a.json and b.json"):
        make_tables([_result("lapa", row="dml"), _result("lapa", row="+DML")],
                    ["a.json", "b.json"])


@pytest.mark.parametrize("meta", [{"model": "dml_csr"}, {"model": "dml_csr", "row": "dml-csr"}])
def test_one_result_of_each_family_on_one_data_set_gets_two_rows(meta):
    """FP-LIIF's result goes to the FP-LIIF row by its meta.model (a file without meta.row), not to
    DML-CSR's, so one result of each family on one data set is no duplicate."""
    dml = _result("lapa", row=None, meta=meta, f1_hair=96.0)
    fp = _result("lapa", row=None, seed=1, meta={"model": "fp_liif"}, f1_hair=95.0)
    text = make_tables([dml, fp], ["dml.json", "fp.json"], tables=2)
    assert _line(text, "class")[1:7] == ["DML-CSR ours", "DML-CSR paper", "Δ", "FP-LIIF ours",
                                         "FP-LIIF paper", "Δ"]
    assert _line(text, "hair")[1:7] == ["96.00", "96.4", "-0.40", "95.00", "95.9", "-0.90"]
    assert "- DML-CSR: dml.json" in text and "- FP-LIIF: fp.json" in text
    # Helen has no published FP-LIIF row: the result still gets its own FP-LIIF columns
    helen = make_tables([_result("helen", row=None, meta={"model": "fp_liif"}, f1_overall=91.0),
                         _result("helen", row=None, seed=1, meta={"model": "dml_csr"})],
                        ["fp.json", "dml.json"], tables=1)
    assert _line(helen, "class")[4:7] == ["FP-LIIF ours", "FP-LIIF paper", "Δ"]
    assert _line(helen, "overall")[4:7] == ["91.00", "-", "-"]
    # the synthetic set (no paper table): one per-class table per family
    synth = make_tables([_result("synthetic", row=None, meta=meta),
                         _result("synthetic", row=None, seed=1, meta={"model": "fp_liif"})],
                        ["dml.json", "fp.json"])
    assert "synthetic, row dml-csr (dml.json)" in synth
    assert "synthetic, row fp-liif (fp.json)" in synth


def test_meta_row_wins_over_the_model_and_is_canonical():
    ablation = _result("lapa", row="+DDGCN", meta={"model": "dml_csr"}, mean_f1=91.0)
    full = _result("lapa", row=None, seed=1, meta={"model": "dml_csr"}, mean_f1=92.0)
    text = make_tables([ablation, full], ["ddgcn.json", "full.json"], tables=4)
    assert _line(text, "+DDGCN")[16:19] == ["91.00", "92.10", "-1.10"]
    assert _line(text, "+CSR (DML-CSR)")[16:19] == ["92.00", "92.38", "-0.38"]


def test_a_result_without_row_or_model_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"old\.json: no meta\.row and no meta\.model"):
        make_tables([_result("lapa"), _result("lapa", row=None, seed=1)],
                    ["new.json", "old.json"])
    with pytest.raises(ValueError, match=r"x\.json: .*model 'segformer'"):
        make_tables([_result("lapa", row=None, meta={"model": "segformer"})], ["x.json"])
    # one family's results still collide on one data set
    with pytest.raises(ValueError, match="a.json and b.json"):
        make_tables([_result("lapa", row=None, meta={"model": "fp_liif"}),
                     _result("lapa", row="fp_liif", seed=1)], ["a.json", "b.json"])


def test_synthetic_results_get_a_class_table_only_in_all():
    synth = _result("synthetic", row="baseline")
    text = make_tables([synth], ["s.json"])
    assert "synthetic, row baseline (s.json)" in text and "| 10 hair |" in text
    # Tables 4-6: a measured-only column for a data set the paper does not report
    table4 = make_tables([synth], ["s.json"], tables=4)
    assert "synthetic mIoU (measured)" in table4 and "synthetic F1 (measured)" in table4
    baseline_line = next(l for l in table4.splitlines() if l.startswith("| Baseline"))
    assert baseline_line.rstrip(" |").endswith(f"{synth['mean_f1']:.2f}")
    assert "| 10 hair |" not in table4


def test_latex_output():
    text = make_tables([_result("celebamask_hq", row="my_run")], tables=3, latex=True)
    assert "\\begin{tabular}{l" in text and "\\end{tabular}" in text
    assert "$\\Delta$" in text and "Δ" not in text
    assert "my\\_run ours & my\\_run paper" in text
    assert "|" not in text.replace("\\begin{tabular}", "")


def test_format_result_table_per_data_set():
    helen = _result("helen", f1_overall=93.0)
    text = format_result_table(helen)
    assert "Table 1" in text
    assert _line(text, "overall")[1:4] == ["93.00", "93.8", "-0.80"]
    assert _line(text, "class")[2] == "paper (DML-CSR)"
    fp = _result("celebamask_hq", row="fp-liif", f1_neck_l=40.0)
    text = format_result_table(fp)
    assert "Table 3" in text and _line(text, "necklace")[1:4] == ["40.00", "42.2", "-2.20"]
    by_model = format_result_table(_result("lapa", row=None, meta={"model": "fp_liif"}))
    assert _line(by_model, "class")[1:3] == ["ours (FP-LIIF)", "paper (FP-LIIF)"]
    unnamed = format_result_table(_result("lapa", row=None))   # one result alone: no row needed
    assert _line(unnamed, "class")[1:3] == ["ours", "paper (DML-CSR)"]
    synth = _result("synthetic19")
    text = format_result_table(synth)
    assert "paper" not in text and "| 18 cloth |" in text
    assert text == format_class_table(synth)


def test_headline_value_ignores_a_stored_override():
    result = _result("helen", f1_overall=91.0, mean_f1=50.0)
    result["headline"] = {"name": "mean_f1", "value": 50.0}
    assert headline_value(result) == 91.0
    assert headline_value(_result("lapa", mean_f1=90.0)) == 90.0


# ---------------------------------------------------------------- the CLI

def test_make_tables_cli(tmp_path):
    write_result(_result("lapa", row="ddgcn", mean_f1=91.0), tmp_path / "a.json")
    write_result(_result("helen", row="ddgcn", f1_overall=92.0), tmp_path / "b.json")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_tables.py"), "a.json", "b.json",
         "--table", "5", "--out", "t.md"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cells = _line(proc.stdout, "+DDGCN")
    assert cells[1:4] == ["92.00", "92.56", "-0.56"] and cells[7:10] == ["91.00", "92.10", "-1.10"]
    assert (tmp_path / "t.md").read_text() == proc.stdout


def test_make_tables_cli_rejects_non_results(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"f1": {}}')
    spec = importlib.util.spec_from_file_location("make_tables_cli",
                                                  REPO / "tools" / "make_tables.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert run(cli.main, [str(tmp_path / "bad.json")]) == 2
    assert "not a result JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- rows written by run_test

def test_run_test_writes_the_row_of_the_config_and_make_tables_keeps_them_apart(tmp_path):
    """Tiny untrained DML-CSR, ablation and FP-LIIF checkpoints on one synthetic set: run_test
    (what tools/train.py --test and tools/test.py write) records the config's row, else the model
    family's, and make_tables files the three results in three rows."""
    import torch

    from dml_csr.config import load_config
    from dml_csr.data.synthetic import make_synthetic
    from dml_csr.eval.runner import run_test
    from dml_csr.models import build_model, model_kwargs_from_config

    root = tmp_path / "data"
    make_synthetic(root, num_train=1, num_valid=1, num_test=2, size=32)
    common = [f"data.root={root}", "data.crop_size=[32,32]", "eval.workers=0"]
    small_dml = ["model.args.layers=[1,1,1,1]", "model.args.width_mult=0.125"]
    configs = {
        "dml-csr": load_config("synthetic", common + small_dml),
        "ddgcn": load_config(str(REPO / "configs" / "ablations" / "synthetic" / "ddgcn.yaml"),
                             common + small_dml),
        "fp-liif": load_config("fp_liif_synthetic", common + ["train.query_samples=0",
            "model.args={width: 8, blocks: [1, 1, 1], reduce_dims: [16, 8], "
            "decoder_dims: [16]}"]),
    }
    assert configs["dml-csr"].row == "" and configs["fp-liif"].row == ""   # rows from the model
    paths = []
    for row, cfg in configs.items():
        torch.manual_seed(0)
        kwargs = model_kwargs_from_config(cfg.model, get_schema(cfg.data.dataset).num_classes)
        model = build_model(cfg.model.name, kwargs)
        ckpt = tmp_path / f"{row}.pth"
        save_checkpoint(str(ckpt), model.state_dict(),
                        ModelSpec.for_dataset(cfg.model.name, kwargs, cfg.data.dataset))
        result = run_test(cfg, str(ckpt), "test")
        assert result["meta"]["row"] == row, cfg.name
        assert result["meta"]["model"] == cfg.model.name
        paths.append(str(tmp_path / f"{row}.json"))
        write_result(result, paths[-1])
    # a --meta row=... of tools/test.py still wins over the config's
    assert run_test(configs["fp-liif"], str(tmp_path / "fp-liif.pth"), "test",
                    meta={"row": "my-run"})["meta"]["row"] == "my-run"

    proc = subprocess.run([sys.executable, str(REPO / "tools" / "make_tables.py"), *paths,
                           "--table", "all"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for row in configs:
        assert f"synthetic, row {row} ({tmp_path / row}.json)" in proc.stdout
    table4 = make_tables([json.loads(Path(p).read_text()) for p in paths], paths, tables=4)
    assert _line(table4, "+DDGCN")[-2] != "-" and _line(table4, "+CSR (DML-CSR)")[-2] != "-"
