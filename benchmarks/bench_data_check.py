"""Cost of the data check that runs before training (dml_csr/data/check.py, docs/benchmarks.md).

Two roots, each checked over its train and valid lists as the trainer does:

- ``synthetic``: ``make_synthetic`` at its defaults (240 train + 40 valid images, 128 px), the
  quick start's set;
- ``lapa``: a LaPa-sized list: 18,168 train and 2,000 valid lines (LaPa's split sizes) that point,
  in turn, at ``--distinct`` fabricated 512x512 JPEG (quality 95) / PNG pairs (bench_data.py's
  faces). Every line is decoded and validated as a real one would be; the files come from the page
  cache after their first read, so this is the decode cost, not the disk's.

    .venv/bin/python benchmarks/bench_data_check.py [--workers 1 2] [--distinct 64] [--reps 1]
        [--smoke]
"""
import argparse
import os
import sys
import tempfile
import time
from typing import Tuple

import cv2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from bench_data import fabricate  # noqa: E402
from dml_csr.data.check import check_data  # noqa: E402
from dml_csr.data.synthetic import make_synthetic  # noqa: E402
from dml_csr.files import read_image, write_text  # noqa: E402

LAPA_COUNTS = {"train": 18168, "valid": 2000}


def lapa_sized(root: str, distinct: int, counts=LAPA_COUNTS, size: int = 512) -> None:
    """``distinct`` real pairs under ROOT/train, listed cyclically ``counts`` times."""
    fabricate(root, distinct, size=size)
    os.symlink("train", os.path.join(root, "valid"))
    lines = [f"images/bench_{k:03d}.jpg labels/bench_{k:03d}.png" for k in range(distinct)]
    for split, count in counts.items():
        write_text(os.path.join(root, f"{split}_list.txt"),
                   "\n".join(lines[i % distinct] for i in range(count)) + "\n")


def timed(root: str, workers: int, reps: int) -> Tuple[float, int]:
    """Best wall time of ``reps`` checks of train + valid, and the number of pairs checked; the
    schema is the one the root's label_names.txt names. The files were just written, so they are
    in the page cache from the start."""
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        report = check_data(root, ["train", "valid"], workers=workers)
        best = min(best, time.perf_counter() - start)
        report.raise_if_problems()
    return best, report.num_pairs


def breakdown(root: str, distinct: int, reps: int = 5) -> Tuple[float, float]:
    """Best ms per file of the two reads of a LaPa-sized pair, one thread, by the loader's
    reader (``files.read_image``): the JPEG image (``cv2.IMREAD_COLOR``) and the PNG label
    (``cv2.IMREAD_UNCHANGED``)."""
    out = []
    for sub, ext, flag in (("images", "jpg", cv2.IMREAD_COLOR),
                           ("labels", "png", cv2.IMREAD_UNCHANGED)):
        paths = [os.path.join(root, "train", sub, f"bench_{k:03d}.{ext}") for k in range(distinct)]
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            for path in paths:
                read_image(path, flag)
            best = min(best, (time.perf_counter() - start) / distinct)
        out.append(1000 * best)
    return out[0], out[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="check threads")
    p.add_argument("--distinct", type=int, default=64, help="distinct LaPa-sized files")
    p.add_argument("--reps", type=int, default=1, help="checks per setting (the best is shown)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny roots (8 + 4 synthetic images, 20 + 4 lines of 2 64-px pairs): "
                        "checks that the script runs")
    args = p.parse_args(argv)
    counts, size, synthetic = LAPA_COUNTS, 512, {}
    if args.smoke:
        counts, size, args.distinct = {"train": 20, "valid": 4}, 64, 2
        synthetic = dict(num_train=8, num_valid=4, num_test=0, size=32)
    cv2.setNumThreads(1)
    print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"{'root':<10}{'pairs':>7}{'threads':>9}{'seconds':>9}{'ms/pair':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"synthetic": os.path.join(tmp, "synthetic"), "lapa": os.path.join(tmp, "lapa")}
        make_synthetic(roots["synthetic"], **synthetic)
        lapa_sized(roots["lapa"], args.distinct, counts, size)
        for name, root in roots.items():
            for workers in args.workers:
                seconds, pairs = timed(root, workers, args.reps)
                print(f"{name:<10}{pairs:>7}{workers:>9}{seconds:>9.2f}"
                      f"{1000 * seconds / pairs:>9.2f}")
        image_ms, label_ms = breakdown(roots["lapa"], args.distinct)
        print(f"LaPa-sized pair, one thread: JPEG decode {image_ms:.2f} ms + PNG label decode "
              f"{label_ms:.2f} ms")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
