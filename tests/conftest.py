import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
DATA = os.path.join(REPO, "tests", "data")

torch.set_num_threads(2)


def read_reference(form: str):
    """{key: shape tuple} of tests/data/reference/dml_csr_state_dict_{form}.txt (the release)."""
    path = os.path.join(DATA, "reference", f"dml_csr_state_dict_{form}.txt")
    ref = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            key, shape = line.split()
            ref[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return ref


@pytest.fixture(scope="session")
def tiny_dmlcsr_kwargs():
    """A CPU-sized DML-CSR (same module names, smaller widths and depths)."""
    return dict(num_classes=5, layers=[1, 1, 1, 1], width_mult=0.125)
