"""dml_csr.utils.clips: the known camera path of the video benchmark's clips."""
import numpy as np

from dml_csr.utils.clips import camera_path, make_clip, move_points, to_frame, to_photo


def marker_photo(h=120, w=160, at=(90, 55)):
    """A grey photo with one bright 3x3 square centred at ``at`` (x, y)."""
    photo = np.full((h, w, 3), 60, np.uint8)
    x, y = at
    photo[y - 1:y + 2, x - 1:x + 2] = 255
    return photo


def test_a_photo_point_lands_where_the_matrix_says():
    photo = marker_photo()
    path = camera_path(5, photo.shape[:2], seed=3, pan=(0.3, 0.1), zoom=(1.0, 1.3), jitter=1.5,
                       out_size=(100, 140))
    frames = make_clip(photo, path, out_size=(100, 140), noise=0, jpeg_quality=None,
                       border_value=60)
    assert len(frames) == 5 and frames[0].shape == (100, 140, 3) and frames[0].dtype == np.uint8
    for m, f in zip(path, frames):
        x, y = move_points(m, [(90, 55)])[0]
        assert 3 < x < 136 and 3 < y < 96
        g = f[:, :, 0].astype(np.float64) - 60
        ys, xs = np.nonzero(g > 20)
        wts = g[ys, xs]
        cx, cy = (xs * wts).sum() / wts.sum(), (ys * wts).sum() / wts.sum()
        assert abs(cx - x) < 0.35 and abs(cy - y) < 0.35, (cx, cy, x, y)


def test_the_path_is_the_documented_pan_and_zoom():
    h, w = 200, 400
    smooth = camera_path(11, (h, w), seed=0, pan=(0.2, 0.05), zoom=(1.0, 1.15), jitter=0)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    first, mid, last = (np.linalg.inv(np.vstack([m, [0, 0, 1]])) for m in
                        (smooth[0], smooth[5], smooth[-1]))
    # the photo point under the frame centre: the view centre, travelling by pan x photo size
    view = lambda inv: (inv @ np.r_[centre, 1])[:2]  # noqa: E731  (frame = photo size here)
    np.testing.assert_allclose(view(first), centre - [40, 5], atol=1e-9)
    np.testing.assert_allclose(view(mid), centre, atol=1e-9)
    np.testing.assert_allclose(view(last), centre + [40, 5], atol=1e-9)
    assert smooth[0][0, 0] == 1.0 and abs(smooth[-1][0, 0] - 1.15) < 1e-12
    assert smooth[0][0, 1] == smooth[0][1, 0] == 0.0


def test_same_seed_same_clip_other_seed_other_jitter():
    photo = marker_photo()
    a = camera_path(6, photo.shape[:2], seed=1)
    b = camera_path(6, photo.shape[:2], seed=1)
    c = camera_path(6, photo.shape[:2], seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    fa, fb = make_clip(photo, a, seed=5), make_clip(photo, b, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    fc = make_clip(photo, a, seed=6)                     # another noise draw
    assert not all(np.array_equal(x, y) for x, y in zip(fa, fc))


def test_jitter_is_about_a_pixel_around_the_smooth_path():
    n = 2000
    smooth = camera_path(n, (300, 400), seed=7, jitter=0)
    shaky = camera_path(n, (300, 400), seed=7, jitter=1.0)
    d = np.array([s[:, 2] - m[:, 2] for s, m in zip(shaky, smooth)])
    assert all(np.allclose(s[:, :2], m[:, :2]) for s, m in zip(shaky, smooth))   # shifts only
    assert np.all(np.abs(d.mean(0)) < 0.1)
    assert np.all(np.abs(d.std(0) - 1.0) < 0.08)
    assert abs(np.corrcoef(d[:-1, 0], d[1:, 0])[0, 1]) < 0.1      # frame to frame independent
    twice = camera_path(n, (300, 400), seed=7, jitter=2.0)
    np.testing.assert_allclose([t[:, 2] - m[:, 2] for t, m in zip(twice, smooth)], 2 * d)


def test_noise_and_jpeg_change_the_frames_a_little():
    photo = marker_photo()
    path = camera_path(2, photo.shape[:2], seed=0, jitter=0, pan=(0, 0), zoom=(1, 1))
    clean = make_clip(photo, path, noise=0, jpeg_quality=None)[0]
    np.testing.assert_array_equal(clean, photo)              # identity path: the photo itself
    noisy = make_clip(photo, path, noise=2.0, jpeg_quality=85)[0].astype(np.float64)
    diff = noisy - photo
    assert 0.3 < diff.std() < 6 and abs(diff.mean()) < 1


def test_label_maps_go_to_the_frame_and_back():
    lab = np.zeros((120, 160), np.uint8)
    lab[30:70, 40:90] = 3
    m = camera_path(3, lab.shape, seed=0, pan=(0.4, 0.4), zoom=(1.2, 1.2))[0]
    moved, covered = to_frame(lab, m, (120, 160))
    assert moved.dtype == np.uint8 and set(np.unique(moved)) <= {0, 3}
    assert 0.8 < (moved == 3).sum() / (1.2 ** 2 * (lab == 3).sum()) < 1.2
    assert not covered.all() and covered.mean() > 0.5        # zoomed in and panned: edges uncovered
    back, seen = to_photo(moved, m, (120, 160))
    inside = seen & covered.any()
    assert ((back == lab) | ~inside).mean() > 0.99
