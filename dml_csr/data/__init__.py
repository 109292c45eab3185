from .schemas import SCHEMAS, Schema, get_schema, schema_from_tokens
from .transforms import (MEAN, STD, crop_params, get_affine_matrix, normalize_image,
                         sample_augmentation, warp_back, warp_image, warp_label)
from .edges import binary_edges, category_edges
from .dataset import FaceDataset, read_label_names
