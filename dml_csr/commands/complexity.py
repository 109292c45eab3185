"""Parameters, FLOPs and CPU latency of a model form at a given input size.

Examples:
    dml-csr complexity                          # DML-CSR, both forms, 473x473, 11 classes
    dml-csr complexity --model fp_liif --num-classes 19
    dml-csr complexity --config synthetic       # the model of a config, at its crop size
    dml-csr complexity --checkpoint runs/x/best.pth
"""
import argparse
import os

import torch

from ..cli import add_debug_argument, add_trust_argument
from ..config import load_config
from ..data.schemas import get_schema
from ..files import write_json
from ..models import (FAMILIES, build_model, load_inference_model,
                      model_kwargs_from_config)
from ..utils.complexity import complexity_report


def _config_classes(cfg) -> int:
    """The class count of the config's data set: its root's description when the root is there
    (a data set of your own), else the built-in one of that name."""
    from ..data.layout import root_schema
    if os.path.isfile(os.path.join(cfg.data.root, "label_names.txt")):
        return root_schema(cfg.data.root, cfg.data.dataset or None).num_classes
    return get_schema(cfg.data.dataset).num_classes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="config name or path (its model section is used)")
    p.add_argument("--checkpoint", help="a self-describing checkpoint")
    p.add_argument("--model", default="dml_csr", choices=sorted(FAMILIES))
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--size", type=int, nargs="+",
                   help="input H [W] (default: the model's own: the checkpoint's or config's "
                        "crop size, else the family's benchmark crop, e.g. 473 for DML-CSR, "
                        "256 for FP-LIIF)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--forms", default="infer,train", help="DML-CSR forms: infer,train")
    p.add_argument("--output-size", type=int, nargs="*",
                   help="logits size H W (default: each family's own grid)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--json", help="also write the reports here")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    add_trust_argument(p)
    add_debug_argument(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    builds = []
    if args.checkpoint:
        model, spec = load_inference_model(args.checkpoint,
                                           trust_checkpoint=args.trust_checkpoint)
        builds.append((f"{spec.family} (checkpoint)", model))
        own_size = spec.crop_size
    else:
        if args.config:
            cfg = load_config(args.config, args.overrides)
            classes = _config_classes(cfg)
            name, kwargs = cfg.model.name, model_kwargs_from_config(cfg.model, classes)
            own_size = cfg.data.crop_size
        else:
            name, kwargs = args.model, {"num_classes": args.num_classes}
            own_size = FAMILIES[name].input_size
        if build_model(name, kwargs, training=True).has_edge_heads:   # two forms differ
            for form in args.forms.split(","):
                builds.append((f"{name} ({form} form)", build_model(name, kwargs, training=form == "train")))
        else:
            builds.append((name, build_model(name, kwargs)))

    h, w = (args.size * 2)[:2] if args.size else own_size
    size = (args.batch, 3, h, w)
    reports = []
    for label, model in builds:
        fkw = {"size": tuple(args.output_size)} if args.output_size else {}
        r = complexity_report(model, size, latency=not args.no_latency, warmup=args.warmup,
                              runs=args.runs, **fkw)
        r["model"] = label
        reports.append(r)
        line = f"{label:28s} params {r['params']:>12,d}  FLOPs {r['gflops']:8.2f} G ({r['gmacs']:.2f} GMACs) at {list(size)}"
        if "median_ms" in r:
            line += f"  CPU latency median {r['median_ms']:.1f} ms ({r['threads']} threads)"
        print(line)
    if args.json:
        write_json(args.json, reports, indent=2)
    return reports
