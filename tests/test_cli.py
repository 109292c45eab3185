"""Every command-line tool ends a user mistake in ONE line on stderr that names the file or key,
with exit status 2; ``--debug`` or ``DMLCSR_DEBUG=1`` shows the traceback (dml_csr/cli.py).

Most mistakes run the tools' ``main`` in-process through ``dml_csr.cli.run`` (what their
``__main__`` blocks call, checked below); a few run the real scripts as subprocesses."""
import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dml_csr import cli
from dml_csr.cli import run
from dml_csr.data.synthetic import make_synthetic
from dml_csr.models import DMLCSR

REPO = Path(__file__).resolve().parents[1]
TINY = dict(layers=[1, 1, 1, 1], width_mult=0.125)
_TOOLS = {}


def _tool(name):
    """tools/NAME.py as a module (loaded once)."""
    if name not in _TOOLS:
        spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _TOOLS[name] = module
    return _TOOLS[name]


def _error_line(stderr):
    """The single ``error:`` line of ``stderr`` (fails on anything else, e.g. a traceback);
    the install step's one-line warnings about missing optional packages (an interpreter of your
    own, DMLCSR_PYTHON) are not errors."""
    lines = [l for l in stderr.strip().splitlines() if not l.startswith("warning: optional ")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny synthetic root with an 11-class config, 11- and 19-class release-style state_dicts
    of a tiny DML-CSR, and a file that is not a checkpoint."""
    d = tmp_path_factory.mktemp("cli")
    make_synthetic(d / "data", num_train=4, num_valid=2, num_test=2, size=32)
    (d / "tiny.yaml").write_text(
        f"name: tiny\ndata:\n  dataset: synthetic\n  root: {d / 'data'}\n  crop_size: [32, 32]\n"
        "  batch_size: 2\n  workers: 0\nmodel:\n  args:\n    layers: [1, 1, 1, 1]\n    width_mult: 0.125\n"
        "train:\n  epochs: 1\n  cycles: 0\neval:\n  workers: 0\n")
    torch.manual_seed(0)
    for k in (11, 19):
        state = DMLCSR(num_classes=k, with_edges=False, **TINY).state_dict()
        torch.save({f"module.{key}": v for key, v in state.items()}, d / f"release{k}.pth")
    (d / "junk.pth").write_bytes(b"\x80\x02 this is not a checkpoint")
    return d


# ------------------------------------------------------------------------------- dml_csr.cli
def test_run_prints_one_line_and_returns_2(capsys):
    def missing(argv):
        raise FileNotFoundError("checkpoint x.pth does not exist: check the path")
    assert run(missing, []) == 2
    assert capsys.readouterr().err == "error: checkpoint x.pth does not exist: check the path\n"

    def bad_key(argv):
        raise KeyError("unknown data set 'x': choose one of helen, lapa")
    assert run(bad_key, []) == 2
    assert capsys.readouterr().err == "error: unknown data set 'x': choose one of helen, lapa\n"

    def two_lines(argv):
        raise ValueError("first\n  second")
    assert run(two_lines, []) == 2
    assert capsys.readouterr().err == "error: first; second\n"


def test_unexpected_errors_say_how_to_see_the_traceback(capsys):
    def bug(argv):
        raise ZeroDivisionError("division by zero")
    assert run(bug, []) == 2
    line = _error_line(capsys.readouterr().err)
    assert "ZeroDivisionError: division by zero" in line and "--debug" in line
    # a project error type is a user error even when it is a RuntimeError
    from dml_csr.engine.rundir import RunDirError
    assert cli.is_user_error(RunDirError("x")) and not cli.is_user_error(RuntimeError("x"))


def test_debug_flag_and_environment_show_the_traceback(capsys, monkeypatch):
    seen = []

    def fails(argv):
        seen.append(argv)
        raise ValueError("bad value")
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    assert run(fails, ["a", "--debug", "b", "--", "--debug"]) == 2
    assert seen[-1] == ["a", "b", "--", "--debug"]      # removed, except after "--"
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: bad value" in err
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    assert run(fails, ["a"]) == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.setenv(cli.DEBUG_ENV, "0")
    assert run(fails, ["a"]) == 2 and "Traceback" not in capsys.readouterr().err


def test_exit_codes_pass_through():
    assert run(lambda argv: 1, []) == 1
    assert run(lambda argv: None, []) == 0
    assert run(lambda argv: [{"report": 1}], []) == 0         # tools/complexity.py returns reports

    def usage(argv):
        raise SystemExit(2)
    with pytest.raises(SystemExit):
        run(usage, [])


def test_every_tool_runs_its_main_through_cli_run():
    tools = sorted((REPO / "tools").glob("*.py"))
    assert len(tools) >= 9
    for path in tools:
        tree = ast.parse(path.read_text())
        blocks = [node for node in tree.body if isinstance(node, ast.If)
                  and "__main__" in ast.unparse(node.test)]
        assert len(blocks) == 1, path.name
        assert ast.unparse(blocks[0].body[0]) == "sys.exit(run(main))", path.name


# ----------------------------------------------------------------------- mistakes, per tool
TEST_MISTAKES = {
    "missing checkpoint": (["{d}/tiny.yaml", "--checkpoint", "{d}/nope.pth"],
                           ["nope.pth", "does not exist"]),
    "unreadable checkpoint": (["{d}/tiny.yaml", "--checkpoint", "{d}/junk.pth"],
                              ["junk.pth", "cannot read checkpoint"]),
    "class-count mismatch": (["{d}/tiny.yaml", "--checkpoint", "{d}/release19.pth"],
                             ["release19.pth", "19 classes", "built for 11", "data.dataset"]),
    "unknown data set": (["{d}/tiny.yaml", "--checkpoint", "{d}/release11.pth",
                          "data.dataset=helenn"], ["'helenn'", "helen, lapa"]),
    "bad override key": (["{d}/tiny.yaml", "--checkpoint", "{d}/release11.pth", "train.lrr=0.1"],
                         ["'train.lrr'", "did you mean 'train.lr'"]),
    "bad override value": (["{d}/tiny.yaml", "--checkpoint", "{d}/release11.pth",
                            "data.crop_size=[32,"], ["data.crop_size=[32,", "YAML"]),
    "unknown config": (["tiny_missing", "--checkpoint", "{d}/release11.pth"],
                       ["'tiny_missing'", "synthetic"]),
    "missing data root": (["{d}/tiny.yaml", "--checkpoint", "{d}/release11.pth",
                           "data.root={d}/nowhere"], ["nowhere/label_names.txt", "prepare"]),
}


@pytest.mark.parametrize("mistake", sorted(TEST_MISTAKES))
def test_test_tool_mistakes(mistake, files, capsys):
    args, needles = TEST_MISTAKES[mistake]
    assert run(_tool("test").main, [a.format(d=files) for a in args]) == 2
    line = _error_line(capsys.readouterr().err)
    for needle in needles:
        assert needle in line, line


def test_infer_and_export_name_the_choices_for_an_11_class_release_file(files, tmp_path, capsys):
    image = str(files / "data" / "test" / "images" / "test_00000.jpg")
    release11 = str(files / "release11.pth")
    infer = ["--checkpoint", release11, image, "--out", str(tmp_path / "out"), "--no-detect"]
    assert run(_tool("infer").main, infer) == 2
    line = _error_line(capsys.readouterr().err)
    assert release11 in line and "--dataset helen" in line and "--dataset lapa" in line
    assert run(_tool("infer").main, infer + ["--dataset", "celebamask_hq"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert release11 in line and "11 classes" in line and "has 19" in line
    assert not (tmp_path / "out").exists()
    assert run(_tool("export_onnx").main, ["--checkpoint", release11,
                                           "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--dataset helen" in _error_line(capsys.readouterr().err)


def test_other_tools_mistakes(files, tmp_path, capsys):
    cases = [
        ("complexity", ["--checkpoint", str(files / "junk.pth"), "--no-latency"], "junk.pth"),
        ("make_tables", [str(tmp_path / "none.json")], "none.json"),
        ("evaluate", ["--data-root", str(tmp_path / "nowhere"), "--pred-dir", str(tmp_path)],
         "nowhere"),
        ("make_synthetic", [str(files / "tiny.yaml")], "tiny.yaml"),
        ("prepare_data", ["lapa", str(tmp_path / "raw"), str(tmp_path / "out")], "raw"),
        ("train", [str(files / "tiny.yaml"), "model.nmae=x"], "'model.nmae'"),
        ("train", [str(files / "tiny.yaml"), f"model.pretrained={tmp_path / 'r101.pth'}",
                   "--output-dir", str(tmp_path / "run")], "r101.pth (model.pretrained)"),
    ]
    for name, args, needle in cases:
        assert run(_tool(name).main, args) == 2, name
        assert needle in _error_line(capsys.readouterr().err), name
    assert not (tmp_path / "run").exists()      # stopped before the run folder was made


def test_train_stops_on_a_corrupt_image_in_one_line(files, tmp_path):
    root = tmp_path / "data"
    make_synthetic(root, num_train=4, num_valid=2, num_test=2, size=32)
    (root / "train" / "images" / "train_00002.jpg").write_bytes(b"corrupt")
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), str(files / "tiny.yaml"),
           f"data.root={root}", "--output-dir", str(out), "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    line = _error_line(done.stderr)
    assert "train/images/train_00002.jpg" in line and "1 problem" in line and not out.exists()
    # the same through cli.run with --debug: the traceback, the same status
    assert run(_tool("train").main, cmd[2:] + ["--debug"]) == 2


def test_debug_environment_in_a_subprocess(files):
    cmd = [sys.executable, str(REPO / "tools" / "test.py"), str(files / "tiny.yaml"),
           "--checkpoint", str(files / "junk.pth")]
    env = dict(os.environ, DMLCSR_DEBUG="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr and "junk.pth" in done.stderr


# ------------------------------------------------------------------------------ shell scripts
def _bash(script, *args, **env):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               **env)
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_shell_scripts_check_their_arguments_in_one_line(files):
    for script, args, needle in [("train.sh", ["nope"], "configs/nope.yaml"),
                                 ("train.sh", [], "usage"),
                                 ("test.sh", ["lapa", str(files / "nope.pth")], "nope.pth"),
                                 ("run_table.sh", ["7", "lapa"], "TABLE"),
                                 ("run_table.sh", ["5", "nope"], "'nope'")]:
        done = _bash(script, *args)
        assert done.returncode == 2, (script, args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (script, args, done.stderr)


def test_test_keeps_an_earlier_result_unless_asked(files, tmp_path, capsys):
    """tools/test.py --out and scripts/test.sh's default <checkpoint dir>/metrics_test.json:
    an earlier result is kept (one error line, before scoring) unless --overwrite is given."""
    ckpt = tmp_path / "release11.pth"
    shutil.copy(files / "release11.pth", ckpt)
    earlier = tmp_path / "metrics_test.json"
    earlier.write_text('{"earlier": 1}')
    args = [str(files / "tiny.yaml"), "--checkpoint", str(ckpt)]
    assert run(_tool("test").main, args + ["--out", str(earlier)]) == 2
    line = _error_line(capsys.readouterr().err)
    assert str(earlier) in line and "--overwrite" in line
    done = _bash("test.sh", *args[::2], DMLCSR_PYTHON=sys.executable)   # config, checkpoint
    assert done.returncode == 2 and "--overwrite" in _error_line(done.stderr), done.stderr
    assert earlier.read_text() == '{"earlier": 1}'
    done = _bash("test.sh", *args[::2], "--overwrite", DMLCSR_PYTHON=sys.executable)
    assert done.returncode == 0, done.stderr
    result = json.loads(earlier.read_text())
    assert "earlier" not in result and result["meta"]["checkpoint"].endswith("release11.pth")


def test_shell_script_passes_on_the_python_status(files):
    done = _bash("run_table.sh", "5", "synthetic", "train.lrr=1")    # fails in load_config
    assert done.returncode == 2
    assert "'train.lrr'" in _error_line(done.stderr)


def test_torchrun_launcher_ends_like_a_single_process(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text("import sys\nfrom dml_csr.cli import run\n\n\ndef main(argv):\n"
                      "    if argv == ['quit']:\n        return 1\n"
                      "    raise ValueError('config x.yaml: bad key')\n\n\nsys.exit(run(main))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LOGLEVEL", None)
    launch = [sys.executable, "-m", "dml_csr.engine.launch", "--standalone", "--nproc_per_node",
              "2", str(worker)]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()   # each worker's line, nothing from torchrun
    assert 1 <= len(lines) <= 2 and set(lines) == {"error: config x.yaml: bad key"}, done.stderr
    done = subprocess.run(launch + ["quit"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1
    line = _error_line(done.stderr)
    assert "worker rank" in line and "status 1" in line


# --------------------------------------------------------------------------- help texts
_FILE_EXTS = {"log", "onnx", "json", "jsonl", "yaml", "pth", "py", "png", "jpg", "txt", "npz",
              "md", "sh"}                 # config.yaml, train.log, model.onnx: files, not keys
_OTHER_FLAGS = {"--help", "--nproc_per_node"}       # argparse's; torchrun's, in train's example


def _help_of(argv):
    """The --help text of ``dml-csr ARGV``."""
    import contextlib
    import io
    from dml_csr.commands import main
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return text.getvalue()


def _helps():
    """{command: its --help text} of every ``dml-csr`` command."""
    from dml_csr.commands import COMMANDS
    return {name: _help_of([name]) for name in COMMANDS}


def _is_config_key(dotted: str) -> bool:
    """Whether ``dotted`` names a field of the config (anything under a dict field: model.args)."""
    import dataclasses
    import typing
    from dml_csr.config import Config
    node = Config
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node):
            return typing.get_origin(node) is dict
        hints = typing.get_type_hints(node)
        if part not in hints:
            return False
        node = hints[part]
    return True


def test_help_texts_name_real_keys_and_flags():
    """Every ``section.key`` a command's --help names is a field of the config (train.output_dir
    was named where the key is output_dir), and every ``--flag`` is an option of a command."""
    import dataclasses
    import re
    import typing
    from dml_csr.config import Config
    helps = _helps()
    named = {f for text in helps.values() for f in re.findall(r"(?<![\w-])--[a-z][\w-]*", text)}
    options = set(_OTHER_FLAGS)
    for text in helps.values():
        options |= set(re.findall(r"--[a-z][\w-]*", text.split("\n\n")[0]))   # the usage lines
    assert not named - options, sorted(named - options)
    hints = typing.get_type_hints(Config)
    sections = "|".join(name for name, hint in hints.items() if dataclasses.is_dataclass(hint))
    bad = [(name, key) for name, text in helps.items()
           for key in re.findall(rf"(?<![\w./-])((?:{sections})(?:\.[a-z_]+)+)", text)
           if key.rsplit(".", 1)[1] not in _FILE_EXTS and not _is_config_key(key)]
    assert not bad, bad
    assert _is_config_key("output_dir") and not _is_config_key("train.output_dir")
    assert _is_config_key("model.args.layers") and _is_config_key("data.crop_size")


def test_complexity_measures_each_model_at_its_own_input_size(files, monkeypatch):
    """Without --size, a config's model is measured at its crop size, a family named alone at
    its benchmark crop (FP-LIIF 256, not DML-CSR's 473); --size still wins."""
    complexity = _tool("complexity").main
    fast = ["--no-latency", "--forms", "infer"]
    assert complexity(["--config", str(files / "tiny.yaml"), *fast])[0]["input_size"] == [1, 3, 32, 32]
    assert complexity(["--config", str(files / "tiny.yaml"), "--size", "40", "48", *fast]
                      )[0]["input_size"] == [1, 3, 40, 48]
    # the full FP-LIIF: the size it would be counted at, without counting (seconds at 256)
    monkeypatch.setattr("dml_csr.commands.complexity.complexity_report",
                        lambda model, size, **kw: {"input_size": list(size), "params": 0,
                                                   "gflops": 0.0, "gmacs": 0.0})
    assert complexity(["--model", "fp_liif", *fast])[0]["input_size"] == [1, 3, 256, 256]


def test_documented_commands_name_real_tools_flags_and_scripts():
    """Every ``python tools/NAME.py ...`` in the README and docs/ names a tool of tools/ and only
    flags that tool has (a subcommand's for ``prepare_data.py SUB``), every ``dml-csr CMD`` a
    command, every ``bash scripts/X`` a script: the documented commands run as written."""
    import re
    from dml_csr.commands import COMMANDS
    by_module = {module: name for name, (module, _) in COMMANDS.items()}
    texts = {path.name: path.read_text() for path in [REPO / "README.md",
                                                      *sorted((REPO / "docs").glob("*.md"))]}
    bad, seen = [], 0
    for doc, text in texts.items():
        text = text.replace("\\\n", " ")                        # continued command lines
        for tool, rest in re.findall(r"python tools/(\w+)\.py([^\n`|]*)", text):
            if tool.isupper():                                  # tools/NAME.py: a placeholder
                continue
            seen += 1
            if not (REPO / "tools" / f"{tool}.py").is_file():
                bad.append((doc, f"tools/{tool}.py"))
                continue
            if tool not in by_module:                           # gpu_check: the clone only
                continue
            argv = [by_module[tool]]
            if tool == "prepare_data" and rest.split():
                argv.append(rest.split()[0])                    # the subcommand's own flags
            help_text = _help_of(argv)
            bad += [(doc, tool, flag) for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", rest)
                    if flag not in help_text]
        bad += [(doc, cmd) for cmd in re.findall(r"`dml-csr ([a-z]+)", text)
                if cmd not in COMMANDS]
        bad += [(doc, script) for script in re.findall(r"bash (scripts/[\w.]+)", text)
                if not (REPO / script).is_file()]
    assert seen > 20 and not bad, bad
