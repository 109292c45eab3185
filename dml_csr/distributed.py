"""Distributed helpers shared by training (engine/) and evaluation (eval/): torchrun detection,
process-group set-up, reductions, ``unwrap``.

A run is distributed when torchrun (or any launcher) sets ``WORLD_SIZE > 1`` together with
``RANK`` / ``LOCAL_RANK``; the group uses NCCL on CUDA and gloo on CPU. Every helper is a no-op
(or the identity) in a single process, so the trainer never branches on the launch mode.
``DMLCSR_FORCE_DISTRIBUTED=1`` makes a one-process torchrun job distributed all the same (process
group, DDP, synchronised norms, sharded data check and test): how ``scripts/gpu_check.sh``
exercises NCCL on a machine with one GPU.

Devices (:func:`init_distributed`): ``cuda`` asked for, or several processes under ``auto``,
where CUDA does not work is an error that says what torch found (its version, the CUDA it was
built for, the devices visible, the driver's complaint); so is a node running more processes than
it has GPUs. The CPU is used for several processes only when asked for (``--device cpu``).
"""
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .cli import env_flag

__all__ = ["DistInfo", "detect", "init_distributed", "cleanup", "is_distributed", "get_rank",
           "get_world_size", "is_main", "barrier", "all_reduce_sum", "all_reduce_mean",
           "reduce_dict", "any_true", "unwrap", "setup_logging", "forced", "cuda_report",
           "DeviceError", "FORCE_ENV"]

FORCE_ENV = "DMLCSR_FORCE_DISTRIBUTED"


class DeviceError(RuntimeError):
    """The device asked for is not there (no working CUDA, fewer GPUs than processes)."""


def forced() -> bool:
    """The switch ``$DMLCSR_FORCE_DISTRIBUTED`` (:func:`dml_csr.cli.env_flag`)."""
    return env_flag(FORCE_ENV)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    forced: bool = False           # one process, distributed all the same (FORCE_ENV)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.forced

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistInfo:
    """Rank facts from the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    launched = "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    return DistInfo(rank=rank, world_size=world, local_rank=local,
                    forced=world == 1 and launched and forced())


def cuda_report() -> str:
    """What torch finds of CUDA, in one line: its version, the CUDA it was built for, the devices
    it sees (``CUDA_VISIBLE_DEVICES``) and, when there are none, the driver's complaint."""
    parts = [f"torch {torch.__version__}",
             f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        parts.append(f"CUDA_VISIBLE_DEVICES={visible!r}")
    if torch.version.cuda:
        try:
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            parts.append(f"{count} device(s) usable")
            if not count:
                torch.cuda.init()                  # raises with the driver's reason
        except Exception as exc:  # noqa: BLE001 - the reason is the report
            parts.append(f"the driver says: {str(exc).strip().splitlines()[0][:200]}")
    return ", ".join(parts)


def _pick_device(device: str, info: DistInfo) -> torch.device:
    """This process's device; DeviceError when what was asked for is not there."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise DeviceError(f"device {device!r}: choose auto, cuda or cpu")
    want_cuda = device.startswith("cuda") or (device == "auto" and info.world_size > 1)
    if device == "cpu" or not (want_cuda or torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = (f"{info.world_size} processes were started on GPUs" if device == "auto"
               else f"device {device!r} was asked for")
        raise DeviceError(f"{why} but CUDA is not usable here ({cuda_report()}); install a torch "
                          f"build that matches the driver, or pass --device cpu to run on the "
                          f"CPU")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    count = torch.cuda.device_count()
    if local_world > count:
        raise DeviceError(f"{local_world} processes on this node but only {count} GPU(s) "
                          f"({cuda_report()}): start at most {count} (NUM_GPUS / "
                          f"--nproc_per_node)")
    torch.cuda.set_device(info.local_rank % count)
    return torch.device("cuda", torch.cuda.current_device())


def init_distributed(device: str = "auto") -> DistInfo:
    """Pick the device and, under torchrun, initialise the default process group.

    Args:
        device: ``auto`` (CUDA when available; several processes need it), ``cuda`` or ``cpu``.
    Returns:
        The :class:`DistInfo` of this process, with its device (``cuda:LOCAL_RANK`` on GPUs).
    Raises:
        DeviceError: the device asked for is not there (module docstring).
    """
    info = detect()
    dev = _pick_device(device, info)
    if info.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                init_method="env://")
    return DistInfo(info.rank, info.world_size, info.local_rank, dev, info.forced)


GLOO_SETTLE_S = 0.2   # destroy_group's pause before a gloo group ends (torch < 2.8's deadlock)


def cleanup() -> None:
    """End the process group of a run (:func:`destroy_group`), if there is one."""
    if is_distributed():
        destroy_group()


def destroy_group() -> None:
    """``dist.destroy_process_group()``; on gloo, unless an exception is being handled (a process
    that failed: the others may never get there), after a barrier and a pause.

    For torch before 2.8 (seen with 2.6): gloo's process group joins its worker threads in its
    destructor while holding the GIL, and a worker still freeing the last collective (and the
    tensors of the ones a barrier waited for) needs the GIL for it: a deadlock, now and then.
    The barrier ends every collective; the pause (``GLOO_SETTLE_S``, GIL released) lets the
    workers free them first. This makes the deadlock unlikely, not impossible (issue 30's whole
    suite runs on torch 2.8 and 2.11 did not hang without it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo" and sys.exc_info()[0] is None:
        try:
            dist.barrier()
        except RuntimeError as exc:   # another process left after an error: nothing to wait for
            logging.getLogger(__name__).debug("no barrier before the group's end: %s", exc)
        time.sleep(GLOO_SETTLE_S)
    dist.destroy_process_group()


def is_distributed() -> bool:
    """A process group of several processes, or of one when forced (module docstring)."""
    return (dist.is_available() and dist.is_initialized()
            and (dist.get_world_size() > 1 or forced()))


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
