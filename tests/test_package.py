"""The package as a user installs it: a wheel built from the checkout, installed into a fresh
environment and run from another folder, has its configs, presets and class maps (setup.py ships
the checkout's configs/ as dml_csr/configs) and the ``dml-csr`` command; ``pip install -e .``
keeps reading the checkout's configs/.

Offline and fast: the wheel is built without build isolation from a copy of the files setup.py
reads (nothing is written into the checkout), and installed with ``--no-deps`` into a venv
without pip that sees this interpreter's site-packages through a ``.pth`` line (torch, numpy,
... are not installed again). The new venv's own site-packages comes first on its path, so its
``dml_csr`` is the installed one (checked), never the checkout's.
"""
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from dml_csr.config import config_to_dict, load_config
from dml_csr.models import DMLCSR
from dml_csr.models.checkpoint import ModelSpec, save_checkpoint

pytest.importorskip("setuptools", reason="building the wheel offline (no build isolation) needs "
                                         "setuptools in this interpreter")

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "tests" / "data" / "photos" / "astronaut.jpg"
SOURCES = ("setup.py", "requirements.txt", "MANIFEST.in", "LICENSE", "README.md", "dml_csr",
           "configs")
KW = dict(num_classes=19, layers=[1, 1, 1, 1], width_mult=0.125)


def _pip(*args, cwd=None):
    cmd = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"


def _source_copy(dest: Path) -> Path:
    """The files setup.py reads, copied (build/ and *.egg-info land there, not in the checkout)."""
    dest.mkdir()
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _venv(path: Path) -> Path:
    """A venv without pip whose path ends with this interpreter's site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=120)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                              "'purelib'))"], capture_output=True, text=True, check=True).stdout
    Path(purelib.strip(), "outer_site_packages.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n")
    return python


def _run(cmd, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # nothing of the checkout
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    src = _source_copy(root / "src")
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src))
    (path,) = (root / "dist").glob("dml_csr-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(venv python, venv bin folder) with the wheel installed (--ignore-installed: the dml_csr
    this interpreter may have, seen through the .pth line, does not count as installed)."""
    python = _venv(tmp_path_factory.mktemp("venv") / "v")
    _pip("--python", str(python), "install", "--no-deps", "--ignore-installed", str(wheel))
    return python, python.parent


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(str(path), DMLCSR(with_edges=True, **KW).state_dict(),
                    ModelSpec.for_dataset("dml_csr", KW, "celebamask_hq", crop_size=(64, 64),
                                          channel_order="bgr"))
    return path


def test_the_wheel_holds_every_config_the_page_and_the_licence(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"dml_csr/configs/{p.relative_to(REPO / 'configs').as_posix()}"
               for p in (REPO / "configs").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    assert {"dml_csr/configs/presets/released.yaml",
            "dml_csr/configs/class_maps/celebamask_hq_farl.yaml"} <= names
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "dml-csr = dml_csr.commands:main" in zipfile.ZipFile(wheel).read(meta).decode()
    assert any(n.endswith("/LICENSE") for n in names)
    page = {f"dml_csr/serve/static/{p.name}" for p in (REPO / "dml_csr" / "serve" / "static")
            .iterdir()}                       # dml-csr serve's page: every asset in the package
    assert len(page) == 3 and page <= names, sorted(page - names)
    assert not any(n.startswith(("tests/", "tools/", "configs/")) for n in names)


def test_the_wheel_requires_what_requirements_txt_lists(wheel):
    """One list of requirements: requirements.txt's lines are the wheel's Requires-Dist, the
    test tools (pytest) under the extra ``test``."""
    from packaging.requirements import Requirement
    lines = [line.split("#", 1)[0].strip() for line in
             (REPO / "requirements.txt").read_text().splitlines()]
    listed = {str(Requirement(line)) for line in lines if line and not line.startswith("-")}
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    required = [Requirement(line.split(":", 1)[1].strip()) for line in
                zipfile.ZipFile(wheel).read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    test_only = {str(r) for r in required if r.marker and "extra" in str(r.marker)}
    runtime = {str(r) for r in required if str(r) not in test_only}
    assert runtime | {t.split(";")[0].strip() for t in test_only} == listed
    assert runtime and all(t.startswith(("pytest", "selenium")) for t in test_only)


def test_an_installed_wheel_works_from_another_folder(installed, tiny_checkpoint, tmp_path):
    python, bin_dir = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    for cmd in ([bin_dir / "dml-csr", "--help"], [python, "-m", "dml_csr", "--help"]):
        done = _run(cmd, elsewhere)
        assert done.returncode == 0, done.stderr
        assert all(c in done.stdout for c in ("train", "test", "infer", "export", "prepare",
                                              "evaluate", "tables"))

    # a named config with a preset, a class map, and a config named by a path relative to the
    # folder the command runs in; all from the installed package
    (elsewhere / "mine.yaml").write_text("_base_: PACKAGED\npreset: released\n"
                                         "data:\n  batch_size: 3\n")
    script = textwrap.dedent("""
        import json, os, dml_csr
        from dml_csr.config import CONFIG_DIR, config_to_dict, load_config
        from dml_csr.eval.classmap import load_class_map
        text = open("mine.yaml").read().replace(
            "PACKAGED", os.path.join(CONFIG_DIR, "synthetic.yaml"))
        open("mine.yaml", "w").write(text)
        print(json.dumps({
            "package": dml_csr.__file__, "config_dir": CONFIG_DIR,
            "released": config_to_dict(load_config("synthetic", ["preset=released"])),
            "mine": config_to_dict(load_config("mine.yaml")),
            "class_map": load_class_map("celebamask_hq_farl").path}))
    """)
    done = _run([python, "-c", script], elsewhere)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    site_dir = str(python.parent.parent)
    assert got["package"].startswith(site_dir), got["package"]      # not the checkout's package
    assert got["config_dir"].startswith(site_dir) and got["class_map"].startswith(site_dir)
    released = config_to_dict(load_config("synthetic", ["preset=released"]))
    assert got["released"] == released                               # the checkout's own result
    assert released != config_to_dict(load_config("synthetic"))       # the preset did something
    assert got["mine"] == config_to_dict(load_config("synthetic",
                                                     ["preset=released", "data.batch_size=3"]))

    # a photo of another folder, parsed by the installed command (YuNet or the Haar fallback)
    out = elsewhere / "parsed"
    done = _run([bin_dir / "dml-csr", "infer", "--checkpoint", tiny_checkpoint, PHOTO,
                 "--out", out], elsewhere)
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "astronaut.json").read_text())
    assert meta["dataset"] == "celebamask_hq" and len(meta["class_names"]) == 19
    assert (out / "astronaut.png").is_file() and (out / "astronaut_overlay.jpg").is_file()

    # a mistake is one error line naming the packaged configs, not a traceback
    done = _run([bin_dir / "dml-csr", "train", "no_such_config"], elsewhere)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and "synthetic" in done.stderr
    done = _run([bin_dir / "dml-csr", "trian"], elsewhere)
    assert done.returncode == 2 and "train" in done.stderr
    done = _run([bin_dir / "dml-csr"], elsewhere)
    assert done.returncode == 2 and done.stderr.startswith("usage: dml-csr") and not done.stdout


def test_an_editable_install_reads_the_checkout_configs(tmp_path):
    """``pip install -e .`` (scripts/install.sh): the package and configs/ of the source tree,
    so an edit of configs/ takes effect without reinstalling."""
    src = _source_copy(tmp_path / "src")
    python = _venv(tmp_path / "v")
    _pip("--python", str(python), "install", "--no-deps", "--ignore-installed",
         "--no-build-isolation", "-e", str(src))
    (src / "configs" / "edited.yaml").write_text("_base_: synthetic.yaml\ndata:\n  batch_size: 2\n")
    done = _run([python, "-c", "import dml_csr.config as C; print(C.CONFIG_DIR); "
                 "print(C.load_config('edited').data.batch_size)"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(src / "configs"), "2"]
    assert not (src / "dml_csr" / "configs").exists()


@pytest.mark.parametrize("name", ["train", "test", "infer", "export", "prepare", "evaluate",
                                  "tables", "synthetic", "complexity"])
def test_each_command_has_its_help_under_its_own_name(name, capsys, monkeypatch):
    """``dml-csr NAME --help`` is the tool's own help, its usage line naming ``dml-csr NAME``."""
    from dml_csr.commands import main
    monkeypatch.setattr(sys, "argv", ["dml-csr"])
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: dml-csr {name} ")
    assert sys.argv == ["dml-csr"]                      # the program name is restored


def test_the_tools_are_the_commands():
    """tools/NAME.py (a checkout's scripts) runs the same main as ``dml-csr NAME``."""
    import importlib.util
    from dml_csr.commands import COMMANDS
    for name, (module, _) in COMMANDS.items():
        spec = importlib.util.spec_from_file_location(f"{module}_wrapper",
                                                      REPO / "tools" / f"{module}.py")
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)
        assert tool.main is importlib.import_module(f"dml_csr.commands.{module}").main, name
