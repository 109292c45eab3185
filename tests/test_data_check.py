"""The data check (dml_csr/data/check.py): every problem of a root at once, the trainer stops before
it writes anything (also under DDP), ``tools/prepare_data.py check``, ``data.check=false``."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dml_csr.config import load_config
from dml_csr.data.check import DataCheckError, check_data
from dml_csr.data.schemas import get_schema
from dml_csr.data.synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("check") / "clean"
    make_synthetic(root, num_train=8, num_valid=2, num_test=2, size=SIZE)
    return root


def _broken_copy(clean_root, dest):
    """A copy of the clean root with one problem of every kind in the training split (in list
    order: images 1..6) and a missing validation label."""
    root = Path(dest)
    shutil.copytree(clean_root, root)
    img, lab = root / "train" / "images", root / "train" / "labels"
    (img / "train_00001.jpg").write_bytes(b"not a jpeg")                       # undecodable image
    (img / "train_00002.jpg").unlink()                                         # missing image
    bad = cv2.imread(str(lab / "train_00003.png"), cv2.IMREAD_UNCHANGED)
    bad[0, 0], bad[1, 1] = 11, 255                                             # 11 >= K; 255 fine
    cv2.imwrite(str(lab / "train_00003.png"), bad)
    cv2.imwrite(str(lab / "train_00004.png"), np.zeros((SIZE, SIZE - 2), np.uint8))   # wrong size
    colour = np.zeros((SIZE, SIZE, 3), np.uint8)
    colour[..., 2] = 1
    cv2.imwrite(str(lab / "train_00005.png"), colour)                          # colour label
    (lab / "train_00006.png").write_bytes(b"")                                 # undecodable label
    (root / "valid" / "labels" / "valid_00001.png").unlink()                   # missing label
    return root


def _cfg(root, *extra):
    return load_config("synthetic", [
        f"data.root={root}", f"data.crop_size=[{SIZE},{SIZE}]", "data.batch_size=2",
        "data.workers=0", "model.args.layers=[1,1,1,1]", "model.args.width_mult=0.125", "train.epochs=1",
        "train.cycles=0", "eval.workers=0", *extra])


def test_clean_root_passes_and_ignore_value_is_allowed(clean_root, tmp_path):
    report = check_data(str(clean_root), schema=get_schema("synthetic"))
    assert report.ok and report.splits == ("train", "valid", "test") and report.num_pairs == 12
    assert "12 image/label pairs" in report.summary() and "all fine" in report.summary()
    root = tmp_path / "ignore"
    shutil.copytree(clean_root, root)
    lab = root / "train" / "labels" / "train_00000.png"
    ids = cv2.imread(str(lab), cv2.IMREAD_UNCHANGED)
    ids[:4] = 255
    cv2.imwrite(str(lab), ids)
    assert check_data(str(root), ["train"]).raise_if_problems().ok


def test_every_problem_is_reported_at_once(clean_root, tmp_path):
    root = _broken_copy(clean_root, tmp_path / "broken")
    report = check_data(str(root), ["train", "valid"], schema=get_schema("synthetic"), workers=2)
    assert len(report.problems) == 7 and report.num_pairs == 10
    expected = [("train/images/train_00001.jpg", "cannot be read as an image"),
                ("train/images/train_00002.jpg", "not found"),
                ("train/labels/train_00003.png", "[11]"),
                ("train/labels/train_00004.png", "size"),
                ("train/labels/train_00005.png", "colour"),
                ("train/labels/train_00006.png", "cannot be read as a label"),
                ("valid/labels/valid_00001.png", "not found")]
    for problem, (name, what) in zip(report.problems, expected):
        assert name in problem and what in problem, problem
    assert "train_list.txt:2" in report.problems[0]
    with pytest.raises(DataCheckError) as err:
        report.raise_if_problems()
    msg = str(err.value)
    assert "\n" not in msg and "7 problems in 10 image/label pairs" in msg
    assert all(name in msg for name, _ in expected[:5]) and "and 2 more" in msg
    assert expected[5][0] not in msg
    assert f"prepare_data.py check {root}" in msg and "data.check=false" in msg
    # one thread or two shards find the same problems in the same order
    assert check_data(str(root), ["train", "valid"], workers=1).problems == report.problems
    shards = [check_data(str(root), ["train", "valid"], rank=r, world_size=2) for r in (0, 1)]
    assert shards[0].problems + shards[1].problems == report.problems
    assert [s.checked for s in shards] == [5, 5]


def test_label_names_of_another_schema_is_a_problem(clean_root):
    report = check_data(str(clean_root), ["valid"], schema=get_schema("celebamask_hq"))
    assert len(report.problems) == 1 and "label_names.txt" in report.problems[0]
    assert "celebamask_hq" in report.problems[0]


def test_missing_root_and_list_are_named(clean_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        check_data(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"holdout_list\.txt.*'train', 'valid', 'test'"):
        check_data(str(clean_root), ["holdout"])


def test_trainer_stops_before_the_first_epoch_and_writes_nothing(clean_root, tmp_path):
    from dml_csr.engine.trainer import Trainer
    root = tmp_path / "corrupt"
    shutil.copytree(clean_root, root)
    (root / "train" / "images" / "train_00003.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "run"
    with pytest.raises(DataCheckError, match="train/images/train_00003.jpg"):
        Trainer(_cfg(root), output_dir=str(out), device="cpu")
    assert not out.exists()                   # no run folder: a rerun after the fix just works
    # data.check=false: the trainer is built (the corrupt file would stop it at its batch)
    trainer = Trainer(_cfg(root, "data.check=false"), output_dir=str(out), device="cpu")
    assert len(trainer.train_set) == 8 and out.is_dir()
    with pytest.raises(ValueError, match="train_00003.jpg: cannot read its size"):
        trainer.train_set[3]


def _ddp_worker(rank, world, port, roots, out, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from dml_csr import distributed as du
    from dml_csr.engine.trainer import Trainer
    messages = []
    try:
        for root in (roots[0], roots[1 + rank]):   # a corrupt file; then rank 1's root is missing
            try:
                Trainer(_cfg(root), output_dir=out, device="cpu")
                messages.append("no error")
            except DataCheckError as exc:
                messages.append(str(exc))
    finally:
        du.cleanup()
    Path(result_dir, f"{rank}.txt").write_text("\n".join(messages))


def test_every_ddp_process_stops_with_the_whole_list(clean_root, tmp_path):
    root = tmp_path / "late"
    shutil.copytree(clean_root, root)
    (root / "valid" / "images" / "valid_00001.jpg").write_bytes(b"x")   # the last pair: rank 1's
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    roots = [str(root), str(root), str(tmp_path / "not_on_this_node")]
    mp.spawn(_ddp_worker, args=(2, port, roots, str(out), str(tmp_path)), nprocs=2, join=True)
    messages = [(tmp_path / f"{r}.txt").read_text().split("\n") for r in (0, 1)]
    assert messages[0] == messages[1]
    assert "valid/images/valid_00001.jpg" in messages[0][0] and "1 problem in 10" in messages[0][0]
    assert "rank 1" in messages[0][1] and "not_on_this_node" in messages[0][1]
    assert not out.exists()


def test_prepare_data_check_lists_all_problems(clean_root, tmp_path, capsys):
    root = _broken_copy(clean_root, tmp_path / "broken")
    tool = [sys.executable, str(REPO / "tools" / "prepare_data.py"), "check"]
    done = subprocess.run(tool + [str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    listed = done.stdout.splitlines()
    assert len(listed) == 7 and "valid/labels/valid_00001.png" in listed[-1]
    err = done.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith("error: data check of") and "7 problems" in err[0]
    assert "listed above" in err[0]
    # a clean root: one summary line, status 0 (in-process: the same main)
    import importlib.util
    from dml_csr.cli import run
    spec = importlib.util.spec_from_file_location("prepare_tool",
                                                  REPO / "tools" / "prepare_data.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    capsys.readouterr()
    assert run(prepare.main, ["check", str(clean_root), "--splits", "train", "test"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [out.strip()] and "10 image/label pairs" in out
