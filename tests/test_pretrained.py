"""The official checkpoints by name (dml_csr/deploy/pretrained.py): finding the file in a folder
the user fills by hand, the messages when it is missing or wrong, and loading an official-format
file.

The official-format file is fabricated from the release's own key listing
(tests/data/reference/dml_csr_state_dict_infer.txt: the full-size inference network, 11 classes),
random values, every key prefixed ``module.`` as DataParallel writes; built once per module.
"""
import dataclasses
import math
import os

import pytest
import torch

from conftest import read_reference
from dml_csr.data.schemas import get_schema
from dml_csr.deploy.pretrained import (ARCHIVE_URL, PRETRAINED, WEIGHTS_ENV, find_pretrained,
                                       load_pretrained)
from dml_csr.models import DMLCSR
from dml_csr.models.checkpoint import CheckpointMismatchError, ModelSpec, save_checkpoint

NAMES = ("dml-csr-lapa", "dml-csr-helen", "dml-csr-celebamask-hq")


def official_state(num_classes: int = 11, seed: int = 0):
    """A bare release state_dict: the reference's keys and shapes (classifier resized to
    ``num_classes``), ``module.`` prefixed; weights scaled so that a forward stays finite."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in read_reference("infer").items():
        if key.startswith("layer6.conv4."):
            shape = (num_classes,) + shape[1:]
        leaf = key.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            value = torch.tensor(0)
        elif leaf == "running_mean":
            value = torch.zeros(shape)
        elif leaf == "running_var":
            value = torch.ones(shape)
        elif len(shape) >= 2:
            value = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:
            value = (1.0 if leaf == "weight" else 0.0) + 0.1 * torch.randn(shape, generator=g)
        state["module." + key] = value
    return state


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    """A weights folder as the archive unpacks: ``root/DML_CSR/dml_csr_lapa.pth``."""
    root = tmp_path_factory.mktemp("weights")
    (root / "DML_CSR").mkdir()
    state = official_state(11)
    torch.save(state, str(root / "DML_CSR" / "dml_csr_lapa.pth"))
    return root, state


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No DMLCSR_WEIGHTS, and a working directory without ./pretrained."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read by find_pretrained")
    return str(path)


# ----------------------------------------------------------------------------- the registry
def test_the_registry_names_the_three_official_files():
    assert tuple(PRETRAINED) == NAMES
    files = {n: (m.filename, m.dataset, m.num_classes) for n, m in PRETRAINED.items()}
    assert files == {"dml-csr-lapa": ("dml_csr_lapa.pth", "lapa", 11),
                     "dml-csr-helen": ("dml_csr_helen.pth", "helen", 11),
                     "dml-csr-celebamask-hq": ("dml_csr_celebA.pth", "celebamask_hq", 19)}
    for name, info in PRETRAINED.items():
        assert info.name == name
        assert info.num_classes == get_schema(info.dataset).num_classes
        assert info.crop_size == (473, 473) and info.channel_order == "bgr"
        assert info.archive_url == ARCHIVE_URL and "1-PjUts1AMzXNyvw3VaJQmg43GJbfEpEQ" in ARCHIVE_URL
        assert info.archive_folder == "DML_CSR"
        assert info.schema == "bare release state_dict, inference network without edge heads"
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRETRAINED["dml-csr-lapa"].num_classes = 19


def test_the_package_exports_the_api():
    import dml_csr.deploy as deploy
    assert deploy.find_pretrained is find_pretrained and deploy.load_pretrained is load_pretrained
    assert deploy.PRETRAINED is PRETRAINED
    assert {"find_pretrained", "load_pretrained", "PRETRAINED"} <= set(deploy.__all__)


def test_an_unknown_name_lists_the_known_names(tmp_path):
    for call in (find_pretrained, load_pretrained):
        with pytest.raises(ValueError) as err:
            call("dml-csr-celeba", tmp_path)
        assert "dml-csr-celeba" in str(err.value) and all(n in str(err.value) for n in NAMES)


# ----------------------------------------------------------------------------- finding
def test_find_looks_in_the_archive_subfolder_and_directly(tmp_path, no_env):
    inside = _touch(tmp_path / "w" / "DML_CSR" / "dml_csr_helen.pth")
    path, info = find_pretrained("dml-csr-helen", tmp_path / "w")
    assert path == inside and info is PRETRAINED["dml-csr-helen"]
    direct = _touch(tmp_path / "w" / "dml_csr_helen.pth")          # the folder itself comes first
    assert find_pretrained("dml-csr-helen", str(tmp_path / "w"))[0] == direct
    # the archive's own file name, not the model name
    _touch(tmp_path / "c" / "DML_CSR" / "dml_csr_celebA.pth")
    assert find_pretrained("dml-csr-celebamask-hq", tmp_path / "c")[0].endswith(
        os.path.join("c", "DML_CSR", "dml_csr_celebA.pth"))


def test_find_reads_no_weights(tmp_path, no_env):
    path = _touch(tmp_path / "dml_csr_lapa.pth")                   # not a checkpoint at all
    assert find_pretrained("dml-csr-lapa", tmp_path)[0] == path


def test_find_uses_the_environment_then_the_working_directory(tmp_path, no_env, monkeypatch):
    local = _touch(no_env / "pretrained" / "DML_CSR" / "dml_csr_lapa.pth")
    assert find_pretrained("dml-csr-lapa")[0] == local                 # ./pretrained
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.setenv(WEIGHTS_ENV, str(env_dir))
    assert find_pretrained("dml-csr-lapa")[0] == local                 # env folder empty: next
    from_env = _touch(env_dir / "dml_csr_lapa.pth")
    assert find_pretrained("dml-csr-lapa")[0] == from_env              # env folder first
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(FileNotFoundError):                             # weights_dir: only it
        find_pretrained("dml-csr-lapa", other)


def test_a_missing_file_says_what_to_put_where(tmp_path, no_env, monkeypatch):
    env_dir = tmp_path / "env"
    monkeypatch.setenv(WEIGHTS_ENV, str(env_dir))
    with pytest.raises(FileNotFoundError) as err:
        find_pretrained("dml-csr-celebamask-hq")
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("dml_csr_celebA.pth", str(env_dir), str(no_env / "pretrained"), "DML_CSR/",
                 ARCHIVE_URL, "by hand", WEIGHTS_ENV, "weights_dir=FOLDER"):
        assert part in msg, (part, msg)
    with pytest.raises(FileNotFoundError) as err:                      # given folder: only it
        load_pretrained("dml-csr-lapa", tmp_path / "given")
    msg = str(err.value)
    assert "dml_csr_lapa.pth" in msg and str(tmp_path / "given") in msg and ARCHIVE_URL in msg
    assert str(env_dir) not in msg and str(no_env / "pretrained") not in msg


# ----------------------------------------------------------------------------- loading
def test_load_an_official_format_file_by_name(official_dir, no_env, monkeypatch):
    root, state = official_dir
    monkeypatch.setenv(WEIGHTS_ENV, str(root))
    model, spec = load_pretrained("dml-csr-lapa")
    assert isinstance(spec, ModelSpec) and spec.dataset == "lapa" and spec.num_classes == 11
    assert spec.class_names == list(get_schema("lapa").class_names)
    assert spec.class_tokens == list(get_schema("lapa").tokens)
    assert spec.crop_size == (473, 473) and spec.channel_order == "bgr"
    assert isinstance(model, DMLCSR) and not model.training
    assert not any(k.startswith("edge_layer.") for k in model.state_dict())
    loaded = model.state_dict()
    for key in ("conv1.weight", "layer4.2.conv3.weight", "layer6.conv4.weight", "layer6.conv4.bias"):
        assert torch.equal(loaded[key], state["module." + key]), key
    with torch.no_grad():
        out = model(torch.randn(1, 3, 33, 33)).parsing
    assert out.shape[:2] == (1, 11) and torch.isfinite(out).all()


def test_a_file_with_another_class_count_is_refused(official_dir, tmp_path, no_env):
    _, state = official_dir
    state = dict(state)
    state["module.layer6.conv4.weight"] = torch.zeros(19, 256, 1, 1)
    state["module.layer6.conv4.bias"] = torch.zeros(19)
    path = tmp_path / "DML_CSR" / "dml_csr_lapa.pth"                 # a CelebAMask-HQ file renamed
    path.parent.mkdir()
    torch.save(state, str(path))
    assert find_pretrained("dml-csr-lapa", tmp_path)[0] == str(path)  # finding does not check
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained("dml-csr-lapa", tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "19 classes" in msg and "has 11" in msg


def test_a_file_describing_other_input_facts_is_refused(tmp_path, no_env):
    kw = dict(num_classes=11, layers=[1, 1, 1, 1], width_mult=0.125)   # one of our files, tiny
    path = str(tmp_path / "dml_csr_helen.pth")
    save_checkpoint(path, DMLCSR(with_edges=False, **kw).state_dict(),
                    ModelSpec.for_dataset("dml_csr", kw, "helen", crop_size=(64, 64)))
    with pytest.raises(CheckpointMismatchError) as err:
        load_pretrained("dml-csr-helen", tmp_path)
    assert path in str(err.value) and "(64, 64)" in str(err.value) and "(473, 473)" in str(err.value)


# ----------------------------------------------------------------------------- the user's entry points
def test_the_parser_and_the_cli_by_name(official_dir, tmp_path, no_env):
    """FaceParser.from_pretrained parses with the official file's facts; tools/infer.py --model
    names the missing file in one error line (exit 2)."""
    import subprocess
    import sys

    import numpy as np

    from dml_csr.deploy import FaceParser
    root, _ = official_dir
    parser = FaceParser.from_pretrained("dml-csr-lapa", weights_dir=root, detector=None,
                                        optimize=False)
    assert parser.crop_size == (473, 473) and parser.channel_order == "bgr"
    assert parser.center_mode == "released" and parser.schema.name == "lapa"
    res = parser(np.zeros((40, 30, 3), np.uint8), detect=False)
    assert res.dataset == "lapa" and res.label_maps[0].shape == (40, 30)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    photo = tmp_path / "a.png"
    photo.write_bytes(b"")
    run = subprocess.run([sys.executable, os.path.join(repo, "tools", "infer.py"), "--model",
                          "dml-csr-helen", "--weights-dir", str(root), str(photo), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = [l for l in run.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "dml_csr_helen.pth" in lines[0] and str(root) in lines[0]


def test_the_cli_names_its_own_flag_for_the_missing_file(tmp_path, no_env, capsys):
    """On the command line the missing-file error says --weights-dir, the flag the user can
    pass, not the Python API's weights_dir=."""
    from dml_csr.cli import run
    from dml_csr.commands.infer import main
    photo = tmp_path / "a.png"
    photo.write_bytes(b"")
    for extra, flag in (([], "--weights-dir FOLDER"),
                        (["--weights-dir", str(tmp_path / "given")], "as --weights-dir")):
        assert run(main, ["--model", "dml-csr-lapa", str(photo), "--out", str(tmp_path / "out"),
                          *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "dml_csr_lapa.pth" in err, err
        assert flag in err and "weights_dir" not in err, err
