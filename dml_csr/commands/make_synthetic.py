"""Write the procedural synthetic face-parsing data set (the quick start's and the tests' data).

    dml-csr synthetic OUT_DIR [--num-train 240 --num-valid 40 --num-test 40]
                                   [--size 128] [--seed 0] [--classes 11|19]
                                   [--noise-fraction 0.0] [--overwrite]

See docs/synthetic.md.
"""
import argparse
import time
from pathlib import Path

from ..cli import add_debug_argument
from ..data.synthetic import DEFAULT_COUNTS, DEFAULT_SIZE, NOISE_KINDS, make_synthetic


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="output root (new, empty, or a previous synthetic output)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_COUNTS["train"],
                        help=f"training images (default {DEFAULT_COUNTS['train']})")
    parser.add_argument("--num-valid", type=int, default=DEFAULT_COUNTS["valid"],
                        help=f"validation images (default {DEFAULT_COUNTS['valid']})")
    parser.add_argument("--num-test", type=int, default=DEFAULT_COUNTS["test"],
                        help=f"test images (default {DEFAULT_COUNTS['test']})")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"image side in pixels (default {DEFAULT_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--classes", type=int, choices=(11, 19), default=11,
                        help="11: Helen/LaPa order (schema synthetic); 19: CelebAMask-HQ order "
                             "(schema synthetic19) (default 11)")
    parser.add_argument("--noise-fraction", type=float, default=0.0,
                        help="fraction of TRAINING labels to corrupt (default 0)")
    parser.add_argument("--noise-kinds", nargs="+", choices=NOISE_KINDS, default=list(NOISE_KINDS),
                        help="corruptions to draw from (default: all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder that is not a previous synthetic output "
                             "(same-named files are replaced, others kept)")
    add_debug_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    info = make_synthetic(args.out_dir, num_train=args.num_train, num_valid=args.num_valid,
                          num_test=args.num_test, size=args.size, seed=args.seed,
                          classes=args.classes, noise_fraction=args.noise_fraction,
                          noise_kinds=args.noise_kinds, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    total = sum(info["counts"].values())
    counts = ", ".join(f"{k} {v}" for k, v in info["counts"].items())
    print(f"wrote {total} images ({counts}; {info['size']} px, schema {info['schema']}) to "
          f"{args.out_dir} in {seconds:.1f} s ({1000 * seconds / max(total, 1):.1f} ms/image)")
    if info["num_corrupted"]:
        print(f"corrupted {info['num_corrupted']} training labels (clean copies in "
              f"{info['clean_labels']}; details in synthetic_info.json)")
    return 0
