"""Editing masks (``FaceParsingResult.mask``): time per mask and how feathering keeps the area.

    python benchmarks/bench_masks.py [--checkpoint runs/quickstart/best.pth] [--photo PATH]
        [--size 4000x3000] [--classes inner_face hair skin,nose] [--grow 0 5 -5 25]
        [--feather 0 4 16] [--reps 3] [--threads 2]

The photo (default ``tests/data/photos/astronaut.jpg``; ``--size WxH``: resized to it, to time a
camera-sized photo) is parsed once (``return_logits=True, probabilities=True``, so that soft masks
can be timed too); then for each class set, grow R and feather F, ``res.mask(0, classes,
grow=R, feather=F)`` is timed (best of ``--reps``) and scored:

- ``area``: the mask's area (sum of alpha / 255) over that of the hard grown set (feather 0): the
  feathering's change of area, in %;
- ``soft px``: the widest distance from the grown set's edge (pixel centre to the nearest pixel on
  the other side) at which alpha is neither 0 nor 255, against ``reach`` = ceil(F/2) sqrt(2), the
  blur kernel's corner;
- ``soft ms``: the same classes as a soft mask (``soft=True``, grow R, no feather).

The mask's cost does not depend on the network: ``--checkpoint`` only decides what the label map
looks like.
"""
import argparse
import os
import sys
import time

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _best(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times) * 1000.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=os.path.join(REPO, "runs", "quickstart", "best.pth"))
    ap.add_argument("--photo", default=os.path.join(REPO, "tests", "data", "photos",
                                                    "astronaut.jpg"))
    ap.add_argument("--size", default=None, help="WxH: resize the photo to it")
    ap.add_argument("--classes", nargs="+", default=["inner_face", "hair", "skin,nose"])
    ap.add_argument("--grow", nargs="+", type=float, default=[0, 5, -5, 25])
    ap.add_argument("--feather", nargs="+", type=float, default=[0, 4, 16])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    from dml_csr.deploy import FaceParser, set_inference_threads
    from dml_csr.deploy.masks import grow_mask
    from dml_csr.files import read_image
    set_inference_threads(args.threads)
    cv2.setNumThreads(args.threads)
    photo = read_image(args.photo)
    if args.size:
        w, h = (int(v) for v in args.size.lower().split("x"))
        photo = cv2.resize(photo, (w, h), interpolation=cv2.INTER_LINEAR)
    parser = FaceParser.from_checkpoint(args.checkpoint)
    res = parser(photo, return_logits=True, probabilities=True)
    h, w = photo.shape[:2]
    print(f"photo {w}x{h} ({w * h / 1e6:.1f} MP), {len(res)} face(s), {res.dataset} labels; "
          f"best of {args.reps}")
    print("| classes | grow | feather | ms | area change % | soft px | reach | soft ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for classes in args.classes:
        for grow in args.grow:
            hard = res.mask(0, classes, grow=grow) > 0
            # distance of each pixel centre to the nearest pixel on the other side of the edge
            inside = cv2.distanceTransform(hard.astype(np.uint8), cv2.DIST_L2,
                                           cv2.DIST_MASK_PRECISE)
            outside = cv2.distanceTransform((~hard).astype(np.uint8), cv2.DIST_L2,
                                            cv2.DIST_MASK_PRECISE)
            dist = np.where(hard, inside, outside)
            _, soft_ms = _best(lambda: res.mask(0, classes, grow=grow, soft=True), args.reps)
            for feather in args.feather:
                alpha, ms = _best(lambda: res.mask(0, classes, grow=grow, feather=feather),
                                  args.reps)
                area = 100.0 * (alpha.sum() / 255.0 / max(hard.sum(), 1) - 1.0)
                ramp = (alpha > 0) & (alpha < 255)
                widest = float(dist[ramp].max()) if ramp.any() else 0.0
                print(f"| {classes} | {grow:g} | {feather:g} | {ms:.1f} | {area:+.2f} | "
                      f"{widest:.2f} | {np.ceil(feather / 2) * np.sqrt(2):.2f} | {soft_ms:.1f} |")
            assert np.array_equal(grow_mask(res.mask(0, classes) > 0, grow), hard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
