"""Photos and video frames per second of ``tools/infer.py``: the reader / network / writer
pipeline against ``--serial``, with the CPU utilisation of each.

    python benchmarks/bench_pipeline.py [--photos 6] [--size 1280x960] [--frames 24]
        [--clip-size 640x480] [--reps 2] [--models dml_csr fp_liif] [--checkpoint CKPT]
        [--parse-every N] [--threads N] [--json OUT.json]

Photos: ``--photos`` JPEGs (quality 95) of ``--size``, made from the two portraits of
``tests/data/photos`` (bench_photo.py's ``tiled_photo``): even ones hold one face (the astronaut),
odd ones two (both portraits side by side); the detector is the command's default (YuNet).
Clip (``--frames`` > 0; 0: no video case): an mp4 (``mp4v``, 25 fps) of ``--clip-size`` holding
one face (the astronaut, ``tiled_photo``), panned by 1 pixel and zoomed by 0.2 % a frame; it runs
with the command's video defaults (``--smooth 0.7``, detection on every frame; ``--parse-every N``
passes the command's own, the network on every N-th frame).

Models, random weights (the speed does not depend on them), each saved as one of our checkpoints:

- ``dml_csr``: the full-size DML-CSR (ResNet-101 + DDGCN, 11 classes, 473 x 473 crops; every norm
  randomised, then calibrated so that activations stay at unit scale, ``dml_csr.utils.random_
  weights``, as bench_photo.py makes it) at ``--precision int8``; ``--checkpoint CKPT`` uses a
  checkpoint of yours instead;
- ``fp_liif``: the default FPLIIF (11 classes, 256 x 256 crops) at its default precision (float32,
  onnxruntime).

A first, untimed run of each model (one photo, ``--serial``; with ``--calibrate`` on the photo
folder for int8) fills a cache folder of the benchmark's own (``$DMLCSR_CACHE``) with the model's
ONNX file, as a user's first run does; every timed run then opens it.

Each timed run is a fresh process running ``tools/infer.py``'s ``main`` (through
``dml_csr.cli.run``) on the whole folder with ``--threads`` (default: the command's, every CPU).
What is timed is the parse loop alone: from the moment the command starts its pipeline (after
the imports and the model loading) to the end of the command (the last output written); photos/s
= photos / that time (frames/s likewise for the clip). CPU utilisation = the process's CPU time over the same span (user + system,
all threads: ``getrusage``) / its wall time: 2.0 means both cores of a 2-core machine busy. The
runs alternate (``--reps`` rounds; in each round every model runs serial and threaded, the order
of the two swapped from one round to the next) so that load changes on a shared machine hit both
alike; the table gives every run and the median. Wall-clock numbers on a shared machine are noisy:
the load average is printed with them.

Everything is written under a temporary folder that is removed at the end.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench_photo import parse_wxh, tiled_photo  # noqa: E402  (beside this script)
from dml_csr.files import write_json  # noqa: E402

MODES = ("serial", "threaded")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------------- children
def timed_run(job) -> dict:
    """``tools/infer.py``'s main on ``job["argv"]`` in this process; the parse loop's wall and
    CPU time (from the pipeline's start to the end of the command)."""
    from dml_csr.cli import run
    from dml_csr.commands.infer import main
    from dml_csr.deploy import pipeline

    marks = {}
    prefetch = pipeline.prefetch

    def marked(*args, **kwargs):             # the command starts its photo loop
        marks.setdefault("start", (time.perf_counter(), cpu_seconds()))
        return prefetch(*args, **kwargs)

    pipeline.prefetch = marked
    from dml_csr.deploy import video
    video.prefetch = marked                  # the video loop's reader (imported by name)
    rc = run(main, job["argv"])
    end = (time.perf_counter(), cpu_seconds())
    if "start" not in marks:
        return {"rc": rc}
    wall, cpu = end[0] - marks["start"][0], end[1] - marks["start"][1]
    return {"rc": rc, "loop_s": wall, "cpu_s": cpu}


def internal(path: str) -> int:
    job = read_json(path)
    write_json(job["result"], timed_run(job), indent=None)
    return 0


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def spawn(tmp: str, name: str, argv) -> dict:
    """``argv`` (tools/infer.py's arguments) timed in a fresh process; its result."""
    job = {"argv": argv, "result": os.path.join(tmp, f"{name}.result.json")}
    path = os.path.join(tmp, f"{name}.job.json")
    write_json(path, job, indent=None)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--internal", path],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)
    result = read_json(job["result"]) if os.path.isfile(job["result"]) else {}
    if proc.returncode != 0 or result.get("rc") != 0 or "loop_s" not in result:
        sys.stderr.write(proc.stdout[-5000:])
        raise SystemExit(f"the {name} run failed (exit {proc.returncode}, command "
                         f"{result.get('rc')})")
    return result


# ------------------------------------------------------------------------------------ set-up
def make_photos(folder: str, n: int, size) -> list:
    """``n`` JPEGs in ``folder``: even ones with one face, odd ones with two; their face counts."""
    import cv2
    os.makedirs(folder)
    faces = []
    for i in range(n):
        grid = (1, 1) if i % 2 == 0 else (2, 1)
        cv2.imwrite(os.path.join(folder, f"photo_{i:03d}.jpg"), tiled_photo(size, grid, 0.9),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        faces.append(grid[0] * grid[1])
    return faces


def make_clip(path: str, frames: int, size) -> None:
    """The one-face clip of the module docstring."""
    import cv2
    import numpy as np
    w, h = size
    still = tiled_photo((w + 2 * frames, h + 2 * frames), (1, 1), 0.7)
    vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    if not vw.isOpened():
        raise SystemExit(f"OpenCV cannot write {path}")
    for i in range(frames):
        z = 1.0 + 0.002 * i
        m = np.array([[z, 0, -frames - i], [0, z, -frames]], np.float64)
        vw.write(cv2.warpAffine(still, m, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE))
    vw.release()


def make_checkpoint(model: str, path: str) -> int:
    """Random weights of ``model`` (module docstring) saved at ``path``; their parameter count."""
    import torch
    from dml_csr.models import ModelSpec, build_model, save_checkpoint
    torch.manual_seed(0)
    net = build_model(model, {"num_classes": 11}).eval()
    if model == "dml_csr":
        from dml_csr.utils.random_weights import calibrate_norms, randomise_norms
        randomise_norms(net)
        with torch.no_grad():
            calibrate_norms(net, torch.randn(2, 3, 129, 129,
                                             generator=torch.Generator().manual_seed(3)),
                            weight_scale=0.5)
    save_checkpoint(path, net.state_dict(), ModelSpec.for_dataset(model, {"num_classes": 11},
                                                                  "lapa"))
    return sum(p.numel() for p in net.parameters())


def faces_found(out: str) -> int:
    """Faces in the command's JSON outputs: per photo (``.json``), per frame (``.jsonl``)."""
    n = 0
    for name in os.listdir(out):
        if name.endswith(".json"):
            n += len(read_json(os.path.join(out, name))["faces"])
        elif name.endswith(".jsonl"):
            with open(os.path.join(out, name)) as f:
                n += sum(len(json.loads(line)["faces"]) for line in f)
    return n


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------ parent
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=6, help="photos in the folder (default 6)")
    ap.add_argument("--size", type=parse_wxh, default=(1280, 960),
                    help="WxH of each photo (default 1280x960)")
    ap.add_argument("--frames", type=int, default=24,
                    help="frames of the one-face clip (default 24; 0: no clip)")
    ap.add_argument("--clip-size", type=parse_wxh, default=(640, 480),
                    help="WxH of the clip (default 640x480)")
    ap.add_argument("--reps", type=int, default=2,
                    help="rounds of runs (each: every model, serial and threaded; default 2)")
    ap.add_argument("--models", nargs="+", default=["dml_csr", "fp_liif"],
                    choices=["dml_csr", "fp_liif"])
    ap.add_argument("--checkpoint",
                    help="a DML-CSR checkpoint of yours instead of the random full-size one")
    ap.add_argument("--threads", type=int, default=None,
                    help="tools/infer.py --threads (default: the command's own, every CPU)")
    ap.add_argument("--parse-every", type=int, default=1,
                    help="the clip's --parse-every (default 1: the network on every frame)")
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--internal", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.internal:
        return internal(args.internal)
    if args.photos < 1 or args.reps < 1:
        ap.error("--photos and --reps must be at least 1")

    t_all = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="bench_pipeline_")
    os.environ["DMLCSR_CACHE"] = os.path.join(tmp, "cache")     # never the user's own cache
    try:
        photos = os.path.join(tmp, "photos")
        faces = make_photos(photos, args.photos, args.size)
        first = os.path.join(photos, sorted(os.listdir(photos))[0])
        clip = os.path.join(tmp, "clip.mp4")
        inputs = {"photos": (photos, args.photos, "photos")}
        if args.frames > 0:
            make_clip(clip, args.frames, args.clip_size)
            inputs["video"] = (clip, args.frames, "frames")
        models = {}
        for model in args.models:
            if model == "dml_csr" and args.checkpoint:
                ckpt, params = os.path.abspath(args.checkpoint), None
            else:
                ckpt = os.path.join(tmp, f"{model}.pth")
                params = make_checkpoint(model, ckpt)
            extra = ["--precision", "int8"] if model == "dml_csr" else []
            base = ["--checkpoint", ckpt, *extra]
            if args.threads is not None:
                base += ["--threads", str(args.threads)]
            t = time.perf_counter()
            spawn(tmp, f"{model}_first", base + [first, "--out", os.path.join(tmp, "first"),
                                                 "--serial"]
                  + (["--calibrate", photos] if model == "dml_csr" else []))
            precision = "int8" if model == "dml_csr" else "float32 (default)"
            models[model] = {"argv": base, "params": params, "precision": precision,
                             "first_run_s": time.perf_counter() - t,
                             "runs": {(kind, m): [] for kind in inputs for m in MODES}}
            print(f"{model} ({precision}"
                  + (f", {params / 1e6:.1f} M parameters, random" if params else "")
                  + f"): first run (ONNX file into the cache) {models[model]['first_run_s']:.0f} s",
                  flush=True)
        print(f"{args.photos} photos of {args.size[0]} x {args.size[1]}, {sum(faces)} faces; "
              f"{os.cpu_count()} CPUs; load average before the runs: {load_average()}", flush=True)

        for rep in range(args.reps):
            order = MODES if rep % 2 == 0 else MODES[::-1]
            for model, m in models.items():
                for kind, (src, count, unit) in inputs.items():
                    for mode in order:
                        out = os.path.join(tmp, f"out_{model}_{kind}_{mode}_{rep}")
                        given = [src] + (["--parse-every", str(args.parse_every)]
                                         if kind == "video" and args.parse_every > 1 else [])
                        argv = m["argv"] + given + ["--out", out] + (["--serial"]
                                                                  if mode == "serial" else [])
                        r = spawn(tmp, f"{model}_{kind}_{mode}_{rep}", argv)
                        r["per_s"] = count / r["loop_s"]
                        r["cpu_utilisation"] = r["cpu_s"] / r["loop_s"]
                        r["faces_found"] = faces_found(out)
                        r["load_average"] = load_average()
                        m["runs"][(kind, mode)].append(r)
                        shutil.rmtree(out)
                        print(f"round {rep + 1} {model} {kind} {mode}: {r['per_s']:.3f} {unit}/s "
                              f"({r['loop_s']:.1f} s), CPU {r['cpu_utilisation']:.2f}, faces "
                              f"{r['faces_found']}; load {r['load_average']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\n| model | input | mode | per second (each run) | per second (median) | CPU "
          "utilisation (median) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for model, m in models.items():
        for kind, (_, count, unit) in inputs.items():
            runs = {mode: m["runs"][(kind, mode)] for mode in MODES}
            med = {mode: statistics.median(r["per_s"] for r in runs[mode]) for mode in MODES}
            cpu = {mode: statistics.median(r["cpu_utilisation"] for r in runs[mode])
                   for mode in MODES}
            summary[f"{model} {kind}"] = {f"{unit}_per_s": med, "cpu_utilisation": cpu,
                                          "speed_up": med["threaded"] / med["serial"]}
            for mode in MODES:
                each = ", ".join(f"{r['per_s']:.3f}" for r in runs[mode])
                gain = f"{med[mode] / med['serial']:.2f}x"
                print(f"| {model} ({m['precision']}) | {count} {unit} | {mode} | {each} | "
                      f"{med[mode]:.3f} | {cpu[mode]:.2f} | {gain} |")
        m["runs"] = {f"{kind} {mode}": r for (kind, mode), r in m["runs"].items()}
    total = time.perf_counter() - t_all
    print(f"\nwall time of the whole benchmark: {total:.0f} s; load average now: "
          f"{load_average()}")
    if args.json:
        write_json(args.json, {"photos": args.photos, "size": list(args.size),
                               "frames": args.frames, "clip_size": list(args.clip_size),
                               "parse_every": args.parse_every,
                               "faces": sum(faces), "threads": args.threads,
                               "cpus": os.cpu_count(), "models": models, "summary": summary,
                               "total_wall_s": total}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
