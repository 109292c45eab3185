"""The video branch of ``dml-csr infer``: one clip in, its overlay, JSON lines and label maps out.

For a video ``DIR/NAME.ext`` (``--out DIR``):

- ``DIR/NAME_overlay.mp4``: the overlay (label colours, face boxes with their track ids), the
  input's frame count, size and frame rate, MPEG-4 Part 2 (``mp4v``: OpenCV's own FFmpeg writes it,
  nothing to install);
- ``DIR/NAME.jsonl``: one JSON line per frame, ``{"frame": i, "decoded": bool, "faces": [{"track":
  id, "detected": bool, "box", "score", "landmarks", "center", "scale", "angle", "region",
  "classes"}]}`` (``VideoFrame.summary``);
- with ``--save-maps``: ``DIR/NAME/000000.png``, ... each frame's combined label map (uint8 class
  ids, lossless PNG, the photos' overlap rule);
- with ``--mask CLASSES``: ``DIR/NAME_mask.mp4``, each frame's mask (``FaceParsingResult.mask``
  with ``--grow`` / ``--feather`` / ``--soft-mask``) as a grey ``mp4v`` video: lossy, so values
  near an edge move by a few levels; ``--save-maps`` keeps the exact label maps to make masks from.

The overlay, the mask video and the JSON lines are written to hidden temporary names and renamed when the clip is
done, so an error or Ctrl-C leaves neither a torn file nor one of another run's; each map PNG is
written atomically (those written before an interruption are whole). Decoding and detection run
in a reader thread and the drawing and writing in a writer thread, beside the network
(``dml_csr/deploy/pipeline.py``; ``--serial``: all in one thread). On a GPU (``--device cuda``)
the faces of ``--batch-size`` frames go through the network together.
"""
import json
import logging
import os
import time

import cv2

from ..files import PartialFile, WriteError, check_not_input, write_image

log = logging.getLogger("infer")

FOURCC = "mp4v"


def video_outputs(out_dir: str, stem: str):
    """The overlay, JSON-lines and maps-folder paths of the clip ``stem``."""
    base = os.path.join(out_dir, stem)
    return base + "_overlay.mp4", base + ".jsonl", base


def _open_writer(path: str, fps: float, size, colour: bool):
    """A PartialFile for ``path`` and OpenCV's FFmpeg writer on its temporary name; WriteError
    naming ``path`` when the writer does not open."""
    out = PartialFile(path, keep_suffix=True)
    h, w = size
    writer = cv2.VideoWriter(out.tmp, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*FOURCC), float(fps),
                             (w, h), colour)
    if not writer.isOpened():
        writer.release()
        out.discard()
        raise WriteError(f"cannot write {path}: OpenCV's FFmpeg writer does not open it "
                         f"({FOURCC}, {w}x{h} at {fps:g} frames per second)")
    return out, writer


class VideoOutputs:
    """Writes one clip's outputs frame by frame (module docstring); :meth:`close` renames them
    into place, :meth:`discard` removes the unfinished ones."""

    def __init__(self, out_dir: str, stem: str, size, fps: float, save_maps: bool, inputs,
                 mask: bool = False):
        overlay, jsonl, maps = video_outputs(out_dir, stem)
        mask_path = maps + "_mask.mp4"
        for path in (overlay, jsonl) + ((maps,) if save_maps else ()) + \
                ((mask_path,) if mask else ()):
            check_not_input(path, inputs, "an output")
        self.maps = maps if save_maps else None
        if self.maps is not None:
            os.makedirs(self.maps, exist_ok=True)
        self.size = (int(size[0]), int(size[1]))
        self.overlay, self.writer = _open_writer(overlay, fps, self.size, True)
        self.mask = self.mask_writer = self.jsonl = None
        try:
            if mask:
                self.mask, self.mask_writer = _open_writer(mask_path, fps, self.size, False)
            self.jsonl = PartialFile(jsonl, text=True)
        except WriteError:
            self.discard()
            raise
        self.frames = 0

    def write(self, frame, overlay, mask=None) -> None:
        """Write one frame's overlay (uint8 BGR of the clip's size), JSON line, map and mask
        (uint8 of the clip's size, when the outputs have a mask video)."""
        if overlay.shape[:2] != self.size:
            raise ValueError(f"overlay {overlay.shape[1]}x{overlay.shape[0]} for a "
                             f"{self.size[1]}x{self.size[0]} clip")
        self.writer.write(overlay)
        if self.mask_writer is not None:
            self.mask_writer.write(mask)
        self.jsonl.write(json.dumps(frame.summary(), separators=(",", ":")) + "\n")
        if self.maps is not None:
            label = frame.result.combined[0] if frame.result is not None else overlay[:, :, 0] * 0
            write_image(os.path.join(self.maps, f"{frame.index:06d}.png"), label)
        self.frames += 1

    def close(self) -> None:
        self.writer.release()
        self.overlay.commit(fsync=False)
        if self.mask_writer is not None:
            self.mask_writer.release()
            self.mask.commit(fsync=False)
        self.jsonl.commit()

    def discard(self) -> None:
        self.writer.release()
        self.overlay.discard()
        if self.mask_writer is not None:
            self.mask_writer.release()
            self.mask.discard()
        if self.jsonl is not None:
            self.jsonl.discard()


def draw_frame(frame, no_detect: bool):
    """The overlay of one ``VideoFrame``: colours, boxes and track ids, the frame's own size."""
    from ..deploy import draw_overlay
    res = frame.result
    if res is None:
        return frame.image
    return draw_overlay(frame.image, res.combined[0], res.class_names, res.palette,
                        boxes=None if no_detect else res.boxes, legend=False,
                        box_labels=None if no_detect else [f"#{t}" for t in frame.tracks])


def parse_video_file(parser, path: str, stem: str, out_dir: str, args, limit, inputs) -> dict:
    """Parse the clip ``path`` into ``out_dir/stem*`` (module docstring); returns its counts.
    Raises ``VideoError`` for a clip that cannot be parsed, ``WriteError`` for a failed write."""
    from ..deploy.pipeline import Writer
    from ..deploy.video import VideoSource

    source = VideoSource(path, limit)
    threaded = not getattr(args, "serial", False)
    mask = getattr(args, "mask", None)
    soft = bool(mask and args.soft_mask)
    outputs = VideoOutputs(out_dir, stem, (source.height, source.width), source.fps,
                           args.save_maps, inputs, mask=bool(mask))
    faces, start, failed = 0, time.perf_counter(), 0
    try:
        with Writer(depth=4, threaded=threaded) as writer:
            # on a GPU, --batch-size frames' faces go through the network together
            batch = args.batch_size if parser.device.type == "cuda" else 1
            parse_every = getattr(args, "parse_every", 1)
            if parse_every > 1:
                batch = 1                 # carried maps go frame by frame
            for frame in parser.video(source, smooth=args.smooth, detect_every=args.detect_every,
                                      threaded=threaded, batch=batch, parse_every=parse_every,
                                      return_logits=soft, probabilities=soft):
                writer.submit(_write_frame, outputs, frame, args)
                faces += len(frame.tracks)
                failed += not frame.decoded
        outputs.close()
    except BaseException:
        outputs.discard()
        raise
    seconds = time.perf_counter() - start
    if outputs.frames == 0:
        raise WriteError(f"{path}: no frame was written")
    if failed:
        log.warning("%s: %d of %d frames failed to decode: each repeats the frame before it "
                    "(\"decoded\": false in %s)", path, failed, outputs.frames,
                    outputs.jsonl.path)
    log.info("%s: %d frames (%dx%d, %.3g fps), %d faces in all, %.2f frames per second -> %s",
             path, outputs.frames, source.width, source.height, source.fps, faces,
             outputs.frames / seconds if seconds > 0 else 0.0, outputs.overlay.path)
    return {"frames": outputs.frames, "failed": failed, "seconds": seconds}


def _write_frame(outputs: VideoOutputs, frame, args) -> None:
    mask = None
    if outputs.mask_writer is not None:
        if frame.result is None:            # no frame decoded yet: nothing selected
            mask = frame.image[:, :, 0] * 0
        else:
            mask = frame.result.mask(0, args.mask, grow=args.grow, feather=args.feather,
                                     soft=args.soft_mask)
    outputs.write(frame, draw_frame(frame, args.no_detect), mask)


def parse_videos(parser, videos, out_dir: str, args, limit, inputs) -> None:
    """Parse each ``(path, stem)`` of ``videos`` (``dml-csr infer``'s video branch)."""
    from ..deploy.video import DEFAULT_SMOOTH
    if args.smooth is None:
        args.smooth = DEFAULT_SMOOTH
    if args.save_logits:
        log.warning("--save-logits: videos get no per-frame probabilities (K floats per pixel "
                    "per frame would be far larger than the clip); photos get theirs")
    for path, stem in videos:
        parse_video_file(parser, path, stem, out_dir, args, limit, inputs)
