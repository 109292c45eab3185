"""The one reader of a data root (dml_csr.data.layout): label names, split lists, dataset.json,
which data set a root holds, and that nothing else reads them."""
import ast
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

import dml_csr
from dml_csr.data import FaceDataset, layout
from dml_csr.data.check import check_data
from dml_csr.data.schemas import get_schema

PACKAGE = Path(dml_csr.__file__).resolve().parent
HELEN = get_schema("helen").tokens
CELEBA = get_schema("celebamask_hq").tokens


def _root(path: Path, tokens=HELEN, n: int = 2) -> Path:
    """A tiny root in the layout: label_names.txt and a train split of n 8x8 samples."""
    (path / "train" / "images").mkdir(parents=True)
    (path / "train" / "labels").mkdir(parents=True)
    (path / "label_names.txt").write_text(layout.label_names_text(tokens))
    names = [f"s{i}" for i in range(n)]
    for name in names:
        assert cv2.imwrite(str(path / "train" / "images" / f"{name}.jpg"),
                           np.full((8, 8, 3), 128, np.uint8))
        assert cv2.imwrite(str(path / "train" / "labels" / f"{name}.png"),
                           np.ones((8, 8), np.uint8))
    (path / "train_list.txt").write_text(layout.split_list_text(names))
    return path


def _warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == layout.__name__]


# ----------------------------------------------------------------------------------------------
# one reader


def _functions_named(names) -> list:
    """(file, function) for every top-level function of the package with one of ``names``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name in names:
                found.append((str(path.relative_to(PACKAGE)), node.name))
    return found


def test_the_readers_are_defined_once():
    readers = {"read_label_names", "read_split_list", "read_identity", "root_schema",
               "dataset_of", "resolve_dataset"}
    found = _functions_named(readers)     # one answer to "which data set": root_schema
    assert sorted(found) == sorted([("data/layout.py", "read_label_names"),
                                    ("data/layout.py", "read_split_list"),
                                    ("data/layout.py", "read_identity"),
                                    ("data/layout.py", "root_schema")])
    from dml_csr.data import check, dataset
    from dml_csr.eval import evaluate
    assert evaluate.root_schema is check.root_schema is dataset.root_schema is layout.root_schema
    assert evaluate.read_split_list is check.read_split_list is dataset.read_split_list \
        is layout.read_split_list
    assert dml_csr.data.read_label_names is layout.read_label_names


def test_no_module_guesses_from_folder_names_but_layout():
    hits = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                  if "folder_hints" in p.read_text())
    assert hits == ["data/layout.py", "data/schemas.py"]     # the hints live in the descriptions


# ----------------------------------------------------------------------------------------------
# label names and split lists


def test_read_label_names_takes_the_root_or_the_file(tmp_path):
    root = _root(tmp_path / "r")
    assert layout.read_label_names(root) == list(HELEN)
    assert layout.read_label_names(str(root / "label_names.txt")) == list(HELEN)
    (root / "label_names.txt").write_text("face\nbg\n")
    with pytest.raises(ValueError, match="first token must be 'bg'"):
        layout.read_label_names(root)
    with pytest.raises(FileNotFoundError, match=r"nowhere.label_names\.txt"):
        layout.read_label_names(tmp_path / "nowhere")


def test_split_list_round_trip(tmp_path):
    path = tmp_path / "x_list.txt"
    path.write_text(layout.split_list_text(["a", "b"]) + "\nimages/c.jpg\n")
    assert layout.read_split_list(str(path), "") == [
        (1, "images/a.jpg", "labels/a.png"), (2, "images/b.jpg", "labels/b.png"),
        (4, "images/c.jpg", None)]
    assert layout.read_split_list(str(path), "R")[0][1:] == ("R/images/a.jpg", "R/labels/a.png")
    path.write_text("a b c\n")
    with pytest.raises(ValueError, match=r"x_list\.txt:1: malformed line"):
        layout.read_split_list(str(path), "")
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="lists no samples"):
        layout.read_split_list(str(path), "")
    with pytest.raises(FileNotFoundError, match="y_list.txt"):
        layout.read_split_list(str(tmp_path / "y_list.txt"), "")


# ----------------------------------------------------------------------------------------------
# dataset.json


def test_identity_round_trip(tmp_path):
    assert layout.read_identity(tmp_path) is None
    written = layout.write_identity(tmp_path, "lapa", tool="prepare_data", source="lapa",
                                    options={"link": "copy"})
    lapa = get_schema("lapa")
    assert written == {"format": 2, "dataset": "lapa", "num_classes": 11, "tool": "prepare_data",
                       "schema": lapa.to_dict(), "source": "lapa", "options": {"link": "copy"}}
    assert json.loads((tmp_path / "dataset.json").read_text()) == written
    assert layout.read_identity(tmp_path) == dict(written, schema=lapa)      # the description
    assert [p.name for p in tmp_path.iterdir()] == ["dataset.json"]  # no temporary left
    with pytest.raises(ValueError, match="set by write_identity"):
        layout.write_identity(tmp_path, "lapa", tool="x", format=2)
    with pytest.raises(KeyError, match="unknown data set"):
        layout.write_identity(tmp_path, "pascal", tool="x")


@pytest.mark.parametrize("text, message", [
    ("not json", "cannot be read as JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"format": 3, "dataset": "lapa"}', "format 3 is not one this code reads"),
    ('{"dataset": "lapa"}', "format None"),
    ('{"format": 1, "dataset": "pascal"}', "dataset 'pascal' is not built in"),
    ('{"format": 2, "dataset": "x", "schema": {"name": "x", "tokens": ["bg"]}}',
     "not a data-set description"),
    ('{"format": 1, "dataset": "lapa", "num_classes": 19}', "num_classes 19, but the lapa"),
])
def test_bad_identity_is_refused_naming_the_file(tmp_path, text, message):
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        layout.read_identity(tmp_path)
    assert "dataset.json" in str(info.value)


# ----------------------------------------------------------------------------------------------
# which data set: hint > dataset.json > synthetic_info.json > folder name (warning)


def test_root_schema_precedence(tmp_path, caplog):
    root = _root(tmp_path / "helen_faces")
    caplog.set_level(logging.WARNING)
    assert layout.root_schema(root).name == "helen"                 # folder name, warned
    (warning,) = _warnings(caplog)
    assert "helen_faces" in warning and "dataset.json" in warning and "--dataset" in warning
    caplog.clear()

    (root / "synthetic_info.json").write_text('{"schema": "synthetic"}')
    assert layout.root_schema(root).name == "synthetic"             # synthetic_info over folder
    layout.write_identity(root, "lapa", tool="test")
    assert layout.root_schema(root).name == "lapa"                  # dataset.json over both
    assert _warnings(caplog) == []
    assert layout.root_schema(root, "helen").name == "helen"        # the name asked over all,
    assert "says it holds 'lapa'" in _warnings(caplog)[0]           # with a warning
    with pytest.raises(KeyError, match="'pascal' is neither built in .* declares 'lapa'"):
        layout.root_schema(root, "pascal")


def test_an_unlabelled_lapa_folder_is_lapa_to_every_reader(tmp_path):
    """Training (root_schema via FaceDataset) and the scorer used to disagree: 'helen' for one,
    'lapa' for the other."""
    from dml_csr.data import FaceDataset
    from dml_csr.data.check import check_data
    root = _root(tmp_path / "LaPa_test_only")
    assert layout.root_schema(root).name == "lapa"
    assert FaceDataset(str(root), "train").schema.name == "lapa"
    assert check_data(str(root), ["train"]).ok


def test_synthetic_info_without_schema_counts_the_tokens(tmp_path):
    root = _root(tmp_path / "faces", tokens=CELEBA)
    (root / "synthetic_info.json").write_text("{}")
    assert layout.root_schema(root).name == "synthetic19"


def test_folder_guess_needs_matching_tokens_and_otherwise_asks(tmp_path):
    root = _root(tmp_path / "celeb_like", tokens=HELEN)  # 'celeb' in the name, Helen tokens
    with pytest.raises(ValueError, match="--dataset") as info:
        layout.root_schema(root)
    assert "dataset.json" in str(info.value) and "['helen', 'lapa', 'synthetic']" in str(info.value)


# ----------------------------------------------------------------------------------------------
# the loader and the check


def test_face_dataset_takes_the_schema_from_dataset_json(tmp_path, caplog):
    root = _root(tmp_path / "r")
    with pytest.raises(ValueError, match="--dataset"):               # Helen or LaPa: it asks
        FaceDataset(str(root), "train")
    layout.write_identity(root, "lapa", tool="test")
    assert FaceDataset(str(root), "train").schema.name == "lapa"
    layout.write_identity(root, "celebamask_hq", tool="test")       # tokens disagree: refused
    with pytest.raises(ValueError, match="not those of the celebamask_hq description"):
        FaceDataset(str(root), "train")


def test_other_dataset_than_configured_warns_once(tmp_path, caplog):
    root = _root(tmp_path / "r")
    layout.write_identity(root, "lapa", tool="test")
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        schema = layout.root_schema(root, "helen")
    FaceDataset(str(root), "train", schema=schema)
    check_data(str(root), schema=schema, workers=1).raise_if_problems()
    (warning,) = _warnings(caplog)
    assert "'lapa'" in warning and "'helen'" in warning and "dataset.json" in warning
    caplog.clear()
    FaceDataset(str(root), "train", schema=layout.root_schema(root, "lapa"))
    check_data(str(root), workers=1).raise_if_problems()
    assert _warnings(caplog) == []
