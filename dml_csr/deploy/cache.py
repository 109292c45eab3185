"""The cache of ONNX files made from weights: the float32 file the parser runs by default on the
CPU (:func:`float32_model`) and the calibrated int8 file (``quantize.int8_model``).

A file is named by a key: the family, the data set and a digest of everything it depends on (every
tensor of the weights, the input facts, the output size, the recipe that made it, onnxruntime's
version). The key is also stored inside the file (``dml_csr.cache_key``) and checked before the
file is used, so a file planted under that name, truncated, or made for other weights is never
run: it is set aside (renamed ``NAME.rejected``, with a warning naming it) and made again. The
folder is :func:`cache_dir`.
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

__all__ = ["cache_dir", "weights_key", "cached_metadata", "float32_model", "CACHE_KEY",
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
    folder = cache_dir(cache)
    key = weights_key(model, spec, output_size, FLOAT32_RECIPE)
    path = folder / f"{key}.fp32.onnx"
    meta, _ = cached_metadata(path, key, "float32")
    if meta is not None:
        logger.info("float32 ONNX model from the cache: %s", path)
        return str(path)
    folder.mkdir(parents=True, exist_ok=True)
    remove_partials(folder)                # left by an export that was killed
    export_onnx(model, path, spec, dynamic_batch=True, output_size=output_size, cache_key=key)
    logger.info("float32 ONNX model exported once to %s (later parsers of these weights open "
                "it)", path)
    return str(path)
