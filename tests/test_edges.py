import numpy as np
import pytest

from dml_csr.data.edges import binary_edges, category_edges


def slow_binary_edges(label, width=1, ignore=255):
    """Independent per-pixel implementation of the edge rule of docs/data.md (square dilation for width > 1)."""
    h, w = label.shape
    base = np.zeros((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            if label[y, x] == ignore:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and label[ny, nx] != ignore \
                        and label[ny, nx] != label[y, x]:
                    base[y, x] = 1
    out = base.copy()
    r = width - 1
    for y in range(h):
        for x in range(w):
            win = base[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
            out[y, x] = 1 if win.any() else 0
    out[label == ignore] = ignore
    return out


def slow_category_edges(label, binary, ignore=255):
    out = np.zeros_like(label)
    for y in range(label.shape[0]):
        for x in range(label.shape[1]):
            if label[y, x] == ignore:
                out[y, x] = ignore
            elif binary[y, x] == 1:
                out[y, x] = label[y, x]
    return out


def test_small_hand_examples():
    assert binary_edges(np.array([[0, 0, 1, 1]], np.uint8)).tolist() == [[0, 1, 1, 0]]
    # the ignore value creates no edge on its neighbours and is itself marked ignore
    assert binary_edges(np.array([[0, 255, 1]], np.uint8)).tolist() == [[0, 255, 0]]
    assert binary_edges(np.array([[3, 3], [3, 3]], np.uint8)).tolist() == [[0, 0], [0, 0]]
    # diagonal neighbours do not count (4-neighbour rule)
    lab = np.array([[1, 0], [0, 1]], np.uint8)
    assert binary_edges(lab).tolist() == [[1, 1], [1, 1]]
    lab = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 2]], np.uint8)
    assert binary_edges(lab).tolist() == [[1, 1, 0], [1, 0, 1], [0, 1, 1]]
    cat = category_edges(lab, binary_edges(lab))
    assert cat.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 2]]


def test_width_two_square_band():
    lab = np.zeros((7, 7), np.uint8)
    lab[:, 4:] = 1                      # vertical boundary between columns 3 and 4
    e = binary_edges(lab, width=2)
    assert e[0].tolist() == [0, 0, 1, 1, 1, 1, 0]
    lab2 = np.zeros((7, 7), np.uint8)
    lab2[3, 3] = 1                      # single pixel: base is a plus; width 2 grows it squarely
    e2 = binary_edges(lab2, width=2)
    assert e2.sum() == 21 and e2[2:5, 1:6].all() and e2[1:6, 2:5].all()   # 5x5 minus corners
    assert e2[1, 1] == e2[1, 5] == e2[5, 1] == e2[5, 5] == 0
    assert np.array_equal(e2, slow_binary_edges(lab2, 2))


@pytest.mark.parametrize("width", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_matches_slow_rule_on_random_labels(width, dtype):
    rng = np.random.default_rng(width)
    small = rng.integers(0, 5, size=(8, 7))
    label = np.kron(small, np.ones((3, 3), np.int64))[:22, :19]
    label[rng.random(label.shape) < 0.05] = 255
    label[:4, :6] = 255
    label = label.astype(dtype)
    b = binary_edges(label, width)
    ref = slow_binary_edges(label, width)
    assert b.dtype == np.uint8 and b.shape == label.shape
    assert np.array_equal(b, ref)
    c = category_edges(label, b)
    assert c.dtype == label.dtype
    assert np.array_equal(c, slow_category_edges(label, ref))
    assert ((b == 255) == (label == 255)).all() and ((c == 255) == (label == 255)).all()
    assert set(np.unique(b)) <= {0, 1, 255}


def test_bad_arguments():
    with pytest.raises(ValueError):
        binary_edges(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError):
        binary_edges(np.zeros((2, 2), np.uint8), width=0)
    with pytest.raises(ValueError):
        category_edges(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
