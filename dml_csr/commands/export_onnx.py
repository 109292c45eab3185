"""Export the inference form of a checkpoint to ONNX and verify it against PyTorch with onnxruntime.

    dml-csr export --checkpoint CKPT --out model.onnx [--dataset NAME]
        [--size 473 473] [--dynamic-batch] [--opset 17] [--output-size H W]
        [--exporter auto|torchscript|dynamo] [--no-fold]
        [--int8 --calibrate DIR [--calibrate-count 32]]

The output is the parsing logits at ``--output-size`` (fixed); without it, each family's own grid:
DML-CSR's (N, K, H/4, W/4) (no edge branch), FP-LIIF's crop size. Norms are folded into the convolutions
first (``--no-fold`` keeps them). The file carries the label facts as metadata (dataset, class
tokens and names, palette, channel order, crop size), so ``FaceParser.from_onnx(path)`` and
``dml-csr infer --onnx`` need nothing else. The max abs difference to PyTorch on a random input is
printed; the exit code is 1 when it exceeds ``--tol``.

``--int8``: the float32 file is quantized (onnxruntime static QDQ: per-channel int8 weights, uint8
activations calibrated on ``--calibrate-count`` images of ``--calibrate DIR``, a prepared data
root or a folder of images; the family's ``float_layers`` stay float32;
``dml_csr/deploy/quantize.py``) and ``--out`` is the int8 file, always with a dynamic batch
(onnxruntime ran the fixed-batch int8 graph of the full DML-CSR 1.7x slower); the
share of output pixels whose label agrees with PyTorch's float32 on the calibration crops is
printed instead of the tolerance check (int8 is not exact; docs/inference.md).
"""
import argparse
import os

from ..cli import add_debug_argument, add_trust_argument


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dataset", help="label schema: helen or lapa for an 11-class release "
                                      "checkpoint (19 classes: celebamask_hq, found alone)")
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="crop size (default: the checkpoint's)")
    ap.add_argument("--channel-order", choices=("bgr", "rgb"), help="override the checkpoint's")
    ap.add_argument("--dynamic-batch", action="store_true")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--output-size", type=int, nargs=2, metavar=("H", "W"), help="logits size (default: the family's own grid)")
    ap.add_argument("--exporter", default="auto", choices=("auto", "torchscript", "dynamo"))
    ap.add_argument("--no-fold", action="store_true", help="export the norms unfolded")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--int8", action="store_true", help="write an int8 (QDQ) file, calibrated")
    ap.add_argument("--calibrate", metavar="DIR", help="calibration images for --int8: a data "
                                                     "root (train_list.txt) or an image folder")
    ap.add_argument("--calibrate-count", type=int, default=32, help="images used (default 32)")
    add_trust_argument(ap)
    add_debug_argument(ap)
    args = ap.parse_args(argv)
    if args.int8 != bool(args.calibrate):
        ap.error("--int8 and --calibrate DIR go together")

    import numpy as np
    import onnxruntime as ort
    import torch

    from ..deploy.onnx import ONNX_INPUT, export_onnx, read_onnx_metadata
    from ..files import check_not_input
    from ..models import load_inference_model

    check_not_input(args.out, [args.checkpoint], "--out")
    model, spec = load_inference_model(args.checkpoint, dataset=args.dataset,
                                       trust_checkpoint=args.trust_checkpoint)
    spec = spec.with_input(args.size, args.channel_order)
    if args.int8:
        return export_int8(args, model, spec)
    used = export_onnx(model, args.out, spec, dynamic_batch=args.dynamic_batch, opset=args.opset,
                       output_size=args.output_size, fold_bn=not args.no_fold,
                       exporter=args.exporter)
    crop = spec.crop_size
    x = torch.randn(2 if args.dynamic_batch else 1, 3, *crop, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.eval().export_logits(x, args.output_size)
    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    out = sess.run(None, {ONNX_INPUT: x.numpy()})[0]
    diff = float(np.abs(out - ref.numpy()).max())
    meta = read_onnx_metadata(args.out)
    import onnx
    opset = max(o.version for o in onnx.load(args.out, load_external_data=False).opset_import
                if o.domain in ("", "ai.onnx"))     # the dynamo exporter may have written 18
    print(f"exported {args.out} with the {used} exporter (opset {opset}, "
          f"{'dynamic' if args.dynamic_batch else 'fixed'} batch, norms {'kept' if args.no_fold else 'folded'})")
    print(f"metadata: dataset={meta.dataset} classes={meta.num_classes} "
          f"channel_order={meta.channel_order} crop_size={list(meta.crop_size)}")
    print(f"output {tuple(out.shape)}; max abs difference to PyTorch: {diff:.3e}")
    return 0 if diff <= args.tol else 1


def export_int8(args, model, spec) -> int:
    """``--int8``: the float32 graph exported into a temporary folder, quantized into ``--out``,
    and the labels' agreement with PyTorch float32 on the calibration crops printed."""
    import tempfile

    import numpy as np
    import onnxruntime as ort
    import torch

    from ..deploy.onnx import ONNX_INPUT, export_onnx, read_onnx_metadata
    from ..deploy.quantize import calibration_crops, calibration_images, quantize_onnx
    from ..files import check_not_input

    paths = calibration_images(args.calibrate, args.calibrate_count)
    check_not_input(args.out, paths, "--out")
    crops = calibration_crops(paths, spec)
    with tempfile.TemporaryDirectory(prefix="dml_csr_int8_") as folder:
        float_path = os.path.join(folder, "float32.onnx")
        export_onnx(model, float_path, spec, dynamic_batch=True, opset=args.opset,
                    output_size=args.output_size, fold_bn=not args.no_fold,
                    exporter=args.exporter)
        quantize_onnx(float_path, args.out, crops,
                      calibration={"source": os.path.abspath(args.calibrate),
                                   "count": args.calibrate_count})
    sess = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
    agree = []
    for x in crops:
        with torch.no_grad():
            ref = model.eval().export_logits(torch.from_numpy(x), args.output_size).numpy()
        agree.append((sess.run(None, {ONNX_INPUT: x})[0].argmax(1) == ref.argmax(1)).mean())
    meta = read_onnx_metadata(args.out)
    print(f"exported {args.out}: int8 (QDQ), calibrated on {len(crops)} images of "
          f"{args.calibrate}; {meta.dataset}, {meta.num_classes} classes, crop "
          f"{list(meta.crop_size)}")
    print(f"labels agreeing with PyTorch float32 on the calibration crops: "
          f"{100 * float(np.mean(agree)):.2f} %")
    return 0
