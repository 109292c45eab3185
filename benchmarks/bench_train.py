"""Training step time and peak memory of the full DML-CSR at the paper's scale, per mode.

    python benchmarks/bench_train.py [--size 473] [--batches 1 2] [--stages multitask csr]
        [--modes native memory compiled bf16 fp16 checkpoint] [--steps 2] [--device cpu|cuda]
        [--config lapa] [--json OUT.json] [section.key=value ...]

One training step = what ``Trainer.train_one_epoch`` does per batch: the stage's forward passes
(``engine/stages.py``: the model, and for ``csr`` also the frozen teacher), the losses of the
``--config`` preset (default ``lapa``, the paper's), and ``stages.optimizer_step`` (backward of
the scaled loss, the SGD step, the fp16 scale's update: the trainer's own step). The model is
``DMLCSR(11, with_edges=True)`` (ResNet-101 + DDGCN + edge branch), random weights; the batch is
random images with random labels and edges at ``--size``.

Modes (all float32 unless named):
- ``native``: ``model.args.norm_backend=native`` (the ABN of the earlier releases of this project);
- ``memory``: the memory-saving ABN (``memory``; what ``auto``, the default, picks for training
  on the CPU and on CUDA without the compiled package);
- ``compiled``: the ``inplace-abn`` package (where ``scripts/build_inplace_abn.sh`` has been run;
  skipped otherwise);
- ``bf16``: ``memory`` plus ``train.precision=bf16`` (autocast; losses in float32);
- ``fp16``: ``memory`` plus ``train.precision=fp16`` (autocast and the grad scaler; on the CPU
  float16 arithmetic is emulated, so its CPU time says nothing about a GPU's);
- ``checkpoint``: ``memory`` plus ``train.checkpoint_backbone=true``.

Every (mode, batch, stage) runs in its own process, so that its peak is its own: on the CPU the
peak resident memory (``VmHWM``, everything the process holds: Python, torch, the model, its
gradients and SGD momentum, activations), on CUDA ``torch.cuda.max_memory_allocated``. Step time:
the last of ``--steps`` steps (the first also builds oneDNN primitives). Wall clock on a shared
machine is noisy: say so with the numbers.
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dml_csr.files import write_json  # noqa: E402

MODES = ("native", "memory", "compiled", "bf16", "fp16", "checkpoint")
GB = float(1 << 30)


def mode_overrides(mode: str):
    """Config overrides of a mode (module docstring)."""
    backend = {"native": "native", "compiled": "compiled"}.get(mode, "memory")
    extra = {"bf16": ["train.precision=bf16"], "fp16": ["train.precision=fp16"],
             "checkpoint": ["train.checkpoint_backbone=true"]}
    return [f"model.args.norm_backend={backend}", *extra.get(mode, [])]


def child(mode: str, batch_size: int, stage_name: str, size: int, steps: int, device: str,
          config: str, extra=()) -> dict:
    """One measurement in this process; returns its numbers."""
    import torch

    from dml_csr.config import load_config
    from dml_csr.engine.build import build_optimizer, tune_cpu_malloc
    from dml_csr.engine.stages import (DistillStage, FrozenTeacher, MultiTaskStage, grad_scaler,
                                       optimizer_step, precision_context)
    from dml_csr.engine.trainer import resolve_precision
    from dml_csr.layers.abn import compiled_abn_available
    from dml_csr.losses import build_losses
    from dml_csr.models import build_model, model_kwargs_from_config
    from dml_csr.utils.memory import status_bytes

    if mode == "compiled" and not compiled_abn_available():
        return {"skipped": "inplace-abn does not import (scripts/build_inplace_abn.sh)"}
    dev = torch.device(device)
    cfg = load_config(config, mode_overrides(mode) + list(extra))
    if dev.type == "cpu":
        tune_cpu_malloc(cfg.train.cpu_malloc_mmap_kb)          # as the trainer does
    torch.manual_seed(0)
    model = build_model("dml_csr", model_kwargs_from_config(cfg.model, 11), training=True)
    model = model.to(dev).train()
    model.checkpoint_backbone = bool(cfg.train.checkpoint_backbone)
    optimizer = build_optimizer(cfg, model)
    multitask, distill = build_losses(cfg)
    if stage_name == "csr":
        stage = DistillStage(distill, FrozenTeacher(copy.deepcopy(model)).to(dev), cycle=1)
    else:
        stage = MultiTaskStage(multitask)
    precision = resolve_precision(cfg.train.precision, cfg.train.amp, dev)
    autocast = precision_context(dev, precision)
    scaler = grad_scaler(dev, precision)
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 11, (batch_size, size, size), generator=g)
    edge = (torch.rand(batch_size, size, size, generator=g) < 0.1).long()
    batch = {"image": torch.randn(batch_size, 3, size, size, generator=g), "label": label,
             "edge": edge, "cat_edge": label * edge}
    batch = {k: v.to(dev) for k, v in batch.items()}
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = status_bytes("VmRSS")
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        losses, _ = stage(model, batch, autocast)
        optimizer_step(losses["loss"], optimizer, scaler)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    out = {"step_s": times[-1], "first_step_s": times[0], "precision": precision,
           "loss": float(losses["loss"].detach()), "rss_before_steps_gb": before / GB,
           "peak_rss_gb": status_bytes("VmHWM") / GB,
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if dev.type == "cuda":
        out["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / GB
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=473)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--stages", nargs="+", default=["multitask", "csr"], choices=("multitask", "csr"))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--config", default="lapa")
    ap.add_argument("--json")
    ap.add_argument("overrides", nargs="*", help="section.key=value for every run (e.g. "
                                                 "train.cpu_malloc_mmap_kb=0)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "BATCH", "STAGE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mode, batch, stage = args.child
        print(json.dumps(child(mode, int(batch), stage, args.size, args.steps, args.device,
                               args.config, args.overrides)))
        return 0
    key = "max_memory_allocated_gb" if args.device.startswith("cuda") else "peak_rss_gb"
    print(f"DML-CSR(11, with_edges=True) at {args.size} x {args.size}, {args.config} preset "
          f"{' '.join(args.overrides)}, {args.device}, step time = step {args.steps} of {args.steps}")
    print(f"| stage | mode | batch | step (s) | peak ({'CUDA allocated' if 'cuda' in key else 'RSS'}, GB) |")
    print("|---|---|---|---|---|")
    rows = []
    for stage in args.stages:
        for mode in args.modes:
            for batch in args.batches:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, str(batch), stage,
                       "--size", str(args.size), "--steps", str(args.steps), "--device",
                       args.device, "--config", args.config, *args.overrides]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode != 0:
                    r = {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else
                         f"exit {run.returncode}"}
                else:
                    r = json.loads(run.stdout.strip().splitlines()[-1])
                r.update(stage=stage, mode=mode, batch=batch)
                rows.append(r)
                if "skipped" in r or "error" in r:
                    print(f"| {stage} | {mode} | {batch} | - | {r.get('skipped') or r['error']} |",
                          flush=True)
                else:
                    print(f"| {stage} | {mode} | {batch} | {r['step_s']:.1f} | {r[key]:.2f} |",
                          flush=True)
    if args.json:
        write_json(args.json, {"size": args.size, "device": args.device, "config": args.config,
                               "steps": args.steps, "rows": rows}, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
