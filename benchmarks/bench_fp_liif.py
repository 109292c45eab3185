"""FP-LIIF vs DML-CSR: parameters, FLOPs, CPU latency (batch 1) and throughput ratio.

    python benchmarks/bench_fp_liif.py [--classes 19] [--runs 3] [--threads N] [--json OUT.json]
        [--skip-2x] [--dml-size 473] [--low-precision] [--smoke]

Rows (random weights), each in two forms: ``plain`` (eval mode under ``torch.inference_mode``)
and ``opt`` (``optimize_for_inference``, what ``FaceParser.from_checkpoint(backend="torch")``
runs: norms folded, in-place activations, channels_last); with
``--low-precision`` also ``bf16`` (``optimize_for_inference(precision="bf16")``) and ``int8``
(the ONNX file of ``precision="int8"``, ``deploy/quantize.py``, calibrated on two random inputs,
run by onnxruntime):

- ``dml_csr@473``: the DML-CSR inference form (no edge branch; full ResNet-101 + DDGCN) at its
  473 x 473 input, output the 1/4-size logits (the protocol's upsampling is not counted);
- ``fp_liif@256``, ``fp_liif@512``: the default FPLIIF at 256 / 512 input, output = input size;
- ``fp_liif@256->512``: 256 input, output at 2x the input (the LIIF decoder alone grows);
- ``fp_liif_s2@256``: FPLIIF with ``stem_stride=2`` (every encoder group at half the size, Z at
  1/8; same parameters).

The speed ratio of a row is against the DML-CSR row of the same form (plain vs plain, opt vs opt),
and, in the last column, against DML-CSR's plain float32 row.

Parameters and FLOPs from ``dml_csr.utils.complexity`` (FlopCounterMode; a multiply-add = 2
FLOPs; element-wise ops, grid_sample and interpolation not counted). Latency: median of ``--runs``
timed batch-1 passes after one warm-up per row; the rows are timed round-robin (one pass of every
row per round) so that load changes on a shared machine hit all rows alike. Throughput = 1000 /
median latency (images/s at batch 1); the ratio is FP-LIIF's over DML-CSR's. Wall-clock timings on
a shared machine are noisy: report the load average with them (printed).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dml_csr.files import write_json  # noqa: E402

import torch  # noqa: E402

from dml_csr.models import build_model  # noqa: E402
from dml_csr.utils.complexity import count_flops, count_parameters  # noqa: E402
from dml_csr.deploy.fold import optimize_for_inference  # noqa: E402


def int8_form(model, family: str, classes: int, size, kw):
    """``model`` as ``precision="int8"`` runs it: its int8 ONNX file (random calibration inputs)
    in the models' contract (``OnnxParsingModel``; onnxruntime holds the graph, so the temporary
    folder goes at once)."""
    import tempfile

    from dml_csr.deploy.onnx import OnnxParsingModel, export_onnx
    from dml_csr.deploy.quantize import quantize_onnx
    from dml_csr.models import ModelSpec
    spec = ModelSpec.for_dataset(family, {"num_classes": classes},
                                 "celebamask_hq" if classes == 19 else "helen", crop_size=size[-2:])
    crops = [torch.randn(*size, generator=torch.Generator().manual_seed(7 + i)).numpy()
             for i in range(2)]
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as tmp:
        export_onnx(model, os.path.join(tmp, "f.onnx"), spec, dynamic_batch=True,
                    output_size=kw.get("size"))
        quantize_onnx(os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx"), crops)
        return OnnxParsingModel(os.path.join(tmp, "q.onnx"))


# --smoke: tiny models and sizes, to check that the script runs (its numbers mean nothing)
SMOKE_DML = {"layers": [1, 1, 1, 1], "width_mult": 0.125}
SMOKE_FP = {"width": 8, "blocks": [1, 1, 1], "reduce_dims": [16, 8], "decoder_dims": [16]}


def rows(classes: int, dml_size: int, skip_2x: bool, low_precision: bool = False,
         smoke: bool = False):
    """(name, form, model, plain model, input (N, C, H, W), forward kwargs)."""
    dml = build_model("dml_csr", {"num_classes": classes, **(SMOKE_DML if smoke else {})}).eval()
    fp_kw = {"num_classes": classes, **(SMOKE_FP if smoke else {})}
    fp = build_model("fp_liif", fp_kw).eval()
    fp2 = build_model("fp_liif", dict(fp_kw, stem_stride=2)).eval()
    a = 32 if smoke else 256          # FP-LIIF's input side; 2a the larger one
    base = [("dml_csr@%d" % dml_size, dml, (1, 3, dml_size, dml_size), {}),
            (f"fp_liif@{a}", fp, (1, 3, a, a), {"size": (a, a)}),
            (f"fp_liif@{2 * a}", fp, (1, 3, 2 * a, 2 * a), {"size": (2 * a, 2 * a)})]
    if not skip_2x:
        base.append((f"fp_liif@{a}->{2 * a}", fp, (1, 3, a, a), {"size": (2 * a, 2 * a)}))
    base.append((f"fp_liif_s2@{a}", fp2, (1, 3, a, a), {"size": (a, a)}))
    optimised = {id(m): optimize_for_inference(m) for m in (dml, fp, fp2)}
    bf16 = {id(m): optimize_for_inference(m, precision="bf16") for m in (dml, fp, fp2)} \
        if low_precision else {}
    out = []
    for name, model, size, kw in base:
        out.append((name, "plain", model, model, size, kw))
        out.append((name, "opt", optimised[id(model)], model, size, kw))
        if low_precision:
            out.append((name, "bf16", bf16[id(model)], model, size, kw))
            family = "dml_csr" if model is dml else "fp_liif"
            out.append((name, "int8", int8_form(model, family, classes, size, kw), model, size, kw))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, default=19, help="19 = CelebAMask-HQ (default), 11 = LaPa")
    ap.add_argument("--dml-size", type=int, default=473)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--skip-2x", action="store_true", help="leave out the 256 -> 512 row")
    ap.add_argument("--low-precision", action="store_true", help="add the bf16 and int8 forms")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny models and sizes, one run: checks that the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.dml_size, args.runs = 64, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    table = rows(args.classes, args.dml_size, args.skip_2x, args.low_precision, args.smoke)
    report = {"classes": args.classes, "threads": torch.get_num_threads(),
              "load_before": os.getloadavg(), "rows": {}}
    inputs = {}
    flops = {}
    for name, form, model, plain, size, kw in table:
        key = f"{name} {form}"
        if name not in flops:
            flops[name] = count_flops(plain, size, **kw) / 1e9
        report["rows"][key] = {"model": name, "form": form, "params": count_parameters(plain),
                               "gflops": flops[name], "input": list(size[-2:]),
                               "output": list(kw.get("size", (size[-2] // 4, size[-1] // 4)))}
        inputs[key] = torch.randn(*size, generator=torch.Generator().manual_seed(1))
    times = {key: [] for key in report["rows"]}
    with torch.inference_mode():
        for name, form, model, _, _, kw in table:            # warm-up
            model(inputs[f"{name} {form}"], **kw)
        for _ in range(args.runs):                           # round-robin timing
            for name, form, model, _, _, kw in table:
                t = time.perf_counter()
                model(inputs[f"{name} {form}"], **kw)
                times[f"{name} {form}"].append((time.perf_counter() - t) * 1000.0)
    report["load_after"] = os.getloadavg()
    for key, r in report["rows"].items():
        r["latency_ms"] = statistics.median(times[key])
        r["latency_min_ms"] = min(times[key])
        r["images_per_s"] = 1000.0 / r["latency_ms"]
    dml_name = table[0][0]
    for key, r in report["rows"].items():
        base = report["rows"][f"{dml_name} {r['form']}"]
        r["params_ratio"] = base["params"] / r["params"]
        r["flops_ratio"] = base["gflops"] / r["gflops"]
        r["throughput_ratio"] = r["images_per_s"] / base["images_per_s"]
        r["vs_dml_plain"] = r["images_per_s"] / report["rows"][f"{dml_name} plain"]["images_per_s"]

    print(f"{args.classes} classes, {report['threads']} threads, load average "
          f"{report['load_before'][0]:.1f} -> {report['load_after'][0]:.1f}, {args.runs} runs (batch 1)")
    print("| model | form | in | out | params | GFLOPs | ms (median) | ms (min) | img/s | DML-CSR / x params "
          "| x / DML-CSR speed (same form) | x / DML-CSR plain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["rows"].values():
        print(f"| {r['model']} | {r['form']} | {'x'.join(map(str, r['input']))} | "
              f"{'x'.join(map(str, r['output']))} | {r['params']:,d} | {r['gflops']:.1f} | "
              f"{r['latency_ms']:.0f} | {r['latency_min_ms']:.0f} | {r['images_per_s']:.2f} | "
              f"{r['params_ratio']:.1f} | {r['throughput_ratio']:.1f}x | {r['vs_dml_plain']:.1f}x |")
    if args.json:
        write_json(args.json, report, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
