"""Does a turned face parse like an upright one? ``FaceParser`` on turned copies of test photos.

For every test image of a data set (default the quick start's synthetic set, all 40 test images;
``--limit N``) a "photo" is made: the image upscaled x2 (``cv2.INTER_LINEAR``) and padded by
``--pad`` (96) pixels with ``cv2.BORDER_REPLICATE``, so that turning it leaves no black corners near
the face; the label map the same way (``INTER_NEAREST``, replicate). The photo is parsed upright
(``res.combined[0]``) and turned by each of ``--angles`` (default +40 and -40 degrees,
counter-clockwise positive, about the photo centre, same canvas, border replicate); each turned
result is warped back onto the upright photo with the inverse turn (nearest; pixels that the turn
moved off the canvas come back as "not covered" and are not scored).

Per angle and detector setting:

- ``1 face``: photos in which the detector found exactly one face (upright / turned copy); photos
  in which it found none (in the upright or the turned copy) are counted as ``missed`` and left
  out of every number of that pair;
- ``agree fg``: pixel agreement between the warped-back map and the upright parse over the pixels
  where either is foreground (label > 0) and the turned copy covers; ``agree img``: agreement over
  all pixels of the original 128-px image area (which the turned copy always covers);
- ``F1 turned`` / ``F1 upright``: mean F1 (``dml_csr.eval.metrics``: one histogram pooled over
  the kept photos, mean over the 10 non-background classes) of the warped-back maps and of the
  upright parses against the ground truth, both over the original image area of the same kept
  photos;
- ``crop angle``: mean angle of the crop square (``res.angles``) of the turned copies' largest
  face.

Detector settings: ``upright crops`` (the default YuNet detector with landmarks: the crop turns
with the face) and ``axis-aligned`` (the same detector with its landmarks dropped,
``lambda im: det(im)[:, :5]``: the crops stay axis-aligned, as before upright cropping). One more
row parses the whole upscaled image as the face (``detect=False``), for the model's F1 on these
photos; one row turns the ground truth itself by each angle and back (the nearest-neighbour
resampling floor of ``agree``).

    .venv/bin/python benchmarks/bench_upright.py [--checkpoint runs/quickstart/best.pth]
        [--data data/synthetic] [--split test] [--limit N] [--angles 40 -40] [--pad 96]
        [--threads 2] [--json OUT.json]
"""
import argparse
import os
import sys
import time
import warnings

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dml_csr import FaceParser  # noqa: E402
from dml_csr.deploy.detect import make_detector  # noqa: E402
from dml_csr.deploy.fold import set_inference_threads  # noqa: E402
from dml_csr.deploy.parser import NoFaceWarning  # noqa: E402
from dml_csr.eval.metrics import compute_metrics, confusion_histogram  # noqa: E402
from dml_csr.utils.photos import turn_matrix, turn_photo  # noqa: E402
from dml_csr.files import write_json  # noqa: E402


def read_list(data: str, split: str, limit):
    pairs = []
    with open(os.path.join(data, f"{split}_list.txt")) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                pairs.append((os.path.join(data, split, parts[0]),
                              os.path.join(data, split, parts[1])))
    return pairs[:limit] if limit else pairs


def make_photo(image, label, pad: int):
    """Image x2 (linear) + replicate pad; label x2 (nearest) + replicate pad; the original area."""
    h, w = image.shape[:2]
    big = cv2.resize(image, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(label, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    photo = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    plab = cv2.copyMakeBorder(lab, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    area = (slice(pad, pad + 2 * h), slice(pad, pad + 2 * w))
    return big, lab, photo, plab, area


def turn_image(photo, angle: float):
    return turn_photo(photo, angle, expand=False, border="replicate")[0]


def turn_label(label_map, angle: float):
    return turn_photo(label_map, angle, expand=False, interpolation="nearest",
                      border="replicate")[0]


def turn_back(label_map, angle: float):
    """The turned copy's map warped back onto the upright photo (nearest) and the mask of the
    upright pixels the turned canvas covers."""
    h, w = label_map.shape
    inv = cv2.invertAffineTransform(turn_matrix((h, w), angle, expand=False)[0])
    back = cv2.warpAffine(label_map, inv, (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    covered = cv2.warpAffine(np.ones((h, w), np.uint8), inv, (w, h), flags=cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return back, covered


class Tally:
    """Counts and pooled histograms of one (detector setting, angle) row."""

    def __init__(self, k: int):
        self.k = k
        self.photos = self.one_up = self.one_turned = self.missed = self.kept = 0
        self.fg_agree = self.fg_total = self.img_agree = self.img_total = 0
        self.hist_turned = np.zeros((k, k), np.int64)
        self.hist_upright = np.zeros((k, k), np.int64)
        self.angles = []

    def as_dict(self, tokens):
        f1 = lambda h: compute_metrics(h, tokens)["mean_f1"] if h.sum() else None  # noqa: E731
        return {"photos": self.photos, "one_face_upright": self.one_up,
                "one_face_turned": self.one_turned, "missed": self.missed, "kept": self.kept,
                "agree_fg": 100.0 * self.fg_agree / max(1, self.fg_total),
                "agree_fg_pixels": int(self.fg_total),
                "agree_img": 100.0 * self.img_agree / max(1, self.img_total),
                "mean_f1_turned": f1(self.hist_turned), "mean_f1_upright": f1(self.hist_upright),
                "crop_angle_mean": float(np.mean(self.angles)) if self.angles else None,
                "crop_angle_sd": float(np.std(self.angles)) if self.angles else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="runs/quickstart/best.pth")
    ap.add_argument("--data", default="data/synthetic")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--angles", type=float, nargs="+", default=[40.0, -40.0],
                    help="turns in degrees, counter-clockwise positive")
    ap.add_argument("--pad", type=int, default=96, help="replicate border around the x2 image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    set_inference_threads(args.threads)
    cv2.setNumThreads(1)
    warnings.simplefilter("ignore", NoFaceWarning)
    det = make_detector("auto")
    settings = {"upright crops": FaceParser.from_checkpoint(args.checkpoint, detector=det),
                "axis-aligned": FaceParser.from_checkpoint(
                    args.checkpoint, detector=lambda im: det(im)[:, :5])}
    whole = settings["upright crops"]
    setup = time.perf_counter() - start
    tokens = list(whole.schema.tokens)
    k = len(tokens)
    pairs = read_list(args.data, args.split, args.limit)
    angles = [0.0] + list(args.angles)
    tallies = {(s, a): Tally(k) for s in settings for a in angles}
    floor = {a: [0, 0, 0, 0] for a in args.angles}        # fg agree, fg total, img agree, img total
    hist_whole = np.zeros((k, k), np.int64)

    for n, (ipath, lpath) in enumerate(pairs):
        image = cv2.imread(ipath, cv2.IMREAD_COLOR)
        label = cv2.imread(lpath, cv2.IMREAD_UNCHANGED)
        big, big_lab, photo, plab, area = make_photo(image, label, args.pad)
        gt_area = plab[area]
        hist_whole += confusion_histogram(big_lab, whole(big, detect=False).combined[0], k)
        for a in args.angles:                                # resampling floor on the ground truth
            back, covered = turn_back(turn_label(plab, a), a)
            fg = ((back > 0) | (plab > 0)) & covered
            f = floor[a]
            f[0] += int((back == plab)[fg].sum()); f[1] += int(fg.sum())
            f[2] += int((back[area] == gt_area).sum()); f[3] += gt_area.size
        for s, parser in settings.items():
            res = parser(photo)
            up, up_faces = res.combined[0], len(res.faces_of(0))
            for a in angles:
                t = tallies[(s, a)]
                t.photos += 1
                t.one_up += up_faces == 1
                if a == 0.0:
                    rt, back, covered, faces = res, up, np.ones(up.shape, bool), up_faces
                else:
                    rt = parser(turn_image(photo, a))
                    faces = len(rt.faces_of(0))
                    back, covered = turn_back(rt.combined[0], a)
                t.one_turned += faces == 1
                if up_faces == 0 or faces == 0:
                    t.missed += 1
                    continue
                t.kept += 1
                t.angles.append(float(rt.angles[rt.faces_of(0)[0]]))
                fg = ((back > 0) | (up > 0)) & covered
                t.fg_agree += int((back == up)[fg].sum())
                t.fg_total += int(fg.sum())
                t.img_agree += int((back[area] == up[area]).sum())
                t.img_total += up[area].size
                t.hist_turned += confusion_histogram(gt_area, back[area], k)
                t.hist_upright += confusion_histogram(gt_area, up[area], k)
        print(f"  {n + 1}/{len(pairs)} done, {time.perf_counter() - start:.0f} s", flush=True)

    elapsed = time.perf_counter() - start
    rows = {f"{s} {a:+.0f}": tallies[(s, a)].as_dict(tokens) for s in settings for a in angles}
    whole_f1 = compute_metrics(hist_whole, tokens)["mean_f1"]
    floors = {f"{a:+.0f}": {"agree_fg": 100.0 * f[0] / max(1, f[1]),
                            "agree_img": 100.0 * f[2] / max(1, f[3])}
              for a, f in floor.items()}

    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"\n{len(pairs)} images of {args.data}/{args.split}, photo "
          f"{photo.shape[1]}x{photo.shape[0]} (x2 + {args.pad} px replicate pad), "
          f"checkpoint {args.checkpoint}, {elapsed:.0f} s "
          f"(setup {setup:.0f} s)\n")
    print("| crops | turn (deg) | 1 face upright / turned | missed (left out) | kept | "
          "crop angle mean (sd) | agree fg (%) | agree img (%) | F1 turned | F1 upright |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in settings:
        for a in angles:
            r = rows[f"{s} {a:+.0f}"]
            ang = "-" if r["crop_angle_mean"] is None else \
                f"{r['crop_angle_mean']:+.1f} ({r['crop_angle_sd']:.1f})"
            print(f"| {s} | {a:+.0f} | {r['one_face_upright']} / {r['one_face_turned']} of "
                  f"{r['photos']} | {r['missed']} | {r['kept']} | {ang} | {fmt(r['agree_fg'])} | "
                  f"{fmt(r['agree_img'])} | {fmt(r['mean_f1_turned'])} | "
                  f"{fmt(r['mean_f1_upright'])} |")
    for a, f in floors.items():
        print(f"| ground truth turned and back (floor) | {a} | - | - | {len(pairs)} | - | "
              f"{f['agree_fg']:.2f} | {f['agree_img']:.2f} | - | - |")
    print(f"| whole x2 image as the face (detect=False) | 0 | - | - | {len(pairs)} | - | - | - | "
          f"{fmt(whole_f1)} | - |")
    print("\nmissed: no face in the upright or the turned copy; such pairs are left out of agree "
          "and F1. agree fg: pixels where either map is foreground and the turned canvas covers; "
          "agree img / F1: the original image area. F1: mean over the 10 non-background classes, "
          "one histogram pooled over the kept photos.")
    if args.json:
        write_json(args.json, {"images": len(pairs), "data": args.data, "split": args.split,
                               "checkpoint": args.checkpoint, "pad": args.pad,
                               "angles": args.angles,
                               "seconds": elapsed, "setup_seconds": setup, "rows": rows,
                               "resampling_floor": floors,
                               "whole_image_mean_f1": whole_f1}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
