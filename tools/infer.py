"""Face parsing of photos from a checkpoint, an official model by name, or an ONNX file.

    python tools/infer.py (--checkpoint CKPT | --model NAME [--weights-dir DIR] | --onnx FILE)
        INPUT... --out DIR [--dataset NAME] [--detector auto|yunet|haar] [--no-detect]
        [--save-logits] [--device cpu] [--precision fp32|bf16|int8 [--calibrate DIR]]
        [--batch-size N] [--margin M]

INPUT: image files, folders (their images, not recursive) or glob patterns. Per image NAME:

- ``DIR/NAME.png``: uint8 class ids at the photo's size, all faces combined by the overlap rule
  of docs/inference.md;
- ``DIR/NAME_overlay.jpg``: colours, face boxes and a legend;
- ``DIR/NAME_faceK.png``: face K's own label map on its region (the region's offset is in the
  JSON), K = 0, 1, ... largest face first;
- ``DIR/NAME.json``: photo size, data set, class names and per face its box, score, 5 landmarks,
  crop square (centre, scale, angle), region and the class ids present;
- with ``--save-logits``, ``DIR/NAME_logits.npz``: float16 ``faceK`` arrays (K, h, w) on each
  face's region.

``--precision int8`` runs an int8 ONNX file of the model (onnxruntime, CPU): the first run for a
checkpoint needs ``--calibrate DIR`` (a prepared data root or a folder of face photos; 32 images,
``--calibrate-count``), later runs find the calibrated file in the cache (``$DMLCSR_CACHE``, else
``~/.cache/dml_csr``; docs/inference.md).

``--model``: dml-csr-lapa, dml-csr-helen or dml-csr-celebamask-hq, the authors' files, read from
``--weights-dir`` (default ``$DMLCSR_WEIGHTS``, then ``./pretrained``); nothing is downloaded.
Unreadable files and photos with no face are reported and skipped; the exit code is 1 only if no
image could be processed, 2 for usage errors and for a checkpoint or option that cannot be used
(one ``error:`` line on stderr; ``--debug`` shows the traceback).
"""
import argparse
import glob
import json
import logging
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from dml_csr.cli import (add_debug_argument, add_precision_arguments,  # noqa: E402
                         check_precision_arguments, run)

def collect_inputs(items):
    """Expand files, folders and globs into a sorted, de-duplicated list of file paths."""
    from dml_csr.deploy.parser import IMAGE_EXTS
    files = []
    for item in items:
        if os.path.isdir(item):
            files += [os.path.join(item, f) for f in sorted(os.listdir(item))
                      if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(item, f))]
        elif any(ch in item for ch in "*?["):
            files += sorted(p for p in glob.glob(item) if os.path.isfile(p))
        else:
            files.append(item)  # missing files are reported when read
    seen, out = set(), []
    for f in files:
        key = os.path.abspath(f)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    ap.add_argument("--checkpoint", help="our checkpoint or a release state_dict")
    ap.add_argument("--model", metavar="NAME",
                    help="an official checkpoint by name: dml-csr-lapa, dml-csr-helen, "
                         "dml-csr-celebamask-hq (instead of --checkpoint)")
    ap.add_argument("--weights-dir", help="folder holding the official files (with --model; "
                                          "default $DMLCSR_WEIGHTS, then ./pretrained)")
    ap.add_argument("--onnx", help="an ONNX file from tools/export_onnx.py (instead of --checkpoint)")
    ap.add_argument("--out", required=True, help="output folder (must not be an input folder)")
    ap.add_argument("--dataset", help="label schema: helen or lapa for an 11-class release "
                                      "checkpoint (19 classes: celebamask_hq, found alone)")
    ap.add_argument("--detector", default="auto", choices=["auto", "yunet", "haar"],
                    help="face detector (auto: YuNet with landmarks, Haar when yuface is missing)")
    ap.add_argument("--no-detect", action="store_true",
                    help="no face detection: each image is one aligned face crop")
    ap.add_argument("--save-logits", action="store_true", help="also write NAME_logits.npz")
    ap.add_argument("--device", default="cpu")
    add_precision_arguments(ap)
    ap.add_argument("--batch-size", type=int, default=8,
                    help="faces per model call (the PyTorch backend on the CPU runs them one at a time)")
    ap.add_argument("--margin", type=float, default=None,
                    help="face region margin: side = (1 + 2 margin) x face size (default 0.5)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_debug_argument(ap)
    args = ap.parse_args(argv)
    if sum(bool(x) for x in (args.checkpoint, args.model, args.onnx)) != 1:
        ap.error("give one of --checkpoint, --model or --onnx")
    if args.weights_dir and not args.model:
        ap.error("--weights-dir goes with --model")
    if args.onnx and args.precision != "fp32":
        ap.error("--precision goes with --checkpoint or --model: an ONNX file runs as it was "
                 "exported (tools/export_onnx.py --int8 writes an int8 one)")
    check_precision_arguments(ap, args)
    if args.dataset and args.model:
        ap.error("--dataset goes with --checkpoint: an official model knows its data set")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    log = logging.getLogger("infer")
    out_dir = os.path.abspath(args.out)
    for item in args.inputs:
        if os.path.isdir(item) and os.path.abspath(item) == out_dir:
            log.error("--out %s is an input folder: refusing to write beside the inputs", args.out)
            return 2
    files = collect_inputs(args.inputs)
    if not files:
        log.error("no input images found in %s", args.inputs)
        return 1
    if any(os.path.abspath(os.path.dirname(f)) == out_dir for f in files):
        log.error("--out %s holds input images: choose another folder", args.out)
        return 2

    from dml_csr.deploy import (DEFAULT_MARGIN, FaceParser, NoFaceWarning, draw_overlay, read_image,
                                set_inference_threads)

    set_inference_threads(args.threads)
    margin = DEFAULT_MARGIN if args.margin is None else args.margin
    detector = None if args.no_detect else args.detector
    precision = dict(precision=args.precision)
    if args.precision == "int8":
        precision.update(calibrate=args.calibrate, calibrate_count=args.calibrate_count)
    if args.onnx:
        parser = FaceParser.from_onnx(args.onnx, detector=detector, margin=margin,
                                      max_batch=args.batch_size)
    elif args.model:
        parser = FaceParser.from_pretrained(args.model, args.weights_dir, device=args.device,
                                            detector=detector, margin=margin,
                                            max_batch=args.batch_size, **precision)
    else:
        parser = FaceParser.from_checkpoint(args.checkpoint, dataset=args.dataset, device=args.device,
                                            detector=detector, margin=margin,
                                            max_batch=args.batch_size, **precision)
    os.makedirs(out_dir, exist_ok=True)
    warnings.simplefilter("ignore", NoFaceWarning)  # reported below, once per file

    iterator = files
    if len(files) > 1:
        try:
            from tqdm import tqdm
            iterator = tqdm(files, unit="img", desc="parsing")
        except ImportError:
            pass
    done, unreadable, faceless, stems = 0, [], [], set()
    for path in iterator:
        try:
            image = read_image(path)
        except ValueError as exc:
            log.warning("skipped: %s", exc)
            unreadable.append(path)
            continue
        res = parser(image, detect=not args.no_detect, return_logits=args.save_logits)
        if res.no_face[0]:
            log.warning("skipped: no face found in %s (try --no-detect for aligned crops)", path)
            faceless.append(path)
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:  # same name in two input folders: keep both
            stem = f"{stem}_{len(stems)}"
        stems.add(stem)
        cv2.imwrite(os.path.join(out_dir, f"{stem}.png"), res.combined[0])
        overlay = draw_overlay(image, res.combined[0], res.class_names, res.palette,
                               boxes=None if args.no_detect else res.boxes)
        cv2.imwrite(os.path.join(out_dir, f"{stem}_overlay.jpg"), overlay)
        for k, label in enumerate(res.label_maps):
            cv2.imwrite(os.path.join(out_dir, f"{stem}_face{k}.png"), label)
        with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
            json.dump(dict(res.summary(0), image=os.path.abspath(path)), f, indent=1)
        if args.save_logits:
            np.savez(os.path.join(out_dir, f"{stem}_logits.npz"),
                     **{f"face{k}": x.astype(np.float16) for k, x in enumerate(res.logits)})
        done += 1
    log.info("parsed %d of %d images into %s (%d unreadable, %d without a face)", done, len(files),
             out_dir, len(unreadable), len(faceless))
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(run(main))
