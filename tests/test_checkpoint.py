"""Checkpoint I/O: release-format files into both forms, prefixes, num_batches_tracked, mismatches."""
import logging

import pytest
import torch

from dml_csr.models import DMLCSR, load_inference_model
from dml_csr.models.checkpoint import (CheckpointMismatchError, ModelSpec, load_imagenet_backbone,
                                       load_model_weights, save_checkpoint)


@pytest.fixture()
def kw(tiny_dmlcsr_kwargs):
    return tiny_dmlcsr_kwargs


def _randomised(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.1)
    return model


def _equal(a, b, skip_edges=False):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sb if not (skip_edges and k.startswith("edge_layer.")))


def test_release_format_train_checkpoint_into_both_forms(kw, tmp_path, caplog):
    src = _randomised(DMLCSR(with_edges=True, **kw))
    # the release's format: a bare state_dict saved from DataParallel, ABN without num_batches_tracked
    state = {"module." + k: v for k, v in src.state_dict().items()}
    path = tmp_path / "release.pth"
    torch.save(state, path)
    train = load_model_weights(DMLCSR(with_edges=True, **kw), str(path))
    assert _equal(src, train)
    with caplog.at_level(logging.INFO):
        infer = load_model_weights(DMLCSR(with_edges=False, **kw), str(path))
    assert _equal(src, infer, skip_edges=True)
    assert not any(k.startswith("edge_layer") for k in infer.state_dict())


def test_inference_checkpoint_into_training_form_warns(kw, caplog):
    src = _randomised(DMLCSR(with_edges=False, **kw))
    target = DMLCSR(with_edges=True, **kw)
    fresh_edge = target.edge_layer.conv4.weight.clone()
    with caplog.at_level(logging.WARNING):
        load_model_weights(target, src.state_dict())
    assert "edge" in caplog.text and "fresh" in caplog.text
    assert torch.equal(target.edge_layer.conv4.weight, fresh_edge)  # edge layers kept fresh
    assert _equal(target, src)                                      # everything else loaded


def test_num_batches_tracked_present_or_absent(kw):
    src = _randomised(DMLCSR(with_edges=False, **kw))
    state = src.state_dict()
    without = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(without) < len(state)
    load_model_weights(DMLCSR(with_edges=False, **kw), without)
    # a newer inplace-abn adds num_batches_tracked to every ABN: accepted too
    extra = dict(state)
    extra["bn1.num_batches_tracked"] = torch.tensor(3)
    load_model_weights(DMLCSR(with_edges=False, **kw), extra)


def test_wrong_number_of_classes_names_key_and_shapes(kw):
    src = DMLCSR(with_edges=False, **kw).state_dict()
    kw2 = dict(kw, num_classes=7)
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_weights(DMLCSR(with_edges=False, **kw2), src)
    msg = str(err.value)
    assert "layer6.conv4" in msg and "(5," in msg and "(7," in msg


def test_wrong_architecture_names_key(kw):
    src = DMLCSR(with_edges=False, **kw).state_dict()
    deeper = dict(kw, layers=[1, 1, 2, 1])
    with pytest.raises(CheckpointMismatchError, match="layer3.1"):
        load_model_weights(DMLCSR(with_edges=False, **deeper), src)
    with pytest.raises(CheckpointMismatchError, match="no state_dict"):
        load_model_weights(DMLCSR(with_edges=False, **kw), {"epoch": 3})


def test_missing_file_is_named(kw, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model_weights(DMLCSR(with_edges=False, **kw), str(tmp_path / "nope.pth"))


def test_imagenet_backbone(kw, tmp_path):
    src = _randomised(DMLCSR(with_edges=False, **kw))
    backbone = {k: v for k, v in src.state_dict().items()
                if k.split(".")[0] in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "layer1", "layer2", "layer3", "layer4")}
    backbone["fc.weight"] = torch.randn(1000, 8)
    backbone["fc.bias"] = torch.randn(1000)
    torch.save(backbone, tmp_path / "resnet101-imagenet.pth")
    model = DMLCSR(with_edges=True, **kw)
    head_before = model.layer6.conv4.weight.clone()
    load_imagenet_backbone(model, str(tmp_path / "resnet101-imagenet.pth"))
    assert torch.equal(model.layer2[0].conv2.weight, src.layer2[0].conv2.weight)
    assert torch.equal(model.layer6.conv4.weight, head_before)
    del backbone["layer4.0.bn3.running_var"]
    torch.save(backbone, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match="layer4.0.bn3.running_var"):
        load_imagenet_backbone(DMLCSR(with_edges=True, **kw), str(tmp_path / "partial.pth"))


def test_self_describing_checkpoint_roundtrip(kw, tmp_path):
    src = _randomised(DMLCSR(with_edges=True, **kw))
    path = tmp_path / "ckpt.pth"
    save_checkpoint(str(path), src.state_dict(), ModelSpec.for_dataset("dml_csr", kw, "synthetic"))
    model, spec = load_inference_model(str(path))
    assert not model.with_edges and _equal(src, model, skip_edges=True)
    assert spec.family == "dml_csr" and spec.model_kwargs == kw and spec.dataset == "synthetic"
    trained, _ = load_inference_model(str(path), training=True)      # the edge branch comes back
    assert trained.with_edges and _equal(src, trained)
    assert not list(tmp_path.glob(".tmp_*"))
