"""Contract of deploy/winograd.py: WinogradConv2d equals the direct convolution it replaces."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dml_csr.models import DMLCSR
from dml_csr.deploy.fold import (WINOGRAD_AUTO_TILE, WINOGRAD_MIN_CHANNEL_PRODUCT, optimize_for_inference,
                                winograd_tile)
from dml_csr.utils.random_weights import randomise_norms
from dml_csr.deploy.winograd import WinogradConv2d, winograd_eligible, winograd_matrices



@pytest.mark.parametrize("m", [2, 4])
def test_matrices_reproduce_1d_correlation(m):
    """A^T [(G g) * (B^T d)] equals the valid correlation of d (length m + 2) with g (length 3)."""
    bt, g, at = winograd_matrices(m)
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(m + 2, dtype=torch.float64, generator=gen)
    k = torch.randn(3, dtype=torch.float64, generator=gen)
    direct = torch.stack([(d[i:i + 3] * k).sum() for i in range(m)])
    assert torch.allclose(at @ ((g @ k) * (bt @ d)), direct, atol=1e-12)


@pytest.mark.parametrize("m,tol", [(2, 1e-5), (4, 5e-5)])
@pytest.mark.parametrize("dilation,h,w", [(1, 13, 17), (1, 8, 8), (2, 15, 12), (2, 60, 60), (4, 9, 21),
                                          (1, 1, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_direct_convolution(m, tol, dilation, h, w, bias):
    torch.manual_seed(dilation * 100 + h)
    conv = nn.Conv2d(12, 20, 3, padding=dilation, dilation=dilation, bias=bias)
    x = torch.randn(2, 12, h, w)
    ref = conv(x)
    out = WinogradConv2d(conv, m)(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < tol


def test_channels_last_input_and_output_layout():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(1, 8, 10, 11).contiguous(memory_format=torch.channels_last)
    out = WinogradConv2d(conv)(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-5)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=2),
    nn.Conv2d(4, 4, 5, padding=2), nn.Conv2d(4, 4, 3, padding=0), nn.Conv2d(4, 4, 3, padding=1, dilation=2),
    nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Conv1d(4, 4, 3, padding=1),
])
def test_ineligible_convolutions_refused(conv):
    assert not winograd_eligible(conv)
    with pytest.raises(ValueError, match="3x3 stride-1"):
        WinogradConv2d(conv)


def test_unknown_tile_and_channel_mismatch():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match="2 or 4"):
        WinogradConv2d(conv, 3)
    with pytest.raises(ValueError, match="expected 4 input channels"):
        WinogradConv2d(conv)(torch.randn(1, 5, 8, 8))


@pytest.mark.parametrize("tile", [2, 4])
def test_optimised_dml_csr_with_winograd_equals_plain_eval(tile):
    """Folding + Winograd on every eligible conv (forced: the tiny model is under the auto
    threshold) still equals the plain eval-mode module to 1e-4."""
    torch.manual_seed(0)
    model = DMLCSR(num_classes=5, with_edges=False, layers=[1, 1, 2, 1], width_mult=0.125)
    randomise_norms(model)
    model.eval()
    x = torch.randn(2, 3, 65, 57)
    with torch.no_grad():
        ref = model(x).parsing
    fast = optimize_for_inference(model, winograd=tile)
    replaced = [m for m in fast.modules() if isinstance(m, WinogradConv2d)]
    # stem conv2/conv3, every Bottleneck conv2 but layer2's strided first one, conva/convb/bottleneck
    assert len(replaced) == 2 + (1 + 0 + 2 + 1) + 3
    assert {m.dilation for m in replaced} == {1, 2}
    assert len(fast.winograd) == len(replaced)
    out = fast(x).parsing
    assert out.is_contiguous()
    assert (out - ref).abs().max().item() < 1e-4


def test_auto_rule_converts_large_convolutions_on_cpu_only_when_asked():
    big = 256
    net = nn.Sequential(nn.Conv2d(big, big, 3, padding=1), nn.ReLU(), nn.Conv2d(big, 16, 3, padding=1),
                        nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, stride=2, padding=1))
    assert big * big >= WINOGRAD_MIN_CHANNEL_PRODUCT > big * 16
    assert [winograd_tile(m) for m in net] == [WINOGRAD_AUTO_TILE, None, None, None, None]
    fast = optimize_for_inference(net.eval())
    assert fast.winograd == ("0",)
    assert isinstance(fast.model[0], WinogradConv2d) and type(fast.model[2]) is nn.Conv2d
    assert optimize_for_inference(net, winograd=None).winograd == ()
    with pytest.raises(ValueError, match="winograd must be"):
        optimize_for_inference(net, winograd=3)
    x = torch.randn(1, big, 9, 10)
    with torch.no_grad():
        assert (fast(x) - net(x)).abs().max().item() < 1e-4


def test_auto_rule_leaves_layers_with_large_transformed_filters_direct():
    """The cap keeps the parser's memory bounded: DML-CSR's context conva / bottleneck (2048+ input
    channels) stay direct; None lifts it."""
    from dml_csr.deploy.fold import WINOGRAD_MAX_FILTER_BYTES
    big = nn.Conv2d(2048, 512, 3, padding=1, bias=False)
    mid = nn.Conv2d(512, 512, 3, padding=1, bias=False)
    assert 36 * 2048 * 512 * 4 > WINOGRAD_MAX_FILTER_BYTES >= 36 * 512 * 512 * 4
    assert winograd_tile(big) is None and winograd_tile(mid) == WINOGRAD_AUTO_TILE
    assert winograd_tile(big, max_filter_bytes=None) == WINOGRAD_AUTO_TILE
