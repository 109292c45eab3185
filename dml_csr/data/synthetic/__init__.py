"""Procedural synthetic faces: the project's embedded data set for the quick start and the tests.

None of the real benchmarks (Helen, LaPa, CelebAMask-HQ) can be downloaded on the project's
machines, so the quick start and every test run on faces drawn here instead. Each sample is a
cartoon-like portrait drawn with OpenCV polygons: a face ellipse, hair (several styles, painted
behind the head and over the forehead), brows, eyes with iris and pupil, a nose drawn in skin
colour, lips, a sometimes open mouth, ears, neck, clothes and optional accessories (hat, glasses,
earrings, necklace), over a cluttered background, with random pose, scale, colours, lighting,
blur, noise and JPEG compression. The label map is painted in occlusion order, so the image and
its labels agree pixel for pixel.

What lives here: :mod:`.face` (:func:`draw_face`, one face in readable steps), :mod:`.geometry`
(pose, polygons, part outlines), :mod:`.palette` (colours, background), :mod:`.noise`
(:func:`corrupt_label`) and :mod:`.writer` (:func:`make_synthetic`, the data set on disk).
``tools/make_synthetic.py`` is the command line; docs/synthetic.md describes the data.

Two label orders (from :mod:`dml_csr.data.schemas`):

- ``classes=11``, schema ``synthetic``: the Helen/LaPa order. Ears, neck, clothes and accessories
  are still drawn in the image but are labelled background (glasses leave the label of what is
  behind them), as the real 11-class sets do for neck and clothes.
- ``classes=19``, schema ``synthetic19``: the CelebAMask-HQ order with every class labelled.

"Left" is the viewer's side (smaller x in an upright face), matching the schemas' flip pairs.

Everything is deterministic: sample ``i`` of split ``s`` is drawn from
``numpy.random.default_rng([seed, split_code, i])``, so it does not depend on how many samples the
other splits hold, and the same arguments give byte-identical label PNGs.
"""
from .face import DEFAULT_SIZE, draw_face
from .noise import NOISE_KINDS, corrupt_label
from .writer import DEFAULT_COUNTS, INFO_NAME, SPLITS, is_synthetic_root, make_synthetic

__all__ = ["make_synthetic", "draw_face", "corrupt_label", "is_synthetic_root", "NOISE_KINDS",
           "SPLITS", "INFO_NAME", "DEFAULT_COUNTS", "DEFAULT_SIZE"]
