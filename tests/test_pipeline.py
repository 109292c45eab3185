"""The reader / network / writer pipeline (dml_csr/deploy/pipeline.py) and the photo loop of
``tools/infer.py`` that runs on it: order, errors where they belong, bounded memory, Ctrl-C, and
the same outputs byte for byte with and without the threads (``--serial``)."""
import importlib.util
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dml_csr.cli import run
from dml_csr.deploy.pipeline import Writer, prefetch
from dml_csr.models import DMLCSR, ModelSpec, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "data" / "photos"
KW = dict(num_classes=11, layers=[1, 1, 1, 1], width_mult=0.125)


def _pipeline_threads():
    return [t for t in threading.enumerate() if t.name in ("dml_csr-reader", "dml_csr-writer")]


# ------------------------------------------------------------------------------- prefetch
def test_prefetch_keeps_the_order():
    assert list(prefetch(range(50), lambda x: x * x, depth=2)) == [x * x for x in range(50)]
    assert list(prefetch([], depth=2)) == []


def test_a_reader_error_is_raised_in_the_caller_at_its_item():
    def prepare(x):
        if x == 3:
            raise ValueError("item 3 is broken")
        return x

    got = []
    with pytest.raises(ValueError, match="item 3 is broken"):
        for x in prefetch(range(10), prepare, depth=2):
            got.append(x)
    assert got == [0, 1, 2]


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_the_reader_is_never_more_than_depth_plus_one_items_ahead(depth):
    produced = []

    def counting():
        for i in range(30):
            produced.append(i)
            yield i

    consumed = 0
    for x in prefetch(counting(), depth=depth):
        assert x == consumed
        consumed += 1
        time.sleep(0.02)            # give the reader every chance to run ahead
        assert len(produced) - consumed <= depth + 1, (len(produced), consumed)
    assert consumed == 30 and not _pipeline_threads()


def test_leaving_the_loop_early_stops_the_reader():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    items = prefetch(endless(), depth=2)
    for x in items:
        if x == 5:
            break
    items.close()
    time.sleep(0.3)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n <= 5 + 2 + 2 and not _pipeline_threads()


def test_prefetch_unthreaded_runs_inline_and_reads_nothing_ahead():
    produced, where = [], []

    def counting():
        for i in range(5):
            produced.append(i)
            yield i

    def prepare(x):
        where.append(threading.current_thread())
        return x

    for k, x in enumerate(prefetch(counting(), prepare, depth=2, threaded=False)):
        assert len(produced) == k + 1
    assert set(where) == {threading.current_thread()}


# ---------------------------------------------------------------------------------- Writer
def test_the_writer_runs_calls_in_order_in_its_thread():
    done, where = [], []

    def record(i):
        where.append(threading.current_thread())
        done.append(i)

    with Writer(depth=2) as writer:
        for i in range(20):
            writer.submit(record, i)
    assert done == list(range(20)) and threading.current_thread() not in where
    assert not _pipeline_threads()


def test_a_writer_error_is_raised_at_the_next_submit_and_nothing_runs_after_it():
    done, ran = [], threading.Event()

    def boom():
        ran.set()
        raise OSError("disk full")

    writer = Writer(depth=2)
    writer.submit(done.append, 0)
    writer.submit(boom)
    assert ran.wait(5)
    with pytest.raises(OSError, match="disk full"):
        for i in range(1, 200):
            writer.submit(done.append, i)
            time.sleep(0.01)
    writer.abort()
    assert done == [0] and not _pipeline_threads()


def test_a_writer_error_is_raised_at_close():
    def boom():
        raise OSError("disk full")

    writer = Writer(depth=2)
    writer.submit(boom)
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    done = []
    with pytest.raises(OSError, match="disk full"):
        with Writer(depth=2) as w:
            w.submit(boom)
            w.submit(done.append, 1)          # may or may not be refused here: never run
    assert done == [] and not _pipeline_threads()


def test_abort_drops_the_queued_calls():
    done, go, started = [], threading.Event(), threading.Event()

    def slow(i):
        started.set()
        go.wait(5)
        done.append(i)

    writer = Writer(depth=5)
    writer.submit(slow, 0)
    assert started.wait(5)
    for i in range(1, 4):
        writer.submit(done.append, i)
    threading.Timer(0.2, go.set).start()
    writer.abort()                 # waits for the running call, drops the rest
    assert done == [0] and not _pipeline_threads()


def test_leaving_a_writer_block_by_an_exception_drops_the_queue():
    done, go = [], threading.Event()
    with pytest.raises(KeyboardInterrupt):
        with Writer(depth=5) as writer:
            writer.submit(lambda: (go.wait(5), done.append(0)))
            for i in range(1, 4):
                writer.submit(done.append, i)
            threading.Timer(0.2, go.set).start()
            raise KeyboardInterrupt
    assert done in ([], [0]) and not _pipeline_threads()


def test_the_writer_unthreaded_runs_each_call_at_once():
    where = []
    writer = Writer(depth=2, threaded=False)
    writer.submit(lambda: where.append(threading.current_thread()))
    assert where == [threading.current_thread()]
    with pytest.raises(OSError, match="now"):
        writer.submit(lambda: (_ for _ in ()).throw(OSError("now")))
    writer.close()


# ------------------------------------------------------------------------- tools/infer.py
def _infer():
    spec = importlib.util.spec_from_file_location("infer_tool", REPO / "tools" / "infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(str(path), DMLCSR(with_edges=False, **KW).state_dict(),
                    ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=(64, 64)))
    return str(path)


@pytest.fixture
def folder(tmp_path):
    """The two portraits, a smaller copy of each and a photo with no face."""
    d = tmp_path / "photos"
    d.mkdir()
    for p in sorted(PHOTOS.glob("*.jpg")):
        image = cv2.imread(str(p))
        cv2.imwrite(str(d / p.name), image)
        cv2.imwrite(str(d / f"{p.stem}_small.png"), cv2.resize(image, (160, 160)))
    cv2.imwrite(str(d / "z_grey.png"), np.full((60, 80, 3), 128, np.uint8))
    return d


def _outputs(out: Path):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize("detect", [True, False])
def test_serial_and_threaded_runs_write_the_same_bytes(ckpt, folder, tmp_path, detect):
    base = ["--checkpoint", ckpt, str(folder), "--save-logits", "--threads", "1"]
    if not detect:
        base.append("--no-detect")
    main = _infer()
    assert run(main, base + ["--out", str(tmp_path / "serial"), "--serial"]) == 0
    assert run(main, base + ["--out", str(tmp_path / "threaded")]) == 0
    serial, threaded = _outputs(tmp_path / "serial"), _outputs(tmp_path / "threaded")
    assert sorted(serial) == sorted(threaded) and len(serial) >= 4 * 5 - (5 if detect else 0)
    differ = [name for name in serial if serial[name] != threaded[name]]
    assert not differ
    assert not _pipeline_threads()


def test_a_failing_photo_in_the_middle_is_named_and_the_others_written(ckpt, tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png", "d.png"):
        cv2.imwrite(str(src / name), rng.integers(0, 256, (40, 50, 3), np.uint8))
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    assert run(_infer(), ["--checkpoint", ckpt, str(src), "--out", str(out), "--no-detect"]) == 1
    err = capsys.readouterr().err
    assert "b.png" in err and "error: 1 of 4 images failed" in err
    for stem in ("a", "c", "d"):
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}.json").is_file()
    assert not any(p.name.startswith("b") for p in out.iterdir())
    assert not _pipeline_threads()


def test_ctrl_c_stops_the_reader_and_the_writer(ckpt, folder, tmp_path, monkeypatch):
    from dml_csr.deploy import FaceParser
    calls = []
    parse = FaceParser.parse_faces

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(FaceParser, "parse_faces", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _infer()(["--checkpoint", ckpt, str(folder), "--out", str(out), "--no-detect"])
    assert not _pipeline_threads()
    written = sorted(p.name for p in out.iterdir())
    assert all(not n.startswith(".") and "partial" not in n for n in written), written
    assert not written or written[0].startswith("astronaut.")     # the first photo's, if any
