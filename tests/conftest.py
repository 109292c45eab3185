import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
DATA = os.path.join(REPO, "tests", "data")

torch.set_num_threads(2)
HAS_CUDA = torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: runs on a CUDA GPU (skipped where there is none); every other test is a "
                   "CPU contract and sees no GPU, in this process and in the ones it starts")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True, scope="session")
def _cache_in_a_temporary_folder(tmp_path_factory):
    """The ONNX files parsers make (deploy/cache.py) go to a folder of this run, never the
    user's ~/.cache: a later run reads nothing an earlier one left."""
    old = os.environ.get("DMLCSR_CACHE")
    os.environ["DMLCSR_CACHE"] = str(tmp_path_factory.mktemp("dml_csr_cache"))
    yield
    if old is None:
        os.environ.pop("DMLCSR_CACHE", None)
    else:
        os.environ["DMLCSR_CACHE"] = old


@pytest.fixture(autouse=True)
def _cpu_unless_marked_cuda(request, monkeypatch):
    """CPU contracts stay on the CPU on a GPU machine too: ``device=auto`` resolves to the CPU,
    exact comparisons keep holding (CUDA kernels are not all deterministic), and subprocesses
    (torchrun, the tools) see no GPU either."""
    if request.node.get_closest_marker("cuda"):
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


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
