import cv2
import numpy as np
import pytest
import torch

from dml_csr.data.transforms import (MEAN, STD, crop_params, get_affine_matrix, normalize_image,
                                     sample_augmentation, warp_back, warp_image, warp_label)


def _apply(m, x, y):
    return m @ np.array([x, y, 1.0])


def _blocky_label(h, w, k=6, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, k, size=(h // 4 + 1, w // 4 + 1)).astype(np.uint8)
    label = np.kron(small, np.ones((4, 4), np.uint8))[:h, :w].copy()
    label[:3, :5] = 255
    return label


def test_crop_params_modes():
    c, s = crop_params(40, 32, "exact")
    assert np.allclose(c, [15.5, 19.5]) and s == 40.0
    # the release: the same float centre, a span of the longer side minus one pixel
    c, s = crop_params(40, 32, "released")
    assert np.allclose(c, [15.5, 19.5]) and s == 39.0
    c, s = crop_params(31, 50, "released")
    assert np.allclose(c, [24.5, 15.0]) and s == 49.0
    with pytest.raises(ValueError):
        crop_params(4, 4, "bogus")


def test_affine_maps_centre_and_edges():
    center, scale = crop_params(40, 32)
    m = get_affine_matrix(center, scale, 0.0, (473, 473))
    assert m.shape == (2, 3) and m.dtype == np.float64
    assert np.allclose(_apply(m, *center), [236.0, 236.0])
    # the outer edges of the longer side (-0.5 and h - 0.5) land on the crop's outer edges
    assert np.allclose(_apply(m, 15.5, -0.5), [236.0, -0.5])
    assert np.allclose(_apply(m, 15.5, 39.5), [236.0, 472.5])
    # the shorter side is padded symmetrically
    left, right = _apply(m, -0.5, 0)[0], _apply(m, 31.5, 0)[0]
    assert np.isclose(left + 0.5, 472.5 - right) and left > 0


def test_affine_inverse_and_rotation_sign():
    center = np.array([10.0, 20.0])
    m = get_affine_matrix(center, 50.0, 37.0, (64, 48))
    inv = get_affine_matrix(center, 50.0, 37.0, (64, 48), inverse=True)
    full = np.vstack([m, [0, 0, 1]]) @ np.vstack([inv, [0, 0, 1]])
    assert np.allclose(full, np.eye(3))
    # +90 degrees turns content counter-clockwise on screen: right of centre goes up
    m90 = get_affine_matrix(center, 10.0, 90.0, (11, 11))
    x, y = _apply(m90, center[0] + 1, center[1])
    assert np.isclose(x, 5.0) and y < 5.0


def _release_affine(center, scale, rotation, out_size, inverse=False):
    """The release's get_affine_transform, from its three point pairs (written out here)."""
    out_h, out_w = out_size
    t = np.deg2rad(rotation)
    up = np.array([0.0, -0.5 * scale])
    src_dir = np.array([up[0] * np.cos(t) - up[1] * np.sin(t), up[0] * np.sin(t) + up[1] * np.cos(t)])
    src0 = np.asarray(center, np.float64)
    dst0 = np.array([out_w * 0.5, out_h * 0.5])
    src = [src0, src0 + src_dir]
    dst = [dst0, dst0 + np.array([0.0, -0.5 * out_w])]
    third = lambda a, b: b + np.array([-(a - b)[1], (a - b)[0]])  # noqa: E731
    src.append(third(*src))
    dst.append(third(*dst))
    src, dst = np.float32(src), np.float32(dst)
    return cv2.getAffineTransform(dst, src) if inverse else cv2.getAffineTransform(src, dst)


@pytest.mark.parametrize("rotation", [0.0, 23.0])
def test_released_affine_is_the_releases(rotation):
    center, scale = crop_params(40, 31, "released")
    for inverse in (False, True):
        ours = get_affine_matrix(center, scale * 1.1, rotation, (473, 473), inverse=inverse,
                                 center_mode="released")
        ref = _release_affine(center, scale * 1.1, rotation, (473, 473), inverse=inverse)
        assert np.allclose(ours, ref, atol=1e-4)
    # and it is not the exact geometry (the test can tell them apart)
    exact = get_affine_matrix(*crop_params(40, 31), rotation, (473, 473))
    assert not np.allclose(exact, _release_affine(center, scale, rotation, (473, 473)), atol=1e-2)


@pytest.mark.parametrize("shape", [(40, 32), (31, 50), (473, 473)])
def test_warp_back_recovers_label_no_augmentation(shape):
    label = _blocky_label(*shape)
    center, scale = crop_params(*shape)
    crop = warp_label(label, center, scale, 0.0, (473, 473))
    assert crop.shape == (473, 473) and crop.dtype == np.uint8
    back = warp_back(crop, center, scale, 0.0, shape)
    assert back.shape == shape and back.dtype == np.uint8
    assert np.array_equal(back, label)


@pytest.mark.parametrize("shape", [(40, 32), (31, 50)])
def test_released_crop_and_warp_back(shape):
    """The release crops with the float centre and maps back with the int32-truncated one."""
    h, w = shape
    label = _blocky_label(h, w)
    center, scale = crop_params(h, w, "released")
    crop = warp_label(label, center, scale, 0.0, (473, 473), center_mode="released")
    ref_crop = cv2.warpAffine(label, _release_affine(center, scale, 0.0, (473, 473)), (473, 473),
                              flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=255)
    assert (crop != ref_crop).mean() < 1e-3       # float32 vs float64 matrices at cell borders
    back = warp_back(crop, center, scale, 0.0, shape, center_mode="released")
    int_center = center.astype(np.int32)
    ref_back = cv2.warpAffine(crop, _release_affine(int_center, scale, 0.0, (473, 473), inverse=True),
                              (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
    assert (back != ref_back).mean() < 1e-3
    assert not np.array_equal(int_center, center)   # odd-even sizes: the truncation matters


def test_warp_back_recovers_label_rotated_zoomed_out():
    label = _blocky_label(40, 32, seed=1)
    center, scale = crop_params(40, 32)
    # zoomed out by 1.5: the rotated image stays inside the crop, so no pixel is lost
    crop = warp_label(label, center, scale * 1.5, 17.0, (473, 473))
    back = warp_back(crop, center, scale * 1.5, 17.0, (40, 32))
    assert np.array_equal(back, label)


def test_warp_label_border_is_ignore_and_image_border_zero():
    label = np.zeros((40, 32), np.uint8)
    image = np.full((40, 32, 3), 200, np.uint8)
    center, scale = crop_params(40, 32)
    crop_l = warp_label(label, center, scale, 0.0, (64, 64))
    crop_i = warp_image(image, center, scale, 0.0, (64, 64))
    assert crop_l[32, 0] == 255 and crop_l[32, 32] == 0 and crop_l[0, 32] == 0
    assert (crop_i[32, 0] == 0).all() and (crop_i[32, 32] == 200).all()
    assert crop_i.shape == (64, 64, 3) and crop_i.dtype == np.uint8


def test_warp_back_logits_layouts_and_tensor():
    h, w, k = 40, 32, 5
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # per-channel affine fields: bilinear warps reproduce them away from the border, up to cv2's
    # 1/32-pixel quantisation of the sampling positions
    logits = np.stack([0.25 * c * xx - 0.5 * yy + c for c in range(k)])   # (K, h, w)
    center, scale = crop_params(h, w)
    crop_hwc = warp_image(np.ascontiguousarray(logits.transpose(1, 2, 0)), center, scale, 0.0,
                          (473, 473))                                     # (473, 473, K)
    crop_chw = np.ascontiguousarray(crop_hwc.transpose(2, 0, 1))
    back = warp_back(crop_chw, center, scale, 0.0, (h, w))
    assert back.shape == (k, h, w) and back.dtype == np.float32
    assert np.allclose(back[:, 1:-1, 1:-1], logits[:, 1:-1, 1:-1], atol=0.05)
    back_hwc = warp_back(crop_hwc, center, scale, 0.0, (h, w), layout="hwc")
    assert np.allclose(back_hwc.transpose(2, 0, 1), back)
    t = warp_back(torch.from_numpy(crop_chw), center, scale, 0.0, (h, w))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert np.allclose(t.numpy(), back)
    # a tensor label map comes back as a tensor of the same dtype, nearest
    lab = torch.from_numpy(warp_label(_blocky_label(h, w), center, scale, 0.0, (473, 473))).long()
    tl = warp_back(lab, center, scale, 0.0, (h, w))
    assert tl.dtype == torch.int64 and np.array_equal(tl.numpy(), _blocky_label(h, w))


def test_warp_back_many_channels():
    crop = np.random.default_rng(0).random((600, 16, 16)).astype(np.float32)
    back = warp_back(crop, np.array([7.5, 7.5]), 16.0, 0.0, (16, 16))
    assert back.shape == (600, 16, 16)
    assert np.allclose(back, crop, atol=1e-5)


def test_normalize_channel_order():
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 120, 250   # B, G, R
    out_bgr = normalize_image(bgr, "bgr")
    out_rgb = normalize_image(bgr, "rgb")
    assert out_bgr.dtype == torch.float32 and out_bgr.shape == (3, 4, 5)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    x_bgr = torch.tensor([10.0, 120.0, 250.0])[:, None, None] / 255.0
    x_rgb = torch.tensor([250.0, 120.0, 10.0])[:, None, None] / 255.0
    assert torch.allclose(out_bgr, ((x_bgr - mean) / std).expand(3, 4, 5), atol=1e-5)
    assert torch.allclose(out_rgb, ((x_rgb - mean) / std).expand(3, 4, 5), atol=1e-5)
    with pytest.raises(ValueError):
        normalize_image(bgr, "yuv")


def test_augmentation_paper_ranges():
    rng = np.random.default_rng(0)
    draws = np.array([sample_augmentation(rng, "paper") for _ in range(2000)])
    s, r = draws[:, 0], draws[:, 1]
    assert (s >= 0.75).all() and (s < 1.25).all() and (r >= -30).all() and (r < 30).all()
    assert s.min() < 0.76 and s.max() > 1.24 and r.min() < -29 and r.max() > 29
    assert abs(np.mean(r)) < 2.0


def test_augmentation_released_ranges():
    rng = np.random.default_rng(1)
    draws = np.array([sample_augmentation(rng, "released") for _ in range(4000)])
    s, r = draws[:, 0], draws[:, 1]
    assert (s >= 0.75).all() and (s <= 1.25).all() and (np.abs(r) <= 60).all()
    # clipped tails: P(|N| > 1) ~ 0.32 of scales sit on a bound
    assert 0.25 < np.mean((s == 0.75) | (s == 1.25)) < 0.39
    assert 0.36 < np.mean(r == 0.0) < 0.44        # no rotation with probability 0.4
    assert np.mean(np.abs(r) == 60.0) > 0.01      # rotation clipped at 2 sigma


def test_augmentation_none_and_determinism():
    assert sample_augmentation(np.random.default_rng(0), "none") == (1.0, 0.0)
    for mode in ("paper", "released"):
        a = [sample_augmentation(np.random.default_rng(5), mode) for _ in range(3)]
        assert a[0] == a[1] == a[2]
    with pytest.raises(ValueError):
        sample_augmentation(np.random.default_rng(0), "strong")
