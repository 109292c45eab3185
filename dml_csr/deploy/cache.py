"""The cache of ONNX files made from weights: the float32 file the parser runs by default on the
CPU (:func:`float32_model`) and the calibrated int8 file (``quantize.int8_model``).

A file is named by a key: the family, the data set and a digest of everything it depends on (every
tensor of the weights, the input facts, the output size, the recipe that made it, onnxruntime's
version). The key is also stored inside the file (``dml_csr.cache_key``) and checked before the
file is used: a file that is truncated or unreadable, that is stale (another recipe or
onnxruntime), or that was made for other weights or settings is never run: it is set aside
(renamed ``NAME.rejected``, with a warning naming it) and made again.

What the key does not check: a file changed after it was written that keeps its stored key (its
weights or graph edited by someone who can write to the cache) is used. Re-deriving the graph
would cost the export the cache exists to save, and the int8 file cannot be re-derived at all
without its calibration images: it is trusted on first use. The defence is the folder: created
private to the user (0700, :func:`ready_cache_dir`), with a warning when it is not.
"""
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch.nn as nn

from ..files import remove_partials
from ..models.checkpoint import ModelSpec

__all__ = ["cache_dir", "ready_cache_dir", "weights_key", "cached_metadata", "float32_model", "CACHE_KEY",
           "FLOAT32_RECIPE"]

logger = logging.getLogger(__name__)

CACHE_KEY = "dml_csr.cache_key"      # the cache's name for a file, stored inside it
FLOAT32_RECIPE = "export-folded/1"   # part of the float32 file's key: bump when the export changes

PathLike = Union[str, os.PathLike]


def cache_dir(cache: Optional[PathLike] = None) -> Path:
    """``cache`` when given, else ``$DMLCSR_CACHE``, else ``$XDG_CACHE_HOME/dml_csr``, else
    ``~/.cache/dml_csr``."""
    if cache is not None:
        return Path(cache)
    if os.environ.get("DMLCSR_CACHE"):
        return Path(os.environ["DMLCSR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dml_csr"


def ready_cache_dir(cache: Optional[PathLike] = None) -> Path:
    """:func:`cache_dir`, created private to the user (mode 0700; an existing folder is left as it
    is) and cleared of the temporary files of killed writes. A warning names a folder that another
    user owns or that group or others may write to: anyone who can write there can plant a file
    that keeps a valid key (module docstring)."""
    folder = cache_dir(cache)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if hasattr(os, "getuid"):
        st = folder.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            logger.warning("ONNX cache folder %s is writable by other users (mode %o, owner uid "
                           "%d): a file planted there with a valid key would be run; use a "
                           "folder only you can write (chmod 700, or set DMLCSR_CACHE)",
                           folder, st.st_mode & 0o777, st.st_uid)
    remove_partials(folder)
    return folder


def weights_key(model: nn.Module, spec: ModelSpec, output_size: Optional[Sequence[int]],
              recipe: str) -> str:
    """``FAMILY-DATASET-DIGEST``: the digest covers every tensor of ``model``'s state_dict,
    ``spec``'s facts, ``output_size``, ``recipe`` and onnxruntime's version."""
    import onnxruntime
    h = hashlib.blake2b(digest_size=12)
    facts = {"spec": spec.to_checkpoint(), "output_size": output_size, "recipe": recipe,
             "onnxruntime": onnxruntime.__version__}
    h.update(json.dumps(facts, sort_keys=True, default=list).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return f"{spec.family}-{spec.dataset}-{h.hexdigest()}"


def cached_metadata(path: Path, key: str, what: str) -> Tuple[Optional[dict], Optional[Path]]:
    """``(metadata, None)`` when ``path`` is a readable ONNX file holding ``key``; ``(None,
    None)`` when there is no file; ``(None, set-aside path)`` when there is one that cannot be
    used (unreadable, truncated, another key): it is renamed ``NAME.rejected`` and a warning
    names it (``what``: the cache's name for messages, e.g. ``int8``)."""
    if not path.is_file():
        return None, None
    import onnx
    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as exc:  # noqa: BLE001 - any parse failure makes the file unusable
        why = f"it cannot be read as ONNX ({type(exc).__name__}): truncated or damaged"
    else:
        if meta.get(CACHE_KEY) == json.dumps(key):
            return meta, None
        why = (f"it was not made for these weights and settings (its {CACHE_KEY} is "
               f"{meta.get(CACHE_KEY)!r})")
    refused = path.with_name(path.name + ".rejected")
    os.replace(path, refused)
    logger.warning("%s cache file %s is not used: %s; set aside as %s", what, path, why,
                   refused.name)
    return None, refused


def float32_model(model: nn.Module, spec: ModelSpec, output_size: Optional[Sequence[int]] = None,
                  cache: Optional[PathLike] = None) -> str:
    """The float32 ONNX file of ``model`` (as ``load_inference_model`` gives it: norms folded at
    export, dynamic batch), from the cache when it holds a usable one, else exported there
    (``export_onnx``; about 15 s for the full DML-CSR on the project's 2-core CPU; a cache hit
    costs the digest and the key check). Returns its path."""
    from .onnx import export_onnx
    output_size = None if output_size is None else [int(v) for v in output_size]
    folder = ready_cache_dir(cache)
    key = weights_key(model, spec, output_size, FLOAT32_RECIPE)
    path = folder / f"{key}.fp32.onnx"
    meta, _ = cached_metadata(path, key, "float32")
    if meta is not None:
        logger.info("float32 ONNX model from the cache: %s", path)
        return str(path)
    export_onnx(model, path, spec, dynamic_batch=True, output_size=output_size, cache_key=key)
    logger.info("float32 ONNX model exported once to %s (later parsers of these weights open "
                "it)", path)
    return str(path)
