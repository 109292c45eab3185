"""The checkpoint format is the contract: what the file says reaches the parser's output.

One writer (``save_checkpoint``), one reader (``load_inference_model``): a field edited in a saved
file (class names, input normalisation, channel order, crop and output size, the family's arguments) changes
what ``dml_csr.FaceParser`` does, and files of the first format version load alike.
"""
import numpy as np
import pytest
import torch

import dml_csr
from dml_csr.models import DMLCSR, FPLIIF, load_inference_model
from dml_csr.models.checkpoint import (CHECKPOINT_FORMAT, CheckpointMismatchError, ModelSpec,
                                       load_checkpoint_file, save_checkpoint)
from dml_csr.files import save_torch
from dml_csr.utils.random_weights import randomise_norms

KW = dict(num_classes=11, layers=[1, 1, 1, 1], width_mult=0.125)
CROP = (48, 48)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = DMLCSR(with_edges=False, **KW).eval()
    randomise_norms(model)
    path = tmp_path_factory.mktemp("fmt") / "model.pth"
    save_checkpoint(str(path), model.state_dict(),
                    ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=CROP),
                    epoch=3, score=0.5)
    return path


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, size=(40, 56, 3), dtype=np.uint8)
    img[:, :28] = np.clip(img[:, :28].astype(int) + 60, 0, 255)     # not channel-symmetric
    img[..., 0] //= 3
    return img


def _edited(saved, tmp_path, edit):
    ckpt = load_checkpoint_file(str(saved))
    edit(ckpt)
    path = tmp_path / "edited.pth"
    save_torch(ckpt, str(path))
    return str(path)


def _parse(path, photo):
    parser = dml_csr.FaceParser.from_checkpoint(path, detector=None, optimize=False)
    return parser, parser(photo, detect=False, return_logits=True)


def test_the_file_holds_the_format_and_the_writers_extras(saved):
    ckpt = load_checkpoint_file(str(saved))
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["epoch"] == 3 and ckpt["score"] == 0.5
    assert ckpt["input"] == {"crop_size": list(CROP), "channel_order": "bgr",
                             "center_mode": "exact", "mean": [0.485, 0.456, 0.406],
                             "std": [0.229, 0.224, 0.225], "output_scale": 1.0}
    model, spec = load_inference_model(str(saved))
    assert spec == ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=CROP)
    with pytest.raises(ValueError, match="would replace"):
        save_checkpoint(str(saved) + ".x", model.state_dict(), spec, model_name="fp_liif")


def test_class_names_come_from_the_file(saved, photo, tmp_path):
    def rename(ckpt):
        ckpt["class_names"] = [f"part {i}" for i in range(11)]
    _, res = _parse(_edited(saved, tmp_path, rename), photo)
    assert res.class_names == tuple(f"part {i}" for i in range(11))
    assert res.tokens[0] == "bg"                              # tokens stay the schema's


@pytest.mark.parametrize("field, value", [("mean", [0.2, 0.5, 0.7]), ("std", [0.5, 0.1, 0.3]),
                                          ("channel_order", "rgb")])
def test_input_normalisation_comes_from_the_file(saved, photo, tmp_path, field, value):
    parser, plain = _parse(str(saved), photo)
    assert parser.mean == (0.485, 0.456, 0.406) and parser.channel_order == "bgr"

    def change(ckpt):
        ckpt["input"][field] = value
    edited_parser, edited = _parse(_edited(saved, tmp_path, change), photo)
    assert getattr(edited_parser, field) == (tuple(value) if isinstance(value, list) else value)
    assert not np.allclose(edited.logits[0], plain.logits[0], atol=1e-4)
    if field == "channel_order":     # rgb = the same network fed the photo with B and R swapped
        _, swapped = _parse(str(saved), photo[..., ::-1].copy())
        assert np.allclose(edited.logits[0], swapped.logits[0], atol=1e-5)


def test_crop_size_comes_from_the_file(saved, photo, tmp_path):
    def change(ckpt):
        ckpt["input"]["crop_size"] = [64, 64]
    parser, res = _parse(_edited(saved, tmp_path, change), photo)
    assert parser.crop_size == (64, 64)
    assert not np.allclose(res.logits[0], _parse(str(saved), photo)[1].logits[0], atol=1e-4)


def test_output_scale_comes_from_the_file(saved, photo, tmp_path):
    def change(ckpt):
        ckpt["input"]["output_scale"] = 2.0
    parser, res = _parse(_edited(saved, tmp_path, change), photo)
    assert parser.output_size == (96, 96) and _parse(str(saved), photo)[0].output_size == CROP
    assert res.label_maps[0].shape == photo.shape[:2]
    assert not np.allclose(res.logits[0], _parse(str(saved), photo)[1].logits[0], atol=1e-4)


def test_the_family_and_its_arguments_come_from_the_file(tmp_path, photo):
    kw = dict(num_classes=11, width=8, blocks=[1, 1], reduce_dims=[16, 8], decoder_dims=[16])
    torch.manual_seed(0)
    path = tmp_path / "liif.pth"
    save_checkpoint(str(path), FPLIIF(**kw).state_dict(),
                    ModelSpec.for_dataset("fp_liif", kw, "lapa", crop_size=(32, 32)))
    model, spec = load_inference_model(str(path))
    assert isinstance(model, FPLIIF) and spec.model_kwargs == kw and spec.dataset == "lapa"
    shapes = {k: v.shape for k, v in FPLIIF(**kw).state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    ckpt = load_checkpoint_file(str(path))
    ckpt["model_kwargs"]["width"] = 16                        # arguments that do not fit
    save_torch(ckpt, str(path))
    with pytest.raises(CheckpointMismatchError):
        load_inference_model(str(path))


def test_first_format_files_load_alike(saved, photo, tmp_path):
    def downgrade(ckpt):
        ckpt["format"] = "dml_csr.train/1"
    _, old = _parse(_edited(saved, tmp_path, downgrade), photo)
    _, new = _parse(str(saved), photo)
    assert np.array_equal(old.label_maps[0], new.label_maps[0])

    def unknown(ckpt):
        ckpt["format"] = "dml_csr.checkpoint/99"
    with pytest.raises(CheckpointMismatchError, match="checkpoint/99"):
        load_inference_model(_edited(saved, tmp_path, unknown))
