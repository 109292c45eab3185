"""The pure-PyTorch ABN against a direct formula (docs/model.md), and against inplace-abn if importable."""
import os

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
    """On the CPU (the suite hides the GPU here: tests/test_cuda.py compares them on CUDA)."""
    device = "cpu"
    native, compiled = _layer(8).to(device).train(training), _layer(8).to(device).train(training)
    compiled.backend = "compiled"
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 8, 7, 7, generator=g).to(device)
    w = torch.randn(4, 8, 7, 7, generator=g).to(device)
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


# --------------------------------------------------------------------------------------------
# backend "memory": saves only the output (In-Place ABN), against native and the direct formula
# --------------------------------------------------------------------------------------------
def _pair(c=5, activation="leaky_relu", param=0.01):
    layers = []
    for backend in ("native", "memory"):
        layer = ABN(c, backend=backend, activation=activation, activation_param=param).double()
        layer.load_state_dict(_layer(c, seed=1).double().state_dict())
        layers.append(layer)
    assert (layers[0].weight < 0).any() and (layers[0].weight > 0).any()
    return layers


def _run(layer, x, g):
    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    y = layer(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


@pytest.mark.parametrize("activation,param", [("leaky_relu", 0.01), ("identity", 0.0), ("elu", 1.0)])
@pytest.mark.parametrize("training", [True, False])
def test_memory_backend_equals_native_and_formula(training, activation, param):
    native, memory = _pair(activation=activation, param=param)
    native.train(training), memory.train(training)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 7, 6, dtype=torch.float64, generator=gen) * 2 + 0.5
    g = torch.randn(3, 5, 7, 6, dtype=torch.float64, generator=gen)
    rm0, rv0 = native.running_mean.clone(), native.running_var.clone()
    ref_out = _run(native, x, g)
    mem_out = _run(memory, x, g)
    for a, b in zip(ref_out, mem_out):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    if activation == "leaky_relu":                     # the direct formula, autograd through it
        x2 = x.clone().requires_grad_(True)
        w = _layer(5, seed=1).double().weight.detach().clone().requires_grad_(True)
        b = _layer(5, seed=1).double().bias.detach().clone().requires_grad_(True)
        if training:
            mean, var = x2.mean(dim=(0, 2, 3)), x2.var(dim=(0, 2, 3), unbiased=False)
        else:
            mean, var = rm0, rv0
        ref = reference_abn(x2, w, b, mean, var)
        (ref * g).sum().backward()
        for a, b_ in zip(mem_out, (ref.detach(), x2.grad, w.grad, b.grad)):
            assert torch.allclose(a, b_, atol=1e-10, rtol=0)
    # running statistics: identical update in training, untouched in eval
    assert torch.allclose(memory.running_mean, native.running_mean, atol=1e-12, rtol=0)
    assert torch.allclose(memory.running_var, native.running_var, atol=1e-12, rtol=0)
    if not training:
        assert torch.equal(memory.running_mean, rm0) and torch.equal(memory.running_var, rv0)
    else:
        assert not torch.equal(memory.running_mean, rm0)


def _saved_full_size(layer, x):
    saved = []

    def pack(t):
        if t.shape == x.shape:
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    return y, saved


@pytest.mark.parametrize("training", [True, False])
def test_memory_backend_saves_only_the_output(training):
    native, memory = _pair()
    native.train(training), memory.train(training)
    x = torch.randn(3, 5, 7, 6, dtype=torch.float64).mul(2).requires_grad_(True)
    y, saved = _saved_full_size(memory, x)
    assert len(saved) == 1 and saved[0].data_ptr() == y.data_ptr()
    assert all(t.data_ptr() != x.data_ptr() for t in saved)
    _, saved_native = _saved_full_size(native, x)     # sanity: the native graph keeps more
    assert len(saved_native) >= 2
    y.sum().backward()                                # and the saved output suffices
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_backend_names_validated():
    from dml_csr.layers.abn import convert_abn_backend
    with pytest.raises(ValueError, match="backend"):
        convert_abn_backend(torch.nn.Sequential(ABN(3)), "inplace")
    model = convert_abn_backend(torch.nn.Sequential(ABN(3), ABN(4)), "memory")
    assert [m.backend for m in model] == ["memory", "memory"]
    with pytest.raises(ValueError, match="invertible"):
        ABN(3, backend="memory", activation_param=0.0).train()(torch.randn(2, 3, 2, 2))


# 2 gloo processes, each with half of the batch: memory == native under the same group, and both
# == single-process native on the whole batch (outputs and x-gradients per half; parameter
# gradients summed over the processes, as DDP's all-reduce does before averaging)
def _memory_ddp_worker(rank, world, port, out_path):
    import os
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, g = _ddp_batch()
        half = slice(3 * rank, 3 * rank + 3)
        results = {}
        for layer in _pair():
            out = _run(layer, x[half], g[half])
            results[layer.backend] = [t.clone() for t in out] + [layer.running_mean.clone(),
                                                                 layer.running_var.clone()]
        torch.save(results, f"{out_path}.{rank}")
    finally:
        from dml_csr.distributed import destroy_group
        destroy_group()   # gloo: barrier and pause first (torch 2.6 deadlocked)


def _ddp_batch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, 7, 6, dtype=torch.float64, generator=gen) * 2 + 0.5
    x[3:] += 1.0                              # the halves differ in distribution
    return x, torch.randn(6, 5, 7, 6, dtype=torch.float64, generator=gen)


def test_memory_backend_two_process_gloo(tmp_path):
    import torch.multiprocessing as mp
    from test_distributed import _free_port   # the helper of the DDP tests
    out = str(tmp_path / "abn")
    mp.spawn(_memory_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    native, _ = _pair()
    x, g = _ddp_batch()
    y, gx, gw, gb = _run(native, x, g)
    for r in ranks:
        for a, b in zip(r["memory"], r["native"]):
            assert torch.allclose(a, b, atol=1e-10, rtol=0)
    mem = [r["memory"] for r in ranks]
    assert torch.allclose(torch.cat([m[0] for m in mem]), y, atol=1e-10, rtol=0)
    assert torch.allclose(torch.cat([m[1] for m in mem]), gx, atol=1e-10, rtol=0)
    assert torch.allclose(mem[0][2] + mem[1][2], gw, atol=1e-10, rtol=0)
    assert torch.allclose(mem[0][3] + mem[1][3], gb, atol=1e-10, rtol=0)
    for m in mem:                                     # global running statistics on every rank
        assert torch.allclose(m[4], native.running_mean, atol=1e-12, rtol=0)
        assert torch.allclose(m[5], native.running_var, atol=1e-12, rtol=0)


def test_auto_backend_is_the_memory_one_for_training():
    """``auto`` (the default) trains with the memory-saving function; eval, no-grad passes and a
    non-invertible activation (slope 0) use the native layer, with the same numbers."""
    layer = _layer(5)
    layer.backend = "auto"
    x = torch.randn(2, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    layer = layer.double().train()
    assert type(layer(x).grad_fn).__name__ == "_MemoryABNFunctionBackward"
    with torch.no_grad():
        assert not layer._use_memory()
    assert not layer.eval()._use_memory()
    relu = ABN(5, activation_param=0.0).train()
    assert not relu._use_memory()


def test_running_stats_frozen_still_normalises_with_the_batch():
    from dml_csr.layers.abn import running_stats_frozen
    layer = _layer(3).train()
    before = (layer.running_mean.clone(), layer.running_var.clone())
    x = torch.randn(4, 3, 5, 5)
    with running_stats_frozen():
        y = layer(x)
    assert torch.equal(layer.running_mean, before[0]) and torch.equal(layer.running_var, before[1])
    torch.testing.assert_close(y, _layer(3).train()(x))        # batch statistics all the same
    layer(x)
    assert not torch.equal(layer.running_mean, before[0])


@pytest.mark.parametrize("backend", ["native", "memory"])
def test_bf16_input_is_normalised_in_float32(backend):
    """Under autocast the ABN input is bfloat16: statistics and normalisation in float32, the
    output and the input gradient in bfloat16, both close to the float32 layer's."""
    ref = _layer(6).train()
    low = _layer(6).train()
    low.backend = backend
    torch.manual_seed(0)
    # both layers see the same (bfloat16-representable) input: what differs is the layer's
    # arithmetic, not the input's rounding (which moved values across leaky_relu's kink)
    x = (torch.randn(3, 6, 8, 8) * 3 + 1).to(torch.bfloat16)
    xr = x.float().requires_grad_(True)
    xl = x.clone().requires_grad_(True)
    yr, yl = ref(xr), low(xl)
    assert yl.dtype == torch.bfloat16
    torch.testing.assert_close(yl.float(), yr, atol=0.05, rtol=0.02)
    torch.testing.assert_close(low.running_var, ref.running_var, atol=1e-2, rtol=1e-2)
    g = torch.randn_like(yr)
    yr.backward(g)
    yl.backward(g.to(torch.bfloat16))
    assert xl.grad.dtype == torch.bfloat16
    torch.testing.assert_close(xl.grad.float(), xr.grad, atol=0.05, rtol=0.05)


# --------------------------------------------------------------------------------------------
# backend "compiled" without the package: a stand-in with inplace-abn 1.1.0's interface and
# limits (float32/float64/float16 kernels; running statistics updated by ``momentum``)
# --------------------------------------------------------------------------------------------
class _FakeKernels:
    """``inplace_abn.functions`` as the package behaves, in plain PyTorch; counts its calls."""

    def __init__(self):
        self.calls = 0

    def inplace_abn(self, x, weight, bias, running_mean, running_var, training, momentum, eps,
                    activation, activation_param):
        if x.dtype not in (torch.float32, torch.float64, torch.float16):
            raise RuntimeError(f"inplace_abn: not implemented for {x.dtype}")
        self.calls += 1
        dims = [0] + list(range(2, x.dim()))
        if training:
            mean, var = x.mean(dims), x.var(dims, unbiased=False)
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1))
        else:
            mean, var = running_mean, running_var
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = ((x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
             * (weight.abs() + eps).view(shape) + bias.view(shape))
        return F.leaky_relu(y, activation_param)

    def inplace_abn_sync(self, *args):
        return self.inplace_abn(*args[:-1])


@pytest.fixture
def fake_compiled(monkeypatch):
    from dml_csr.layers import abn
    kernels = _FakeKernels()
    monkeypatch.setattr(abn, "_iabn_functions", kernels)
    return kernels


def test_compiled_kernels_are_never_given_bfloat16(fake_compiled, caplog):
    """bf16 training with the package installed failed at the first ABN (its kernels take
    float, double and half only): such inputs take the pure-PyTorch path, logged once."""
    layer = _layer(8).train()
    layer.backend = "compiled"
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    with caplog.at_level("INFO"):
        y16 = layer(x.to(torch.bfloat16))
        layer(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16 and fake_compiled.calls == 0
    assert caplog.text.count("do not take torch.bfloat16") == 1
    layer(x)
    assert fake_compiled.calls == 1                        # float32 still goes to the kernels


def test_a_recomputed_pass_updates_compiled_running_stats_once(fake_compiled):
    """train.checkpoint_backbone=true recomputes the backbone in the backward pass; the compiled
    kernels ignored running_stats_frozen, so every statistic was updated twice per step."""
    from dml_csr.models import DMLCSR

    def step(checkpointed):
        torch.manual_seed(0)
        model = DMLCSR(5, layers=[1, 1, 1, 1], width_mult=0.125, norm_backend="compiled").train()
        model.checkpoint_backbone = checkpointed
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        model(x)[0].sum().backward()
        return {k: v for k, v in model.state_dict().items() if "running" in k}
    plain, checkpointed = step(False), step(True)
    assert fake_compiled.calls > 0
    for key, value in plain.items():
        assert torch.allclose(value, checkpointed[key], atol=1e-6), key


def test_a_checkpoint_trained_with_the_compiled_backend_loads_without_it(tmp_path):
    """The backend is the machine's, not the weights': a file saved with norm_backend=compiled
    (ABN refused to build where the package is absent) loads for inference, test and export."""
    from dml_csr.models import DMLCSR, ModelSpec, load_inference_model, save_checkpoint
    kw = dict(num_classes=11, layers=[1, 1, 1, 1], width_mult=0.125)
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "c.pth"), DMLCSR(with_edges=False, **kw).state_dict(),
                    ModelSpec.for_dataset("dml_csr", dict(kw, norm_backend="compiled"),
                                          "synthetic", crop_size=(32, 32)))
    model, spec = load_inference_model(str(tmp_path / "c.pth"))
    assert spec.model_kwargs["norm_backend"] == "compiled"          # the file's record
    assert all(m.backend == "auto" for m in model.modules() if isinstance(m, ABN))


def _gpu_check():
    import importlib
    return importlib.import_module("tools.gpu_check")      # as tests/test_hostile_files.py's _tool


def test_gpu_check_runs_compiled_against_native_where_the_package_imports(fake_compiled,
                                                                          monkeypatch):
    """scripts/gpu_check.sh never ran the compiled inplace-abn, the default CUDA training path
    wherever it is installed: its bench_train gains the compiled mode and a training step of
    both backends is compared (here with the stand-in kernels, which it must tell apart)."""
    gpu_check = _gpu_check()
    assert gpu_check.bench_modes(True)[-1] == "compiled"
    assert "compiled" not in gpu_check.bench_modes(False)
    out = gpu_check.compiled_vs_native(dry=True)
    assert fake_compiled.calls > 0 and float(out["max_weight_diff"]) <= 1e-3, out
    plain = fake_compiled.inplace_abn
    monkeypatch.setattr(fake_compiled, "inplace_abn",
                        lambda x, *rest: plain(x, *rest) * 1.01)   # kernels 1 % off
    with pytest.raises(gpu_check.StepFailed, match="disagree"):
        gpu_check.compiled_vs_native(dry=True)
