"""Turn a hand-downloaded Helen, LaPa or CelebAMask-HQ archive into the project's data layout.

    dml-csr prepare lapa          RAW_DIR OUT_DIR [--link copy|hardlink|symlink]
    dml-csr prepare helen         RAW_DIR OUT_DIR [--source auto|original|relabelled]
                                                               [--holdout N] [--link ...]
    dml-csr prepare celebamask_hq RAW_DIR OUT_DIR [--partition FILE]
    dml-csr prepare custom        RAW_DIR OUT_DIR --name NAME [--flip-pairs 2,3 4,5]
                                               [--palette FILE] [--merge GROUP=tok,tok ...]
                                               [--headline mean_f1|overall_f1] [--seed 0]
                                               [--group NAME=tok,tok ...]
    dml-csr prepare check         ROOT [--splits train valid ...] [--dataset NAME]
                                               [--max-pixels N]

Common options: --workers N, --no-progress. ``check`` reads every listed image and label of a
prepared root (or any root in this layout) as training will, prints every problem and exits with
status 2 if there is one (0 and a one-line summary otherwise). Each preparation writes
OUT_DIR/dataset.json, the identity the other tools read the data set from. Every image is read by
``dml_csr.files.read_image``: one over the pixel limit (178,956,970 by default; ``--max-pixels``
for ``check``, ``$DMLCSR_MAX_PIXELS`` for all), truncated or undecodable is refused, named. Sample
names with whitespace are written with ``_`` (a list line cannot hold them). See
docs/datasets.md.
"""
import argparse
import logging
from pathlib import Path

from ..cli import add_debug_argument, add_max_pixels_argument
from ..data.prepare import (HELEN_SOURCES, LINK_MODES, prepare_celebamask_hq,
                            prepare_custom, prepare_helen, prepare_lapa)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("raw_dir", type=Path, help="the unpacked download (only read, never changed)")
        p.add_argument("out_dir", type=Path, help="the prepared root (outside RAW_DIR)")
        p.add_argument("--workers", type=int, default=0, help="worker processes (default: none)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        return p

    p = add("lapa", "LaPa: LaPa/{train,val,test}/{images,labels}")
    p.add_argument("--link", choices=LINK_MODES, default="copy",
                   help="how images and labels reach OUT_DIR (default: copy)")

    p = add("helen", "Helen: original release or relabelled HELEN*")
    p.add_argument("--source", choices=HELEN_SOURCES, default="auto",
                   help="original (Smith et al. 2013) or relabelled (HELEN*, Lin et al. 2019); "
                        "auto detects it from the layout")
    p.add_argument("--holdout", type=int, default=0,
                   help="HELEN* only: hold out N training images as the valid split (default 0: "
                        "valid_list.txt is empty)")
    p.add_argument("--link", choices=LINK_MODES, default="copy",
                   help="how verbatim files (images; HELEN* labels) reach OUT_DIR (default: copy)")

    p = add("celebamask_hq", "CelebAMask-HQ: merge part masks, resize images, CelebA split")
    p.add_argument("--partition", type=Path, default=None,
                   help="CelebA's list_eval_partition.txt (default: looked up in RAW_DIR, its "
                        "CelebAMask-HQ/ and Eval/ subfolders)")
    p.add_argument("--mapping", type=Path, default=None,
                   help="CelebA-HQ-to-CelebA-mapping.txt (default: in the data-set folder)")
    p.add_argument("--mask-size", type=int, default=512,
                   help="side of the part masks, hence of the outputs (default 512)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality (default 95)")

    p = add("custom", "a data set of your own: RAW/images, RAW/labels (ids), RAW/label_names.txt "
                      "(docs/datasets.md, 'Your own data set')")
    p.add_argument("--name", required=True, help="the data set's name (data.dataset when training)")
    p.add_argument("--flip-pairs", nargs="*", default=None, metavar="LEFT,RIGHT",
                   help="class ids a horizontal flip swaps, e.g. 2,3 4,5 (default: found from "
                        "the names: left X / right X; give it empty for none)")
    p.add_argument("--palette", type=Path, help="one 'R G B' line per class (default: distinct "
                                                "colours, black background)")
    p.add_argument("--merge", nargs="*", default=[], metavar="GROUP=TOKEN,TOKEN",
                   help="merged groups the scorer adds F1s for, e.g. eyes=left_eye,right_eye")
    p.add_argument("--headline", default="mean_f1", choices=("mean_f1", "overall_f1"),
                   help="the metric tables lead with (overall_f1 needs a group 'overall')")
    p.add_argument("--group", nargs="*", default=[], metavar="NAME=TOKEN,TOKEN",
                   help="named sets of classes that masks accept (dml-csr infer --mask), e.g. "
                        "lips=upper_lip,lower_lip")
    p.add_argument("--seed", type=int, default=0, help="of the 80/10/10 split without lists")
    p.add_argument("--link", choices=LINK_MODES, default="copy",
                   help="how images and labels reach OUT_DIR (default: copy)")

    p = sub.add_parser("check", help="check every listed image and label of a prepared root")
    p.add_argument("root", type=Path, help="the data root (label_names.txt, <split>_list.txt)")
    p.add_argument("--splits", nargs="+", default=None,
                   help="splits to check (default: every <split>_list.txt of ROOT)")
    p.add_argument("--dataset", dest="schema", default=None,
                   help="schema whose class count bounds the label ids (default: the one "
                        "ROOT/dataset.json names, else ROOT/label_names.txt's)")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (default: up to 8)")
    add_max_pixels_argument(p)
    add_debug_argument(parser)
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> int:
    """``check ROOT``: every problem on stdout, then the one-line error (status 2), or a summary."""
    from ..data.check import check_data
    from ..data.schemas import get_schema

    schema = get_schema(args.schema) if args.schema else None
    report = check_data(str(args.root), args.splits, schema=schema, workers=args.workers,
                        max_image_pixels=args.max_pixels)
    for problem in report.problems:
        print(problem)
    report.raise_if_problems(listed_above=True)
    print(report.summary())
    return 0


def _pairs(items):
    """``["2,3", "4,5"]`` -> ((2, 3), (4, 5)); None stays None (find them from the names)."""
    if items is None:
        return None
    pairs = []
    for item in items:
        left, sep, right = item.partition(",")
        if not (sep and left.strip().isdigit() and right.strip().isdigit()):
            raise ValueError(f"--flip-pairs expects LEFT,RIGHT class ids, got {item!r}")
        pairs.append((int(left), int(right)))
    return pairs


def _groups(items, option="--merge"):
    """``["eyes=le,re"]`` -> {"eyes": ["le", "re"]}."""
    groups = {}
    for item in items:
        group, sep, members = item.partition("=")
        if not sep or not group or not members:
            raise ValueError(f"{option} expects GROUP=TOKEN,TOKEN,..., got {item!r}")
        groups[group] = [m.strip() for m in members.split(",") if m.strip()]
    return groups


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if args.dataset == "check":
        return check(args)
    common = dict(workers=args.workers, progress=not args.no_progress)
    if args.dataset == "lapa":
        report = prepare_lapa(args.raw_dir, args.out_dir, link=args.link, **common)
    elif args.dataset == "helen":
        report = prepare_helen(args.raw_dir, args.out_dir, source=args.source,
                               holdout=args.holdout, link=args.link, **common)
    elif args.dataset == "custom":
        report = prepare_custom(args.raw_dir, args.out_dir, name=args.name,
                                flip_pairs=_pairs(args.flip_pairs), palette=args.palette,
                                merged=_groups(args.merge), headline=args.headline,
                                groups=_groups(args.group, "--group"),
                                seed=args.seed, link=args.link, **common)
    else:
        report = prepare_celebamask_hq(args.raw_dir, args.out_dir, mask_size=args.mask_size,
                                       mapping_file=args.mapping, partition_file=args.partition,
                                       jpeg_quality=args.jpeg_quality, **common)
    print(report.summary())
    return 0
