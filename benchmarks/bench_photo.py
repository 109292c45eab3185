"""Whole-photo parsing with the full-size network: peak memory and time of the API and the CLI.

    python benchmarks/bench_photo.py [--photo PATH [--size WxH] [--faces N]] [--grid 3x2]
        [--checkpoint CKPT [--dataset NAME]] [--threads 2] [--limit-gb 1.5] [--json OUT.json]

The target: a 12 MP photo with 6 faces parses within 1.5 GB peak memory with the full-size
DML-CSR (ResNet-101, 473 x 473 crops).

Photo: by default a 4000 x 3000 grey canvas holding the two public-domain portraits of
``tests/data/photos`` (astronaut.jpg, grace_hopper.jpg: 256-px copies) in 3 x 2 tiles, alternating,
each upscaled (``cv2.INTER_CUBIC``) to fill its cell with a margin (``--fill`` of the cell, default
0.9; the astronaut's head and shoulders only, ``PORTRAITS``), saved as a JPEG (quality 95): 6 faces
about 400-500 px tall (YuNet's boxes). ``--grid CxR`` and ``--size`` change
the canvas. ``--photo PATH``: a photo of your own, resized to ``--size WxH`` (default: its own
size), with ``--faces N`` its true face count (for the report only).

Network: the full-size ``DMLCSR(11)`` in inference form with random weights (every norm randomised,
then calibrated on a small random batch so activations stay at unit scale as in a trained network;
memory and time do not depend on the weights), saved as one of our checkpoints
(``save_checkpoint(..., ModelSpec.for_dataset("dml_csr", {"num_classes": 11}, "lapa"))``);
``--checkpoint CKPT`` uses a real one.

Cases, each in a fresh subprocess so that peaks do not mix (the photo and the checkpoint are made
in a subprocess too, so that this parent stays small: a child's ``ru_maxrss`` starts at its
parent's resident size when it is forked):

- ``api``: ``FaceParser.from_checkpoint(ckpt)(photo)`` (no logits, the default);
- ``api+logits``: the same with ``return_logits=True``;
- ``cli``: ``tools/infer.py --checkpoint CKPT PHOTO --out DIR --threads N``, run by a tiny wrapper
  whose ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is the command's peak; its time is the whole
  command's (start-up, imports, model loading, parsing, writing the outputs).

The parser's float32 ONNX file goes to a cache folder of the benchmark's own: a first process
makes it (its time and peak are printed: a user's first run of a checkpoint), and every case
then opens it (a user's later runs).

Columns: ``parse``: wall time of the parse call alone (model loading excluded; the first call, so
it includes torch's one-time kernel set-up as a CLI run does); ``detector``: the detector alone on
the same photo (timed after the parse); ``faces``: found / expected; ``RSS import``: resident
memory after importing torch and dml_csr; ``RSS ready``: after loading the model and reading the
photo; ``load peak``: ``ru_maxrss`` at that point (the start-up's peak, model loading's mostly);
``parse peak``: the peak during the parse and the detector run after it (the peak is reset to the
current RSS before the parse through ``/proc/self/clear_refs``; where that is refused the column
holds the whole process's peak, marked ``*``); ``parse +``: parse peak - RSS ready (what the parse
adds); ``peak``: the process's peak, the larger of the two (the CLI: the whole command's);
``returned``: bytes of the result's arrays (label maps + logits + combined maps). Memory in MiB
(2^20 bytes); the limit check uses ``--limit-gb`` x 10^9 bytes. Times are wall clock, noisy on a
shared machine: say so when reporting them.

Everything is written under a temporary folder that is removed at the end.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dml_csr.utils.memory import reset_hwm, status_bytes  # noqa: E402  (light: no torch)
from dml_csr.files import write_json  # noqa: E402
# the portraits and the part of each that is tiled (x0, y0, x1, y1; None: all of it): the
# astronaut's face fills less of her photo, so her head and shoulders are cut out to bring her face
# to about 400 px in a 4000 x 3000 photo (the whole 256-px photo gave about 250 px)
PORTRAITS = (("astronaut.jpg", (32, 0, 192, 160)), ("grace_hopper.jpg", None))
MIB = float(1 << 20)


def maxrss_bytes(who=resource.RUSAGE_SELF) -> int:
    """``ru_maxrss`` (Linux: KiB) in bytes."""
    return resource.getrusage(who).ru_maxrss * 1024


def parse_wxh(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 4000x3000, got {text!r}")
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return w, h


# ---------------------------------------------------------------------------------- children
def tiled_photo(size, grid, fill: float):
    """The default test photo: a grey (h, w) canvas with the portraits in ``grid`` = (cols, rows)
    tiles, alternating, each upscaled to ``fill`` of its cell."""
    import cv2
    import numpy as np

    w, h = size
    cols, rows = grid
    portraits = []
    for name, box in PORTRAITS:
        p = cv2.imread(os.path.join(ROOT, "tests", "data", "photos", name))
        if p is None:
            raise FileNotFoundError(f"tests/data/photos/{name} is missing")
        portraits.append(p if box is None else p[box[1]:box[3], box[0]:box[2]])
    canvas = np.full((h, w, 3), 128, np.uint8)
    for r in range(rows):
        for c in range(cols):
            p = portraits[(r * cols + c) % len(portraits)]
            x0, x1 = round(c * w / cols), round((c + 1) * w / cols)
            y0, y1 = round(r * h / rows), round((r + 1) * h / rows)
            s = fill * min((y1 - y0) / p.shape[0], (x1 - x0) / p.shape[1])
            tw, th = int(round(p.shape[1] * s)), int(round(p.shape[0] * s))
            tile = cv2.resize(p, (tw, th),
                              interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
            ty, tx = y0 + (y1 - y0 - th) // 2, x0 + (x1 - x0 - tw) // 2
            canvas[ty:ty + th, tx:tx + tw] = tile
    return canvas


def prepare(job) -> dict:
    """Write the test photo and (unless given) the random-weight checkpoint."""
    import cv2
    sys.path.insert(0, ROOT)

    out = {}
    if job["photo"]:
        from dml_csr.deploy import read_image
        image = read_image(job["photo"])
        if job["size"] and tuple(job["size"]) != (image.shape[1], image.shape[0]):
            w, h = job["size"]
            shrink = w * h < image.shape[0] * image.shape[1]
            image = cv2.resize(image, (w, h),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
            cv2.imwrite(job["photo_out"], image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            out["photo"] = job["photo_out"]
        else:
            out["photo"] = os.path.abspath(job["photo"])
    else:
        image = tiled_photo(job["size"], job["grid"], job["fill"])
        cv2.imwrite(job["photo_out"], image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        out["photo"] = job["photo_out"]
    out["photo_size"] = [int(image.shape[1]), int(image.shape[0])]
    out["photo_bytes"] = os.path.getsize(out["photo"])
    if job["checkpoint"]:
        out["checkpoint"] = os.path.abspath(job["checkpoint"])
    else:
        import torch
        from dml_csr.models import DMLCSR, ModelSpec, save_checkpoint
        from dml_csr.utils.random_weights import calibrate_norms, randomise_norms
        torch.manual_seed(0)
        model = DMLCSR(11, with_edges=False).eval()          # inference form, full size
        randomise_norms(model)
        with torch.no_grad():
            calibrate_norms(model, torch.randn(2, 3, 129, 129,
                                               generator=torch.Generator().manual_seed(3)),
                            weight_scale=0.5)
        out["params"] = sum(p.numel() for p in model.parameters())
        save_checkpoint(job["checkpoint_out"], model.state_dict(),
                        ModelSpec.for_dataset("dml_csr", {"num_classes": 11}, "lapa"))
        out["checkpoint"] = job["checkpoint_out"]
    out["checkpoint_bytes"] = os.path.getsize(out["checkpoint"])
    return out


def export_case(job) -> dict:
    """The first parser of a checkpoint in this (fresh) process: it exports the float32 ONNX file
    into the cache (deploy/cache.py); its time and the process's peak."""
    sys.path.insert(0, ROOT)
    from dml_csr.deploy import FaceParser, set_inference_threads
    set_inference_threads(job["threads"])
    t = time.perf_counter()
    FaceParser.from_checkpoint(job["checkpoint"], dataset=job["dataset"], detector=None)
    return {"export_s": time.perf_counter() - t, "peak": maxrss_bytes()}


def api_case(job) -> dict:
    """One API parse in this (fresh) process; memory and time facts."""
    r = {"rss_start": status_bytes("VmRSS")}
    sys.path.insert(0, ROOT)
    import numpy as np
    import torch  # noqa: F401
    import dml_csr  # noqa: F401
    from dml_csr.deploy import FaceParser, read_image, set_inference_threads
    r["rss_import"] = status_bytes("VmRSS")
    r["threads"] = set_inference_threads(job["threads"])
    parser = FaceParser.from_checkpoint(job["checkpoint"], dataset=job["dataset"])
    r["rss_model"] = status_bytes("VmRSS")
    module = parser.model
    r["backend"] = parser.backend_name
    r["model_tensor_bytes"] = (os.path.getsize(module.path) if parser.backend_name == "onnx"
                               else int(sum(t.numel() * t.element_size() for t in
                                            list(module.parameters()) + list(module.buffers()))))
    photo = read_image(job["photo"])
    r["rss_ready"], r["maxrss_ready"] = status_bytes("VmRSS"), maxrss_bytes()
    r["hwm_reset"] = reset_hwm()        # so that the parse's own peak shows
    r["rss_before_parse"] = status_bytes("VmRSS")
    t = time.perf_counter()
    res = parser(photo, return_logits=job["return_logits"])
    r["parse_s"] = time.perf_counter() - t
    r["hwm_parse"] = status_bytes("VmHWM")     # the parse's own peak (with the load's if no reset)
    r["faces"] = len(res)
    r["face_heights"] = [float(b[3] - b[1]) for b in res.boxes]
    r["region_sizes"] = [[int(x1 - x0), int(y1 - y0)] for x0, y0, x1, y1 in res.regions]
    r["bytes_label_maps"] = int(sum(a.nbytes for a in res.label_maps))
    r["bytes_logits"] = int(sum(a.nbytes for a in res.logits)) if res.logits is not None else 0
    r["bytes_combined"] = int(sum(a.nbytes for a in res.combined))
    r["bytes_returned"] = r["bytes_label_maps"] + r["bytes_logits"] + r["bytes_combined"]
    del res
    t = time.perf_counter()
    found = parser.detector(photo) if parser.detector is not None else np.zeros((1, 15))
    r["detector_s"] = time.perf_counter() - t
    r["detector_faces"] = len(found)
    r["maxrss_end"] = maxrss_bytes()
    r["rss_end"] = status_bytes("VmRSS")
    r["peak"] = max(r["maxrss_ready"], r["maxrss_end"])    # the whole process's
    return r


def cli_wrapper(job) -> dict:
    """Run the CLI command as this tiny process's only child: its peak is RUSAGE_CHILDREN's."""
    t = time.perf_counter()
    proc = subprocess.run(job["command"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=job["cwd"])
    wall = time.perf_counter() - t
    return {"rc": proc.returncode, "wall_s": wall, "log_tail": proc.stdout[-3000:],
            "maxrss_children": maxrss_bytes(resource.RUSAGE_CHILDREN),
            "wrapper_maxrss": maxrss_bytes()}


def internal(path: str) -> int:
    with open(path) as f:
        job = json.load(f)
    out = {"prepare": prepare, "export": export_case, "api": api_case,
           "cli": cli_wrapper}[job["kind"]](job)
    write_json(job["result"], out, indent=None)
    return 0


def spawn(tmp: str, name: str, job: dict) -> dict:
    """Run ``job`` in a fresh ``python bench_photo.py --internal JOB`` process; its result."""
    job = dict(job, result=os.path.join(tmp, f"{name}.result.json"))
    path = os.path.join(tmp, f"{name}.job.json")
    write_json(path, job, indent=None)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--internal", path],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)
    if proc.returncode != 0 or not os.path.isfile(job["result"]):
        sys.stderr.write(proc.stdout[-5000:])
        raise SystemExit(f"the {name} step failed (exit {proc.returncode})")
    with open(job["result"]) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------ parent
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo", help="a photo of your own instead of the tiled portraits")
    ap.add_argument("--size", type=parse_wxh, default=None,
                    help="WxH: resize --photo to it (default its own size); the tiled photo's "
                         "size (default 4000x3000)")
    ap.add_argument("--faces", type=int, default=None,
                    help="the true face count (default: the grid's tiles, unknown for --photo)")
    ap.add_argument("--grid", type=parse_wxh, default=(3, 2), metavar="CxR",
                    help="tiles of the default photo: columns x rows (default 3x2)")
    ap.add_argument("--fill", type=float, default=0.9,
                    help="a tile's share of its cell's limiting side (default 0.9)")
    ap.add_argument("--checkpoint", help="a real checkpoint instead of random weights")
    ap.add_argument("--dataset", help="with a release state_dict of 11 classes: helen or lapa")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each case")
    ap.add_argument("--cases", nargs="+", default=["api", "api+logits", "cli"],
                    choices=["api", "api+logits", "cli"])
    ap.add_argument("--limit-gb", type=float, default=1.5, help="peak limit to check (10^9 bytes)")
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--internal", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.internal:
        return internal(args.internal)
    if args.dataset and not args.checkpoint:
        ap.error("--dataset goes with --checkpoint")
    # the steps run in a temporary working folder: the user's paths are made absolute here
    args.photo = args.photo and os.path.abspath(args.photo)
    args.checkpoint = args.checkpoint and os.path.abspath(args.checkpoint)
    size = args.size or (None if args.photo else (4000, 3000))
    expected = args.faces if args.faces is not None else (
        None if args.photo else args.grid[0] * args.grid[1])

    t_all = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="bench_photo_")
    # the parser's float32 ONNX file (deploy/cache.py): made by the first case, opened by the
    # later ones, as a user's first and later runs; never the user's own cache
    os.environ["DMLCSR_CACHE"] = os.path.join(tmp, "cache")
    try:
        t = time.perf_counter()
        prep = spawn(tmp, "prepare", {
            "kind": "prepare", "photo": args.photo, "size": size, "grid": list(args.grid),
            "fill": args.fill, "photo_out": os.path.join(tmp, "photo.jpg"),
            "checkpoint": args.checkpoint,
            "checkpoint_out": os.path.join(tmp, "checkpoint.pth")})
        prep["seconds"] = time.perf_counter() - t
        pw, ph = prep["photo_size"]
        print(f"photo {pw} x {ph} ({pw * ph / 1e6:.1f} MP, {prep['photo_bytes'] / MIB:.1f} MiB "
              f"file), expected faces: {expected if expected is not None else '?'}; checkpoint "
              f"{prep['checkpoint_bytes'] / MIB:.0f} MiB"
              + (f" ({prep['params'] / 1e6:.1f} M parameters, random)" if "params" in prep else "")
              + f"; threads {args.threads}; set-up {prep['seconds']:.1f} s", flush=True)

        results = {"photo_size": [pw, ph], "expected_faces": expected, "threads": args.threads,
                   "checkpoint_bytes": prep["checkpoint_bytes"], "params": prep.get("params"),
                   "photo": args.photo or "tiled", "limit_bytes": args.limit_gb * 1e9,
                   "parent_maxrss": None, "cases": {}}
        base = {"checkpoint": prep["checkpoint"], "photo": prep["photo"],
                "dataset": args.dataset, "threads": args.threads}
        results["export"] = spawn(tmp, "export", {**base, "kind": "export"})
        print(f"first parser of the checkpoint (exports the float32 ONNX file into the cache): "
              f"{results['export']['export_s']:.1f} s, peak {results['export']['peak'] / MIB:.0f} MiB",
              flush=True)
        for case in args.cases:
            t = time.perf_counter()
            if case == "cli":
                out_dir = os.path.join(tmp, "cli_out")
                cmd = [sys.executable, os.path.join(ROOT, "tools", "infer.py"), "--checkpoint",
                       prep["checkpoint"], prep["photo"], "--out", out_dir,
                       "--threads", str(args.threads)]
                if args.dataset:
                    cmd += ["--dataset", args.dataset]
                r = spawn(tmp, case, {"kind": "cli", "command": cmd, "cwd": tmp})
                if r["rc"] != 0:
                    sys.stderr.write(r["log_tail"])
                    raise SystemExit(f"tools/infer.py failed (exit {r['rc']})")
                stem = os.path.splitext(os.path.basename(prep["photo"]))[0]
                summary = os.path.join(out_dir, f"{stem}.json")
                if os.path.isfile(summary):
                    with open(summary) as f:
                        r["faces"] = len(json.load(f)["faces"])
                names = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
                r["outputs"] = {n: os.path.getsize(os.path.join(out_dir, n)) for n in names}
                r["peak"] = r["maxrss_children"]
                r["time_s"] = r["wall_s"]
            else:
                r = spawn(tmp, case, dict(base, kind="api", return_logits=case == "api+logits"))
                r["time_s"] = r["parse_s"]
            r["case_wall_s"] = time.perf_counter() - t
            results["cases"][case] = r
            print(f"{case}: {r['time_s']:.1f} s, peak {r['peak'] / MIB:.0f} MiB, "
                  f"faces {r.get('faces', '?')}", flush=True)
        results["parent_maxrss"] = maxrss_bytes()
        results["total_wall_s"] = time.perf_counter() - t_all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def mib(v):
        return "-" if v is None else f"{v / MIB:.0f}"

    def sec(v, digits=1):
        return "-" if v is None else f"{v:.{digits}f}"

    exp = "?" if expected is None else str(expected)
    print(f"\n| case | parse (s) | detector (s) | faces | RSS import (MiB) | RSS ready (MiB) | "
          f"load peak (MiB) | parse peak (MiB) | parse + (MiB) | peak (MiB) | returned (MiB) | "
          f"peak <= {args.limit_gb:g} GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case, r in results["cases"].items():
        if case == "cli":
            cells = [f"{case} (whole command)", sec(r["time_s"]), "-",
                     f"{r.get('faces', '?')} / {exp}", "-", "-", "-", "-", "-", mib(r["peak"]), "-"]
        else:
            mark = "" if r["hwm_reset"] else "*"
            cells = [case, sec(r["time_s"]), sec(r["detector_s"], 2), f"{r['faces']} / {exp}",
                     mib(r["rss_import"]), mib(r["rss_ready"]), mib(r["maxrss_ready"]),
                     mib(r["hwm_parse"]) + mark, mib(r["hwm_parse"] - r["rss_ready"]) + mark,
                     mib(r["peak"]), format(r["bytes_returned"] / MIB, ".1f")]
        cells.append("yes" if r["peak"] <= args.limit_gb * 1e9 else "NO")
        print("| " + " | ".join(cells) + " |")
    sizes = {r.get("model_tensor_bytes") for r in results["cases"].values()} - {None}
    if sizes:
        backends = {r.get("backend") for r in results["cases"].values()} - {None}
        print(f"\nthe parser's model ({', '.join(sorted(backends))}; the ONNX file's size for "
              f"onnx, the optimised module's tensors for torch): {mib(max(sizes))} MiB")
    print(f"\nwall time of the whole benchmark: {results['total_wall_s']:.0f} s "
          f"(this parent's own peak {mib(results['parent_maxrss'])} MiB)")
    if args.json:
        write_json(args.json, results, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
