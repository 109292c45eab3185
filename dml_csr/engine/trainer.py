"""The DML-CSR training schedule: multi-task stage, then K cycles of self-distillation (CSR).

    epochs 0 .. E-1              multi-task stage: eq. 5, SGD, poly lr per iteration
    epochs E + (k-1) N .. E+kN-1 cycle k = 1..K: eq. 7 against a frozen teacher, cosine lr

(E = ``cfg.multitask_epochs``, K = ``train.cycles``, N = ``train.cycle_epochs``.)

Teacher (``train.teacher``):

- ``eq6`` (paper). Our reading of section 3.3: the teacher of cycle 1 is the best model of the
  multi-task stage (on the validation split) after BN re-estimation. At the end of cycle k the
  aggregated model ``M = k/(k+1) M_best + 1/((k+1) N) sum_n M_n`` is formed from the N end-of-epoch
  weights of the student in cycle k and the best model so far (every validated model competes:
  epoch students and earlier aggregated models), its ABN/BN statistics are re-estimated over the
  training set, it is scored and saved (``cycle{k}_aggregated.pth``), and it becomes the frozen
  teacher of cycle k+1. The student keeps its own weights throughout (it is not reset to M).
- ``released``: a running mean of end-of-cycle weights, ``T_m = m/(m+1) T_{m-1} + 1/(m+1) M_m``,
  started from the student at the end of the multi-task stage (T_0), with BN re-estimation.

Each stage maps a batch to a loss dict (``MultiTaskStage`` / ``DistillStage``); the loss receives
the model's outputs as they come (the DML-CSR tuple, or FP-LIIF's logits at the crop size).
Checkpoint format and run-folder contents: docs/training.md.
"""
import json
import logging
import math
import os
import random
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from ..config import Config, config_to_dict, save_config
from ..data import FaceDataset, get_schema
from ..data.transforms import MEAN, STD
from ..data.check import DataCheckError, DataCheckReport, check_data
from ..losses import MultiTaskLoss, SelfDistillationLoss, build_losses
from ..models import ParsingOutput, build_model, load_imagenet_backbone, model_kwargs_from_config
from ..models.checkpoint import (READABLE_FORMATS, ModelSpec, check_backbone_file,
                                 load_checkpoint_file, save_checkpoint)
from ..layers.sync_bn import convert_sync_batchnorm1d
from . import csr
from .. import distributed as du
from .schedule import LRSchedule

__all__ = ["Trainer", "FrozenTeacher", "MultiTaskStage", "DistillStage", "RunDirError",
           "NonFiniteLossError", "RUN_FILES"]

logger = logging.getLogger("dml_csr.train")

RUN_FILES = ("config.yaml", "last.pth", "best.pth", "metrics.jsonl", "train.log", "tb")
REESTIMATE_EPOCH_OFFSET = 1_000_000   # augmentation epoch ids of the BN re-estimation passes
# keys that may change on --resume without changing the run's results
# --resume of runs saved by earlier versions: fields added since (their behaviour then) and
# fields removed since (the value that meant "no effect")
LEGACY_DEFAULTS = {"train.optimizer": "sgd", "train.poly_horizon": "multitask"}
LEGACY_REMOVED = {"loss.total_scale": 1.0}
RESUME_FREE_KEYS = {"output_dir", "data.workers", "eval.workers", "eval.batch_size",
                    "train.log_interval", "train.image_log_interval", "data.check"}


class RunDirError(RuntimeError):
    """The output folder holds another run's files (use --resume or --overwrite)."""


class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss; the message names the epoch and iteration."""


# --------------------------------------------------------------------------------------------
# stages: batch -> loss dict
# --------------------------------------------------------------------------------------------
SAMPLED_KEYS = ("label", "edge", "cat_edge")


def sample_queries(batch: Dict[str, torch.Tensor],
                   samples: int) -> Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor]]:
    """LIIF-style training queries: ``samples`` distinct random output pixels per image.

    Returns a shallow copy of ``batch`` whose per-pixel targets (``SAMPLED_KEYS``, (N, H, W))
    are the values at the sampled pixels as (N, 1, Q), and their pixel-centre coordinates
    (N, Q, 2) for ``FPLIIF(x, coord=...)``; the image is unchanged. Uses the global torch RNG
    (so ``--resume`` reproduces it). ``samples=0``: ``(batch, None)``, the whole grid."""
    if not samples:
        return batch, None
    from ..models.fp_liif import pixel_centres
    label = batch["label"]
    n, h, w = label.shape
    idx = torch.rand(n, h * w).argsort(dim=1)[:, :samples].to(label.device)   # without replacement
    coord = pixel_centres(h, w, device=label.device)[idx]                       # (N, Q, 2)
    out = dict(batch)
    for key in SAMPLED_KEYS:
        if key in batch:
            out[key] = batch[key].reshape(n, h * w).gather(1, idx).view(n, 1, samples)
    return out, coord


class FrozenTeacher(nn.Module):
    """A frozen copy of a model: eval mode forever, no gradients, forward under no_grad."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, coord: Optional[torch.Tensor] = None) -> ParsingOutput:
        return self.model(images, coord=coord)


class MultiTaskStage:
    """Eq. 5 stage: ``(model, batch) -> (loss dict, outputs)``."""
    name = "multitask"

    def __init__(self, loss: MultiTaskLoss, query_samples: int = 0):
        self.loss, self.query_samples = loss, query_samples

    def __call__(self, model: nn.Module, batch: Dict[str, torch.Tensor]):
        batch, coord = sample_queries(batch, self.query_samples)
        outputs = model(batch["image"], coord=coord)
        return self.loss(outputs, batch), outputs


class DistillStage:
    """Eq. 7 stage of cycle ``cycle`` (1-based) against a :class:`FrozenTeacher`."""
    name = "csr"

    def __init__(self, loss: SelfDistillationLoss, teacher: FrozenTeacher, cycle: int,
                 query_samples: int = 0):
        self.loss, self.teacher, self.cycle = loss, teacher, cycle
        self.query_samples = query_samples

    def __call__(self, model: nn.Module, batch: Dict[str, torch.Tensor]):
        batch, coord = sample_queries(batch, self.query_samples)
        outputs = model(batch["image"], coord=coord)
        soft = self.teacher(batch["image"], coord)
        return self.loss(outputs, batch, soft, cycle=self.cycle), outputs


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _colorize(ids: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """(N, H, W) ids -> (N, 3, H, W) in [0, 1]; 255 -> white."""
    ids = ids.clone()
    out = torch.ones(ids.shape + (3,))
    valid = ids < palette.shape[0]
    out[valid] = palette[ids[valid]]
    return out.permute(0, 3, 1, 2)


class Trainer:
    """Runs the whole schedule of ``cfg`` in ``output_dir`` (default ``cfg.output_dir``).

    Args:
        cfg: the resolved config.
        output_dir: run folder (overrides ``cfg.output_dir``).
        resume: continue from ``output_dir/last.pth`` (a fresh start when it does not exist).
        overwrite: delete this run folder's own files (``RUN_FILES``, ``cycle*_aggregated.pth``)
            and start afresh; nothing else is touched.
        device: ``auto`` | ``cpu`` | ``cuda``.
    """

    def __init__(self, cfg: Config, output_dir: Optional[str] = None, resume: bool = False,
                 overwrite: bool = False, device: str = "auto"):
        if output_dir:
            cfg.output_dir = output_dir
        self.cfg = cfg
        self.out = cfg.output_dir
        self.resume = resume
        self.overwrite = overwrite
        self.info = du.init_distributed(device)
        self.device = self.info.device
        self.model_name = cfg.model.name
        self.writer = None
        data_check = self._check_data()     # before the run folder: a failed check leaves none
        self._prepare_run_dir()
        du.setup_logging(os.path.join(self.out, "train.log"), self.info.is_main)
        if data_check is not None:
            logger.info("%s", data_check.summary())
        self._seed(cfg.train.seed)
        self._build_data()
        self._build_model()
        self.multitask_loss, self.distill_loss = build_losses(cfg)
        self.multitask_loss.to(self.device)
        self.distill_loss.to(self.device)
        # state of the schedule
        self.epoch = 0                      # completed epochs
        self.teacher: Optional[FrozenTeacher] = None
        self.snap_sum: Optional[Dict[str, torch.Tensor]] = None
        self.snap_count = 0
        self.best: Optional[Dict[str, Any]] = None   # {"model", "score", "metric", "epoch", "source"}
        self.last_metrics: Optional[dict] = None
        if resume and os.path.isfile(self.path("last.pth")):
            self._load_last()
        elif resume:
            logger.warning("--resume: no %s yet, starting from scratch", self.path("last.pth"))
        if self.info.is_main:
            save_config(cfg, self.path("config.yaml"))
            if self.epoch == 0:
                open(self.path("metrics.jsonl"), "w").close()
        du.barrier()

    # ---------------------------------------------------------------- set-up
    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def _run_files(self) -> List[str]:
        if not os.path.isdir(self.out):
            return []
        return sorted(n for n in os.listdir(self.out)
                      if n in RUN_FILES or (n.startswith("cycle") and n.endswith("_aggregated.pth")))

    def _prepare_run_dir(self) -> None:
        found = self._run_files()
        if found and not self.resume and not self.overwrite:
            raise RunDirError(f"output folder {self.out} holds another run's files ({', '.join(found)}); "
                              f"pass --resume to continue it, --overwrite to replace it, or choose "
                              f"another --output-dir")
        du.barrier()
        if self.info.is_main:
            if found and self.overwrite and not self.resume:
                for name in found:   # only our own file names, only inside the run folder
                    p = os.path.join(self.out, name)
                    if os.path.isdir(p) and not os.path.islink(p):
                        shutil.rmtree(p)
                    else:
                        os.remove(p)
            os.makedirs(self.out, exist_ok=True)
        du.barrier()

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if self.cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True

    def _check_data(self) -> Optional[DataCheckReport]:
        """``data.check``: every image and label of the train and val splits (also on --resume).
        Under DDP each process checks a shard and the reports are gathered, so any problem, or a
        check that fails on one process only (a list file missing on one node), stops every
        process with the same DataCheckError. A missing ``model.pretrained`` file also stops
        the run here, before the run folder."""
        d, pretrained = self.cfg.data, self.cfg.model.pretrained
        if pretrained:
            check_backbone_file(pretrained)
        if not d.check:
            return None
        args = (d.root, [d.train_split, d.val_split], get_schema(d.dataset))
        if not self.info.distributed:
            return check_data(*args).raise_if_problems()
        try:
            report, failure = check_data(*args, rank=self.info.rank,
                                         world_size=self.info.world_size), None
        except (OSError, ValueError) as exc:
            report, failure = None, str(exc)
        shards: List[Any] = [None] * self.info.world_size
        torch.distributed.all_gather_object(shards, (report, failure))
        failed = [(rank, f) for rank, (_, f) in enumerate(shards) if f]
        if failed:
            raise DataCheckError(f"data check stopped on rank {failed[0][0]}: {failed[0][1]}")
        report.problems = [p for shard, _ in shards for p in shard.problems]
        report.seconds = max(shard.seconds for shard, _ in shards)
        return report.raise_if_problems()

    def _build_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        world = self.info.world_size
        if d.batch_size % world:
            raise ValueError(f"data.batch_size ({d.batch_size}) must be divisible by the number of "
                             f"processes ({world}): it is the GLOBAL batch")
        self.local_batch = d.batch_size // world
        self.schema = get_schema(d.dataset)
        self.train_set = FaceDataset(d.root, d.train_split, crop_size=tuple(d.crop_size),
                                     augment=d.augment, flip=d.flip, channel_order=d.channel_order,
                                     center_mode=d.center_mode, edge_width=d.edge_width,
                                     with_edges=True, schema=self.schema, seed=cfg.train.seed)
        if len(self.train_set) < d.batch_size:
            raise ValueError(f"training split has {len(self.train_set)} images, fewer than one "
                             f"batch of {d.batch_size}")
        self.val_set = FaceDataset(d.root, d.val_split, crop_size=tuple(d.crop_size), augment="none",
                                   flip=False, channel_order=d.channel_order,
                                   center_mode=d.center_mode, with_edges=False, schema=self.schema)
        # Order depends only on (seed, epoch): DistributedSampler also in a single process.
        self.sampler = DistributedSampler(self.train_set, num_replicas=world, rank=self.info.rank,
                                          shuffle=True, seed=cfg.train.seed, drop_last=True)
        self.train_loader = DataLoader(
            self.train_set, batch_size=self.local_batch, sampler=self.sampler,
            num_workers=d.workers, pin_memory=self.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed(cfg.train.seed))
        n = len(self.train_loader)
        cap = cfg.train.max_iters_per_epoch
        self.iters_per_epoch = min(n, cap) if cap > 0 else n

    def _new_model(self) -> nn.Module:
        return build_model(self.model_name, self.model_kwargs, training=True)

    def _build_model(self) -> None:
        cfg = self.cfg
        self.model_kwargs = model_kwargs_from_config(cfg.model, self.schema.num_classes)
        model = self._new_model()
        if cfg.model.pretrained and not model.imagenet_backbone:
            raise ValueError(f"model.pretrained is set ({cfg.model.pretrained}) but the "
                             f"{self.model_name} family has no ImageNet backbone: set "
                             f"model.pretrained=''")
        if cfg.model.pretrained:
            load_imagenet_backbone(model, cfg.model.pretrained)
        elif model.imagenet_backbone:
            logger.warning("model.pretrained is empty: the backbone starts from RANDOM weights "
                           "(the paper uses ImageNet weights; fine only for the synthetic set)")
        if self.info.distributed:
            convert_sync_batchnorm1d(model)      # the DDGCN's BatchNorm1d layers; ABN syncs itself
        model.to(self.device)
        self.model = model
        if self.info.distributed:
            tasks = set(cfg.loss.tasks)
            unused = not {"binary_edge", "category_edge"} <= tasks
            self.ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=unused)
        else:
            self.ddp = model
        t = cfg.train
        if t.optimizer == "adamw":   # FP-LIIF configs (docs/fp_liif.md); weight_decay 0 = Adam
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                                             weight_decay=t.weight_decay)
        self.schedule = LRSchedule.from_config(cfg, self.iters_per_epoch)
        self.use_amp = bool(t.amp and self.device.type == "cuda")
        if t.amp and not self.use_amp:
            logger.warning("train.amp is ignored on %s (mixed precision needs CUDA)", self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    # ---------------------------------------------------------------- checkpoints
    def _spec(self) -> ModelSpec:
        """What every checkpoint of the run says about its model, classes and input."""
        d = self.cfg.data
        return ModelSpec.for_dataset(self.model_name, self.model_kwargs, d.dataset,
                                     crop_size=d.crop_size, channel_order=d.channel_order,
                                     center_mode=d.center_mode)

    def _save(self, name: str, state: Dict[str, torch.Tensor], **extra) -> None:
        if self.info.is_main:
            save_checkpoint(self.path(name), state, self._spec(),
                            config=config_to_dict(self.cfg), **extra)

    def _stage_of(self, epoch: int) -> Tuple[str, int]:
        e0 = self.cfg.multitask_epochs
        if epoch < e0:
            return "multitask", 0
        return "csr", (epoch - e0) // self.cfg.train.cycle_epochs + 1

    def _save_last(self) -> None:
        stage, cycle = self._stage_of(max(self.epoch - 1, 0))
        self._save("last.pth", du.unwrap(self.model).state_dict(),
                   optimizer=self.optimizer.state_dict(),
                   scheduler={**self.schedule.state_dict(), "epoch": self.epoch, "iteration": 0},
                   scaler=self.scaler.state_dict(), rng=_rng_state(),
                   epoch=self.epoch, stage=stage, cycle=cycle,
                   snapshots={"sum": self.snap_sum, "count": self.snap_count},
                   teacher=None if self.teacher is None else self.teacher.model.state_dict(),
                   teacher_kind=self.cfg.train.teacher, best=self.best,
                   metrics=self.last_metrics)

    def _save_inference(self, state: Dict[str, torch.Tensor], name: str, **facts) -> None:
        self._save(name, state, **facts)

    def _load_last(self) -> None:
        ckpt = load_checkpoint_file(self.path("last.pth"))
        if ckpt.get("format") not in READABLE_FORMATS or "optimizer" not in ckpt:
            raise RunDirError(f"{self.path('last.pth')} is not a training checkpoint of this trainer")
        saved = _flatten(ckpt["config"])
        for key, value in LEGACY_DEFAULTS.items():   # runs saved before the field existed
            saved.setdefault(key, value)
        for key, neutral in LEGACY_REMOVED.items():  # removed keys, harmless at that value
            if saved.get(key, neutral) == neutral:
                saved.pop(key, None)
        now = _flatten(config_to_dict(self.cfg))
        diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now)
                if k not in RESUME_FREE_KEYS and saved.get(k) != now.get(k)}
        if diff:
            raise RunDirError("--resume with a different config than the interrupted run "
                              f"(saved vs now): {diff}")
        du.unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.snap_sum = ckpt["snapshots"]["sum"]
        self.snap_count = int(ckpt["snapshots"]["count"])
        self.best = ckpt["best"]
        self.last_metrics = ckpt.get("metrics")
        if ckpt["teacher"] is not None:
            self.teacher = self._make_teacher(ckpt["teacher"])
        _set_rng_state(ckpt["rng"])
        if self.info.is_main:   # drop validation lines written after the checkpoint
            lines = []
            if os.path.isfile(self.path("metrics.jsonl")):
                with open(self.path("metrics.jsonl")) as f:
                    lines = [l for l in f if l.strip() and json.loads(l)["epoch"] <= self.epoch]
            with open(self.path("metrics.jsonl"), "w") as f:
                f.writelines(lines)
        logger.info("resumed from %s: %d epochs done", self.path("last.pth"), self.epoch)

    # ---------------------------------------------------------------- teacher
    def _make_teacher(self, state: Dict[str, torch.Tensor]) -> FrozenTeacher:
        model = self._new_model()
        if self.info.distributed:
            convert_sync_batchnorm1d(model)
        model.load_state_dict(state)
        return FrozenTeacher(model.to(self.device))

    def _reestimate(self, model: nn.Module, tag: int) -> None:
        """BN/ABN re-estimation over the training set (augmentation epoch id fixed by ``tag``)."""
        if not self.cfg.train.bn_reestimate:
            return
        world = self.info.world_size
        self._set_epoch(REESTIMATE_EPOCH_OFFSET + tag)
        seen = csr.reestimate_norm_stats(
            model, self.train_loader,
            forward=lambda m, b: m(b["image"].to(self.device)),
            batch_size_of=lambda b: b["image"].shape[0] * world,
            max_batches=self.cfg.train.bn_reestimate_batches)
        logger.info("re-estimated ABN/BN statistics over %d training images", seen)

    def _first_teacher(self) -> None:
        """Teacher of cycle 1: eq6 -> the multi-task stage's best model; released -> the last one."""
        if self.cfg.train.teacher == "eq6" and self.best is not None:
            state = self.best["model"]
        else:
            state = csr.clone_state(du.unwrap(self.model).state_dict())
        self.teacher = self._make_teacher(state)
        self._reestimate(self.teacher.model, 0)
        self.teacher.train(False)

    def _end_of_cycle(self, k: int) -> None:
        """Aggregate cycle k, re-estimate BN, score and save it; it teaches cycle k+1."""
        student = csr.clone_state(du.unwrap(self.model).state_dict())
        if self.cfg.train.teacher == "eq6":
            best = self.best["model"] if self.best is not None else student
            state = csr.self_ensemble(best, self.snap_sum, k, num_snapshots=self.snap_count)
        else:
            state = csr.running_mean_update(self.teacher.model.state_dict(), student, k)
        self.teacher = self._make_teacher(state)
        self._reestimate(self.teacher.model, k)
        self.teacher.train(False)
        agg_state = csr.clone_state(self.teacher.model.state_dict())
        metrics = self._validate(self.teacher.model, kind="aggregated", cycle=k)
        self._save_inference(agg_state, f"cycle{k}_aggregated.pth", epoch=self.epoch,
                             stage="csr", cycle=k, metrics=metrics,
                             score=metrics["headline"]["value"] if metrics else None)
        self._update_best(agg_state, metrics, source=f"cycle {k} aggregated")
        self.snap_sum, self.snap_count = None, 0

    # ---------------------------------------------------------------- validation
    def _validate(self, model: nn.Module, kind: str, cycle: int) -> Optional[dict]:
        from ..eval.inference import evaluate_model
        e = self.cfg.eval
        start = time.time()
        metrics = evaluate_model(du.unwrap(model), self.val_set, batch_size=e.batch_size,
                                 workers=e.workers, device=self.device, flip=False, scales=(1.0,),
                                 dataset_name=self.cfg.data.dataset, output_scale=e.output_scale)
        metrics = {k: v for k, v in metrics.items() if k != "confusion"}
        stage, _ = self._stage_of(self.epoch - 1)
        line = {"epoch": self.epoch, "stage": stage, "cycle": cycle, "model": kind,
                "split": self.cfg.data.val_split, "seconds": round(time.time() - start, 2), **metrics}
        if self.info.is_main:
            with open(self.path("metrics.jsonl"), "a") as f:
                f.write(json.dumps(line, default=float) + "\n")
            h = metrics["headline"]
            logger.info("epoch %d %s (%s, cycle %d): %s %.4f | mean_f1 %.4f | miou %.4f",
                        self.epoch, kind, stage, cycle, h["name"], h["value"],
                        metrics.get("mean_f1", float("nan")), metrics.get("miou", float("nan")))
            if self.writer is not None:
                tag = "val" if kind == "student" else "val_aggregated"
                for key in ("mean_f1", "miou", "pixel_accuracy", "mean_accuracy"):
                    if isinstance(metrics.get(key), (int, float)):
                        self.writer.add_scalar(f"{tag}/{key}", metrics[key], self.epoch)
                self.writer.add_scalar(f"{tag}/headline_{h['name']}", h["value"], self.epoch)
                for token, value in (metrics.get("f1") or {}).items():
                    if isinstance(value, (int, float)):
                        self.writer.add_scalar(f"{tag}_f1/{token}", value, self.epoch)
        return metrics

    def _update_best(self, state: Dict[str, torch.Tensor], metrics: Optional[dict], source: str) -> None:
        if not metrics or metrics.get("headline") is None:
            return
        score = float(metrics["headline"]["value"])
        if self.best is not None and not score > self.best["score"]:
            return
        stage, cycle = self._stage_of(self.epoch - 1)
        self.best = {"model": csr.clone_state(state), "score": score,
                     "metric": metrics["headline"]["name"], "epoch": self.epoch, "source": source}
        self._save_inference(self.best["model"], "best.pth", epoch=self.epoch, stage=stage,
                             cycle=cycle, score=score, metric=self.best["metric"], source=source,
                             metrics=metrics)
        logger.info("new best %s %.4f (%s, epoch %d)", self.best["metric"], score, source, self.epoch)

    # ---------------------------------------------------------------- training
    def _set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)

    def _log_images(self, batch, outputs, epoch: int) -> None:
        if self.writer is None:
            return
        n = min(4, batch["image"].shape[0])
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        img = (batch["image"][:n].detach().float().cpu() * std + mean).clamp(0, 1)
        if self.cfg.data.channel_order == "bgr":
            img = img.flip(1)
        size = img.shape[-2:]
        palette = torch.tensor(self.schema.palette, dtype=torch.float32) / 255.0
        if self.cfg.train.query_samples:     # the step saw sampled pixels: decode the whole grid
            with torch.no_grad():
                outputs = self.model(batch["image"][:n])
        up = lambda t: nn.functional.interpolate(t[:n].detach().float().cpu(), size=size,  # noqa: E731
                                                 mode="bilinear", align_corners=True)
        rows = [img, _colorize(batch["label"][:n].cpu(), palette),
                _colorize(up(outputs.parsing).argmax(1), palette)]
        if outputs.binary_edge is not None:
            rows.append(up(outputs.binary_edge).softmax(1)[:, 1:2].expand(-1, 3, -1, -1))
        if outputs.category_edge is not None:
            rows.append(_colorize(up(outputs.category_edge).argmax(1), palette))
        grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)   # (3, rows*H, n*W)
        self.writer.add_image("train/input_label_pred_edge_catedge", grid, epoch)

    def train_one_epoch(self, epoch: int, stage) -> Dict[str, float]:
        from tqdm import tqdm
        cfg = self.cfg
        self.ddp.train()
        self._set_epoch(epoch)
        sums: Dict[str, float] = {}
        count = 0
        bar = tqdm(total=self.iters_per_epoch, desc=f"epoch {epoch + 1}/{cfg.train.epochs} {stage.name}",
                   disable=not self.info.is_main, leave=False, dynamic_ncols=True)
        batch = outputs = None
        for it, batch in enumerate(self.train_loader):
            if it >= self.iters_per_epoch:
                break
            lr = self.schedule(epoch, it)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch = _to_device(batch, self.device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
                losses, outputs = stage(self.ddp, batch)
            loss = losses["loss"]
            if du.any_true(not bool(torch.isfinite(loss.detach()).all())):
                parts = {k: float(v) for k, v in losses.items()}
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch + 1}, iteration {it + 1} ({stage.name} stage): "
                    f"{parts}; stopping. The last good checkpoint is {self.path('last.pth')} "
                    f"({self.epoch} epochs done)")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            count += 1
            values = {k: float(v.detach()) for k, v in losses.items()}   # one device sync each
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            if self.info.is_main:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr:.2e}")
                bar.update(1)
                step = epoch * self.iters_per_epoch + it
                if self.writer is not None and (it % max(1, cfg.train.log_interval) == 0
                                                or it == self.iters_per_epoch - 1):
                    for k, v in values.items():
                        self.writer.add_scalar(f"train/{k}", v, step)
                    self.writer.add_scalar("train/lr", lr, step)
        bar.close()
        means = du.reduce_dict({k: v / max(1, count) for k, v in sums.items()})
        interval = cfg.train.image_log_interval
        if interval > 0 and (epoch + 1) % interval == 0 and self.info.is_main and batch is not None:
            self._log_images(batch, outputs, epoch + 1)
        logger.info("epoch %d/%d %s: %s | lr %.3g", epoch + 1, cfg.train.epochs, stage.name,
                    " ".join(f"{k} {v:.4f}" for k, v in means.items()), lr)
        return means

    def fit(self, stop_after_epoch: Optional[int] = None) -> Dict[str, Any]:
        """Train until ``train.epochs`` (or, for time-sliced jobs and tests, until
        ``stop_after_epoch`` epochs are done; ``--resume`` continues). Returns a summary."""
        cfg, t = self.cfg, self.cfg.train
        if self.info.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(self.path("tb"))
            logger.info("run %s | %s preset | %d processes on %s | global batch %d | %d iterations "
                        "per epoch | %d multi-task epochs + %d cycles x %d epochs", cfg.name,
                        cfg.preset, self.info.world_size, self.device, cfg.data.batch_size,
                        self.iters_per_epoch, cfg.multitask_epochs, t.cycles, t.cycle_epochs)
        e0 = cfg.multitask_epochs
        try:
            while self.epoch < t.epochs:
                if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                    break
                epoch = self.epoch
                stage_name, cycle = self._stage_of(epoch)
                if stage_name == "multitask":
                    stage = MultiTaskStage(self.multitask_loss, t.query_samples)
                else:
                    if self.teacher is None:
                        self._first_teacher()
                    stage = DistillStage(self.distill_loss, self.teacher, cycle, t.query_samples)
                train_means = self.train_one_epoch(epoch, stage)
                self.epoch = epoch + 1
                if stage_name == "csr":
                    self.snap_sum = csr.snapshot_sum(self.snap_sum, du.unwrap(self.model).state_dict())
                    self.snap_count += 1
                end_of_stage = self.epoch == e0 or (stage_name == "csr" and (self.epoch - e0) % t.cycle_epochs == 0)
                if self.epoch % max(1, t.val_interval) == 0 or end_of_stage:
                    metrics = self._validate(self.model, kind="student", cycle=cycle)
                    if metrics is not None:
                        metrics["train"] = train_means
                    self.last_metrics = metrics
                    self._update_best(du.unwrap(self.model).state_dict(), metrics,
                                      source=f"epoch {self.epoch} ({stage_name})")
                if stage_name == "csr" and (self.epoch - e0) % t.cycle_epochs == 0:
                    self._end_of_cycle(cycle)
                self._save_last()
                du.barrier()
        finally:
            if self.writer is not None:
                self.writer.flush()
                self.writer.close()
                self.writer = None
        summary = {"epochs_done": self.epoch, "best": None if self.best is None else
                   {k: v for k, v in self.best.items() if k != "model"},
                   "last_metrics": self.last_metrics}
        if self.info.is_main and self.epoch >= t.epochs and self.best is not None:
            logger.info("done: best %s %.4f (%s)", self.best["metric"], self.best["score"],
                        self.best["source"])
        return summary
