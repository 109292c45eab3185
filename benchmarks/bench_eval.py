"""Speed of the evaluation protocol (``evaluate_model``) against the bare forward pass.

For each batch size: images per second of
- ``forward``: the model alone on a random (B, 3, 473, 473) batch under inference_mode;
- ``evaluate``: ``evaluate_model`` end to end on fabricated 512x512 images (read, crop, normalise,
  forward, upsample to 473x473, argmax, warp back, pooled histogram);
- ``protocol only``: ``evaluate_model`` with a free stand-in model that returns zero logits of the
  DML-CSR output size, i.e. everything but the network, as milliseconds per image.

The model is DML-CSR's inference form (no edge branch), full ResNet-101 by default.

    .venv/bin/python benchmarks/bench_eval.py [--n 4] [--batch-sizes 1 2 4] [--device cpu]
        [--threads 2] [--layers 3 4 23 3] [--crop 473] [--width-mult 1.0] [--size 512]
"""
import argparse
import os
import sys
import tempfile
import time

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from bench_data import fabricate  # noqa: E402
from dml_csr.data import FaceDataset  # noqa: E402
from dml_csr.eval.inference import evaluate_model  # noqa: E402
from dml_csr.models import DMLCSR, ParsingOutput  # noqa: E402
from dml_csr.models.contract import resize_logits_to  # noqa: E402


class ZeroLogits(nn.Module):
    """Stand-in with no compute: zero logits at 1/4 of the input, as DML-CSR returns."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(()))  # gives evaluate_model a device to check

    def forward(self, x, size=None):
        h, w = (x.shape[-2] + 3) // 4, (x.shape[-1] + 3) // 4
        logits = self.anchor.expand(x.shape[0], self.num_classes, h, w)
        return ParsingOutput(resize_logits_to(logits, size))     # the models' contract


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_forward(model, batch, n, crop, device):
    x = torch.randn(batch, 3, crop, crop, device=device)
    with torch.inference_mode():
        model(x)  # warm-up
        _sync(device)
        start = time.perf_counter()
        done = 0
        while done < n:
            model(x)
            done += batch
        _sync(device)
    return done / (time.perf_counter() - start)


def time_evaluate(model, dataset, batch, device, warm_up=True):
    if warm_up:  # the network itself was warmed up by time_forward
        evaluate_model(model, torch.utils.data.Subset(dataset, range(min(batch, len(dataset)))),
                       batch_size=batch, device=device)
    _sync(device)
    start = time.perf_counter()
    metrics = evaluate_model(model, dataset, batch_size=batch, device=device)
    _sync(device)
    return metrics["num_images"] / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="fabricated images (per timing)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, nargs=4, default=[3, 4, 23, 3])
    parser.add_argument("--crop", type=int, default=473)
    parser.add_argument("--width-mult", type=float, default=1.0, help="< 1 only for a smoke run")
    parser.add_argument("--size", type=int, default=512, help="side of the fabricated images")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True

    model = DMLCSR(11, with_edges=False, layers=args.layers,
                   width_mult=args.width_mult).to(device).eval()
    free = ZeroLogits(11).to(device)
    print(f"device {device} ({torch.get_num_threads()} threads), DML-CSR layers {args.layers}, "
          f"crop {args.crop}, {args.n} fabricated {args.size}x{args.size} images, load average "
          f"{os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        fabricate(root, args.n, size=args.size)
        dataset = FaceDataset(root, "train", crop_size=(args.crop, args.crop), augment="none",
                              with_edges=False)
        for b in args.batch_sizes:
            fwd = time_forward(model, b, args.n, args.crop, device)
            ev = time_evaluate(model, dataset, b, device, warm_up=False)
            protocol = time_evaluate(free, dataset, b, device)
            rows.append((b, fwd, ev, 1000.0 / protocol))
            print(f"  batch {b}: forward {fwd:.3f} img/s, evaluate {ev:.3f} img/s, "
                  f"protocol only {1000.0 / protocol:.1f} ms/img", flush=True)
    print()
    print("| batch | forward (img/s) | evaluate_model (img/s) | evaluate / forward | "
          "protocol only (ms/img) |")
    print("|---|---|---|---|---|")
    for b, fwd, ev, ms in rows:
        print(f"| {b} | {fwd:.3f} | {ev:.3f} | {ev / fwd:.2f} | {ms:.1f} |")


if __name__ == "__main__":
    main()
