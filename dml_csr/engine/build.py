"""What a training run is built from, before its first step.

- :func:`check_run_data`: ``data.check`` over the train and val splits (sharded under DDP, every
  process stops alike) and the ``model.pretrained`` file, before the run folder exists.
- :func:`build_data`: the training and validation sets, the sampler and the loader
  (:class:`TrainData`); ``data.batch_size`` is the global batch.
- :func:`build_student`: the model to train (ImageNet backbone, SyncBN under DDP, on the device);
  :func:`wrap_ddp` its DistributedDataParallel wrapper (the model itself in one process).
- :func:`build_optimizer`: SGD (paper) or AdamW (``train.optimizer``).

The trainer (``trainer.py``) holds the results and runs the schedule.
"""
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from ..config import Config
from ..data import FaceDataset
from ..data.layout import root_schema
from ..data.check import DataCheckError, DataCheckReport, check_data
from ..models import build_model, load_imagenet_backbone
from ..models.checkpoint import check_backbone_file, load_matching_weights
from ..layers.sync_bn import convert_sync_batchnorm1d
from ..distributed import DistInfo

__all__ = ["TrainData", "check_run_data", "build_data", "build_student", "wrap_ddp",
           "build_optimizer"]

logger = logging.getLogger("dml_csr.train")


@dataclass
class TrainData:
    """The run's data: ``loader`` yields ``local_batch`` images per process, ``iters_per_epoch``
    of them per epoch (``train.max_iters_per_epoch`` caps it)."""
    schema: Any
    train_set: FaceDataset
    val_set: FaceDataset
    sampler: DistributedSampler
    loader: DataLoader
    local_batch: int
    iters_per_epoch: int


def check_run_data(cfg: Config, info: DistInfo) -> Optional[DataCheckReport]:
    """``data.check``: every image and label of the train and val splits (also on --resume).
    Under DDP each process checks a shard and the reports are gathered, so any problem, or a
    check that fails on one process only (a list file missing on one node), stops every
    process with the same DataCheckError. A missing ``model.pretrained`` file also stops
    the run here, before the run folder."""
    d, pretrained = cfg.data, cfg.model.pretrained
    if pretrained:
        check_backbone_file(pretrained)
    if cfg.model.init_from and not os.path.isfile(cfg.model.init_from):
        raise FileNotFoundError(f"model.init_from {cfg.model.init_from} does not exist: the "
                                f"checkpoint to start from (ours or the authors')")
    if not d.check:
        return None
    def check(**shard) -> DataCheckReport:
        schema = root_schema(d.root, d.dataset or None)
        return check_data(d.root, [d.train_split, d.val_split], schema, **shard)
    if not info.distributed:
        return check().raise_if_problems()
    try:                    # every process reaches the gather, whatever it met
        report, failure = check(rank=info.rank, world_size=info.world_size), None
    except (OSError, ValueError, KeyError) as exc:
        report, failure = None, str(exc)
    shards: List[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(shards, (report, failure))
    failed = [(rank, f) for rank, (_, f) in enumerate(shards) if f]
    if failed:
        raise DataCheckError(f"data check stopped on rank {failed[0][0]}: {failed[0][1]}")
    report.problems = [p for shard, _ in shards for p in shard.problems]
    report.seconds = max(shard.seconds for shard, _ in shards)
    return report.raise_if_problems()


def build_data(cfg: Config, info: DistInfo) -> TrainData:
    d = cfg.data
    world = info.world_size
    if d.batch_size % world:
        raise ValueError(f"data.batch_size ({d.batch_size}) must be divisible by the number of "
                         f"processes ({world}): it is the GLOBAL batch")
    local_batch = d.batch_size // world
    schema = root_schema(d.root, d.dataset or None)      # the root's description (or a built-in)
    train_set = FaceDataset(d.root, d.train_split, crop_size=tuple(d.crop_size),
                            augment=d.augment, flip=d.flip, channel_order=d.channel_order,
                            center_mode=d.center_mode, edge_width=d.edge_width,
                            with_edges=True, schema=schema, seed=cfg.train.seed)
    if len(train_set) < d.batch_size:
        raise ValueError(f"training split has {len(train_set)} images, fewer than one "
                         f"batch of {d.batch_size}")
    val_set = FaceDataset(d.root, d.val_split, crop_size=tuple(d.crop_size), augment="none",
                          flip=False, channel_order=d.channel_order,
                          center_mode=d.center_mode, with_edges=False, schema=schema)
    # Order depends only on (seed, epoch): DistributedSampler also in a single process.
    sampler = DistributedSampler(train_set, num_replicas=world, rank=info.rank,
                                 shuffle=True, seed=cfg.train.seed, drop_last=True)
    loader = DataLoader(
        train_set, batch_size=local_batch, sampler=sampler,
        num_workers=d.workers, pin_memory=info.device.type == "cuda", drop_last=True,
        generator=torch.Generator().manual_seed(cfg.train.seed))
    n = len(loader)
    cap = cfg.train.max_iters_per_epoch
    return TrainData(schema, train_set, val_set, sampler, loader, local_batch,
                     min(n, cap) if cap > 0 else n)


def build_student(cfg: Config, model_name: str, model_kwargs: Dict[str, Any],
                  info: DistInfo, trust_checkpoint: bool = False) -> nn.Module:
    model = build_model(model_name, model_kwargs, training=True)
    if cfg.model.pretrained and not model.imagenet_backbone:
        raise ValueError(f"model.pretrained is set ({cfg.model.pretrained}) but the "
                         f"{model_name} family has no ImageNet backbone: set "
                         f"model.pretrained=''")
    if cfg.model.pretrained:
        load_imagenet_backbone(model, cfg.model.pretrained, trust_checkpoint)
    elif model.imagenet_backbone and not cfg.model.init_from:
        logger.warning("model.pretrained is empty: the backbone starts from RANDOM weights "
                       "(the paper uses ImageNet weights; fine only for the synthetic set)")
    if cfg.model.init_from:         # fine-tuning: every matching tensor, e.g. another label set's
        load_matching_weights(model, cfg.model.init_from, trust_checkpoint)
    if cfg.train.sync_graph_norms and info.distributed:
        convert_sync_batchnorm1d(model)      # the DDGCN's BatchNorm1d layers; ABN syncs itself
    return model.to(info.device)


def wrap_ddp(model: nn.Module, cfg: Config, info: DistInfo) -> nn.Module:
    if not info.distributed:
        return model
    unused = not {"binary_edge", "category_edge"} <= set(cfg.loss.tasks)
    device = info.device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused)


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adamw":   # FP-LIIF configs (docs/fp_liif.md); weight_decay 0 = Adam
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                           weight_decay=t.weight_decay)


def tune_cpu_malloc(threshold_kb: int) -> bool:
    """glibc only (``train.cpu_malloc_mmap_kb``): serve allocations of ``threshold_kb`` KiB and
    more (activation tensors) by ``mmap``, so that freed tensors go back to the system at once.
    glibc's own threshold grows as large blocks are freed; activations then come from its heap,
    which keeps them after every backward pass and fragments. Measured on the full DML-CSR at
    batch 2 (docs/training.md): two steps peak at 3.79 GB with 128 instead of 4.95-5.38 GB, but
    each step takes 1.5x as long on that CPU. 0 leaves glibc's default; returns whether it was
    applied."""
    libc = _libc() if threshold_kb > 0 else None
    if libc is None:
        return False
    m_mmap_threshold = -3
    return bool(libc.mallopt(m_mmap_threshold, int(threshold_kb) * 1024))


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None

