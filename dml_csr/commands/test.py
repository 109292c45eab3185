"""Evaluate a checkpoint on a split with the release's protocol and print the paper's table.

    dml-csr test lapa --checkpoint runs/lapa/best.pth --split test \
        [--data-root data/lapa] [--out runs/lapa/metrics_test.json] [--save-pred DIR] \
        [--save-overlay DIR] [--flip | --no-flip] [--scales 0.75 1.0 1.25] [--batch-size 8] \
        [--workers 2] [--device cuda] [--precision fp32|bf16|int8 [--calibrate DIR]] \
        [--meta row=dml-csr] [section.key=value ...]

CONFIG is a name in configs/ or a YAML path; the model is built from it in its inference form (no
edge branch) and CHECKPOINT may be one of ours or the release's bare state_dict. Flags left out
take the config's ``eval.*`` values. The logic lives in dml_csr.eval.runner (run_test); see
docs/evaluation.md, "Model inference protocol".
"""
import argparse
import logging
import os

from ..cli import (add_debug_argument, add_precision_arguments, add_trust_argument,
                   check_precision_arguments)
from ..config import load_config
from ..eval.evaluate import parse_meta, write_result
from ..eval.runner import run_test
from ..eval.tables import format_result_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="config name (configs/NAME.yaml) or YAML path")
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    parser.add_argument("--checkpoint", required=True, help="our checkpoint or a release .pth")
    parser.add_argument("--split", default="test", help="ROOT/<split>_list.txt (default test)")
    parser.add_argument("--data-root", help="data root (default: the config's data.root)")
    parser.add_argument("--out", help="write the result JSON here (an existing file only with "
                                      "--overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier result at --out")
    parser.add_argument("--save-pred", metavar="DIR", help="write predicted id PNGs here")
    parser.add_argument("--save-logits", action="store_true",
                        help="also write crop-space logits to DIR/logits/*.npz (needs --save-pred)")
    parser.add_argument("--save-overlay", metavar="DIR", help="write colour overlays here")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="flip test-time augmentation (default: eval.flip)")
    parser.add_argument("--scales", type=float, nargs="+", default=None,
                        help="multi-scale test-time augmentation factors (default: eval.scales)")
    add_precision_arguments(parser)          # the model is scored as it runs in that precision
    parser.add_argument("--batch-size", type=int, default=None, help="default: eval.batch_size")
    parser.add_argument("--workers", type=int, default=None, help="default: eval.workers")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="extra meta entries, e.g. row=dml-csr method=ours (repeatable)")
    parser.add_argument("--map", metavar="MAP",
                        help="the checkpoint predicts another label set than the data root's: a "
                             "class map from its classes to the root's (a YAML path or a "
                             "shipped name; dml_csr/eval/classmap.py)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    add_trust_argument(parser)
    add_debug_argument(parser)
    args = parser.parse_intermixed_args(argv)
    check_precision_arguments(parser, args)
    if args.out and os.path.exists(args.out) and not args.overwrite:
        raise FileExistsError(f"{args.out} exists (an earlier result): pass --overwrite to "
                              f"replace it, or --out another file")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    cfg = load_config(args.config, args.overrides)
    device = args.device or ("cuda" if torch.cuda.is_available() and args.precision != "int8"
                             else "cpu")
    result = run_test(cfg, args.checkpoint, args.split, data_root=args.data_root, device=device,
                      batch_size=args.batch_size, workers=args.workers,
                      flip=args.flip, scales=args.scales, pred_dir=args.save_pred,
                      overlay_dir=args.save_overlay, save_logits=args.save_logits,
                      progress=args.progress, meta=parse_meta(args.meta),
                      precision=args.precision, calibrate=args.calibrate,
                      calibrate_count=args.calibrate_count,
                      trust_checkpoint=args.trust_checkpoint, class_map=args.map)
    print(format_result_table(result))
    name, value = result["headline"]["name"], result["headline"]["value"]
    value = "n/a" if value is None else f"{value:.2f}"
    print(f"\n{result['meta']['dataset']} {args.split}: {result['meta']['num_images']} images, "
          f"{name} = {value}, mIoU = {result['miou']:.2f} "
          f"({result['meta']['seconds']:.1f} s)")
    if args.out:
        write_result(result, args.out)
        print(f"wrote {args.out}")
    return 0
