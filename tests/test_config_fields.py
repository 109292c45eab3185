"""Every config field is read by the code: a tiny training run of each model family, with its
test, reads every field of ``dml_csr.config`` outside the config module itself; and the command
lines take their defaults from the config."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

import dml_csr.config as C

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SECTIONS = {C.Config: "", C.ModelConfig: "model.", C.DataConfig: "data.", C.LossConfig: "loss.",
            C.TrainConfig: "train.", C.EvalConfig: "eval."}
# readers that do not count: the config module (validation, overlays) and whole-config copies
NOT_USES = (os.path.join("dml_csr", "config.py"), "dataclasses.py", "copy.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def all_fields():
    return sorted(prefix + f.name for cls, prefix in SECTIONS.items()
                  for f in dataclasses.fields(cls) if prefix or f.name not in
                  ("model", "data", "loss", "train", "eval"))


@pytest.fixture
def reads(monkeypatch):
    """Records ``section.field`` for each read of a config field outside ``NOT_USES``."""
    seen = set()
    for cls, prefix in SECTIONS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        original = cls.__getattribute__

        def getattribute(self, name, _original=original, _prefix=prefix, _names=names):
            if name in _names and not sys._getframe(1).f_code.co_filename.endswith(NOT_USES):
                seen.add(_prefix + name)
            return _original(self, name)
        monkeypatch.setattr(cls, "__getattribute__", getattribute)
    return seen


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from dml_csr.data.synthetic import make_synthetic
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(root, num_train=4, num_valid=2, num_test=2, size=32)
    return str(root)


def _overrides(root):
    return [f"data.root={root}", "data.crop_size=[32,32]", "data.batch_size=2", "data.workers=0",
            "train.epochs=2", "train.cycles=1", "train.cycle_epochs=1", "eval.workers=0",
            "eval.batch_size=2"]


RUNS = {"synthetic": ["model.args.layers=[1,1,1,1]", "model.args.width_mult=0.125", "train.optimizer=sgd"],
        "fp_liif_synthetic": ["train.query_samples=256"]}


def test_every_config_field_is_read(reads, data_root, tmp_path):
    from dml_csr.engine.trainer import Trainer
    from dml_csr.eval.runner import run_test
    for name, extra in RUNS.items():
        cfg = C.load_config(name, _overrides(data_root) + extra)
        out = str(tmp_path / name)
        Trainer(cfg, output_dir=out).fit()
        run_test(cfg, os.path.join(out, "best.pth"), "test", device="cpu")
    unread = [key for key in all_fields() if key not in reads]
    assert not unread, f"config fields that no code reads: {unread}"


def test_the_tracker_sees_reads_and_skips_the_config_module(reads):
    cfg = C.load_config("synthetic")          # validation reads many fields: they do not count
    assert "eval.output_scale" not in reads
    assert cfg.eval.output_scale > 0          # this read does
    assert "eval.output_scale" in reads and len(all_fields()) > 40


def test_test_tool_takes_its_defaults_from_the_config(data_root, tmp_path):
    from dml_csr.engine.trainer import Trainer
    overrides = _overrides(data_root) + RUNS["synthetic"]
    Trainer(C.load_config("synthetic", overrides), output_dir=str(tmp_path / "run")).fit()
    ckpt = str(tmp_path / "run" / "best.pth")

    def meta(*args):
        out = tmp_path / f"result{len(list(tmp_path.glob('result*.json')))}.json"   # one per call
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "test.py"), "synthetic",
                        *overrides, "--checkpoint", ckpt, "--out", str(out), "--device", "cpu",
                        *args], check=True, capture_output=True, cwd=REPO)
        return json.loads(out.read_text())["meta"]

    plain = meta()
    assert plain["flip"] is False and plain["scales"] == [1.0]
    from_cfg = meta("eval.flip=true", "eval.scales=[1.0,1.5]")
    assert from_cfg["flip"] is True and from_cfg["scales"] == [1.0, 1.5]
    flag_wins = meta("eval.flip=true", "--no-flip", "--scales", "0.75")
    assert flag_wins["flip"] is False and flag_wins["scales"] == [0.75]


def test_a_value_the_experiment_file_sets_wins_over_the_preset(tmp_path):
    """defaults < preset < experiment file (with its bases) < command line: the file's explicit
    loss.category_edge_weight used to be replaced by the preset's (1.0 paper, 0.2 released)."""
    from dml_csr.config import CONFIG_DIR, load_config
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"_base_: {os.path.join(CONFIG_DIR, 'lapa.yaml')}\n"
                   "loss:\n  category_edge_weight: 0.5\n")
    for preset in ("paper", "released"):
        cfg = load_config(str(exp), [f"preset={preset}"])
        assert cfg.loss.category_edge_weight == 0.5, preset
        assert cfg.preset == preset
        assert load_config(str(exp), [f"preset={preset}", "loss.category_edge_weight=0.7"]
                           ).loss.category_edge_weight == 0.7             # command line last
    # what the file leaves out still comes from the preset
    assert load_config(str(exp), ["preset=released"]).loss.category_edge_weighting == "frequency"
    assert load_config("lapa", ["preset=released"]).loss.category_edge_weight == 0.2
    assert load_config("lapa").loss.category_edge_weight == 1.0


def test_model_args_and_the_keys_of_earlier_versions(tmp_path, caplog):
    """A family's arguments are ``model.args``, checked by the family; the keys of earlier
    versions (model.layers, model.width_mult, model.context, model.norm_backend, model.fp_liif)
    are read as model.args keys with a warning naming them (old files and run folders keep
    working); naming another family drops the earlier layers' arguments."""
    from dml_csr.config import ConfigError, config_from_dict, load_config
    old = tmp_path / "old.yaml"
    old.write_text("_base_: %s\nmodel:\n  layers: [1, 1, 1, 1]\n  context: psp\n"
                   % os.path.join(C.CONFIG_DIR, "synthetic.yaml"))
    cfg = load_config(str(old), ["model.width_mult=0.125"])
    assert cfg.model.args == {"layers": [1, 1, 1, 1], "width_mult": 0.125, "context": "psp",
                              "norm_backend": "native"}
    assert "model.layers, model.context are now model.args" in caplog.text
    liif = load_config("synthetic", ["model.name=fp_liif", "model.fp_liif.width=8"])
    assert liif.model.args == {"width": 8}                 # synthetic's DML-CSR args dropped
    stored = config_from_dict({"model": {"name": "fp_liif", "fp_liif": {"width": 8}}})
    assert stored.model.args == {"width": 8}
    with pytest.raises(ConfigError, match=r"model.args.context must be one of"):
        load_config("synthetic", ["model.args.context=unet"])
    with pytest.raises(ConfigError, match=r"model.args.widht is not an argument of the "
                                          r"'dml_csr' family; its arguments: \['layers'"):
        load_config("synthetic", ["model.args.widht=2"])
