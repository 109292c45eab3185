"""Distributed helpers shared by training (engine/) and evaluation (eval/): torchrun detection,
process-group set-up, reductions, ``unwrap``.

A run is distributed when torchrun (or any launcher) sets ``WORLD_SIZE > 1`` together with
``RANK`` / ``LOCAL_RANK``; the group uses NCCL on CUDA and gloo on CPU. Every helper is a no-op
(or the identity) in a single process, so the trainer never branches on the launch mode.
"""
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["DistInfo", "detect", "init_distributed", "cleanup", "is_distributed", "get_rank",
           "get_world_size", "is_main", "barrier", "all_reduce_sum", "all_reduce_mean",
           "reduce_dict", "any_true", "unwrap", "setup_logging"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistInfo:
    """Rank facts from the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def init_distributed(device: str = "auto") -> DistInfo:
    """Pick the device and, under torchrun, initialise the default process group.

    Args:
        device: ``auto`` (CUDA when available), ``cuda`` or ``cpu``.
    Returns:
        The :class:`DistInfo` of this process, with its device (``cuda:LOCAL_RANK`` on GPUs).
    """
    info = detect()
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(info.local_rank % max(1, torch.cuda.device_count()))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if info.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return DistInfo(info.rank, info.world_size, info.local_rank, dev)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) \
        if is_distributed() and dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a new tensor on the input's device; the input itself is untouched)."""
    if not is_distributed():
        return tensor.clone()
    out = tensor.detach().to(_reduce_device()).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(tensor) / get_world_size()


def reduce_dict(values: Mapping[str, Any]) -> Dict[str, float]:
    """Average a dict of scalars (tensors or numbers) over processes; same keys on every rank."""
    keys = sorted(values)
    if not keys:
        return {}
    stacked = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    stacked = all_reduce_mean(stacked)
    return {k: float(v) for k, v in zip(keys, stacked.tolist())}


def any_true(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (e.g. a non-finite loss somewhere)."""
    if not is_distributed():
        return bool(flag)
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel (for ``state_dict()``)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def setup_logging(log_file: Optional[str] = None, main: Optional[bool] = None) -> logging.Logger:
    """Configure the ``dml_csr`` logger: INFO to stderr and ``log_file`` on the main process,
    warnings only elsewhere. Returns the logger."""
    main = is_main() if main is None else main
    logger = logging.getLogger("dml_csr")
    for h in list(logger.handlers):
        if getattr(h, "_dml_csr_handler", False):
            logger.removeHandler(h)
            h.close()
    logger.setLevel(logging.INFO if main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if main and log_file:
        handlers.append(logging.FileHandler(log_file, mode="a"))
    for h in handlers:
        h.setFormatter(fmt)
        h._dml_csr_handler = True
        logger.addHandler(h)
    logger.propagate = False
    return logger
