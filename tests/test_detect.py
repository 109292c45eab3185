"""Face detection on real photographs (tests/data/photos: public-domain portraits), the upright crop
region from landmarks, the fallback without ``yuface``, and turned faces parsing like upright ones."""
import builtins
import os

import cv2
import numpy as np
import pytest
import torch

from dml_csr.data.schemas import get_schema
from dml_csr.data.synthetic import draw_face
from dml_csr.deploy import FaceParser
from dml_csr.utils.photos import turn_photo
from dml_csr.deploy.detect import (HaarFaceDetector, LandmarkFallbackWarning, YuNetDetector,
                                   as_detections, face_region, make_detector)

PHOTOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "photos")
NAMES = ("astronaut", "grace_hopper")
yuface = pytest.importorskip("yuface", reason="the default detector needs yuface (Python 3.9-3.11)")


@pytest.fixture(scope="module")
def photos():
    return {n: cv2.imread(os.path.join(PHOTOS, f"{n}.jpg")) for n in NAMES}


def test_the_default_detector_is_yunet_with_landmarks():
    assert isinstance(make_detector("auto"), YuNetDetector)
    assert isinstance(make_detector("haar"), HaarFaceDetector) and make_detector(None) is None


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("degrees", [0, 40, -40])
def test_one_face_in_each_portrait_upright_and_turned(photos, name, degrees):
    photo, m = turn_photo(photos[name], degrees)
    rows = make_detector("auto")(photo)
    assert rows.shape == (1, 15) and 0.5 <= rows[0, 4] <= 1
    # the landmarks sit inside the box, and the eyes above the mouth once the face is upright
    marks = rows[0, 5:].reshape(5, 2)
    assert (marks >= rows[0, :2] - 2).all() and (marks <= rows[0, 2:4] + 2).all()
    # the crop angle follows the turn: within 8 degrees of the upright photo's plus the turn
    upright = face_region(make_detector("auto")(photos[name])[0])[2]
    assert abs(face_region(rows[0])[2] - (upright - degrees)) < 8


def test_without_refinement_the_landmarks_lag_the_turn(photos):
    """Why YuNetDetector looks at each face again: YuNet's own landmarks follow a 40-degree turn
    only partly (this is what the refinement fixes; if a future yuface follows it, drop it)."""
    photo, _ = turn_photo(photos["astronaut"], 40)
    plain = YuNetDetector(refine=False)(photo)
    upright = face_region(YuNetDetector(refine=False)(photos["astronaut"])[0])[2]
    assert abs(face_region(plain[0])[2] - (upright - 40)) > 15


def test_a_face_cut_by_the_border_is_found_and_padded(photos):
    cut = np.ascontiguousarray(photos["astronaut"][:, 105:])       # the left half of the face gone
    rows = make_detector("auto")(cut)
    assert len(rows) == 1 and rows[0, 0] <= 1
    parser = FaceParser(lambda x, size: torch.zeros(len(x), 11, *size), get_schema("helen"),
                        crop_size=(64, 64))
    res = parser(cut)
    x0, y0, x1, y1 = res.regions[0]
    assert x0 == 0 and res.centers[0][0] - res.scales[0] / 2 < 0   # the square reaches past the edge
    assert res.label_maps[0].shape == (y1 - y0, x1 - x0)


def test_face_region_from_landmarks():
    # an upright face: eyes 40 apart at y=100, mouth 45 below
    marks = np.array([[80, 100], [120, 100], [100, 125], [85, 145], [115, 145]], np.float64)
    row = np.r_[60, 70, 140, 160, 0.9, marks.ravel()]
    center, scale, angle = face_region(row)
    assert angle == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(center, [100, 104.5])                  # eyes + 0.1 eye-to-mouth
    assert scale == pytest.approx(2.0 * max(2.0 * 40, 1.8 * 45))      # margin 0.5: CelebA-HQ framing
    assert face_region(row, margin=1.0)[1] == pytest.approx(3.0 * 1.8 * 45)
    # the same face turned: the crop angle turns with it (get_affine_matrix's sign)
    for degrees in (-50, 30):
        m = cv2.getRotationMatrix2D((100.0, 120.0), degrees, 1.0)
        turned = marks @ m[:, :2].T + m[:, 2]
        c2, s2, a2 = face_region(np.r_[0, 0, 1, 1, 1, turned.ravel()])
        assert a2 == pytest.approx(-degrees) and s2 == pytest.approx(scale)
        np.testing.assert_allclose(c2, m[:, :2] @ center + m[:, 2])
    # boxes only: upright, side (1 + 2 margin) x the longer box side
    c3, s3, a3 = face_region([10, 20, 50, 80])
    assert a3 == 0 and s3 == 2 * 60 and np.allclose(c3, [29.5, 49.5])


def test_detector_rows():
    assert as_detections([]).shape == (0, 15)
    rows = as_detections([[1, 2, 3, 4]])
    assert rows[0, 4] == 1 and np.isnan(rows[0, 5:]).all()
    with pytest.raises(ValueError, match=r"\(F, 4\), \(F, 5\) or \(F, 15\)"):
        as_detections(np.zeros((2, 7)))
    with pytest.raises(ValueError, match="one of"):
        make_detector("retinaface")


def test_without_yuface_the_haar_cascade_stands_in_with_a_warning(monkeypatch):
    real_import = builtins.__import__

    def no_yuface(name, *args, **kwargs):
        if name == "yuface":
            raise ImportError("No module named 'yuface'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yuface)
    with pytest.warns(LandmarkFallbackWarning, match="pip install yuface"):
        assert isinstance(make_detector("auto"), HaarFaceDetector)
    with pytest.raises(ImportError, match="pip install yuface"):
        make_detector("yunet")


def _band_parser(**kw):
    """A stand-in network that sees orientation: every non-grey crop pixel is labelled by the third
    of the crop (top, middle, bottom) it lies in. Turned faces parse like upright ones only when
    the crop turns with the face."""
    def backend(x, size):
        face = (x - x[:, :, :1, :1]).abs().sum(1) > 0.3                          # (N, H, W)
        band = (torch.arange(x.shape[2]) * 3 // x.shape[2] + 1)[None, :, None].expand_as(face)
        labels = torch.where(face, band, torch.zeros_like(band))
        return torch.nn.functional.one_hot(labels, 11).permute(0, 3, 1, 2).float() * 10
    return FaceParser(backend, get_schema("helen"), crop_size=(96, 96), **kw)


def test_a_turned_face_parses_like_an_upright_one():
    image, _ = draw_face(1, size=160)       # a drawn face YuNet finds upright and turned by 40
    photo = cv2.copyMakeBorder(image, 80, 80, 80, 80, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    agree = {}
    for name, detector in (("upright", make_detector("auto")),
                           ("boxes only", lambda im: make_detector("auto")(im)[:, :5])):
        parser = _band_parser(detector=detector)
        ref = parser(photo).combined[0]
        turned, m = turn_photo(photo, 40, value=128)
        res = parser(turned)
        assert len(res) == 1
        back = cv2.warpAffine(res.combined[0], m, photo.shape[1::-1],
                              flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
        fg = (ref > 0) | (back > 0)
        agree[name] = float((ref[fg] == back[fg]).mean())
    assert agree["upright"] > 0.85, agree
    assert agree["boxes only"] < agree["upright"] - 0.15, agree
