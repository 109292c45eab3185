"""Files the user did not make, and disks that fail: each case here failed before the checkpoint
loading, image reading and writing rules of ``dml_csr/files.py`` and ``models/checkpoint.py``
(docs/inference.md, "Files you did not make").

- poisoned checkpoints: a pickle whose payload calls ``os.mkdir(MARKER)`` when unpickled, given to
  every entry point that loads weights: the payload never runs, the error is one line;
- outputs that meet inputs: symbolic links to input folders or files, inputs sharing a name;
- images whose header lies or that decode to hundreds of megapixels, truncated JPEGs;
- writes that fail (a file-size limit of 0 bytes stands in for a full disk), torn logs, the
  temporary files of a killed save;
- the int8 cache: a planted or truncated file is never used.
"""
import hashlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import dml_csr
from dml_csr.cli import run
from dml_csr.files import ImageReadError, ImageTooLargeError, WriteError, read_image, save_torch
from dml_csr.models import DMLCSR
from dml_csr.models.checkpoint import ModelSpec, UntrustedCheckpointError, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
KW = dict(num_classes=11, layers=[1, 1, 1, 1], width_mult=0.125)
CROP = (32, 32)
TINY = ["data.crop_size=[32,32]", "data.batch_size=2", "data.workers=0", "model.args.layers=[1,1,1,1]",
        "model.args.width_mult=0.125", "train.epochs=1", "train.cycles=0", "eval.workers=0",
        "eval.batch_size=2", "train.image_log_interval=0"]


class _Payload:
    """What an attacker pickles: unpickling it calls ``os.mkdir(marker)``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _png_bomb(w: int, h: int) -> bytes:
    """A valid grey PNG of w x h zeros: a few hundred kB that decode to w x h x 3 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    z = zlib.compressobj(9)
    row = b"\x00" * (1 + w)
    data = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def _lying_png(w: int = 60000, h: int = 60000) -> bytes:
    """A 69-byte PNG whose header claims w x h pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4))
            + chunk(b"IEND", b""))


def _photo(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(str(path), DMLCSR(with_edges=False, **KW).state_dict(),
                    ModelSpec.for_dataset("dml_csr", KW, "synthetic", crop_size=CROP))
    return str(path)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from dml_csr.data.synthetic import make_synthetic
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(root, num_train=4, num_valid=2, num_test=2, size=32)
    return root


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A 190 kB PNG of 14000 x 14000 pixels (196 MP, over the default limit of 179 MP)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(_png_bomb(14000, 14000))
    return path


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, seed in (("a.png", 1), ("b.png", 2)):
        cv2.imwrite(str(folder / name), _photo(24, 30, seed))
    return folder


def _poison(ckpt, path, marker) -> str:
    """Our checkpoint ``ckpt`` with the payload beside its fields (a file that would otherwise
    load and work)."""
    obj = torch.load(ckpt, weights_only=True)
    obj["payload"] = _Payload(str(marker))
    torch.save(obj, path)
    return str(path)


def _tool(name):
    import importlib
    return importlib.import_module(f"tools.{name}").main


# ------------------------------------------------------------------------ poisoned checkpoints
def _entry_points(ckpt, poisoned, marker, photos, data_root, tmp_path, monkeypatch):
    """(tool, argv) of every command that loads weights, each given the poisoned file."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(poisoned, run_dir / "last.pth")
    weights = tmp_path / "pretrained"          # ./pretrained is searched by default
    weights.mkdir()
    torch.save({"model.conv1.weight": torch.zeros(1), "payload": _Payload(str(marker))},
               weights / "dml_csr_lapa.pth")
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "out")
    return {
        "infer --checkpoint": ("infer", ["--checkpoint", poisoned, str(photos), "--out", out]),
        "infer --model": ("infer", ["--model", "dml-csr-lapa", str(photos), "--out", out]),
        "test": ("test", ["synthetic", "--checkpoint", poisoned, f"data.root={data_root}"]),
        "export_onnx": ("export_onnx", ["--checkpoint", poisoned, "--out", out + ".onnx"]),
        "complexity": ("complexity", ["--checkpoint", poisoned, "--no-latency"]),
        "train --resume": ("train", ["synthetic", f"data.root={data_root}", *TINY,
                                     "--output-dir", str(run_dir), "--resume"]),
        "train model.pretrained": ("train", ["synthetic", f"data.root={data_root}", *TINY,
                                             f"model.pretrained={poisoned}",
                                             "--output-dir", str(tmp_path / "run2")]),
    }


ENTRY_POINTS = ["infer --checkpoint", "infer --model", "test", "export_onnx", "complexity",
                "train --resume", "train model.pretrained"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_poisoned_checkpoint_runs_no_code_at_any_entry_point(entry, ckpt, photos, data_root,
                                                                tmp_path, monkeypatch, capsys):
    marker = tmp_path / "PAYLOAD_RAN"
    poisoned = _poison(ckpt, tmp_path / "poisoned.pth", marker)
    tool, argv = _entry_points(ckpt, poisoned, marker, photos, data_root, tmp_path,
                               monkeypatch)[entry]
    status = run(_tool(tool), argv)
    assert not marker.exists(), f"{entry}: the payload ran"
    assert status == 2
    _one_error_line(capsys.readouterr().err, "refused", "--trust-checkpoint")


def test_the_api_refuses_poisoned_files_and_trusts_only_when_told(ckpt, tmp_path, monkeypatch):
    marker = tmp_path / "PAYLOAD_RAN"
    poisoned = _poison(ckpt, tmp_path / "poisoned.pth", marker)
    with pytest.raises(UntrustedCheckpointError) as err:
        dml_csr.FaceParser.from_checkpoint(poisoned, detector=None)
    assert poisoned in str(err.value) and "\n" not in str(err.value) and not marker.exists()
    (tmp_path / "w").mkdir()
    shutil.copy(poisoned, tmp_path / "w" / "dml_csr_lapa.pth")
    with pytest.raises(UntrustedCheckpointError):
        dml_csr.FaceParser.from_pretrained("dml-csr-lapa", tmp_path / "w", detector=None)
    assert not marker.exists()
    # the documented opt-in unpickles (and so runs the payload): the flag, then the variable
    dml_csr.FaceParser.from_checkpoint(poisoned, detector=None, trust_checkpoint=True)
    assert marker.is_dir()
    marker.rmdir()
    monkeypatch.setenv("DMLCSR_TRUST_CHECKPOINT", "1")
    dml_csr.FaceParser.from_checkpoint(poisoned, detector=None)
    assert marker.is_dir()


@pytest.mark.parametrize("value, on", [("1", True), ("TRUE", True), (" yes ", True), ("On", True),
                                       ("", False), ("0", False), ("false", False), ("NO", False),
                                       ("off", False), ("Off", False)])
def test_the_trust_switch_reads_on_and_off_words(ckpt, tmp_path, monkeypatch, value, on):
    """``off`` and the other off words keep unpickling off (``off`` turned it on before)."""
    marker = tmp_path / "PAYLOAD_RAN"
    poisoned = _poison(ckpt, tmp_path / "poisoned.pth", marker)
    monkeypatch.setenv("DMLCSR_TRUST_CHECKPOINT", value)
    from dml_csr.models.checkpoint import load_checkpoint_file
    if on:
        load_checkpoint_file(poisoned)
    else:
        with pytest.raises(UntrustedCheckpointError):
            load_checkpoint_file(poisoned)
    assert marker.is_dir() == on


def test_a_trust_switch_that_is_neither_on_nor_off_is_an_error(ckpt, photos, tmp_path,
                                                               monkeypatch, capsys):
    marker = tmp_path / "PAYLOAD_RAN"
    poisoned = _poison(ckpt, tmp_path / "poisoned.pth", marker)
    monkeypatch.setenv("DMLCSR_TRUST_CHECKPOINT", "maybe")
    argv = ["--checkpoint", poisoned, "--dataset", "helen", str(photos), "--out",
            str(tmp_path / "out")]
    assert run(_tool("infer"), argv) == 2
    _one_error_line(capsys.readouterr().err, "DMLCSR_TRUST_CHECKPOINT='maybe'")
    assert not marker.exists()
    monkeypatch.setenv("DMLCSR_DEBUG", "perhaps")                # the other switches read alike
    assert run(_tool("infer"), argv) == 2
    _one_error_line(capsys.readouterr().err, "DMLCSR_DEBUG='perhaps'")


def test_a_trusted_legacy_checkpoint_is_unpickled(ckpt, tmp_path):
    """A file in torch's legacy (non-zip) format: refused naming what it holds, unpickled when
    trusted (before, both said the file was damaged)."""
    from dml_csr.models.checkpoint import load_checkpoint_file
    marker = tmp_path / "PAYLOAD_RAN"
    obj = torch.load(ckpt, weights_only=True)
    obj["payload"] = _Payload(str(marker))
    legacy = tmp_path / "legacy.pth"
    torch.save(obj, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UntrustedCheckpointError, match=r"holds Python objects \(posix.mkdir\)"):
        load_checkpoint_file(str(legacy))
    assert not marker.exists()
    assert load_checkpoint_file(str(legacy), trust_checkpoint=True)["model"].keys() == \
        obj["model"].keys()
    assert marker.is_dir()
    plain = tmp_path / "plain_legacy.pth"                  # weights only: loads untrusted
    torch.save(obj["model"], plain, _use_new_zipfile_serialization=False)
    assert load_checkpoint_file(str(plain)).keys() == obj["model"].keys()
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(legacy.read_bytes()[:200])
    with pytest.raises(Exception, match="damaged"):
        load_checkpoint_file(str(damaged), trust_checkpoint=True)


def test_our_files_and_older_best_files_load_without_unpickling(ckpt, tmp_path):
    """best.pth of earlier versions stored torch.__version__ itself (a str subclass, allowed);
    a file that is only a bare state_dict (the authors') loads as it is."""
    obj = torch.load(ckpt, weights_only=True)
    assert type(obj["torch_version"]) is str
    obj["torch_version"] = torch.__version__                      # TorchVersion, as before
    torch.save(obj, tmp_path / "old.pth")
    assert dml_csr.FaceParser.from_checkpoint(str(tmp_path / "old.pth"), detector=None)
    bare = {f"module.{k}": v for k, v in obj["model"].items()}
    torch.save(bare, tmp_path / "bare.pth")
    from dml_csr.models.checkpoint import extract_state_dict, load_checkpoint_file
    state = extract_state_dict(load_checkpoint_file(str(tmp_path / "bare.pth")))
    assert state.keys() == obj["model"].keys()


def test_resume_of_an_older_last_pth_needs_the_opt_in(data_root, tmp_path, capsys):
    """last.pth of earlier versions held numpy's RNG state (ndarray): refused with one line,
    resumed with --trust-checkpoint; what is written now loads without unpickling."""
    from dml_csr.config import load_config
    from dml_csr.engine.trainer import Trainer
    out = tmp_path / "run"
    overrides = [f"data.root={data_root}", *TINY, "train.epochs=2"]
    Trainer(load_config("synthetic", overrides), output_dir=str(out),
            device="cpu").fit(stop_after_epoch=1)                  # "interrupted"
    last = torch.load(out / "last.pth", weights_only=True)
    assert isinstance(last["rng"]["numpy"]["key"], torch.Tensor) and last["epoch"] == 1
    last["rng"]["numpy"] = np.random.get_state()                  # as earlier versions saved it
    torch.save(last, out / "last.pth")
    resume = ["synthetic", *overrides, "--output-dir", str(out), "--resume"]
    assert run(_tool("train"), resume) == 2
    _one_error_line(capsys.readouterr().err, "last.pth", "numpy", "--trust-checkpoint")
    assert run(_tool("train"), resume + ["--trust-checkpoint"]) == 0
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 2


# ------------------------------------------------------------------------ outputs meet inputs
def test_infer_refuses_an_output_folder_that_links_to_the_photos(ckpt, photos, tmp_path,
                                                                  capsys):
    before = {p.name: _md5(p) for p in photos.iterdir()}
    link = tmp_path / "link"
    link.symlink_to(photos)
    assert run(_tool("infer"), ["--checkpoint", ckpt, str(photos), "--out", str(link),
                                "--no-detect"]) == 2
    _one_error_line(capsys.readouterr().err, str(link))
    assert {p.name: _md5(p) for p in photos.iterdir()} == before


def test_infer_replaces_a_link_in_the_output_folder_not_its_target(ckpt, photos, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "a.png"), _photo(20, 20, 7))          # the user's, elsewhere
    before = _md5(other / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(other / "a.png")
    assert run(_tool("infer"), ["--checkpoint", ckpt, str(photos / "a.png"), "--out", str(out),
                                "--no-detect"]) == 0
    assert _md5(other / "a.png") == before
    assert not (out / "a.png").is_symlink() and cv2.imread(str(out / "a.png")).shape[:2] == (24, 30)


def test_inputs_sharing_a_name_keep_every_result(ckpt, tmp_path):
    p, q = tmp_path / "p", tmp_path / "q"
    p.mkdir()
    q.mkdir()
    for path, seed in ((p / "a.png", 1), (p / "a_2.png", 2), (q / "a.png", 3)):
        cv2.imwrite(str(path), _photo(24, 30, seed))
    out = tmp_path / "out"
    assert run(_tool("infer"), ["--checkpoint", ckpt, str(p), str(q), "--out", str(out),
                                "--no-detect"]) == 0
    sources = {n: json.loads((out / f"{n}.json").read_text())["image"] for n in ("a", "a_2", "a_3")}
    assert sources == {"a": str(p / "a.png"), "a_2": str(p / "a_2.png"), "a_3": str(q / "a.png")}


def test_predictions_never_land_on_the_data_roots_labels(ckpt, data_root, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    labels = root / "test" / "labels"
    before = {p.name: _md5(p) for p in labels.iterdir()}
    link = tmp_path / "preds"
    link.symlink_to(labels)
    for option in ("--save-pred", "--save-overlay"):
        where = link if option == "--save-pred" else root / "test" / "images"
        assert run(_tool("test"), ["synthetic", "--checkpoint", ckpt, f"data.root={root}",
                                   option, str(where), "--workers", "0"]) == 2
        _one_error_line(capsys.readouterr().err, str(where), "input")
    assert {p.name: _md5(p) for p in labels.iterdir()} == before


def test_export_refuses_to_write_over_its_checkpoint(ckpt, tmp_path, capsys):
    copy = tmp_path / "model.pth"
    shutil.copy(ckpt, copy)
    link = tmp_path / "model.onnx"
    link.symlink_to(copy)
    before = _md5(copy)
    assert run(_tool("export_onnx"), ["--checkpoint", str(copy), "--out", str(link)]) == 2
    _one_error_line(capsys.readouterr().err, str(link))
    assert _md5(copy) == before


# ------------------------------------------------------------------------ bombs and liars
def test_the_size_is_read_from_the_header_before_decoding(bomb, tmp_path):
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="14000 x 14000 = 196,000,000 pixels"):
        read_image(bomb)
    assert time.perf_counter() - start < 1.0          # refused, not decoded (588 MB)
    assert read_image(bomb, limit=200_000_000, flags=cv2.IMREAD_GRAYSCALE).shape == (14000, 14000)
    liar = tmp_path / "liar.png"
    liar.write_bytes(_lying_png())
    assert liar.stat().st_size == 69
    with pytest.raises(ImageTooLargeError, match=str(liar)):
        read_image(liar)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0\x00")
    with pytest.raises(ImageReadError, match="garbage.jpg: cannot read its size"):
        read_image(garbage)
    monkey = tmp_path / "small.png"
    cv2.imwrite(str(monkey), _photo(30, 40, 0))
    with pytest.raises(ImageTooLargeError):
        read_image(monkey, limit=1000)


def test_a_tiff_with_its_directory_after_the_pixels_is_read(tmp_path):
    """libtiff (cv2.imwrite) puts the first image directory at the end of the file, past the
    64 kB read first: it was refused as 'cannot read its size'."""
    from dml_csr.files import read_image_size
    image = _photo(300, 310, 1)
    path = tmp_path / "photo.tif"
    assert cv2.imwrite(str(path), image)
    data = path.read_bytes()
    order = "<" if data[:2] == b"II" else ">"
    assert struct.unpack(order + "I", data[4:8])[0] > 64 * 1024     # the case that failed
    assert read_image_size(path) == (300, 310)
    assert np.array_equal(read_image(path), image)
    liar = tmp_path / "liar.tif"                              # a directory offset past the end
    liar.write_bytes(data[:4] + struct.pack(order + "I", len(data) + 10) + data[8:])
    with pytest.raises(ImageReadError, match="liar.tif: cannot read its size.*outside the file"):
        read_image(liar)


def test_a_folder_run_goes_on_past_bombs_and_liars(ckpt, photos, bomb, tmp_path, capsys):
    (photos / "a_liar.png").write_bytes(_lying_png())
    shutil.copy(bomb, photos / "a_bomb.png")
    out = tmp_path / "out"
    assert run(_tool("infer"), ["--checkpoint", ckpt, str(photos), "--out", str(out),
                                "--no-detect"]) == 1
    err = capsys.readouterr().err
    assert "a_liar.png" in err and "a_bomb.png" in err and "2 of 4 images failed" in err
    assert (out / "a.png").is_file() and (out / "b.png").is_file()
    assert not (out / "a_liar.png").exists() and not (out / "a_bomb.png").exists()
    assert run(_tool("infer"), ["--checkpoint", ckpt, str(photos / "a_bomb.png"), "--out", str(out),
                                "--no-detect", "--max-pixels", "200000000"]) == 0


def test_the_data_check_refuses_bombs_and_truncated_files(data_root, bomb, tmp_path):
    from dml_csr.data.check import check_data
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    shutil.copy(bomb, root / "train" / "images" / "train_00000.jpg")
    jpg = root / "train" / "images" / "train_00001.jpg"
    jpg.write_bytes(jpg.read_bytes()[:-100])                              # cut in its scan data
    report = check_data(str(root), ["train"])
    assert len(report.problems) == 2, report.problems
    assert "train_00000.jpg" in report.problems[0] and "over the limit" in report.problems[0]
    assert "train_00001.jpg" in report.problems[1] and "truncated" in report.problems[1]
    from dml_csr.data import FaceDataset
    with pytest.raises(ImageReadError, match="truncated"):
        FaceDataset(str(root), "train", crop_size=CROP)[1]


def test_the_data_check_decodes_within_a_pixel_budget():
    from dml_csr.data.check import PixelBudget
    budget = PixelBudget(100)
    inside = []

    def work(n):
        budget.acquire(n)
        inside.append(budget.in_use)
        time.sleep(0.01)
        budget.release(n)
    threads = [threading.Thread(target=work, args=(n,)) for n in (60, 60, 30, 30, 150, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.in_use == 0 and budget.peak <= 150 and max(inside) <= 150
    assert all(v <= 100 for v in inside if v != 150)


def test_prepare_data_refuses_a_bomb_and_names_it(bomb, tmp_path):
    from dml_csr.data.prepare import PrepareError, prepare_lapa
    raw = tmp_path / "raw"
    for split in ("train", "val", "test"):
        for i in range(2):
            base = raw / "LaPa" / split
            (base / "images").mkdir(parents=True, exist_ok=True)
            (base / "labels").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(base / "images" / f"{split}{i}.jpg"), _photo(16, 16, i))
            cv2.imwrite(str(base / "labels" / f"{split}{i}.png"), np.zeros((16, 16), np.uint8))
    shutil.copy(bomb, raw / "LaPa" / "val" / "images" / "val1.jpg")
    with pytest.raises(PrepareError, match="val1.jpg.*over the limit"):
        prepare_lapa(raw, tmp_path / "out", progress=False)


def test_calibration_skips_a_bomb(bomb, tmp_path, caplog):
    from dml_csr.deploy.quantize import calibration_crops
    folder = tmp_path / "calib"
    folder.mkdir()
    cv2.imwrite(str(folder / "face.jpg"), _photo(40, 40, 3))
    shutil.copy(bomb, folder / "huge.png")
    spec = ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=CROP)
    crops = calibration_crops([str(folder / "face.jpg"), str(folder / "huge.png")], spec)
    assert len(crops) == 1 and "huge.png" in caplog.text


# ------------------------------------------------------------------------ failing writes
def _no_file_writes():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)         # writes fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_infer_on_a_full_disk_fails_loudly_and_leaves_no_empty_files(ckpt, photos, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "tools" / "infer.py"), "--checkpoint", ckpt, str(photos),
           "--out", str(out), "--no-detect", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          preexec_fn=_no_file_writes)
    assert proc.returncode == 2, proc.stderr
    _one_error_line(proc.stderr, "cannot write", str(out))
    assert os.listdir(out) == []                        # no 0-byte outputs, no temporary files


class _DiskFull:
    def __reduce__(self):
        raise OSError(28, "No space left on device")


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "best.pth"
    target.write_text("old")
    with pytest.raises(WriteError, match="cannot write .*best.pth: No space left"):
        save_torch({"weights": torch.zeros(1000), "then": _DiskFull()}, target)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["best.pth"]


def test_a_torn_metrics_line_and_stale_temporaries_do_not_stop_resume(data_root, tmp_path,
                                                                     caplog):
    from dml_csr.config import load_config
    from dml_csr.engine.rundir import RunDirError
    from dml_csr.engine.trainer import Trainer
    out = tmp_path / "run"
    cfg = load_config("synthetic", [f"data.root={data_root}", *TINY, "train.epochs=2"])
    Trainer(cfg, output_dir=str(out), device="cpu").fit(stop_after_epoch=1)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "stage": "multi')                    # a kill mid-write
    stale = out / ".last.pth.999999999.partial"                   # a save killed midway
    stale.write_bytes(b"half a checkpoint")
    Trainer(cfg, output_dir=str(out), resume=True, device="cpu").fit()
    assert not stale.exists() and "torn last line" in caplog.text
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    text = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join([text[0], "garbage", text[1]]) + "\n")
    with pytest.raises(RunDirError, match=r"metrics.jsonl:2 is not a metrics record"):
        Trainer(cfg, output_dir=str(out), resume=True, device="cpu")


def test_temporary_onnx_folders_are_removed(ckpt, photos, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    dml_csr.FaceParser.from_checkpoint(ckpt, detector=None, backend="onnx")
    assert run(_tool("export_onnx"), ["--checkpoint", ckpt, "--out", str(tmp_path / "q.onnx"),
                                      "--int8", "--calibrate", str(photos)]) == 0
    assert os.listdir(scratch) == []


# ------------------------------------------------------------------------ the int8 cache
def _fresh_model(seed):
    torch.manual_seed(seed)
    return DMLCSR(with_edges=False, **KW).eval()       # fresh norms: equal folded biases


def test_a_planted_or_truncated_int8_cache_file_is_never_used(photos, tmp_path, caplog, capfd):
    from dml_csr.deploy.quantize import int8_model
    spec = ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=CROP)
    cache = tmp_path / "cache"
    mine, other = _fresh_model(0), _fresh_model(1)
    path = Path(int8_model(mine, spec, photos, 2, cache=cache))
    planted = Path(int8_model(other, spec, photos, 2, cache=cache))
    assert "Expected" not in capfd.readouterr().err         # the quantizer's lines: DEBUG log
    good = path.read_bytes()
    shutil.copy(planted, path)                             # another model's file under my name
    with pytest.raises(ValueError, match="set aside as .*rejected") as err:
        int8_model(mine, spec, cache=cache)
    assert str(path) in caplog.text and "not made for these weights" in caplog.text
    assert not path.exists() and path.with_name(path.name + ".rejected").is_file()
    del err
    path.write_bytes(good[: len(good) // 2])               # truncated
    assert int8_model(mine, spec, photos, 2, cache=cache) == str(path)    # rebuilt
    assert path.read_bytes() != good[: len(good) // 2]
    assert int8_model(mine, spec, cache=cache) == str(path)               # and used again


def test_the_cache_folder_is_private_and_a_shared_one_is_named(photos, tmp_path, caplog):
    """Created 0700 (a file planted with a valid key would be run: cache.py says what the key
    checks); a folder others may write to is named in a warning."""
    from dml_csr.deploy.cache import float32_model
    from dml_csr.deploy.quantize import int8_model
    old = os.umask(0o022)
    try:
        spec = ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=CROP)
        mine = _fresh_model(0)
        for make, folder in ((float32_model, tmp_path / "a" / "fp32"),
                             (lambda m, s, cache: int8_model(m, s, photos, 2, cache=cache),
                              tmp_path / "b" / "int8")):
            make(mine, spec, cache=folder)
            assert folder.stat().st_mode & 0o777 == 0o700, folder
        assert "writable by other users" not in caplog.text
        open_folder = tmp_path / "world_writable"
        open_folder.mkdir()
        open_folder.chmod(0o777)
        float32_model(mine, spec, cache=open_folder)
        assert f"ONNX cache folder {open_folder} is writable by other users" in caplog.text
        assert open_folder.stat().st_mode & 0o777 == 0o777      # the user's folder left as it is
    finally:
        os.umask(old)


def test_every_quantized_convolution_gets_an_int32_bias(photos, tmp_path):
    import onnx

    from dml_csr.deploy.quantize import int8_model
    spec = ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=CROP)
    proto = onnx.load(int8_model(_fresh_model(0), spec, photos, 2, cache=tmp_path))
    dq = {n.output[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    inits = {i.name: i for i in proto.graph.initializer}
    quantized = [n for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in dq]
    assert quantized and not [n for n in proto.graph.node if n.op_type == "Identity"]
    for node in quantized:
        bias = dq[node.input[2]].input[0]
        assert inits[bias].data_type == onnx.TensorProto.INT32, node.name


# ------------------------------------------------------------------------ smaller defects
def test_prepared_names_with_spaces_are_listable(tmp_path):
    from dml_csr.data.check import check_data
    from dml_csr.data.prepare import prepare_lapa
    raw = tmp_path / "raw"
    for split in ("train", "val", "test"):
        base = raw / "LaPa" / split
        (base / "images").mkdir(parents=True)
        (base / "labels").mkdir(parents=True)
        for name in (f"{split} one", f"{split}_two"):
            cv2.imwrite(str(base / "images" / f"{name}.jpg"), _photo(16, 16, 0))
            cv2.imwrite(str(base / "labels" / f"{name}.png"), np.ones((16, 16), np.uint8))
    report = prepare_lapa(raw, tmp_path / "out", progress=False)
    assert any("whitespace" in w for w in report.warnings)
    assert "images/train_one.jpg labels/train_one.png" in (tmp_path / "out" / "train_list.txt").read_text()
    assert check_data(str(tmp_path / "out")).ok
    assert (raw / "LaPa" / "train" / "images" / "train one.jpg").is_file()      # raw untouched
