"""Parameters, FLOPs and CPU latency of a model form at a given input size.

Examples:
    python tools/complexity.py                               # DML-CSR, both forms, 473x473, 11 classes
    python tools/complexity.py --model fp_liif --size 256 --num-classes 19
    python tools/complexity.py --config synthetic            # the model of a config
    python tools/complexity.py --checkpoint runs/x/best.pth
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dml_csr.cli import add_debug_argument, add_trust_argument, run  # noqa: E402
from dml_csr.config import load_config  # noqa: E402
from dml_csr.data.schemas import get_schema  # noqa: E402
from dml_csr.files import write_json  # noqa: E402
from dml_csr.models import (FAMILIES, build_model, load_inference_model,  # noqa: E402
                            model_kwargs_from_config)
from dml_csr.utils.complexity import complexity_report  # noqa: E402


def _config_classes(cfg) -> int:
    """The class count of the config's data set: its root's description when the root is there
    (a data set of your own), else the built-in one of that name."""
    from dml_csr.data.layout import root_schema
    if os.path.isfile(os.path.join(cfg.data.root, "label_names.txt")):
        return root_schema(cfg.data.root, cfg.data.dataset or None).num_classes
    return get_schema(cfg.data.dataset).num_classes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="config name or path (its model section is used)")
    p.add_argument("--checkpoint", help="a self-describing checkpoint")
    p.add_argument("--model", default="dml_csr", choices=sorted(FAMILIES))
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--size", type=int, nargs="+", default=[473], help="input H [W]")
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
    h = args.size[0]
    w = args.size[1] if len(args.size) > 1 else h
    size = (args.batch, 3, h, w)

    builds = []
    if args.checkpoint:
        model, spec = load_inference_model(args.checkpoint,
                                           trust_checkpoint=args.trust_checkpoint)
        builds.append((f"{spec.family} (checkpoint)", model))
    else:
        if args.config:
            cfg = load_config(args.config, args.overrides)
            classes = _config_classes(cfg)
            name, kwargs = cfg.model.name, model_kwargs_from_config(cfg.model, classes)
        else:
            name, kwargs = args.model, {"num_classes": args.num_classes}
        if build_model(name, kwargs, training=True).has_edge_heads:   # two forms differ
            for form in args.forms.split(","):
                builds.append((f"{name} ({form} form)", build_model(name, kwargs, training=form == "train")))
        else:
            builds.append((name, build_model(name, kwargs)))

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


if __name__ == "__main__":
    sys.exit(run(main))
