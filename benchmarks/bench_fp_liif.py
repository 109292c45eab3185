"""FP-LIIF vs DML-CSR: parameters, FLOPs, CPU latency (batch 1) and throughput ratio.

    python benchmarks/bench_fp_liif.py [--classes 19] [--runs 3] [--threads N] [--json OUT.json]
        [--skip-2x] [--dml-size 473]

Rows (random weights; both models in eval mode under ``torch.inference_mode``, no norm folding):

- ``dml_csr@473``: the DML-CSR inference form (no edge branch; full ResNet-101 + DDGCN) at its
  473 x 473 input, output the 1/4-size logits (the protocol's upsampling is not counted);
- ``fp_liif@256``, ``fp_liif@512``: the default FPLIIF at 256 / 512 input, output = input size;
- ``fp_liif@256->512``: 256 input, output at 2x the input (the LIIF decoder alone grows).

Parameters and FLOPs from ``dml_csr.utils.complexity`` (FlopCounterMode; a multiply-add = 2
FLOPs; element-wise ops, grid_sample and interpolation not counted). Latency: median of ``--runs``
timed batch-1 passes after one warm-up per row; the rows are timed round-robin (one pass of every
row per round) so that load changes on a shared machine hit all rows alike. Throughput = 1000 /
median latency (images/s at batch 1); the ratio is FP-LIIF's over DML-CSR's. Wall-clock timings on
a shared machine are noisy: report the load average with them (printed).
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dml_csr.models import build_model  # noqa: E402
from dml_csr.utils.complexity import count_flops, count_parameters  # noqa: E402


def rows(classes: int, dml_size: int, skip_2x: bool):
    """(name, model, input (N, C, H, W), forward kwargs)."""
    dml = build_model("dml_csr", {"num_classes": classes}, with_edges=False)
    fp = build_model("fp_liif", {"num_classes": classes})
    out = [("dml_csr@%d" % dml_size, dml, (1, 3, dml_size, dml_size), {}),
           ("fp_liif@256", fp, (1, 3, 256, 256), {"size": (256, 256)}),
           ("fp_liif@512", fp, (1, 3, 512, 512), {"size": (512, 512)})]
    if not skip_2x:
        out.append(("fp_liif@256->512", fp, (1, 3, 256, 256), {"size": (512, 512)}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=19, help="19 = CelebAMask-HQ (default), 11 = LaPa")
    ap.add_argument("--dml-size", type=int, default=473)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--skip-2x", action="store_true", help="leave out the 256 -> 512 row")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    table = rows(args.classes, args.dml_size, args.skip_2x)
    report = {"classes": args.classes, "threads": torch.get_num_threads(),
              "load_before": os.getloadavg(), "rows": {}}
    inputs = {}
    for name, model, size, kw in table:
        model.eval()
        report["rows"][name] = {"params": count_parameters(model),
                                "gflops": count_flops(model, size, **kw) / 1e9,
                                "input": list(size[-2:]),
                                "output": list(kw.get("size", (size[-2] // 4, size[-1] // 4)))}
        inputs[name] = torch.randn(*size)
    times = {name: [] for name, *_ in table}
    with torch.inference_mode():
        for name, model, _, kw in table:                     # warm-up
            model(inputs[name], **kw)
        for _ in range(args.runs):                           # round-robin timing
            for name, model, _, kw in table:
                t = time.perf_counter()
                model(inputs[name], **kw)
                times[name].append((time.perf_counter() - t) * 1000.0)
    report["load_after"] = os.getloadavg()
    ref = table[0][0]
    for name, *_ in table:
        r = report["rows"][name]
        r["latency_ms"] = statistics.median(times[name])
        r["latency_min_ms"] = min(times[name])
        r["images_per_s"] = 1000.0 / r["latency_ms"]
    base = report["rows"][ref]
    for name, r in report["rows"].items():
        r["params_ratio"] = base["params"] / r["params"]
        r["flops_ratio"] = base["gflops"] / r["gflops"]
        r["throughput_ratio"] = r["images_per_s"] / base["images_per_s"]

    print(f"{args.classes} classes, {report['threads']} threads, load average "
          f"{report['load_before'][0]:.1f} -> {report['load_after'][0]:.1f}, {args.runs} runs (batch 1)")
    print(f"{'model':18s} {'in':>9s} {'out':>9s} {'params':>11s} {'GFLOPs':>8s} {'ms (med)':>9s} "
          f"{'ms (min)':>9s} {'img/s':>7s} {'DML/x params':>12s} {'x/DML speed':>11s}")
    for name, r in report["rows"].items():
        print(f"{name:18s} {'x'.join(map(str, r['input'])):>9s} {'x'.join(map(str, r['output'])):>9s} "
              f"{r['params']:>11,d} {r['gflops']:>8.1f} {r['latency_ms']:>9.0f} "
              f"{r['latency_min_ms']:>9.0f} {r['images_per_s']:>7.2f} {r['params_ratio']:>12.1f} "
              f"{r['throughput_ratio']:>11.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
