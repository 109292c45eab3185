"""Per-shape speed of WinogradConv2d (F(2x2,3x3), F(4x4,3x3)) against the direct convolution.

    python benchmarks/bench_winograd.py [--threads N] [--runs 5] [--json OUT.json] [--smoke]

Shapes: every eligible 3x3 convolution of DML-CSR at 473 x 473 (batch 1) and of FP-LIIF at
256 x 256; input and weights channels_last as in ``optimize_for_inference``. Reports the median
time of each, the speed-up over the direct convolution and the max abs difference to it.
Wall-clock timings: run on an otherwise idle machine and say so when quoting them.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from dml_csr.deploy.fold import set_inference_threads  # noqa: E402
from dml_csr.deploy.winograd import WinogradConv2d  # noqa: E402

# (name, C_in, C_out, H = W, dilation, how many in the network)
SHAPES = [
    ("dml_csr stem conv2", 64, 64, 237, 1, 1),
    ("dml_csr stem conv3", 64, 128, 237, 1, 1),
    ("dml_csr layer1 conv2", 64, 64, 119, 1, 3),
    ("dml_csr layer2 conv2", 128, 128, 60, 1, 3),
    ("dml_csr layer3 conv2", 256, 256, 60, 1, 23),
    ("dml_csr layer4 conv2 (d2)", 512, 512, 60, 2, 3),
    ("dml_csr context conva", 2048, 512, 60, 1, 1),
    ("dml_csr context convb", 512, 512, 60, 1, 1),
    ("dml_csr context bottleneck", 2560, 512, 60, 1, 1),
    ("fp_liif group1", 64, 64, 256, 1, 4),
    ("fp_liif group2", 64, 64, 128, 1, 12),
    ("fp_liif group3", 64, 64, 64, 1, 32),
]


def median_time(fn, x, runs):
    fn(x)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--smoke", action="store_true",
                    help="every shape at 1/16 of its channels and 12 x 12, one run: checks that "
                         "the script runs")
    args = ap.parse_args(argv)
    shapes = SHAPES
    if args.smoke:
        args.runs = 1
        shapes = [(name, max(1, ci // 16), max(1, co // 16), 12, d, n)
                  for name, ci, co, hw, d, n in SHAPES]
    threads = set_inference_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    print(f"threads {threads}, torch {torch.__version__}")
    print("| layer | C_in -> C_out @ H (dil) | x | direct (ms) | F(2x2) (ms) | speed-up | F(4x4) (ms) "
          "| speed-up | max abs diff F2 / F4 |")
    print("|---|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for name, ci, co, hw, d, count in shapes:
            conv = nn.Conv2d(ci, co, 3, padding=d, dilation=d, bias=True).eval()
            conv = conv.to(memory_format=torch.channels_last)
            x = torch.randn(1, ci, hw, hw).contiguous(memory_format=torch.channels_last)
            ref = conv(x)
            row = {"layer": name, "c_in": ci, "c_out": co, "size": hw, "dilation": d, "count": count,
                   "direct_ms": 1000 * median_time(conv, x, args.runs)}
            for m in (2, 4):
                wc = WinogradConv2d(conv, m)
                row[f"f{m}_ms"] = 1000 * median_time(wc, x, args.runs)
                row[f"f{m}_max_abs_diff"] = float((wc(x) - ref).abs().max())
            rows.append(row)
            print(f"| {name} | {ci} -> {co} @ {hw} ({d}) | {count} | {row['direct_ms']:.1f} | "
                  f"{row['f2_ms']:.1f} | {row['direct_ms'] / row['f2_ms']:.2f}x | {row['f4_ms']:.1f} | "
                  f"{row['direct_ms'] / row['f4_ms']:.2f}x | {row['f2_max_abs_diff']:.1e} / "
                  f"{row['f4_max_abs_diff']:.1e} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": threads, "torch": torch.__version__, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
