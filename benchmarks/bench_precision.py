"""The parser in float32, bf16 and int8 on a test split: label agreement, mean F1, time per image.

    python benchmarks/bench_precision.py --checkpoint runs/quickstart/best.pth
        [--calibrate DIR] [--data data/synthetic] [--split test] [--limit N]
        [--threads 2] [--json OUT.json]

Every image of the split is parsed whole (``detect=False``: the benchmark protocol's crop) by
``FaceParser.from_checkpoint(ckpt)`` (float32, the default optimised module), the same with
``precision="bf16"`` and with ``precision="int8"`` (calibrated on 32 images of ``--calibrate``,
default the data root ``--data``, whose training list is sampled; the int8 file is cached as the
parser does: ``deploy/quantize.py``). Reported per precision: the share of pixels whose
label equals float32's, the mean F1 against the split's labels (one histogram pooled over the
images, the 10 face classes), and the median time of one parser call (one image, after a
warm-up). Times are wall clock, noisy on a shared machine.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dml_csr.files import write_json  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from dml_csr.data.layout import read_split_list, split_list_path  # noqa: E402
from dml_csr.deploy import FaceParser, read_image, set_inference_threads  # noqa: E402
from dml_csr.eval.metrics import compute_metrics, confusion_histogram  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--calibrate", help="int8 calibration images (default: --data)")
    ap.add_argument("--data", default="data/synthetic")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    set_inference_threads(args.threads)
    pairs = read_split_list(split_list_path(args.data, args.split),
                            os.path.join(args.data, args.split))[:args.limit]
    parsers = {"fp32": FaceParser.from_checkpoint(args.checkpoint, detector=None),
               "bf16": FaceParser.from_checkpoint(args.checkpoint, detector=None,
                                                  precision="bf16")}
    parsers["int8"] = FaceParser.from_checkpoint(args.checkpoint, detector=None, precision="int8",
                                                 calibrate=args.calibrate or args.data)
    tokens = list(parsers["fp32"].schema.tokens)
    k = len(tokens)
    hist = {n: np.zeros((k, k), np.int64) for n in parsers}
    same = {n: [0, 0] for n in parsers}
    times = {n: [] for n in parsers}
    for _, image_path, label_path in pairs:
        image = read_image(image_path)
        label = cv2.imread(label_path, cv2.IMREAD_UNCHANGED)
        maps = {}
        for name, parser in parsers.items():
            parser(image, detect=False)                               # warm-up on the first
            t0 = time.perf_counter()
            maps[name] = parser(image, detect=False).combined[0]
            times[name].append(time.perf_counter() - t0)
            hist[name] += confusion_histogram(label, maps[name], k)
        for name in parsers:
            same[name][0] += int((maps[name] == maps["fp32"]).sum())
            same[name][1] += maps["fp32"].size
    rows = {n: {"agree_with_fp32": same[n][0] / same[n][1],
                "mean_f1": compute_metrics(hist[n], tokens)["mean_f1"],
                "ms_per_image": 1000 * statistics.median(times[n])} for n in parsers}
    print(f"{len(pairs)} images of {args.data} {args.split}, checkpoint {args.checkpoint}, "
          f"{args.threads} threads")
    print("| precision | pixels as float32 | mean F1 | ms per image (median) |")
    print("|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | {100 * r['agree_with_fp32']:.2f} % | {r['mean_f1']:.2f} | "
              f"{r['ms_per_image']:.1f} |")
    if args.json:
        write_json(args.json, {"rows": rows, "images": len(pairs),
                               "checkpoint": args.checkpoint}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
