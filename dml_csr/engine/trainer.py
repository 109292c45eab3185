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

This module is the loop and its bookkeeping: the epochs (``fit``, ``train_one_epoch``), the CSR
cycles (teachers, aggregation, BN re-estimation), validation and the best model, and the
checkpoints it writes. Elsewhere in ``dml_csr/engine/``: the stages (``stages.py``: batch -> loss
dict), the set-up (``build.py``: data check, data, model, optimiser), the run folder and
``--resume`` rules (``rundir.py``), TensorBoard (``tb.py``), the CSR arithmetic (``csr.py``), the
learning rates (``schedule.py``).
Checkpoint format and run-folder contents: docs/training.md.
"""
import json
import logging
import os
import random
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..config import Config, ConfigError, config_to_dict, save_config
from ..files import append_line, write_text
from ..losses import build_losses
from ..models import build_model, model_kwargs_from_config
from ..models.checkpoint import ModelSpec, save_checkpoint
from ..layers.sync_bn import convert_sync_batchnorm1d
from . import csr, tb
from .. import distributed as du
from .build import (build_data, build_optimizer, build_student, check_run_data, tune_cpu_malloc,
                    wrap_ddp)
from .rundir import (check_resume_config, load_training_checkpoint, prepare_run_dir, rng_state,
                     set_rng_state, trim_metrics)
from .schedule import LRSchedule
from .stages import (DistillStage, FrozenTeacher, MultiTaskStage, grad_scaler, optimizer_step,
                     precision_context)

__all__ = ["Trainer", "NonFiniteLossError"]

logger = logging.getLogger("dml_csr.train")

REESTIMATE_EPOCH_OFFSET = 1_000_000   # augmentation epoch ids of the BN re-estimation passes


def resolve_precision(precision: str, amp: bool, device: torch.device) -> str:
    """The training precision: ``train.precision`` (``train.amp: true``, the old switch, means
    fp16). fp16 runs wherever autocast does, with its grad scaler (on the CPU too: slow, but the
    same logic; a warning says so)."""
    if amp and precision == "fp32":
        precision = "fp16"
    if precision == "fp16" and device.type != "cuda":
        logger.warning("train.precision fp16 on %s: float16 autocast and its grad scaler run, "
                       "slowly (CPUs have little float16 arithmetic; bf16 is the fast choice "
                       "there)", device)
    return precision


class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss; the message names the epoch and iteration."""


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    """Runs the whole schedule of ``cfg`` in ``output_dir`` (default ``cfg.output_dir``).

    Args:
        cfg: the resolved config.
        output_dir: run folder (overrides ``cfg.output_dir``).
        resume: continue from ``output_dir/last.pth`` (a fresh start when it does not exist).
        overwrite: delete this run folder's own files (``rundir.RUN_FILES``,
            ``cycle*_aggregated.pth``) and start afresh; nothing else is touched.
        device: ``auto`` | ``cpu`` | ``cuda``.
        trust_checkpoint: unpickle a ``model.pretrained`` file or a ``last.pth`` that
            ``weights_only`` refuses (it may run code: ``models/checkpoint.py``).
    """

    def __init__(self, cfg: Config, output_dir: Optional[str] = None, resume: bool = False,
                 overwrite: bool = False, device: str = "auto", trust_checkpoint: bool = False):
        if output_dir:
            cfg.output_dir = output_dir
        self.cfg = cfg
        self.out = cfg.output_dir
        self.resume = resume
        self.overwrite = overwrite
        self.trust_checkpoint = trust_checkpoint   # model.pretrained and last.pth (unsafe)
        self.info = du.init_distributed(device)
        self.device = self.info.device
        self.model_name = cfg.model.name
        self.writer = None
        data_check = check_run_data(cfg, self.info)   # before the run folder: a failure leaves none
        prepare_run_dir(self.out, resume, overwrite, self.info.is_main)
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
                write_text(self.path("metrics.jsonl"), "")
        du.barrier()

    # ---------------------------------------------------------------- set-up
    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if self.cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True

    def _build_data(self) -> None:
        data = build_data(self.cfg, self.info)
        self.schema, self.local_batch = data.schema, data.local_batch
        self.train_set, self.val_set = data.train_set, data.val_set
        self.sampler, self.train_loader = data.sampler, data.loader
        self.iters_per_epoch = data.iters_per_epoch

    def _new_model(self) -> nn.Module:
        return build_model(self.model_name, self.model_kwargs, training=True)

    def _build_model(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        if self.device.type == "cpu":
            tune_cpu_malloc(t.cpu_malloc_mmap_kb)
        self.model_kwargs = model_kwargs_from_config(cfg.model, self.schema.num_classes)
        self.model = build_student(cfg, self.model_name, self.model_kwargs, self.info,
                                   self.trust_checkpoint)
        self.ddp = wrap_ddp(self.model, cfg, self.info)
        self.optimizer = build_optimizer(cfg, self.model)
        self.schedule = LRSchedule.from_config(cfg, self.iters_per_epoch)
        self.precision = resolve_precision(t.precision, t.amp, self.device)
        self.autocast = precision_context(self.device, self.precision)
        self.scaler = grad_scaler(self.device, self.precision)
        if t.checkpoint_backbone:
            if not hasattr(self.model, "checkpoint_backbone"):
                raise ConfigError(f"train.checkpoint_backbone: the {self.model_name} family has no "
                                  f"checkpointed backbone (DML-CSR has)")
            self.model.checkpoint_backbone = True

    # ---------------------------------------------------------------- checkpoints
    def _spec(self) -> ModelSpec:
        """What every checkpoint of the run says about its model, classes and input."""
        d = self.cfg.data
        return ModelSpec.for_dataset(self.model_name, self.model_kwargs, self.schema,
                                     crop_size=d.crop_size, channel_order=d.channel_order,
                                     center_mode=d.center_mode,
                                     output_scale=self.cfg.eval.output_scale)

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
                   scaler=self.scaler.state_dict(), rng=rng_state(),
                   epoch=self.epoch, stage=stage, cycle=cycle,
                   snapshots={"sum": self.snap_sum, "count": self.snap_count},
                   teacher=None if self.teacher is None else self.teacher.model.state_dict(),
                   teacher_kind=self.cfg.train.teacher, best=self.best,
                   metrics=self.last_metrics)

    def _load_last(self) -> None:
        ckpt = load_training_checkpoint(self.path("last.pth"), self.trust_checkpoint)
        check_resume_config(ckpt["config"], self.cfg)
        du.unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] or not self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        else:     # saved where fp16 did not run (earlier versions on the CPU): a fresh scale
            logger.warning("%s holds no fp16 loss-scale state: the scale starts afresh (%g)",
                           self.path("last.pth"), self.scaler.get_scale())
        self.epoch = int(ckpt["epoch"])
        self.snap_sum = ckpt["snapshots"]["sum"]
        self.snap_count = int(ckpt["snapshots"]["count"])
        self.best = ckpt["best"]
        self.last_metrics = ckpt.get("metrics")
        if ckpt["teacher"] is not None:
            self.teacher = self._make_teacher(ckpt["teacher"])
        set_rng_state(ckpt["rng"])
        if self.info.is_main:   # drop validation lines written after the checkpoint
            trim_metrics(self.path("metrics.jsonl"), self.epoch)
        logger.info("resumed from %s: %d epochs done", self.path("last.pth"), self.epoch)

    # ---------------------------------------------------------------- teacher
    def _make_teacher(self, state: Dict[str, torch.Tensor]) -> FrozenTeacher:
        model = self._new_model()
        if self.cfg.train.sync_graph_norms and self.info.distributed:
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
        self._save(f"cycle{k}_aggregated.pth", agg_state, epoch=self.epoch, stage="csr", cycle=k,
                   metrics=metrics, score=metrics["headline"]["value"] if metrics else None)
        self._update_best(agg_state, metrics, source=f"cycle {k} aggregated")
        self.snap_sum, self.snap_count = None, 0

    # ---------------------------------------------------------------- validation
    def _validate(self, model: nn.Module, kind: str, cycle: int) -> Optional[dict]:
        from ..eval.inference import evaluate_model
        e = self.cfg.eval
        start = time.time()
        metrics = evaluate_model(du.unwrap(model), self.val_set, batch_size=e.batch_size,
                                 workers=e.workers, device=self.device, flip=False, scales=(1.0,),
                                 output_scale=e.output_scale)
        metrics = {k: v for k, v in metrics.items() if k != "confusion"}
        stage, _ = self._stage_of(self.epoch - 1)
        line = {"epoch": self.epoch, "stage": stage, "cycle": cycle, "model": kind,
                "split": self.cfg.data.val_split, "seconds": round(time.time() - start, 2), **metrics}
        if self.info.is_main:
            append_line(self.path("metrics.jsonl"), json.dumps(line, default=float))
            h = metrics["headline"]
            logger.info("epoch %d %s (%s, cycle %d): %s %.4f | mean_f1 %.4f | miou %.4f",
                        self.epoch, kind, stage, cycle, h["name"], h["value"],
                        metrics.get("mean_f1", float("nan")), metrics.get("miou", float("nan")))
            if self.writer is not None:
                tb.log_val_scalars(self.writer, metrics, kind, self.epoch)
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
        self._save("best.pth", self.best["model"], epoch=self.epoch, stage=stage, cycle=cycle,
                   score=score, metric=self.best["metric"], source=source, metrics=metrics)
        logger.info("new best %s %.4f (%s, epoch %d)", self.best["metric"], score, source, self.epoch)

    # ---------------------------------------------------------------- training
    def _set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)

    def _log_images(self, batch, outputs, epoch: int) -> None:
        if self.writer is None:
            return
        # the step saw sampled pixels (train.query_samples): decode the whole grid
        grid = tb.image_grid(batch, outputs, self.schema.palette, self.cfg.data.channel_order,
                             model=self.model if self.cfg.train.query_samples else None)
        self.writer.add_image(tb.IMAGE_TAG, grid, epoch)

    def train_one_epoch(self, epoch: int, stage) -> Dict[str, float]:
        from tqdm import tqdm
        cfg = self.cfg
        self.ddp.train()
        self._set_epoch(epoch)
        sums: Dict[str, float] = {}
        count = skipped = 0
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
            losses, outputs = stage(self.ddp, batch, self.autocast)
            loss = losses["loss"]
            if du.any_true(not bool(torch.isfinite(loss.detach()).all())):
                parts = {k: float(v) for k, v in losses.items()}
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch + 1}, iteration {it + 1} ({stage.name} stage): "
                    f"{parts}; stopping. The last good checkpoint is {self.path('last.pth')} "
                    f"({self.epoch} epochs done)")
            if not optimizer_step(loss, self.optimizer, self.scaler):
                skipped += 1               # fp16: an inf/NaN gradient, the scale halved
            count += 1
            values = {k: float(v.detach()) for k, v in losses.items()}   # one device sync each
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            if self.info.is_main:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr:.2e}")
                bar.update(1)
                step = epoch * self.iters_per_epoch + it
                logged = (it % max(1, cfg.train.log_interval) == 0
                          or it == self.iters_per_epoch - 1)
                if logged and self.writer is not None:     # None: tensorboard not installed
                    tb.log_train_scalars(self.writer, values, lr, step)
        bar.close()
        means = du.reduce_dict({k: v / max(1, count) for k, v in sums.items()})
        interval = cfg.train.image_log_interval
        if interval > 0 and (epoch + 1) % interval == 0 and self.info.is_main and batch is not None:
            self._log_images(batch, outputs, epoch + 1)
        logger.info("epoch %d/%d %s: %s | lr %.3g", epoch + 1, cfg.train.epochs, stage.name,
                    " ".join(f"{k} {v:.4f}" for k, v in means.items()), lr)
        if skipped:
            logger.info("epoch %d: %d of %d fp16 steps skipped (inf/NaN gradients); loss scale "
                        "now %g", epoch + 1, skipped, count, self.scaler.get_scale())
        return means

    def fit(self, stop_after_epoch: Optional[int] = None) -> Dict[str, Any]:
        """Train until ``train.epochs`` (or, for time-sliced jobs and tests, until
        ``stop_after_epoch`` epochs are done; ``--resume`` continues). Returns a summary."""
        cfg, t = self.cfg, self.cfg.train
        if self.info.is_main:
            self.writer = tb.open_writer(self.path("tb"))
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
                tb.close_writer(self.writer)
                self.writer = None
        summary = {"epochs_done": self.epoch, "best": None if self.best is None else
                   {k: v for k, v in self.best.items() if k != "model"},
                   "last_metrics": self.last_metrics}
        if self.info.is_main and self.epoch >= t.epochs and self.best is not None:
            logger.info("done: best %s %.4f (%s)", self.best["metric"], self.best["score"],
                        self.best["source"])
        return summary
