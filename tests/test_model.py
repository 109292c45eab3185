"""DML-CSR: names and shapes equal the release's, forward contracts, gradients, parameter counts."""
import copy

import pytest
import torch

from conftest import read_reference
from dml_csr.models import DMLCSR
from dml_csr.utils.complexity import count_flops, count_parameters


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("form,with_edges", [("train", True), ("infer", False)])
def test_state_dict_equals_release_reference(form, with_edges):
    ref = read_reference(form)
    mine = _shapes(DMLCSR(11, with_edges=with_edges))
    assert sorted(mine) == sorted(ref), (set(mine) ^ set(ref))
    bad = [(k, mine[k], ref[k]) for k in ref if mine[k] != ref[k]]
    assert not bad, bad[:5]


def test_parameter_counts_equal_release():
    assert count_parameters(DMLCSR(11, with_edges=False)) == 68_058_157
    assert count_parameters(DMLCSR(11, with_edges=True)) == 68_544_242


def test_flops_about_253_gmacs():
    # measured by FlopCounterMode at the full size (spec: about 253 GMACs at 473x473)
    gmacs = count_flops(DMLCSR(11, with_edges=False), (1, 3, 473, 473)) / 2e9
    assert 250 < gmacs < 256


@pytest.mark.parametrize("size", [(65, 65), (64, 48)])
def test_forward_shapes(tiny_dmlcsr_kwargs, size):
    h, w = size
    model = DMLCSR(with_edges=True, **tiny_dmlcsr_kwargs)
    parsing, binary, category = model(torch.randn(2, 3, h, w))
    q = ((h + 1) // 2 + 1) // 2, ((w + 1) // 2 + 1) // 2      # stride-2 conv then stride-2 pool
    assert parsing.shape == (2, 5) + q
    assert binary.shape == (2, 2) + q
    assert category.shape == (2, 5) + q
    infer = DMLCSR(with_edges=False, **tiny_dmlcsr_kwargs).eval()
    out = infer(torch.randn(1, 3, h, w)).parsing
    assert torch.is_tensor(out) and out.shape == (1, 5) + q and torch.isfinite(out).all()


def test_every_parameter_gets_a_gradient(tiny_dmlcsr_kwargs):
    torch.manual_seed(0)
    model = DMLCSR(with_edges=True, **tiny_dmlcsr_kwargs)
    # gamma / gamma1 start at 0, which blocks the gradient of the branches they scale
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("gamma1"):
                p.fill_(0.5)
    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_inference_form_equals_training_form_parsing(tiny_dmlcsr_kwargs):
    torch.manual_seed(0)
    train = DMLCSR(with_edges=True, **tiny_dmlcsr_kwargs).eval()
    infer = DMLCSR(with_edges=False, **tiny_dmlcsr_kwargs).eval()
    infer.load_state_dict({k: v for k, v in train.state_dict().items() if not k.startswith("edge_layer.")})
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(train(x)[0], infer(x).parsing, atol=1e-6)


def test_width_and_depth_keep_names(tiny_dmlcsr_kwargs):
    small = DMLCSR(with_edges=True, **tiny_dmlcsr_kwargs)
    full_names = set(read_reference("train"))
    assert set(small.state_dict()) <= full_names
    assert "layer3.0.conv1.weight" in small.state_dict() and "layer3.1.conv1.weight" not in small.state_dict()


def test_checkpointed_backbone_gives_the_same_step():
    """train.checkpoint_backbone: the same loss, gradients and running statistics as the plain
    backbone (the recomputation does not update the ABN statistics a second time)."""
    torch.manual_seed(0)
    plain = DMLCSR(11, layers=[1, 1, 1, 1], width_mult=0.125).double().train()
    ckpt = copy.deepcopy(plain)
    ckpt.checkpoint_backbone = True
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    grads = []
    for model in (plain, ckpt):
        out = model(x)
        (out.parsing.square().mean() + out.binary_edge.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "conv1.weight" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-9, atol=1e-12)
    for (n, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=n)


def test_default_training_norm_equals_the_native_one():
    """The default backend (``auto``: the memory-saving ABN in training, with bn3 of every
    bottleneck recomputed in the backward pass) gives the native layer's step: outputs, gradients
    and running statistics equal in float64 (to 1e-10)."""
    from dml_csr.layers.abn import convert_abn_backend
    torch.manual_seed(0)
    auto = DMLCSR(11, layers=[1, 2, 1, 1], width_mult=0.125).double().train()
    native = convert_abn_backend(copy.deepcopy(auto), "native")
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    results = []
    for model in (auto, native):
        out = model(x)
        (out.parsing.square().mean() + out.binary_edge.mean() + out.category_edge.abs().mean()).backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grad_a), (out_n, grad_n) = results
    for a, b in zip(out_a, out_n):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert grad_a.keys() == grad_n.keys()
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_n[name], rtol=1e-10, atol=1e-10, msg=name)
    for (n, a), (_, b) in zip(auto.named_buffers(), native.named_buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=n)
