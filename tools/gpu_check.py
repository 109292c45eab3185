"""One command for a GPU machine: what runs there, with numbers (scripts/gpu_check.sh calls it).

    python tools/gpu_check.py [--json OUT.json] [--budget 480]
    DRY_RUN=1 python tools/gpu_check.py          # the same steps on the CPU at tiny sizes

Installs nothing and needs no network: run it with an interpreter that has the requirements
(``scripts/gpu_check.sh`` uses ``$DMLCSR_PYTHON``, else ``$PYTHON``, else ``python`` on PATH;
a missing optional package is a warning there, not a refusal). Steps, each in its own
process with a time limit, in this order (a failed step is reported and the next one runs):

1. ``versions``: Python, torch, the CUDA it was built for, cuDNN, the GPU, the driver,
   onnxruntime and its providers, whether the compiled inplace-abn imports; outside the dry run
   a machine where CUDA does not work fails this step, and the others are not run;
2. ``pytest -m cuda``: the suite's device-dependent tests (marked ``cuda``; skipped on the CPU);
   outside the dry run the step fails when no test ran (all skipped: CUDA not seen);
3. ``train fp16`` / ``train bf16``: ``tools/train.py`` under torchrun with one process on one GPU
   through both stages (2 multi-task epochs + 1 CSR cycle) with ``--test``, on a tiny synthetic
   set, with the process group and the synchronised layers forced on
   (``DMLCSR_FORCE_DISTRIBUTED=1``), so NCCL runs with a single GPU;
4. ``bench_train``: ``benchmarks/bench_train.py`` at 473 x 473, batch 7, both stages, in fp32
   (memory-saving ABN), bf16 and fp16, and ``compiled`` where the compiled inplace-abn imports:
   step time and ``torch.cuda.max_memory_allocated``;
4b. ``compiled vs native`` (only where the compiled inplace-abn imports: it is then what
   ``norm_backend=auto`` trains with on CUDA): one SGD step of the full DML-CSR (tiny in the dry
   run) with ``norm_backend=compiled`` and ``native`` from the same weights and batch, the loss
   and the updated weights compared (fails beyond 1e-4 relative on the loss, 1e-3 on a weight).
   This script installs nothing: build the package first (``scripts/build_inplace_abn.sh``,
   which needs a registry) where it should be checked;
5. ``latency``: the full DML-CSR inference form at batch 1 (473 x 473) in fp32 and bf16
   (autocast): median latency and the share of pixels whose label bf16 agrees with fp32 on;
6. ``test`` / ``infer`` / ``export``: ``tools/test.py --device cuda`` and ``tools/infer.py
   --device cuda`` on the trained best.pth, and ``tools/export_onnx.py``.

``DRY_RUN=1``: everything on the CPU at tiny sizes (gloo instead of NCCL; the cuda tests skip),
so that this script is tested by CI (tests/test_gpu_check.py). The report is a Markdown table on
stdout (and ``--json``); its numbers go into docs/training.md.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dml_csr.cli import run  # noqa: E402
from dml_csr.layers.abn import compiled_abn_available  # noqa: E402

TINY_MODEL = ["model.args.layers=[1,1,1,1]", "model.args.width_mult=0.125"]
TINY_TRAIN = ["data.crop_size=[64,64]", "data.batch_size=2", "data.workers=0", "train.epochs=3",
              "train.cycles=1", "train.cycle_epochs=1", "train.image_log_interval=0",
              "eval.workers=0", "eval.batch_size=2", *TINY_MODEL]


def dry_run() -> bool:
    from dml_csr.cli import env_flag
    return env_flag("DRY_RUN")


class StepFailed(Exception):
    """A step whose process ran but whose result is a failure (the message says why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Report:
    """The steps' outcomes, in order."""

    def __init__(self, budget: float):
        self.rows = []
        self.deadline = time.monotonic() + budget

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd, limit: float, env=None, parse=None, cwd=None) -> dict:
        """Run ``cmd`` (at most ``limit`` s, and never past the budget); ``parse(stdout)`` gives
        the row's numbers."""
        limit = min(limit, self.left())
        row = {"step": name, "command": " ".join(str(c) for c in cmd)}
        if limit < 5:
            row.update(status="not run (time budget spent)", seconds=0.0)
            self.rows.append(row)
            return row
        start = time.monotonic()
        try:
            proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                                  timeout=limit, cwd=cwd or REPO,
                                  env=dict(os.environ, **(env or {})))
            row["status"] = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            out = proc.stdout
            if proc.returncode != 0:
                row["tail"] = (proc.stdout + proc.stderr)[-1500:]
        except subprocess.TimeoutExpired as exc:
            row["status"] = f"FAILED (over {limit:.0f} s)"
            out = exc.stdout if isinstance(exc.stdout, str) else ""
        row["seconds"] = round(time.monotonic() - start, 1)
        if parse is not None and row["status"] == "ok":
            try:
                row["numbers"] = parse(out)
            except StepFailed as exc:
                row["status"] = f"FAILED ({exc})"
                row["tail"] = out[-1500:]
            except Exception as exc:  # noqa: BLE001 - a report line, not a crash
                row["status"] = f"FAILED (output not understood: {exc})"
        self.rows.append(row)
        print(f"[gpu_check] {name}: {row['status']} ({row['seconds']} s)", file=sys.stderr,
              flush=True)
        return row

    def table(self) -> str:
        lines = ["| step | status | seconds | numbers |", "|---|---|---|---|"]
        for r in self.rows:
            numbers = r.get("numbers", "")
            if isinstance(numbers, dict):
                numbers = "; ".join(f"{k} {v}" for k, v in numbers.items())
            numbers = str(numbers).replace("|", "/")        # a cell of the table
            lines.append(f"| {r['step']} | {r['status']} | {r['seconds']} | {numbers} |")
        return "\n".join(lines)

    @property
    def failed(self) -> int:
        return sum(not r["status"].startswith("ok") for r in self.rows)


# ------------------------------------------------------------------------------ the steps
def versions() -> dict:
    """Facts of this machine (printed as JSON by ``--step versions``)."""
    import platform

    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        out["cudnn"] = torch.backends.cudnn.version()
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True)
        out["driver"] = smi.stdout.strip().splitlines()[0] if smi.stdout.strip() else None
    try:
        import onnxruntime
        out["onnxruntime"] = onnxruntime.__version__
        out["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        out["onnxruntime"] = None
    out["inplace_abn_compiled"] = compiled_abn_available()
    return out


def latency(dry: bool) -> dict:
    """Batch-1 latency of the full DML-CSR inference form in fp32 and bf16 (autocast) on this
    device, with the bf16 labels' agreement (printed as JSON by ``--step latency``)."""
    import statistics

    import torch

    from dml_csr.models import DMLCSR
    from dml_csr.utils.random_weights import calibrate_norms, randomise_norms
    device = torch.device("cpu" if dry else "cuda")
    size = 64 if dry else 473
    kw = dict(layers=[1, 1, 1, 1], width_mult=0.125) if dry else {}
    torch.manual_seed(0)
    model = DMLCSR(11, with_edges=False, **kw).eval()
    randomise_norms(model)      # random weights at a trained network's scale (bench_inference.py)
    calibrate_norms(model, torch.randn(2, 3, size, size,
                                       generator=torch.Generator().manual_seed(3)),
                    weight_scale=0.5)
    model = model.to(device)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)

    def timed(precision):
        ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
               else torch.autocast(device.type, enabled=False))
        times = []
        with torch.inference_mode(), ctx:
            for i in range(13):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out = model(x).parsing
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= 3:                      # three warm-up passes
                    times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000, out.float()
    fp32_ms, ref = timed("fp32")
    bf16_ms, low = timed("bf16")
    agree = (low.argmax(1) == ref.argmax(1)).float().mean().item()
    return {"size": size, "fp32_ms": round(fp32_ms, 2), "bf16_ms": round(bf16_ms, 2),
            "bf16_pixels_as_fp32": f"{100 * agree:.2f} %"}


def compiled_vs_native(dry: bool) -> dict:
    """One SGD step of DML-CSR with the compiled inplace-abn and with the native layers, from the
    same weights and batch; the loss and the updated weights compared (printed as JSON by
    ``--step compiled``; exit 1 beyond the tolerances of the module docstring)."""
    import torch
    import torch.nn.functional as F

    from dml_csr.models import DMLCSR
    device = torch.device("cpu" if dry else "cuda")
    size = 64 if dry else 321
    kw = dict(layers=[1, 1, 1, 1], width_mult=0.125) if dry else {}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, size, size, generator=g).to(device)
    losses, weights = {}, {}
    for backend in ("native", "compiled"):
        torch.manual_seed(0)
        model = DMLCSR(11, with_edges=False, norm_backend=backend, **kw).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        logits = model(x).parsing
        target = torch.randint(0, 11, logits.shape[:1] + logits.shape[2:],
                               generator=torch.Generator().manual_seed(2)).to(device)
        loss = F.cross_entropy(logits.float(), target)
        loss.backward()
        optimizer.step()
        losses[backend] = loss.item()
        weights[backend] = {k: v.detach().float().cpu() for k, v in model.state_dict().items()
                            if v.is_floating_point()}
    loss_rel = abs(losses["compiled"] - losses["native"]) / max(abs(losses["native"]), 1e-12)
    diff = max((weights["compiled"][k] - v).abs().max().item()
               for k, v in weights["native"].items())
    out = {"loss_native": round(losses["native"], 6), "loss_compiled": round(losses["compiled"], 6),
           "loss_rel_diff": f"{loss_rel:.2e}", "max_weight_diff": f"{diff:.2e}"}
    if loss_rel > 1e-4 or diff > 1e-3:
        raise StepFailed(f"compiled and native ABN disagree: {out}")
    return out


STEPS = {"latency": latency, "compiled": compiled_vs_native}


def bench_modes(compiled: bool) -> list:
    """bench_train's modes: fp32 with the memory-saving ABN, bf16, fp16, and the compiled
    inplace-abn where it imports."""
    return ["memory", "bf16", "fp16"] + (["compiled"] if compiled else [])


def _pytest_summary(out: str, dry: bool) -> dict:
    """pytest's last line; outside the dry run a run in which no test passed is a failure (the
    CUDA tests all skipped: this machine's CUDA is not usable)."""
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    if not dry and " passed" not in summary:
        raise StepFailed(f"no CUDA test ran ({summary or 'no output'})")
    return {"summary": summary}


def _json_line(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _test_line(out: str) -> dict:
    line = [l for l in out.splitlines() if " images, " in l][-1]
    return {"result": line.strip()}


def _bench_rows(out: str) -> dict:
    rows = [l for l in out.splitlines() if l.startswith("| ") and "stage" not in l]
    return {" ".join(c.strip() for c in l.strip("|").split("|")[:3]):
            " / ".join(c.strip() for c in l.strip("|").split("|")[3:]) for l in rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="also write the report here")
    ap.add_argument("--budget", type=float, default=480, help="seconds for all steps (default 480)")
    ap.add_argument("--step", choices=("versions", *STEPS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    dry = dry_run()
    if args.step == "versions":
        facts = versions()
        print(json.dumps(facts))
        if not dry and not facts["cuda_available"]:
            print(f"no working CUDA: torch {facts['torch']} (built for CUDA "
                  f"{facts['cuda_build']}) sees no usable GPU", file=sys.stderr)
            return 1
        return 0
    if args.step in STEPS:
        print(json.dumps(STEPS[args.step](dry)))
        return 0
    py = sys.executable
    report = Report(args.budget)
    device = "cpu" if dry else "cuda"
    print(f"[gpu_check] {'DRY RUN on the CPU, tiny sizes' if dry else 'CUDA'}; budget "
          f"{args.budget:.0f} s", file=sys.stderr, flush=True)
    row = report.run("versions", [py, __file__, "--step", "versions"], 60, parse=_json_line)
    if not dry and row["status"] != "ok":      # every later step needs a working GPU
        report.rows.append({"step": "the other steps", "seconds": 0.0,
                            "status": "not run (no working CUDA: see versions)"})
        return finish(report, args.json, dry)
    compiled = compiled_abn_available()
    report.run("pytest -m cuda", [py, "-m", "pytest", "tests", "-q", "-m", "cuda", "-p",
                                  "no:cacheprovider"], 120,
               parse=lambda out: _pytest_summary(out, dry))
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        from dml_csr.data.synthetic import make_synthetic
        data = work / "data"
        make_synthetic(data, num_train=8, num_valid=4, num_test=4, size=64)
        best = None
        for precision in ("fp16", "bf16"):
            out = work / f"run_{precision}"
            row = report.run(
                f"train {precision} (torchrun, 1 process, process group forced)",
                [py, "-m", "dml_csr.engine.launch", "--nproc_per_node", "1", "--master_addr",
                 "127.0.0.1", "--master_port", _free_port(), "tools/train.py", "synthetic",
                 f"data.root={data}", *TINY_TRAIN, f"train.precision={precision}",
                 "--output-dir", out, "--device", device, "--test"],
                180, env={"DMLCSR_FORCE_DISTRIBUTED": "1", "PYTHONPATH": str(REPO)},
                parse=lambda o: {"result": [l for l in o.splitlines() if "test mean_f1" in l][-1]
                                 .split("->")[0].strip()})
            if row["status"] == "ok":
                best = out / "best.pth"
        bench = (["--size", "32", "--batches", "2"] if dry else ["--size", "473", "--batches", "7"])
        modes = bench_modes(compiled)
        report.run(f"bench_train ({' / '.join(modes)})",
                   [py, "benchmarks/bench_train.py", *bench, "--modes", *modes,
                    "--steps", "2", "--device", device, *(TINY_MODEL if dry else [])], 200,
                   parse=_bench_rows)
        if compiled:
            report.run("compiled vs native (one training step)",
                       [py, __file__, "--step", "compiled"], 120, parse=_json_line)
        report.run("latency (fp32, bf16)", [py, __file__, "--step", "latency"], 90,
                   parse=_json_line)
        if best is None:
            report.rows.append({"step": "test / infer / export", "status": "not run (no "
                                "checkpoint: both training steps failed)", "seconds": 0.0})
        else:
            report.run("tools/test.py", [py, "tools/test.py", "synthetic", "--checkpoint", best,
                                         f"data.root={data}", *TINY_MODEL, "data.crop_size=[64,64]",
                                         "--device", device, "--workers", "0"], 90,
                       parse=_test_line)
            report.run("tools/infer.py", [py, "tools/infer.py", "--checkpoint", best,
                                          "tests/data/photos", "--out", work / "parsed",
                                          "--device", device], 90,
                       parse=lambda o: {"outputs": len(os.listdir(work / "parsed"))})
            report.run("tools/export_onnx.py", [py, "tools/export_onnx.py", "--checkpoint", best,
                                                 "--out", work / "model.onnx"], 90,
                       parse=lambda o: {"check": o.strip().splitlines()[-1]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return finish(report, args.json, dry)


def finish(report: Report, json_path, dry: bool) -> int:
    """Print the report (and write it to ``json_path``); the exit status."""
    print(report.table())
    print(f"\n{len(report.rows) - report.failed} of {len(report.rows)} steps ok")
    if json_path:
        from dml_csr.files import write_json
        write_json(json_path, {"dry_run": dry, "rows": report.rows})
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(run(main))
