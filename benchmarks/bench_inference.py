"""Inference speed of the DML-CSR inference form on this CPU: plain eval vs optimised vs ONNX Runtime.

    python benchmarks/bench_inference.py [--size 473 473] [--runs 5] [--batch 8] [--batch-runs 2]
        [--threads N] [--no-onnx] [--int8] [--pt2e] [--parser] [--fast-path] [--json OUT.json]

Variants (same weights, same input):
- ``plain``: ``model.eval()`` under ``torch.inference_mode`` (the reference);
- ``folded``: ``optimize_for_inference(model)`` (norms folded into the convolutions,
  channels_last, in-place activations, inference_mode; ``FaceParser.from_checkpoint(backend="torch")``);
- ``bf16``: ``optimize_for_inference(model, precision="bf16")``: folded, then cast to bfloat16
  (weights and activations, oneDNN's bf16 convolutions; not exact: see its parity columns);
- ``onnxruntime``: the folded model exported by ``dml_csr.deploy.export_onnx`` (TorchScript exporter,
  dynamic batch), run by onnxruntime's CPU provider with the same thread count (what the parser
  runs by default for float32 on the CPU);
- ``onnxruntime-int8`` (``--int8``): that file quantized by ``dml_csr.deploy.quantize_onnx``
  (static QDQ, per-channel int8 weights, uint8 activations calibrated on 4 random inputs, the
  first stem convolution and the decoder left float32: what ``precision="int8"`` runs; its parity
  on random weights says little about a trained model's).

``--pt2e``: the int8 backend not chosen, for comparison (needs ``pip install torchao`` and a C++
compiler): PT2E quantization (``torch.export``, torchao's ``X86InductorQuantizer``: per-channel
int8 weights, uint8 activations from histogram observers, the same 4 random calibration inputs),
then ``torch.compile`` with inductor freezing; the compile time is printed.

``--parser``: the whole ``FaceParser`` call, ``parser(image, detect=False)`` on a 473 x 473 photo
(the astronaut of ``tests/data/photos`` resized: crop, normalisation, forward, upsampling, argmax,
warp back), for ``FaceParser.from_checkpoint(CKPT, precision=...)`` with fp32 (the default
parser: onnxruntime), bf16 and int8 (calibrated on ``tests/data/photos``, cached in a temporary
folder), CKPT being these random weights saved as a checkpoint; each against the plain module's
forward timed in the same round (``speed-up`` = plain forward / parser call).

``--fast-path``: the float32 fast path (docs/inference.md, "The float32 fast path"): the parser
call ``parser(photos, detect=False)`` on 1 and on ``--batch`` photos (one call, ``max_batch`` 8)
for two parsers of the same checkpoint: the default (``backend="auto"``: onnxruntime on the CPU)
and ``backend="torch"`` (the folded module), in alternating rounds (``--runs`` rounds at batch 1,
``--batch-runs`` at batch 8; median per parser), with the share of label-map pixels that agree
with the first parser's.

Weights: random, every norm randomised and then calibrated on two random images
(``dml_csr.utils.random_weights``) so that each layer sees unit-scale activations as in a trained
network and the logits depend on the whole network (``--no-calibrate``: the randomised norms
alone, whose activations fade out layer by layer so that the logits hardly depend on the
network: the runs before calibration existed matched to 9.7e-8 that way, a weak check).
Parity: max abs difference of each variant's logits to the plain module's, the same relative to
max |logit|, and the share of pixels whose argmax agrees.

Latency: batch 1, median of ``--runs`` timed runs after one warm-up. Throughput: batch ``--batch``,
images per second over ``--batch-runs`` runs (the batch-1 warm-up comes first). Parity: max abs
difference of each variant's logits to the plain module's on the batch-1 input. Timings are wall
clock and noisy on a shared machine: say so when reporting them.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dml_csr.files import write_json  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dml_csr.models import DMLCSR  # noqa: E402
from dml_csr.deploy.fold import optimize_for_inference, set_inference_threads  # noqa: E402
from dml_csr.utils.random_weights import calibrate_norms, randomise_norms  # noqa: E402


def timed(fn, x, runs: int):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=(473, 473))
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--width-mult", type=float, default=1.0, help="< 1 only for a quick smoke run")
    ap.add_argument("--layers", type=int, nargs=4, default=(3, 4, 23, 3))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batch-runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--int8", action="store_true", help="also time the int8 ONNX file")
    ap.add_argument("--pt2e", action="store_true", help="also time torchao PT2E int8 + torch.compile")
    ap.add_argument("--parser", action="store_true",
                    help="also time the whole parser call per precision against the plain forward")
    ap.add_argument("--fast-path", action="store_true",
                    help="only compare the parser's float32 paths (onnxruntime, the default, and "
                         "torch) at batch 1 and --batch")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--no-calibrate", action="store_true",
                    help="skip the norm calibration (weak parity check)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)

    threads = set_inference_threads(args.threads)
    torch.manual_seed(0)
    plain = DMLCSR(num_classes=args.classes, with_edges=False, layers=args.layers,
                   width_mult=args.width_mult).eval()
    randomise_norms(plain)
    h, w = args.size
    if not args.no_calibrate:
        calibrate_norms(plain, torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(3)),
                        weight_scale=0.5)
    for p in plain.parameters():
        p.requires_grad_(False)
    if args.fast_path:
        results = {"size": [h, w], "threads": threads, "batch": args.batch, "runs": args.runs,
                   "batch_runs": args.batch_runs, "torch": torch.__version__,
                   "fast_path": time_fast_paths(plain, (h, w), args)}
        if args.json:
            write_json(args.json, results, indent=2)
        return 0
    folded = optimize_for_inference(plain)
    bf16 = optimize_for_inference(plain, precision="bf16")
    x1 = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    xb = torch.randn(args.batch, 3, h, w, generator=torch.Generator().manual_seed(2))

    def logits_of(model):
        def run(x):
            with torch.inference_mode():
                return model(x).parsing
        return run

    run_plain = logits_of(plain)
    variants = {"plain": run_plain, "folded": logits_of(folded), "bf16": logits_of(bf16)}
    if not args.no_onnx:
        from dml_csr.deploy import export_onnx
        from dml_csr.deploy.onnx import OnnxSession
        from dml_csr.models import ModelSpec
        path = os.path.join(tempfile.mkdtemp(prefix="bench_onnx_"), "model.onnx")
        t = time.perf_counter()
        exporter = export_onnx(plain, path, ModelSpec.for_dataset(
            "dml_csr", {}, "helen" if args.classes == 11 else "celebamask_hq", crop_size=(h, w)),
            dynamic_batch=True)
        print(f"exported ONNX ({exporter}) in {time.perf_counter() - t:.1f} s", flush=True)
        variants["onnxruntime"] = OnnxSession(path, threads=threads)     # the parser's runner
        if args.int8:
            from dml_csr.deploy.quantize import quantize_onnx
            qpath = path.replace("model.onnx", "model_int8.onnx")
            crops = [torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(20 + i)).numpy()
                     for i in range(4)]
            t = time.perf_counter()
            quantize_onnx(path, qpath, crops)
            print(f"quantized to int8 in {time.perf_counter() - t:.1f} s", flush=True)
            variants["onnxruntime-int8"] = OnnxSession(qpath, threads=threads)

    if args.pt2e:
        variants["pt2e-int8-compiled"] = pt2e_int8(plain, x1, [
            torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(20 + i)) for i in range(4)])

    results = {"size": [h, w], "threads": threads, "batch": args.batch, "runs": args.runs,
               "batch_runs": args.batch_runs, "torch": torch.__version__, "variants": {}}
    ref = run_plain(x1)
    results["reference_logits_max_abs"] = float(ref.abs().max())
    print(f"reference logits: max |value| {results['reference_logits_max_abs']:.3e}", flush=True)
    for name, fn in variants.items():
        out = fn(x1)                                       # also the warm-up run
        diff = float((out - ref).abs().max())
        agree = float((out.argmax(1) == ref.argmax(1)).double().mean())
        lat = timed(fn, x1, args.runs)
        tb = timed(fn, xb, args.batch_runs) if args.batch_runs else []
        r = {"latency_ms_median": 1000 * statistics.median(lat), "latency_ms_all": [1000 * v for v in lat],
             "throughput_img_s": (args.batch / statistics.median(tb)) if tb else None,
             "max_abs_diff_vs_plain": diff, "argmax_agreement": agree}
        results["variants"][name] = r
        print(f"{name:12s} latency b1 {r['latency_ms_median']:9.1f} ms (median of {args.runs})  "
              f"throughput b{args.batch} {r['throughput_img_s'] or float('nan'):6.2f} img/s  "
              f"max|diff| {diff:.2e}  argmax agrees {100 * agree:.3f}%", flush=True)
    base = results["variants"]["plain"]
    for name, r in results["variants"].items():
        r["latency_speedup"] = base["latency_ms_median"] / r["latency_ms_median"]
        if r["throughput_img_s"] and base["throughput_img_s"]:
            r["throughput_speedup"] = r["throughput_img_s"] / base["throughput_img_s"]
    scale = results["reference_logits_max_abs"]
    print("\n| variant | latency b1 (ms) | speed-up | throughput b%d (img/s) | speed-up | max abs diff "
          "(relative) | argmax agrees |" % args.batch)
    print("|---|---|---|---|---|---|---|")
    for name, r in results["variants"].items():
        tp = r["throughput_img_s"]
        print(f"| {name} | {r['latency_ms_median']:.0f} | {r['latency_speedup']:.2f}x | "
              f"{tp if tp is None else round(tp, 3)} | {r.get('throughput_speedup', float('nan')):.2f}x | "
              f"{r['max_abs_diff_vs_plain']:.1e} ({r['max_abs_diff_vs_plain'] / scale:.1e}) | "
              f"{100 * r['argmax_agreement']:.3f}% |")
    if args.parser:
        results["parser"] = time_parsers(plain, (h, w), run_plain, x1, args)
    if args.json:
        write_json(args.json, results, indent=2)
    return 0


def pt2e_int8(plain, x1, calibration):
    """The PT2E int8 form of ``plain`` (module docstring), compiled; returns its logits function."""
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x).parsing

    t = time.perf_counter()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(Logits(plain).eval(), (x1,)).module(), quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    inductor_config.freezing = True
    compiled = torch.compile(convert_pt2e(prepared))
    with torch.no_grad():
        compiled(x1)
    print(f"PT2E int8 prepared, calibrated, converted and compiled in "
          f"{time.perf_counter() - t:.1f} s", flush=True)

    def run(x):
        with torch.no_grad():
            return compiled(x)
    return run


def _parser_inputs(plain, size, args):
    """A checkpoint of ``plain``'s weights in a temporary folder and a ``size`` photo."""
    import cv2

    from dml_csr.deploy import read_image
    from dml_csr.models import ModelSpec
    from dml_csr.models.checkpoint import save_checkpoint
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    photos = os.path.join(repo, "tests", "data", "photos")
    image = cv2.resize(read_image(os.path.join(photos, "astronaut.jpg")), size[::-1])
    tmp = tempfile.mkdtemp(prefix="bench_parser_")
    os.environ["DMLCSR_CACHE"] = os.path.join(tmp, "cache")
    ckpt = os.path.join(tmp, "random.pth")
    kwargs = {"num_classes": args.classes, "layers": list(args.layers), "width_mult": args.width_mult}
    save_checkpoint(ckpt, plain.state_dict(), ModelSpec.for_dataset(
        "dml_csr", kwargs, "helen" if args.classes == 11 else "celebamask_hq", crop_size=size))
    return ckpt, image, photos


def time_fast_paths(plain, size, args) -> dict:
    """``--fast-path`` (module docstring): prints a table and returns its numbers."""
    from dml_csr.deploy import FaceParser
    ckpt, image, _ = _parser_inputs(plain, size, args)
    parsers = {"default (onnxruntime)": FaceParser.from_checkpoint(ckpt, detector=None),
               "backend=\"torch\" (folded)": FaceParser.from_checkpoint(ckpt, detector=None,
                                                                    backend="torch")}
    assert [p.backend_name for p in parsers.values()] == ["onnx", "torch"]
    photos = [image] * args.batch
    first = None
    out = {}
    for name, parser in parsers.items():             # warm-up, and the label maps' agreement
        res = parser(photos, detect=False)
        maps = np.stack(res.label_maps)
        first = maps if first is None else first
        out[name] = {"label_agreement": float((maps == first).mean()), "b1_s": [], "bn_s": []}
    for r in range(max(args.runs, args.batch_runs)):
        for name, parser in parsers.items():
            if r < args.runs:
                out[name]["b1_s"] += timed(lambda im: parser(im, detect=False), image, 1)
            if r < args.batch_runs:
                out[name]["bn_s"] += timed(lambda ims: parser(ims, detect=False), photos, 1)
        print(f"round {r + 1} done", flush=True)
    print("\n| parser call, detect=False | batch 1 (ms) | batch %d (img/s) | label maps agree |"
          % args.batch)
    print("|---|---|---|---|")
    for name, r in out.items():
        r["b1_ms"] = 1000 * statistics.median(r["b1_s"])
        r["bn_img_s"] = args.batch / statistics.median(r["bn_s"]) if r["bn_s"] else None
        print(f"| {name} | {r['b1_ms']:.0f} | {r['bn_img_s'] or float('nan'):.3f} | "
              f"{100 * r['label_agreement']:.3f}% |", flush=True)
    return out


def time_parsers(plain, size, run_plain, x1, args) -> dict:
    """The whole ``parser(image, detect=False)`` per precision against ``run_plain(x1)``, timed
    alternately (module docstring); prints a table and returns its numbers."""
    from dml_csr.deploy import FaceParser
    ckpt, image, photos = _parser_inputs(plain, size, args)
    out = {}
    print("\n| parser call, detect=False, %dx%d photo | parser (ms) | plain forward (ms) | "
          "speed-up |" % size[::-1])
    print("|---|---|---|---|")
    for precision in ("fp32", "bf16", "int8"):
        extra = {"calibrate": photos} if precision == "int8" else {}
        parser = FaceParser.from_checkpoint(ckpt, detector=None, precision=precision, **extra)
        parser(image, detect=False)                                        # warm-up
        tp, tm = [], []
        for _ in range(args.runs):
            tm += timed(run_plain, x1, 1)
            tp += timed(lambda im: parser(im, detect=False), image, 1)
        r = {"parser_ms": 1000 * statistics.median(tp), "plain_forward_ms": 1000 * statistics.median(tm)}
        r["speedup"] = r["plain_forward_ms"] / r["parser_ms"]
        out[precision] = r
        print(f"| {precision} | {r['parser_ms']:.0f} | {r['plain_forward_ms']:.0f} | "
              f"{r['speedup']:.2f}x |", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
