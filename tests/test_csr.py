"""CSR arithmetic: eq. 6 on toy weights by hand, the release's teacher, BN/ABN re-estimation."""
import pytest
import torch
import torch.nn as nn

from dml_csr.engine import csr
from dml_csr.layers.abn import ABN


def _toy(w, b, rm, nbt=0):
    return {"w": torch.tensor(w), "b": torch.tensor(b), "bn.running_mean": torch.tensor(rm),
            "bn.num_batches_tracked": torch.tensor(nbt)}


def test_eq6_by_hand():
    best = _toy([1.0, 2.0], [0.0], [4.0], nbt=7)
    snaps = [_toy([3.0, 0.0], [3.0], [1.0], 1), _toy([5.0, 2.0], [6.0], [2.0], 2)]
    k = 2  # cycle 2, N = 2:  M = 2/3 best + 1/(3*2) (M1 + M2)
    out = csr.self_ensemble(best, snaps, k)
    assert torch.allclose(out["w"], torch.tensor([2 / 3 * 1 + 8 / 6, 2 / 3 * 2 + 2 / 6]))
    assert torch.allclose(out["b"], torch.tensor([9 / 6]))
    assert torch.allclose(out["bn.running_mean"], torch.tensor([2 / 3 * 4 + 3 / 6]))
    assert out["bn.num_batches_tracked"].item() == 7          # integer buffers from M_best
    assert out["w"].dtype == torch.float32
    # the running-sum form used by the trainer gives the same result
    total = None
    for s in snaps:
        total = csr.snapshot_sum(total, s)
    out2 = csr.self_ensemble(best, total, k, num_snapshots=2)
    for key in out:
        assert torch.equal(out[key], out2[key])


def test_eq6_cycle1_weights():
    best = _toy([0.0], [0.0], [0.0])
    snaps = [_toy([6.0], [0.0], [0.0])] * 3
    out = csr.self_ensemble(best, snaps, 1)          # 1/2 best + 1/(2*3) * 18
    assert out["w"].item() == pytest.approx(3.0)
    with pytest.raises(ValueError):
        csr.self_ensemble(best, [], 1)
    with pytest.raises(ValueError):
        csr.self_ensemble(best, snaps, 0)


def test_released_running_mean():
    models = [_toy([float(i)], [2.0 * i], [0.0], i) for i in range(4)]
    teacher = models[0]
    for m in range(1, 4):
        teacher = csr.running_mean_update(teacher, models[m], m)
    # the mean of T_0..T_3 with equal weights
    assert teacher["w"].item() == pytest.approx((0 + 1 + 2 + 3) / 4)
    assert teacher["b"].item() == pytest.approx(2 * 1.5)
    assert teacher["bn.num_batches_tracked"].item() == 3      # newest model's integer buffers
    half = csr.running_mean_update(_toy([2.0], [0.0], [0.0]), _toy([4.0], [0.0], [0.0]), 1)
    assert half["w"].item() == pytest.approx(3.0)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.abn = ABN(3, activation="identity", backend="native")
        self.conv = nn.Conv2d(3, 2, 1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(self.conv(self.abn(x)))


def _reest(net, data, bs):
    batches = list(data.split(bs))
    return csr.reestimate_norm_stats(net, batches, forward=lambda m, b: m(b),
                                     batch_size_of=lambda b: b.shape[0])


def test_bn_reestimation_exact_single_batch():
    torch.manual_seed(0)
    net = _Net().eval()
    data = torch.randn(10, 3, 4, 4) * 3 + 1
    net.abn.running_mean.fill_(100.0)                # garbage that must disappear
    seen = _reest(net, data, 10)
    assert seen == 10
    flat = data.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(net.abn.running_mean, flat.mean(1), atol=1e-5)
    assert torch.allclose(net.abn.running_var, flat.var(1, unbiased=True), atol=1e-4)
    # the conv input used batch statistics during re-estimation: recompute with them
    net.train()
    with torch.no_grad():
        mid = net.conv(net.abn(data)).transpose(0, 1).reshape(2, -1)
    net.eval()
    assert torch.allclose(net.bn.running_mean, mid.mean(1), atol=1e-5)
    assert torch.allclose(net.bn.running_var, mid.var(1, unbiased=True), atol=1e-4)
    assert not net.training and not net.abn.training             # modes restored
    assert net.abn.momentum == 0.1 and net.bn.momentum == 0.1    # momenta restored


def test_bn_reestimation_cumulative_average_over_batches():
    torch.manual_seed(1)
    net = _Net().train()
    data = torch.randn(12, 3, 4, 4) * 2 - 1
    _reest(net, data, 5)                            # batches of 5, 5, 2: weights b / (n + b)
    flat = data.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(net.abn.running_mean, flat.mean(1), atol=1e-5)   # exact mean
    chunks = data.split(5)
    want_var = sum(c.shape[0] * c.transpose(0, 1).reshape(3, -1).var(1) for c in chunks) / 12
    assert torch.allclose(net.abn.running_var, want_var, atol=1e-4)
    assert net.training
