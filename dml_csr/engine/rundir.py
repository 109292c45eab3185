"""The run folder: what a run writes there, when it may write, and what ``--resume`` may continue.

- :data:`RUN_FILES` (and ``cycle*_aggregated.pth``) are the run's own files; :func:`prepare_run_dir`
  refuses a folder that holds another run's files unless ``--resume`` or ``--overwrite`` says
  otherwise, and ``--overwrite`` deletes only those names.
- :func:`load_training_checkpoint` reads ``last.pth`` and :func:`check_resume_config` refuses a
  ``--resume`` whose config differs from the interrupted run's (``RESUME_FREE_KEYS`` may change;
  ``LEGACY_DEFAULTS`` / ``LEGACY_REMOVED`` read runs saved by earlier versions).
- :func:`rng_state` / :func:`set_rng_state`: the python, numpy, torch (and CUDA) generators saved
  in ``last.pth``, so a resumed run draws what the uninterrupted one would have.
- :func:`read_metrics` / :func:`trim_metrics`: the ``metrics.jsonl`` records (a torn last line
  dropped), and dropping those written after the checkpoint.
- Temporary files of a save killed midway (``files.remove_partials``) are deleted when a run
  starts in the folder.
- :func:`check_shared_folder`: under torch.distributed every process must see the run folder the
  main process writes (one file system for all nodes).

Checkpoint format and run-folder contents: docs/training.md.
"""
import json
import logging
import os
import random
import secrets
import shutil
from typing import Any, Dict, List

import numpy as np
import torch

from ..config import Config, config_to_dict
from ..files import remove_partials, write_text
from ..models.checkpoint import READABLE_FORMATS, load_checkpoint_file
from .. import distributed as du

logger = logging.getLogger(__name__)

__all__ = ["RunDirError", "RUN_FILES", "LEGACY_DEFAULTS", "LEGACY_REMOVED", "RESUME_FREE_KEYS",
           "run_files", "prepare_run_dir", "load_training_checkpoint", "check_resume_config",
           "read_metrics", "trim_metrics", "rng_state", "set_rng_state", "check_shared_folder"]

RUN_FILES = ("config.yaml", "last.pth", "best.pth", "metrics.jsonl", "train.log", "tb")
# --resume of runs saved by earlier versions: fields added since (their behaviour then) and
# fields removed since (the value that meant "no effect")
LEGACY_DEFAULTS = {"train.optimizer": "sgd", "train.poly_horizon": "multitask",
                   "model.init_from": "", "train.sync_graph_norms": True}
LEGACY_REMOVED = {"loss.total_scale": 1.0}
# keys that may change on --resume without changing the run's results
RESUME_FREE_KEYS = {"output_dir", "data.workers", "eval.workers", "eval.batch_size",
                    "train.log_interval", "train.image_log_interval", "data.check"}


class RunDirError(RuntimeError):
    """The output folder holds another run's files (use --resume or --overwrite)."""


def run_files(out: str) -> List[str]:
    """The run's own files present in ``out`` (``RUN_FILES``, ``cycle*_aggregated.pth``)."""
    if not os.path.isdir(out):
        return []
    return sorted(n for n in os.listdir(out)
                  if n in RUN_FILES or (n.startswith("cycle") and n.endswith("_aggregated.pth")))


def prepare_run_dir(out: str, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Create ``out``; refuse another run's files unless ``resume`` (keep them) or ``overwrite``
    (delete them: only our own file names, only inside the run folder). Every process calls it."""
    found = run_files(out)
    if found and not resume and not overwrite:
        raise RunDirError(f"output folder {out} holds another run's files ({', '.join(found)}); "
                          f"pass --resume to continue it, --overwrite to replace it, or choose "
                          f"another --output-dir")
    du.barrier()
    if is_main:
        if found and overwrite and not resume:
            for name in found:   # only our own file names, only inside the run folder
                p = os.path.join(out, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.remove(p)
        os.makedirs(out, exist_ok=True)
        if remove_partials(out):
            logger.info("%s: removed the temporary files of a save that was killed", out)
    du.barrier()
    check_shared_folder(out)


def check_shared_folder(out: str) -> None:
    """Under torch.distributed, :class:`RunDirError` on every process unless each of them sees
    the file the main process has just written into ``out``: the run folder must be on a file
    system every node mounts (checkpoints are written by the main process and read by all on
    ``--resume``; a folder each node has its own copy of would diverge, or hang later)."""
    if not du.is_distributed():
        return
    import socket

    import torch.distributed as dist
    token = [f"{secrets.token_hex(8)}.{os.getpid()}" if du.is_main() else None]
    dist.broadcast_object_list(token, src=0)          # each process looks in its own ``out``
    probe = os.path.join(out, f".shared_check.{token[0]}.partial")
    if du.is_main():
        write_text(probe, token[0])
    du.barrier()
    try:
        with open(probe, encoding="utf-8") as f:
            seen = f.read() == token[0]
    except OSError:
        seen = False
    views = [None] * du.get_world_size()
    dist.all_gather_object(views, (du.get_rank(), socket.gethostname(), seen))
    du.barrier()
    if du.is_main():
        os.remove(probe)
    blind = [(rank, host) for rank, host, ok in views if not ok]
    if blind:
        rank, host = blind[0]
        raise RunDirError(
            f"output folder {os.path.abspath(out)} is not shared by every process: "
            f"{len(blind)} of {len(views)} (first: rank {rank} on {host}) do not see the file "
            f"rank 0 wrote there; put output_dir on a file system that every node mounts "
            f"(docs/training.md, 'Several machines')")


def load_training_checkpoint(path: str, trust_checkpoint: bool = False) -> Dict[str, Any]:
    """``last.pth`` as a dict (``load_checkpoint_file``: ``weights_only`` unless trusted);
    :class:`RunDirError` when it is not a training checkpoint."""
    ckpt = load_checkpoint_file(path, trust_checkpoint)
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS \
            or "optimizer" not in ckpt:
        raise RunDirError(f"{path} is not a training checkpoint of this trainer")
    return ckpt


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(saved_config: Dict[str, Any], cfg: Config) -> None:
    """:class:`RunDirError` when ``cfg`` differs from the interrupted run's saved config (outside
    ``RESUME_FREE_KEYS``; legacy keys read as described in the module docstring)."""
    saved = _flatten(saved_config)
    for key, value in LEGACY_DEFAULTS.items():   # runs saved before the field existed
        saved.setdefault(key, value)
    for key, neutral in LEGACY_REMOVED.items():  # removed keys, harmless at that value
        if saved.get(key, neutral) == neutral:
            saved.pop(key, None)
    now = _flatten(config_to_dict(cfg))
    diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now)
            if k not in RESUME_FREE_KEYS and saved.get(k) != now.get(k)}
    if diff:
        raise RunDirError("--resume with a different config than the interrupted run "
                          f"(saved vs now): {diff}")


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """The records of ``metrics.jsonl``. A torn last line (a write cut by a kill in an earlier
    version) is dropped with a warning; any other line that is not JSON is a
    :class:`RunDirError` naming the file and the line."""
    if not os.path.isfile(path):
        return []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        lines = [(n, l) for n, l in enumerate(f, 1) if l.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise ValueError("not a record with an integer 'epoch'")
        except ValueError as exc:
            if i == len(lines) - 1:
                logger.warning("%s:%d: dropped a torn last line (%s)", path, n, exc)
                break
            raise RunDirError(f"{path}:{n} is not a metrics record ({exc}): the run's log is "
                              f"damaged; repair or remove that line, or start afresh with "
                              f"--overwrite") from None
        records.append(record)
    return records


def trim_metrics(path: str, epoch: int) -> None:
    """Keep only the ``metrics.jsonl`` lines of epochs <= ``epoch`` (written before the
    checkpoint), rewritten atomically."""
    kept = [r for r in read_metrics(path) if r["epoch"] <= epoch]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def rng_state() -> Dict[str, Any]:
    """The python, numpy, torch (and CUDA) generators as tensors, numbers and tuples, so that
    ``last.pth`` loads with ``weights_only=True``."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    saved = state["numpy"]
    if isinstance(saved, dict):
        np.random.set_state((saved["kind"], saved["key"].numpy().astype(np.uint32), saved["pos"],
                             saved["has_gauss"], saved["gauss"]))
    else:                     # last.pth of earlier versions (loaded as trusted): numpy's tuple
        np.random.set_state(saved)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved, count = state["cuda"], torch.cuda.device_count()
        for device, generator in enumerate(saved[:count]):
            torch.cuda.set_rng_state(generator, device)
        if len(saved) != count:   # resumed on another number of GPUs: the others start afresh
            logger.warning("last.pth holds the CUDA generators of %d GPU(s), this machine has %d: "
                           "%d restored", len(saved), count, min(len(saved), count))
