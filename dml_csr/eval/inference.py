"""Model inference under the evaluation protocol of the release (docs/evaluation.md).

Per test image (``evaluate_model``):

1. the ``FaceDataset`` crop without augmentation (whole image, longer side fitted, no rotation);
2. parsing logits at the crop size (``dml_csr.predict.predict_logits``): DML-CSR's 1/4-size
   logits upsampled bilinearly with ``align_corners=True``; a model whose ``forward`` takes
   ``size=`` (FP-LIIF) is asked for the crop size directly; optional flip / multi-scale
   test-time augmentation;
3. argmax in crop space (``dml_csr.predict.labels_of``);
4. the label map warped back onto the ORIGINAL label size with the inverse affine (nearest,
   border 0 = background);
5. one confusion histogram pooled over every pixel of the split against the label file read from
   disk at its own size (255 dropped), scored by ``metrics.compute_metrics``.

Steps 1 to 4 are the test-time path that the parser for photos (``deploy/parser.py``) runs too:
``dml_csr/predict.py`` (with the test-time augmentation, off by default).

The config-driven test runner behind ``tools/test.py`` (config + checkpoint -> result JSON) is
``dml_csr.eval.runner``.
"""
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from dml_csr.data.transforms import warp_back
from dml_csr.distributed import all_reduce_sum, get_rank, get_world_size, unwrap
from dml_csr.files import check_output_folder, write_image, write_npz
from dml_csr.predict import labels_of, model_device, predict_logits

from .metrics import ConfusionMatrix, compute_metrics

__all__ = ["evaluate_model", "INFERENCE_PROTOCOL"]

logger = logging.getLogger(__name__)

# How a result's predictions were made; test.py writes it into the result JSON under
# protocol.inference (the scoring half is metrics.protocol_description).
INFERENCE_PROTOCOL = {
    "crop": "affine crop of the whole image (longer side fitted, shorter padded), no augmentation",
    "logits": "at the crop size (times meta.output_scale, default 1): bilinear align_corners=True "
              "upsampling of the model output, or model(x, size=...) for models that take a size "
              "(FP-LIIF)",
    "label": "argmax in crop space, warped back to the original label size with the inverse "
             "affine (nearest, border 0)",
    "tta": "passes averaged as softmax probabilities; flip passes are flipped back and their "
           "left/right channels swapped",
}


class _EvalSamples(Dataset):
    """The crops of a FaceDataset plus what scoring needs from disk: the original label (and the
    original image for overlays), read in the loader's workers."""

    def __init__(self, dataset: Dataset, base, with_image: bool):
        self.dataset, self.base, self.with_image = dataset, base, with_image

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        s = self.dataset[i]
        index = int(s["index"])
        label_path = self.base.label_path(index)
        out = {k: s[k] for k in ("image", "center", "scale", "rotation", "orig_size")}
        out["index"] = index
        out["out_name"] = (Path(label_path).name if label_path is not None
                           else f"{self.base.names[index]}.png")
        out["orig_label"] = self.base.read_label(index) if label_path is not None else None
        out["orig_image"] = self.base.read_image(index) if self.with_image else None
        return out


_STACKED = ("image", "center", "scale", "rotation", "orig_size")


def _collate(samples: List[dict]) -> dict:
    batch = {k: torch.stack([s[k] for s in samples]) for k in _STACKED}
    for k in samples[0]:
        if k not in _STACKED:
            batch[k] = [s[k] for s in samples]
    return batch


def _base_dataset(dataset: Dataset):
    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    for attr in ("read_label", "read_image", "image_path", "label_path", "schema", "crop_size"):
        if not hasattr(base, attr):
            raise TypeError(f"evaluate_model needs a FaceDataset (or a Subset of one); "
                            f"{type(base).__name__} has no {attr!r}")
    if getattr(base, "augment", "none") != "none" or getattr(base, "flip", False):
        raise ValueError(f"evaluation needs the un-augmented crop; got {base!r} "
                         "(build it with augment='none', flip=False)")
    return base


def _overlay(image_bgr: np.ndarray, label: np.ndarray, palette_bgr: np.ndarray,
             alpha: float = 0.5) -> np.ndarray:
    colour = palette_bgr[label]
    mixed = cv2.addWeighted(image_bgr, 1.0 - alpha, colour, alpha, 0.0)
    return np.where((label > 0)[:, :, None], mixed, image_bgr)


def evaluate_model(model: nn.Module, dataset: Dataset, batch_size: int = 8, workers: int = 0,
                   device: Union[str, torch.device, None] = "cpu", flip: bool = False,
                   scales: Sequence[float] = (1.0,), pred_dir=None, overlay_dir=None,
                   save_logits: bool = False, progress: bool = False, *,
                   headline: Optional[str] = None, output_scale: float = 1.0,
                   class_map=None, model_flip: Optional[Sequence[int]] = None) -> dict:
    """Score ``model`` on a FaceDataset split with the release's protocol (module docstring).

    Args:
        model: a parsing model already on ``device`` (DDP is unwrapped). It runs in eval mode
            under ``torch.inference_mode``; every submodule's train/eval flag is restored after.
        dataset: ``FaceDataset`` (or a ``Subset`` of one) built with ``augment="none"``.
        batch_size, workers: of the DataLoader.
        device: where the crops go; ``None`` = the model's device. Must match the model's.
        flip, scales: test-time augmentation, see ``dml_csr.predict.predict_logits``.
        pred_dir: write one uint8 id PNG per image, named like its label file (``NAME.png``) and
            of the label's size, as ``tools/evaluate.py`` scores them.
        overlay_dir: write ``NAME.jpg``: the original image with the prediction in the schema's
            palette blended over it (background left as is).
        save_logits: also write ``pred_dir/logits/NAME.npz``: the crop-space logits
            (``logits`` float16 (K, H, W)) with the crop's ``center``, ``scale``, ``rotation``
            and ``orig_size``, enough to redo steps 3 to 5 (needs ``pred_dir``).
        progress: show a tqdm bar (main process only).
        headline: force ``"overall_f1"`` or ``"mean_f1"`` (default: the data set's
            description's, ``dataset.schema``: Helen -> overall F1, else mean F1).
        class_map: a loaded ``classmap.ClassMap`` when the model predicts another label set than
            the data set's (its source): every prediction goes through it before it is saved
            and scored (pixels predicted as an ignored class leave the score);
            ``model_flip``: the flip permutation of the model's own classes (flip TTA).
        output_scale: ask for the logits at ``round(output_scale * crop size)`` (FP-LIIF decodes
            there directly; other models are upsampled bilinearly) before the argmax and the
            warp back; the inverse crop is computed for that size, so the prediction covers the
            same region at a finer grid. 2.0 with a 256 crop of CelebAMask-HQ = its 512 labels.

    Under torch.distributed each process scores the strided shard ``rank::world_size`` (no
    padding duplicates) and the histograms are all-reduced, so every process returns the same
    numbers.

    Returns:
        ``compute_metrics``' dict plus ``num_images`` (images scored, all processes) and
        ``confusion`` (the pooled (K, K) histogram as nested lists). A split without label files
        gives only ``num_images`` and ``num_pixels`` 0.
    """
    base = _base_dataset(dataset)
    schema = base.schema
    k = schema.num_classes
    crop_size = tuple(int(v) for v in base.crop_size)
    center_mode = base.center_mode   # "released": the release's crop and truncated warp-back centre
    if not output_scale > 0:
        raise ValueError(f"output_scale must be positive, got {output_scale}")
    out_size = tuple(max(1, int(round(v * output_scale))) for v in crop_size)
    inner = unwrap(model)
    where = model_device(inner)
    device = torch.device(device) if device is not None else where
    if where.type != device.type:
        raise ValueError(f"the model lives on {where} but evaluate_model was asked for "
                         f"device={device}; move the model first (or pass device=None)")
    if save_logits and pred_dir is None:
        raise ValueError("save_logits needs pred_dir")
    pred_dir = Path(pred_dir) if pred_dir is not None else None
    overlay_dir = Path(overlay_dir) if overlay_dir is not None else None
    inputs = [p for i in range(len(base)) for p in (base.image_path(i), base.label_path(i)) if p]
    for folder, what in ((pred_dir, "the prediction folder"), (overlay_dir, "the overlay folder")):
        if folder is not None:
            check_output_folder(folder, inputs, what)
            folder.mkdir(parents=True, exist_ok=True)
    if save_logits:
        (pred_dir / "logits").mkdir(exist_ok=True)
    palette_bgr = np.array([c[::-1] for c in schema.palette], dtype=np.uint8)
    perm = schema.flip_permutation() if class_map is None else model_flip
    if class_map is not None and flip and perm is None:
        raise ValueError("flip TTA with a class map needs the model's flip permutation")

    rank, world = get_rank(), get_world_size()
    samples: Dataset = _EvalSamples(dataset, base, with_image=overlay_dir is not None)
    if world > 1:
        samples = Subset(samples, list(range(rank, len(samples), world)))
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda")
    if progress and rank == 0:
        from tqdm import tqdm
        loader = tqdm(loader, desc="evaluate", unit="batch")

    cm = ConfusionMatrix(k)
    num_images = 0
    modes = [(m, m.training) for m in inner.modules()]
    inner.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True)
                logits = predict_logits(inner, images, out_size, flip=flip,
                                        flip_permutation=perm, scales=scales)
                pred = labels_of(logits).cpu().numpy()                 # (N, H, W)
                logits_np = logits.half().cpu().numpy() if save_logits else None
                for j in range(pred.shape[0]):
                    center = batch["center"][j].numpy()
                    scale = float(batch["scale"][j])
                    rotation = float(batch["rotation"][j])
                    gt = batch["orig_label"][j]
                    size = gt.shape if gt is not None else tuple(batch["orig_size"][j].tolist())
                    label = warp_back(pred[j], center, scale, rotation, size, "nearest",
                                      center_mode=center_mode)
                    if class_map is not None:   # the model's label set -> the data set's
                        label, gt = class_map.apply(label, gt)
                    if gt is not None:
                        cm.update(gt, label)
                    name = batch["out_name"][j]
                    if pred_dir is not None:
                        write_image(pred_dir / name, label)
                    if overlay_dir is not None:
                        write_image(overlay_dir / (Path(name).stem + ".jpg"),
                                    _overlay(batch["orig_image"][j], label, palette_bgr))
                    if save_logits:
                        write_npz(pred_dir / "logits" / (Path(name).stem + ".npz"),
                                  logits=logits_np[j], center=center, scale=scale,
                                  rotation=rotation, orig_size=np.asarray(size))
                num_images += pred.shape[0]
    finally:
        for m, training in modes:
            m.training = training

    cm.all_reduce()
    num_images = int(all_reduce_sum(torch.tensor([num_images])).item())
    if cm.num_pixels == 0:
        logger.warning("no labelled pixel in %r: nothing scored", base)
        return {"num_images": num_images, "num_pixels": 0}
    metrics = compute_metrics(cm.hist, schema, headline=headline)
    metrics["num_images"] = num_images
    metrics["confusion"] = cm.hist.tolist()
    return metrics
