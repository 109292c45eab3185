"""Face-parsing data set over the release's folder layout (docs/data.md, dml_csr/data/layout.py).

    ROOT/label_names.txt
    ROOT/<split>_list.txt        lines: images/NAME.jpg labels/NAME.png (relative to ROOT/<split>/)
    ROOT/<split>/images/NAME.jpg  ROOT/<split>/labels/NAME.png

The root is read through :mod:`dml_csr.data.layout` (label names, split lists, ``dataset.json``).
A list line may hold the image alone (a split without labels); the sample then has no ``label``.

Randomness: each process draws from its own ``numpy.random.Generator``, created on first use and
seeded from torch: inside a DataLoader worker from ``torch.initial_seed()`` (the worker seed torch
derives from its main-process RNG or the loader's ``generator``, different per worker and epoch),
mixed with ``seed`` when one is given; in the main process (``num_workers=0``) from ``seed``, or
from ``torch.initial_seed()`` when ``seed`` is None. A run is therefore reproducible by calling
``torch.manual_seed(s)`` (or passing a seeded ``generator`` to the DataLoader) and, for
``num_workers=0``, by passing ``seed``.
"""
import os
from typing import Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import read_image
from .edges import binary_edges, category_edges
from .layout import read_split_list, root_schema, split_list_path
from .schemas import IGNORE_INDEX, Schema
from .transforms import (AUGMENT_MODES, CENTER_MODES, crop_input, crop_params, sample_augmentation,
                         warp_label)

__all__ = ["FaceDataset", "validate_label", "IGNORE_INDEX"]


def validate_label(label: np.ndarray, path: str, num_classes: int,
                   image_shape: Optional[Tuple[int, int]] = None,
                   image_path: Optional[str] = None) -> np.ndarray:
    """A decoded label (``cv2.IMREAD_UNCHANGED``) as uint8 (h, w) ids, or ValueError naming
    ``path``: a colour label, a size other than ``image_shape``, ids >= ``num_classes`` other
    than the ignore value 255."""
    if label.ndim == 3:
        # a colour/palette PNG: only acceptable when it is grey (all channels equal)
        if not (label == label[:, :, :1]).all():
            raise ValueError(f"label {path} is a colour image, expected a single-channel id "
                             "map (palette PNGs are decoded to colours)")
        label = label[:, :, 0]
    if image_shape is not None and label.shape != tuple(image_shape):
        raise ValueError(f"label {path} has size {label.shape} (h, w) but image "
                         f"{image_path} has {tuple(image_shape)}")
    k = num_classes
    if label.max() >= k:
        bad = (label >= k) & (label != IGNORE_INDEX)
        if bad.any():
            values = np.unique(label[bad])[:10].tolist()
            raise ValueError(f"label {path} holds values {values} outside 0..{k - 1} "
                             f"(and not the ignore value {IGNORE_INDEX})")
    return label.astype(np.uint8, copy=False)


class FaceDataset(Dataset):
    """Affine-cropped face images with label, binary-edge and category-edge maps.

    Args:
        root: data-set root (the layout above).
        split: ``train``, ``valid``, ``test`` (or any ``<split>_list.txt`` present).
        crop_size: (h, w) of the crop, 473x473 in the paper.
        augment: ``"none"``, ``"paper"`` or ``"released"`` scale/rotation sampling.
        flip: mirror image and label with probability ``flip_prob``, swapping the schema's
            left/right classes (neither the paper nor the release flips).
        flip_prob: probability of the flip when ``flip`` is on.
        channel_order: ``"bgr"`` (release, official checkpoints) or ``"rgb"``.
        center_mode: ``"exact"`` or ``"released"`` (the release's crop geometry), see ``crop_params``.
        edge_width: width of the edge band, see ``edges.binary_edges``.
        with_edges: return ``edge`` and ``cat_edge``; default True for ``split == "train"``.
        schema: label schema; default the root's (``dataset.json``, else the tokens of
            ``ROOT/label_names.txt``, see ``layout.root_schema``). Given one, a root whose
            ``dataset.json`` names another data set gets a warning.
        seed: base seed of the augmentation RNG (module docstring).

    A sample is the dict of CONTRIBUTING_NOTES: ``image`` float32 (3,H,W), ``label`` int64 (H,W),
    ``edge`` / ``cat_edge`` int64 (H,W), ``center`` float32 (2,), ``scale`` / ``rotation`` float32
    (), ``orig_size`` int64 (2,), ``name`` str, ``index`` int. ``center``, ``scale`` and
    ``rotation`` describe the crop before the optional flip, which mirrors the crop itself.
    """

    def __init__(self, root: str, split: str, crop_size: Tuple[int, int] = (473, 473),
                 augment: str = "none", flip: bool = False, flip_prob: float = 0.5,
                 channel_order: str = "bgr", center_mode: str = "exact", edge_width: int = 1,
                 with_edges: Optional[bool] = None, schema: Optional[Schema] = None,
                 seed: Optional[int] = None):
        if augment not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {AUGMENT_MODES}, got {augment!r}")
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        if center_mode not in CENTER_MODES:
            raise ValueError(f"center_mode must be one of {CENTER_MODES}, got {center_mode!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
        self.root = root
        self.split = split
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.augment = augment
        self.flip = bool(flip)
        self.flip_prob = float(flip_prob)
        self.channel_order = channel_order
        self.center_mode = center_mode
        self.edge_width = int(edge_width)
        self.with_edges = (split == "train") if with_edges is None else bool(with_edges)
        self.seed = seed

        self.schema = root_schema(root) if schema is None else schema
        if self.num_classes > IGNORE_INDEX:
            raise ValueError(f"{self.num_classes} classes do not fit uint8 ids below {IGNORE_INDEX}")
        # flip lookup table over all uint8 values: left/right classes swapped, 255 kept
        lut = np.arange(256, dtype=np.uint8)
        lut[:self.num_classes] = self.schema.flip_permutation()
        self._flip_lut = lut

        self.list_path = split_list_path(root, split)
        self._images, self._labels = self._read_list(self.list_path, os.path.join(root, split))
        self.names = [os.path.splitext(os.path.basename(p))[0] for p in self._images]
        self._rng: Optional[np.random.Generator] = None
        self._rng_key: Optional[tuple] = None
        self.epoch: Optional[int] = None

    def set_epoch(self, epoch: Optional[int]) -> None:
        """Make augmentation a function of (seed, epoch, index) only: sample ``i`` then draws from
        ``default_rng([seed, epoch, i])``, whatever the worker or process (the trainer's hook for
        exact resumption); ``None`` restores the per-process generator."""
        self.epoch = None if epoch is None else int(epoch)

    @staticmethod
    def _read_list(list_path: str, split_dir: str) -> Tuple[List[str], List[Optional[str]]]:
        images: List[str] = []
        labels: List[Optional[str]] = []
        for lineno, image, label in read_split_list(list_path, split_dir):
            for p in (image, label):
                if p is not None and not os.path.isfile(p):
                    raise FileNotFoundError(f"{p} (listed in {list_path}:{lineno}) not found")
            images.append(image)
            labels.append(label)
        return images, labels

    @property
    def num_classes(self) -> int:
        return self.schema.num_classes

    def __len__(self) -> int:
        return len(self._images)

    def image_path(self, i: int) -> str:
        return self._images[i]

    def label_path(self, i: int) -> Optional[str]:
        return self._labels[i]

    @property
    def rng(self) -> np.random.Generator:
        """This process's generator (module docstring); rebuilt when torch's seed changes."""
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker:
            key = (True, torch.initial_seed())
            entropy = [key[1]] if self.seed is None else [int(self.seed), key[1]]
        elif self.seed is None:
            key = (False, torch.initial_seed())
            entropy = [key[1]]
        else:
            key = (False, None)
            entropy = [int(self.seed)]
        if self._rng is None or key != self._rng_key:
            self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
            self._rng_key = key
        return self._rng

    def read_image(self, i: int) -> np.ndarray:
        """uint8 (h, w, 3) BGR image of sample ``i`` (``files.read_image``: over the pixel limit,
        truncated or undecodable files raise ``ImageReadError`` naming the file)."""
        return read_image(self._images[i])

    def read_label(self, i: int, image_shape: Optional[Tuple[int, int]] = None
                   ) -> Optional[np.ndarray]:
        """uint8 (h, w) label of sample ``i`` (None without label file), validated."""
        path = self._labels[i]
        if path is None:
            return None
        label = read_image(path, cv2.IMREAD_UNCHANGED)
        return validate_label(label, path, self.num_classes, image_shape, self._images[i])

    def __getitem__(self, i: int) -> Dict[str, Union[torch.Tensor, str, int]]:
        image = self.read_image(i)
        h, w = image.shape[:2]
        label = self.read_label(i, (h, w))

        center, scale = crop_params(h, w, self.center_mode)
        rotation = 0.0
        do_flip = False
        if self.augment != "none" or self.flip:
            rng = self.rng if self.epoch is None else \
                np.random.default_rng([int(self.seed or 0), self.epoch, int(i)])
            s, rotation = sample_augmentation(rng, self.augment)
            scale *= s
            # the flip coin is drawn even with flip off, so switching the flip on or off leaves
            # every scale/rotation draw unchanged
            coin = rng.random()
            do_flip = self.flip and coin < self.flip_prob

        crop = crop_input(image, center, scale, rotation, self.crop_size, self.center_mode,
                          self.channel_order)
        sample = {"image": crop.flip(-1) if do_flip else crop}
        if label is not None:
            lab = warp_label(label, center, scale, rotation, self.crop_size, IGNORE_INDEX,
                             self.center_mode)
            if do_flip:
                lab = self._flip_lut[lab[:, ::-1]]
            sample["label"] = torch.from_numpy(lab.astype(np.int64))
            if self.with_edges:
                edge = binary_edges(lab, self.edge_width, IGNORE_INDEX)
                sample["edge"] = torch.from_numpy(edge.astype(np.int64))
                sample["cat_edge"] = torch.from_numpy(
                    category_edges(lab, edge, IGNORE_INDEX).astype(np.int64))
        sample["center"] = torch.tensor(center, dtype=torch.float32)
        sample["scale"] = torch.tensor(scale, dtype=torch.float32)
        sample["rotation"] = torch.tensor(rotation, dtype=torch.float32)
        sample["orig_size"] = torch.tensor([h, w], dtype=torch.int64)
        sample["name"] = self.names[i]
        sample["index"] = i
        return sample

    def __repr__(self) -> str:
        return (f"FaceDataset(root={self.root!r}, split={self.split!r}, n={len(self)}, "
                f"schema={self.schema.name!r}, crop_size={self.crop_size}, "
                f"augment={self.augment!r}, flip={self.flip})")
