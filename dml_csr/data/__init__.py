"""The data side: from a raw download or the synthetic generator to the samples a model sees.

What lives here:

- ``schemas.py``: data-set descriptions (class names, tokens, flip pairs, palette, the scorer's
  merged groups, the headline metric) and the built-in ones (the benchmarks, synthetic); the
  ignore label value (``IGNORE_INDEX`` = 255) that the losses and the scorer share.
- ``layout.py``: the one reader (and the writers' format) of a prepared data root: label names,
  split lists, the data set's identity and description (``dataset.json``) and which data set a
  root holds (``root_schema``).
- ``dataset.py``: ``FaceDataset``, the affine-cropped samples with labels and edges.
- ``transforms.py``: the affine crop, its inverse, augmentation, normalisation; ``crop_input``, the
  network input of a region, is the crop step of the test-time path too (``dml_csr/predict.py``).
- ``edges.py``: binary and category edge maps.
- ``check.py``: the data check run before training (every listed image and label).
- ``prepare/``: Helen (with HELEN*), LaPa and CelebAMask-HQ downloads -> the layout
  (``tools/prepare_data.py``).
- ``synthetic/``: the procedural synthetic data set (``tools/make_synthetic.py``).

docs/data.md (pipeline) and docs/datasets.md (preparation, ``dataset.json``) describe them.
"""
from .schemas import SCHEMAS, Schema, get_schema
from .transforms import (MEAN, STD, crop_input, crop_params, get_affine_matrix, normalize_image,
                         sample_augmentation, warp_back, warp_image, warp_label)
from .edges import binary_edges, category_edges
from .layout import read_identity, read_label_names, root_schema, write_identity
from .dataset import FaceDataset
