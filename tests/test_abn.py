"""The pure-PyTorch ABN against a direct formula (docs/model.md), and against inplace-abn if importable."""
import pytest
import torch
import torch.nn.functional as F

from dml_csr.layers.abn import ABN, compiled_abn_available


def reference_abn(x, weight, bias, mean, var, eps=1e-5, slope=0.01):
    shape = (1, -1, 1, 1)
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * (weight.abs() + eps).view(shape) + bias.view(shape)
    return torch.where(y >= 0, y, slope * y)


def _layer(c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer = ABN(c, backend="native")
    with torch.no_grad():
        layer.weight.copy_(torch.randn(c, generator=g))     # negative weights: |w| + eps matters
        layer.bias.copy_(torch.randn(c, generator=g))
        layer.running_mean.copy_(torch.randn(c, generator=g))
        layer.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return layer


def test_train_mode_forward_backward_and_running_stats():
    layer = _layer()
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    layer = layer.double()
    rm0, rv0 = layer.running_mean.clone(), layer.running_var.clone()
    y = layer(x)
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    ref = reference_abn(x2, w, b, x2.mean(dim=(0, 2, 3)), x2.var(dim=(0, 2, 3), unbiased=False))
    assert torch.allclose(y, ref, atol=1e-10)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (ref * g).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-10)
    assert torch.allclose(layer.weight.grad, w.grad, atol=1e-10)
    assert torch.allclose(layer.bias.grad, b.grad, atol=1e-10)
    n = 3 * 5 * 6
    assert torch.allclose(layer.running_mean, 0.9 * rm0 + 0.1 * mean.detach())
    assert torch.allclose(layer.running_var, 0.9 * rv0 + 0.1 * var.detach() * n / (n - 1))


def test_eval_mode_uses_running_stats_and_abs_weight():
    layer = _layer().eval()
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    y = layer(x)
    ref = reference_abn(x, layer.weight, layer.bias, layer.running_mean, layer.running_var)
    assert torch.allclose(y, ref, atol=1e-6)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # a plain BatchNorm2d with the same tensors differs (negative weights, no leaky slope)
    bn = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False)
    assert not torch.allclose(bn, y, atol=1e-3)


def test_state_dict_names_match_release():
    assert sorted(ABN(8).state_dict()) == ["bias", "running_mean", "running_var", "weight"]


@pytest.mark.parametrize("activation", ["identity", "elu"])
def test_other_activations(activation):
    layer = ABN(3, activation=activation, activation_param=1.0, backend="native").eval()
    x = torch.randn(2, 3, 4, 4)
    y = layer(x)
    lin = (x - layer.running_mean.view(1, -1, 1, 1)) / torch.sqrt(layer.running_var.view(1, -1, 1, 1) + 1e-5) * (1 + 1e-5)
    expected = lin if activation == "identity" else F.elu(lin)
    assert torch.allclose(y, expected, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="relu"):
        ABN(3, activation="relu")
    with pytest.raises(ValueError, match="backend"):
        ABN(3, backend="cuda")


@pytest.mark.skipif(not compiled_abn_available(),
                    reason="inplace-abn is not installed (optional: scripts/build_inplace_abn.sh)")
@pytest.mark.parametrize("training", [True, False])
def test_native_matches_compiled(training):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    native, compiled = _layer(8).to(device).train(training), _layer(8).to(device).train(training)
    compiled.backend = "compiled"
    x = torch.randn(4, 8, 7, 7, device=device)
    w = torch.randn(4, 8, 7, 7, device=device)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya = native(xa * 1.0)
    yb = compiled(xb * 1.0)          # the compiled kernel overwrites its (non-leaf) input
    assert torch.allclose(ya, yb, atol=1e-5)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-4)
    assert torch.allclose(native.weight.grad, compiled.weight.grad, atol=1e-4)
    assert torch.allclose(native.bias.grad, compiled.bias.grad, atol=1e-4)
    assert torch.allclose(native.running_mean, compiled.running_mean, atol=1e-6)
    assert torch.allclose(native.running_var, compiled.running_var, atol=1e-5)
