"""Video parsing without flicker: ``FaceParser.video`` on clips made from a still photo along a
known camera path, frame by frame (``smooth=0``) against smoothed (``smooth=S``).

    python benchmarks/bench_video.py [--checkpoint runs/quickstart/best.pth]
        [--fp-liif-checkpoint CKPT] [--precisions fp32 bf16 int8] [--smooth 0 0.3 0.5 0.7]
        [--filters MIN_CUTOFF:BETA:D_CUTOFF ...] [--frames 48] [--fps 25] [--photo PATH]
        [--size 640x360] [--pan 0.2 0.05] [--zoom 1.0 1.15] [--jitter 1.0] [--noise 2.0]
        [--jpeg 85] [--seed 0] [--unthreaded 0 0.7] [--ablate no-motion nearest-edges
        bilinear-shift] [--parse-every 1] [--threads 2] [--json OUT.json]

Clip (``dml_csr/utils/clips.py``): the still photo is by default the two portraits of
``tests/data/photos`` side by side on a grey ``--size`` canvas (``bench_photo.tiled_photo``, grid
2 x 1, each filling 0.9 of its half: two faces, so that track ids can swap), or ``--photo PATH``
(resized to ``--size`` when given). ``camera_path``: ``--frames`` frames (default 48, about 2 s at
``--fps`` 25) of a view panning by ``--pan`` of the photo's (width, height) and zooming from
``--zoom`` first to last, plus a random shift of ``--jitter`` px (standard deviation per axis) on
every frame; ``make_clip`` renders them (``INTER_LINEAR``, grey border), adds Gaussian sensor noise
(``--noise`` grey levels) and passes each through a JPEG round trip (``--jpeg`` quality).

For every model (DML-CSR ``--checkpoint``; FP-LIIF ``--fp-liif-checkpoint`` when given), precision
(``FaceParser.from_checkpoint(ckpt, precision=P)``; int8 calibrated once on
``tests/data/photos``, its files in a cache folder of the benchmark's own, removed at the end) and
smoothing S (``--smooth``; S > 0 once per ``--filters`` geometry filter, default the package's
``GEOMETRY_FILTER``), the clip is parsed with ``parser.video(frames, smooth=S, fps=FPS,
geometry_filter=...)`` and scored against the known path:

- ``flicker``: each frame's combined label map is moved back onto the photo with the inverse of its
  matrix (nearest); between consecutive frames, over the "face pixels" (foreground, label > 0, in
  either frame, inside both frames' view), the share whose label differs; mean over the clip's
  frame pairs, in %. ``floor``: the same for a parser that is perfectly stable: the still
  photo's own probabilities (``return_logits``, each face's on its region, the photo overlap
  rule) moved into every frame (bilinear), their argmax taken on the frame's pixel grid, and
  moved back; what is left is the labels' edges stepping from one frame's pixel grid to the
  next, which no smoothing removes;
- ``fidelity``: the still photo parsed once by the same parser (``parser(photo)``), its map moved
  into every frame (nearest): per frame the share of face pixels (foreground in either, inside the
  view) with the same label, mean over frames, in %; ``F1``: mean F1 over the face classes
  (``dml_csr.eval.metrics``, one histogram pooled over the clip) of the frames' maps against these
  references. Both compare with the model's own still parse, not a ground truth;
- ``swaps``: each face of a frame is given to the true face whose centre (the still parse's crop
  centre moved by the frame's matrix) is nearest to its crop centre; a swap is a frame where a
  track's true face differs from the one it had; ``ids>1``: true faces that were given more than
  one track id over the clip; ``missed``: (frame, true face) pairs with no face given;
- ``centre err``: distance of each face's crop centre (``result.centers``) from its true centre,
  in px of the frame and in % of the true crop size (the still parse's ``scales`` times the zoom),
  mean and max; ``lag``: the mean of that error's component along the true motion, backwards
  positive (a filter that trails the motion shows it), in px and in frames of the true speed;
- ``fps``: frames per second of the ``parser.video`` loop alone (``threaded=True``; the scoring
  runs after it), and with ``threaded=False`` for S in ``--unthreaded``. Wall clock, noisy on a
  shared machine: the load average is printed.

``--ablate``: each S > 0 again with one part of the video code taken out (``variant``): the past
average left unmoved (``no-motion``), the crop's labels warped back nearest (``nearest-edges``),
a bilinear shift of the past average (``bilinear-shift``).

Notes: the numbers compare smoothing with frame-by-frame parsing of the same model; a model trained
on the quick start's synthetic faces parses real portraits roughly, which shows in fidelity and F1
(the agreement of a frame with the still) but not in what smoothing changes.
"""
import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import warnings

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_photo import parse_wxh, tiled_photo  # noqa: E402
from dml_csr.files import write_json  # noqa: E402
from dml_csr.utils.clips import camera_path, make_clip, move_points, to_frame, to_photo  # noqa: E402

PHOTOS = os.path.join(ROOT, "tests", "data", "photos")


def parse_filter(text: str):
    try:
        a, b, c = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN_CUTOFF:BETA:D_CUTOFF, got {text!r}")
    return {"min_cutoff": a, "beta": b, "d_cutoff": c}


def load_photo(args):
    if args.photo:
        from dml_csr.deploy import read_image
        image = read_image(args.photo)
        if args.size and tuple(args.size) != (image.shape[1], image.shape[0]):
            image = cv2.resize(image, tuple(args.size), interpolation=cv2.INTER_AREA)
        return image
    return tiled_photo(args.size or (640, 360), (2, 1), 0.9)


def flicker(maps, path, size):
    """Mean share (%) of face pixels whose label changes between consecutive frames, the maps
    moved back onto the photo."""
    shares, prev = [], None
    for lab, m in zip(maps, path):
        back, seen = to_photo(lab, m, size)
        if prev is not None:
            face = ((back > 0) | (prev[0] > 0)) & seen & prev[1]
            if face.any():
                shares.append(float((back != prev[0])[face].mean()))
        prev = (back, seen)
    return 100.0 * float(np.mean(shares)) if shares else None


def still_probabilities(parser, photo):
    """(K, H, W) probabilities of the still photo: each face's on its region, background 1
    elsewhere; where faces overlap, the photo overlap rule (foreground over background, then
    the surer face)."""
    r = parser(photo, return_logits=True, probabilities=True)
    k = r.logits[0].shape[0] if r.logits else len(parser.schema.tokens)
    h, w = photo.shape[:2]
    probs = np.zeros((k, h, w), np.float32)
    probs[0] = 1.0
    for j in range(len(r.centers)):
        x0, y0, x1, y1 = (int(v) for v in r.regions[j])
        p = r.logits[j]
        lab, conf = p.argmax(0), p.max(0)
        here = probs[:, y0:y1, x0:x1]
        take = (lab > 0) & ((here.argmax(0) == 0) | (conf > here.max(0)))
        here[:, take] = p[:, take]
    return probs


def grid_floor(probs, path, size):
    """The flicker of a perfectly stable parser (module docstring, ``floor``)."""
    h, w = size
    maps = []
    for m in path:
        moved = [cv2.warpAffine(c, m, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=float(i == 0))
                 for i, c in enumerate(probs)]
        maps.append(np.stack(moved).argmax(0).astype(np.uint8))
    return flicker(maps, path, size)


def score(frames_out, still, path, photo_size, frame_size, k, tokens):
    """The numbers of one parsed clip (module docstring)."""
    from dml_csr.eval.metrics import compute_metrics, confusion_histogram
    maps = [f.result.combined[0] for f in frames_out]
    agree, hist = [], np.zeros((k, k), np.int64)
    true_c = [move_points(m, still.centers) for m in path]
    zoom = [float(np.sqrt(abs(np.linalg.det(m[:, :2])))) for m in path]
    for lab, m in zip(maps, path):
        ref, covered = to_frame(still.combined[0], m, frame_size)
        face = ((ref > 0) | (lab > 0)) & covered
        if face.any():
            agree.append(float((ref == lab)[face].mean()))
        hist += confusion_histogram(ref[covered], lab[covered], k)
    fid_f1 = compute_metrics(hist, tokens)["mean_f1"] if hist.sum() else None
    # tracks against the true faces
    n_true = len(still.centers)
    owner, ids_of = {}, [set() for _ in range(n_true)]
    swaps = missed = 0
    err_px, err_pct, lag_px, speeds = [], [], [], []
    for t, f in enumerate(frames_out):
        given = set()
        for j, tid in enumerate(f.tracks):
            if n_true == 0:
                break
            c = np.asarray(f.result.centers[j], np.float64)
            d = np.linalg.norm(true_c[t] - c, axis=1)
            i = int(np.argmin(d))
            given.add(i)
            ids_of[i].add(int(tid))
            if tid in owner and owner[tid] != i:
                swaps += 1
            owner[tid] = i
            err_px.append(float(d[i]))
            err_pct.append(100.0 * float(d[i]) / (float(still.scales[i]) * zoom[t]))
            if 0 < t < len(path) - 1:                       # the true motion at t (central)
                v = (true_c[t + 1][i] - true_c[t - 1][i]) / 2.0
                s = float(np.linalg.norm(v))
                if s > 1e-6:
                    lag_px.append(float(np.dot(true_c[t][i] - c, v / s)))
                    speeds.append(s)
        missed += n_true - len(given)
    mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
    lag = mean(lag_px)
    speed = mean(speeds)
    return {"flicker": flicker(maps, path, photo_size),
            "fidelity": 100.0 * mean(agree) if agree else None, "fidelity_f1": fid_f1,
            "swaps": swaps, "faces_with_several_ids": sum(len(s) > 1 for s in ids_of),
            "track_ids": len(owner), "missed": missed,
            "centre_err_px": mean(err_px), "centre_err_px_max": max(err_px) if err_px else None,
            "centre_err_pct": mean(err_pct),
            "centre_err_pct_max": max(err_pct) if err_pct else None,
            "lag_px": lag, "lag_frames": lag / speed if lag is not None and speed else None,
            "true_speed_px_per_frame": speed}


def quiet_process(threads: int) -> None:
    """The network on ``threads`` CPU threads, OpenCV on one; no warning per frame without a
    face."""
    from dml_csr.deploy.fold import set_inference_threads
    from dml_csr.deploy.parser import NoFaceWarning
    warnings.simplefilter("ignore", NoFaceWarning)
    set_inference_threads(threads)
    cv2.setNumThreads(1)


VARIANTS = ("no-motion", "nearest-edges", "bilinear-shift")


@contextlib.contextmanager
def variant(name, parser):
    """The video code with one of its parts taken out (``--ablate``): ``no-motion``: the past
    average is not moved with the picture (``crop_motion`` says it did not move);
    ``nearest-edges``: the labels are the crop's, warped back nearest (``fine_edges`` off);
    ``bilinear-shift``: the past average is moved bilinearly instead of bicubically."""
    from dml_csr.deploy import video
    saved = video.crop_motion, video.shift_maps, parser.parse_faces
    if name == "no-motion":
        video.crop_motion = lambda a, b: (0.0, 0.0)
    elif name == "nearest-edges":
        plain = parser.parse_faces
        parser.parse_faces = lambda *a, **kw: plain(*a, **dict(kw, fine_edges=False))
    elif name == "bilinear-shift":
        shift = video.shift_maps
        video.shift_maps = lambda maps, dx, dy: shift(maps, dx, dy, mode="bilinear")
    elif name is not None:
        raise ValueError(f"unknown variant {name!r}")
    try:
        yield
    finally:
        video.crop_motion, video.shift_maps = saved[:2]
        if name == "nearest-edges":
            del parser.parse_faces


def run_clip(parser, frames, smooth, fps, threaded, geometry_filter, parse_every=1):
    start = time.perf_counter()
    out = list(parser.video(frames, smooth=smooth, fps=fps, threaded=threaded,
                            geometry_filter=geometry_filter if smooth > 0 else None,
                            parse_every=parse_every if smooth > 0 else 1))
    return out, len(frames) / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="runs/quickstart/best.pth", help="DML-CSR")
    ap.add_argument("--fp-liif-checkpoint", help="FP-LIIF (not measured when not given)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"],
                    choices=["fp32", "bf16", "int8"])
    ap.add_argument("--smooth", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    ap.add_argument("--filters", type=parse_filter, nargs="+", default=None,
                    help="one-euro geometry filters MIN_CUTOFF:BETA:D_CUTOFF for S > 0 "
                         "(default: the package's GEOMETRY_FILTER)")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--photo", help="still photo (default: the two test portraits side by side)")
    ap.add_argument("--size", type=parse_wxh, default=None,
                    help="photo and frame size WxH (default 640x360; --photo: its own)")
    ap.add_argument("--pan", type=float, nargs=2, default=[0.2, 0.05])
    ap.add_argument("--zoom", type=float, nargs=2, default=[1.0, 1.15])
    ap.add_argument("--jitter", type=float, default=1.0)
    ap.add_argument("--noise", type=float, default=2.0)
    ap.add_argument("--jpeg", type=int, default=85)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unthreaded", type=float, nargs="*", default=[0.0, 0.7],
                    help="S values also timed with threaded=False")
    ap.add_argument("--ablate", nargs="*", default=[], choices=VARIANTS,
                    help="also run each S > 0 with one part of the video code taken out "
                         "(first --filters filter)")
    ap.add_argument("--parse-every", type=int, default=1,
                    help="S > 0: the network on every N-th frame only (parse_video parse_every)")
    ap.add_argument("--threads", type=int, default=2, help="the network's CPU threads")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    from dml_csr import FaceParser
    from dml_csr.deploy.video import GEOMETRY_FILTER
    quiet_process(args.threads)

    photo = load_photo(args)
    size = photo.shape[:2]
    path = camera_path(args.frames, size, seed=args.seed, pan=args.pan, zoom=args.zoom,
                       jitter=args.jitter)
    frames = make_clip(photo, path, noise=args.noise, jpeg_quality=args.jpeg, seed=args.seed)
    smooth_path = camera_path(args.frames, size, seed=args.seed, pan=args.pan, zoom=args.zoom,
                              jitter=0.0)
    filters = args.filters or [dict(GEOMETRY_FILTER)]
    models = [("DML-CSR", args.checkpoint)]
    if args.fp_liif_checkpoint:
        models.append(("FP-LIIF", args.fp_liif_checkpoint))

    tmp = tempfile.mkdtemp(prefix="bench_video_")
    os.environ["DMLCSR_CACHE"] = os.path.join(tmp, "cache")      # never the user's own cache
    rows = []
    try:
        for name, ckpt in models:
            for precision in args.precisions:
                extra = {"calibrate": PHOTOS} if precision == "int8" else {}
                t = time.perf_counter()
                parser = FaceParser.from_checkpoint(ckpt, precision=precision, **extra)
                load_s = time.perf_counter() - t
                still = parser(photo)
                tokens = list(parser.schema.tokens)
                k = len(tokens)
                floor = grid_floor(still_probabilities(parser, photo), path, size)
                print(f"{name} {precision}: loaded in {load_s:.0f} s, still photo "
                      f"{len(still.centers)} faces", flush=True)
                settings = [(0.0, None, None)] + [(s, f, None) for s in args.smooth if s > 0
                                                  for f in filters]
                if 0.0 not in args.smooth:
                    settings = settings[1:]
                settings += [(s, filters[0], v) for v in args.ablate for s in args.smooth if s > 0]
                for s, gf, v in settings:
                    with variant(v, parser):
                        out, fps = run_clip(parser, frames, s, args.fps, True, gf,
                                            args.parse_every)
                    r = {"model": name, "checkpoint": ckpt, "precision": precision, "smooth": s,
                         "geometry_filter": gf, "variant": v, "fps": fps,
                         "flicker_floor": floor}
                    r.update(score(out, still, path, size, size, k, tokens))
                    if s in args.unthreaded and gf in (None, filters[0]) and v is None:
                        r["fps_unthreaded"] = run_clip(parser, frames, s, args.fps, False, gf,
                                                       args.parse_every)[1]
                    rows.append(r)
                    print(f"  S={s:g} {gf or ''} {v or ''}: flicker {fmt(r['flicker'])} %, fidelity "
                          f"{fmt(r['fidelity'])} %, {fps:.1f} fps, "
                          f"{time.perf_counter() - start:.0f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - start
    true_speed = float(np.mean([np.linalg.norm(b[:, 2] - a[:, 2])
                                for a, b in zip(smooth_path, smooth_path[1:])])) \
        if len(path) > 1 else 0.0
    h, w = size
    print(f"\nclip: {args.frames} frames {w}x{h} at {args.fps:g} fps, pan {args.pan} of the photo, "
          f"zoom {args.zoom[0]:g} -> {args.zoom[1]:g}, jitter {args.jitter:g} px, noise "
          f"{args.noise:g}, JPEG {args.jpeg}; photo {'--photo ' + args.photo if args.photo else 'two test portraits'}; "
          f"{elapsed:.0f} s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| model | precision | S | geometry filter | flicker (%) | floor (%) | fidelity (%) | "
          "F1 vs still | swaps | ids>1 | missed | centre err px mean / max | "
          "centre err % of crop mean / max | lag px (frames) | fps threaded | fps unthreaded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gf = r["geometry_filter"]
        gf = "-" if gf is None else f"{gf['min_cutoff']:g}:{gf['beta']:g}:{gf['d_cutoff']:g}"
        if r["variant"]:
            gf += f", {r['variant']}"
        print(f"| {r['model']} | {r['precision']} | {r['smooth']:g} | {gf} | {fmt(r['flicker'])} | "
              f"{fmt(r['flicker_floor'])} | {fmt(r['fidelity'])} | {fmt(r['fidelity_f1'])} | "
              f"{r['swaps']} | {r['faces_with_several_ids']} | {r['missed']} | "
              f"{fmt(r['centre_err_px'])} / {fmt(r['centre_err_px_max'])} | "
              f"{fmt(r['centre_err_pct'])} / {fmt(r['centre_err_pct_max'])} | "
              f"{fmt(r['lag_px'])} ({fmt(r['lag_frames'])}) | {r['fps']:.1f} | "
              f"{fmt(r.get('fps_unthreaded'), 1)} |")
    print("\nflicker: face pixels changing label between consecutive frames, maps moved back onto "
          "the photo; floor: a perfectly stable parser's (the still's probabilities moved into "
          "each frame, labelled on its pixel grid). fidelity / F1: "
          "agreement with the still photo's own parse moved into each frame. geometry filter: "
          "one-euro min_cutoff:beta:d_cutoff (S > 0 only). lag: centre error along the true "
          f"motion (true speed {true_speed:.2f} px/frame), positive = behind.")
    if args.json:
        write_json(args.json, {"frames": args.frames, "fps": args.fps, "size": [w, h],
                               "pan": args.pan, "zoom": args.zoom, "jitter": args.jitter,
                               "noise": args.noise, "jpeg": args.jpeg, "seed": args.seed,
                               "photo": args.photo, "seconds": elapsed,
                               "load_average": os.getloadavg()[0],
                               "true_speed_px_per_frame": true_speed, "rows": rows}, indent=2)
    return 0


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
