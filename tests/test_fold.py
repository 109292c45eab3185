"""Contract of utils/fold.py: the folded inference module equals the plain eval-mode module."""
import pytest
import torch
import torch.nn as nn

from dml_csr.layers.abn import ABN
from dml_csr.models import DMLCSR
from dml_csr.utils.fold import fold_norms, optimize_for_inference


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Random running stats and weights, half of the ABN weights negative (|w| matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (ABN, nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
            if hasattr(m, "gamma"):
                m.gamma.fill_(0.7)
            if hasattr(m, "gamma1"):
                m.gamma1.fill_(0.5)


def _tiny(with_edges: bool = False) -> DMLCSR:
    torch.manual_seed(0)
    model = DMLCSR(num_classes=5, with_edges=with_edges, layers=[1, 1, 1, 1], width_mult=0.125)
    _randomise_norms(model)
    return model.eval()


def test_weights_negative_and_stats_random():
    model = _tiny()
    abns = [m for m in model.modules() if isinstance(m, ABN)]
    assert any((m.weight < 0).any() for m in abns)
    assert all(not torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in abns)


@pytest.mark.parametrize("channels_last", [True, False])
def test_folded_equals_plain_eval(channels_last):
    model = _tiny()
    x = torch.randn(2, 3, 65, 57)
    with torch.no_grad():
        ref = model(x)
    fast = optimize_for_inference(model, channels_last=channels_last)
    out = fast(x)
    assert out.shape == ref.shape and out.is_contiguous()
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max().item() < 1e-4
    # the original model is untouched (a deep copy was folded)
    assert any(isinstance(m, ABN) for m in model.modules())


def test_every_norm_is_folded():
    model = _tiny()
    n_norms = sum(isinstance(m, (ABN, nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())
    fast = optimize_for_inference(model)
    assert len(fast.folded) == n_norms
    assert not any(isinstance(m, (ABN, nn.BatchNorm1d, nn.BatchNorm2d)) for m in fast.modules())


def test_training_form_with_edges_folds_too():
    model = _tiny(with_edges=True)
    x = torch.randn(1, 3, 49, 49)
    with torch.no_grad():
        ref = model(x)
    out = optimize_for_inference(model)(x)
    assert len(out) == 3
    for a, b in zip(out, ref):
        assert (a - b).abs().max().item() < 1e-4


def test_eval_only():
    fast = optimize_for_inference(_tiny())
    with pytest.raises(RuntimeError):
        fast.train()


def test_unfoldable_norm_is_left_alone():
    # an ABN not behind a conv (after a pooling layer) must stay an ABN
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), ABN(4)).eval()
    _randomise_norms(net)
    assert fold_norms(net) == []
    assert isinstance(net[2], ABN)
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        ref = net(x)
    assert torch.allclose(optimize_for_inference(net)(x), ref, atol=1e-5)


@pytest.mark.parametrize("context", ["baseline", "psp", "psp_pooling", "dgcnet", "dgcnet_pooling"])
def test_context_ablations_fold_exactly(context):
    torch.manual_seed(0)
    model = DMLCSR(num_classes=5, with_edges=False, layers=[1, 1, 1, 1], width_mult=0.125,
                   context=context).eval()
    _randomise_norms(model)
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        ref = model(x)
    assert (optimize_for_inference(model)(x) - ref).abs().max().item() < 1e-4
