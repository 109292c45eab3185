"""Two CPU processes (gloo) take one DDP training step; the weights must equal a single-process step.

DDP's exact semantics: each process computes the loss on its half of the global batch, with the
normalisation statistics of ABN and of the DDGCN's BatchNorm1d layers synchronised over the whole
batch, and the gradients are averaged. The losses hold per-batch terms (Lovasz-softmax,
batch-weighted edge CE) that do not decompose over halves, so the single-process reference is NOT
the loss of the whole batch: it forwards the whole batch once (BN statistics over the whole batch,
identical to the synchronised ones) and takes the MEAN OF THE TWO PER-HALF LOSSES.

``tools/train.py --resume --test`` also runs under ``torchrun --nproc_per_node 2`` (gloo) through
both stages: every collective must be reached by both ranks, and the sharded test must score
exactly what a single process scores.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from dml_csr.config import load_config
from dml_csr.data.synthetic import make_synthetic
from dml_csr.engine.trainer import Trainer
from dml_csr.eval.runner import run_test
from dml_csr.losses import MultiTaskLoss
from dml_csr.models import DMLCSR

KW = dict(num_classes=5, layers=[1, 1, 1, 1], width_mult=0.125, norm_backend="native")


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=g)
    label = torch.randint(0, 5, (4, 32, 32), generator=g)
    edge = torch.randint(0, 2, (4, 32, 32), generator=g)
    return x, {"label": label, "edge": edge, "cat_edge": label * edge}


def _model():
    torch.manual_seed(0)
    return DMLCSR(**KW)


def _worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from dml_csr import distributed as du
    from dml_csr.layers.sync_bn import SyncBatchNorm1d, convert_sync_batchnorm1d
    du.init_distributed("cpu")
    model = convert_sync_batchnorm1d(_model())
    assert isinstance(model.context.dualgcn.bn_adj, SyncBatchNorm1d)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, batch = _batch()
    half = slice(2 * rank, 2 * rank + 2)
    loss = MultiTaskLoss()(ddp(x[half]), {k: v[half] for k, v in batch.items()})["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    if du.is_main():
        torch.save(du.unwrap(ddp).state_dict(), out_path)
    du.barrier()
    du.cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_step_equals_single_process(tmp_path):
    out = str(tmp_path / "ddp.pth")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp_state = torch.load(out)

    model = _model().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, batch = _batch()
    outputs = model(x)                     # statistics over the whole batch of 4
    loss_fn = MultiTaskLoss()
    losses = [loss_fn(tuple(o[h] for o in outputs), {k: v[h] for k, v in batch.items()})["loss"]
              for h in (slice(0, 2), slice(2, 4))]
    opt.zero_grad()
    (sum(losses) / 2).backward()           # DDP averages the per-process gradients
    opt.step()
    ref = model.state_dict()
    assert set(ref) == set(ddp_state)      # SyncBatchNorm1d keeps the keys
    init = _model().state_dict()
    changed = 0
    for k, v in ref.items():
        if v.is_floating_point():
            assert torch.allclose(v, ddp_state[k], atol=1e-5, rtol=1e-4), k
            changed += int(not torch.equal(v, init[k]))
        else:
            assert torch.equal(v, ddp_state[k]), k
    assert changed > 10                    # the step did move the weights


def _fp16_worker(rank, world, port, out_path):
    """A full-width DDualGCN (512 channels, 60 x 60) under float16 autocast in a 2-process group,
    its BatchNorm1d layers synchronised: the output and the same forward in float32."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from dml_csr import distributed as du
    from dml_csr.layers.gcn import DDualGCN
    from dml_csr.layers.sync_bn import convert_sync_batchnorm1d
    du.init_distributed("cpu")
    torch.manual_seed(0)
    model = convert_sync_batchnorm1d(DDualGCN(512)).train()
    with torch.no_grad():                  # both branches count (the gammas start at 0)
        for gamma in (model.gamma1, model.gcn_local_attention.gamma):
            gamma.fill_(1.0)
    x = torch.randn(1, 512, 60, 60, generator=torch.Generator().manual_seed(rank))
    with torch.autocast("cpu", dtype=torch.float16):
        half = model(x)
    with torch.no_grad():
        full = model(x)
    torch.save({"half": half.detach(), "full": full}, f"{out_path}.{rank}")
    du.cleanup()


def test_float16_autocast_with_synchronised_graph_norms_stays_finite(tmp_path):
    """The graph layers' BatchNorm1d inputs reach |x| ~ 1e3 at full width: their statistics
    summed in float16 overflowed (non-finite outputs on every rank); now float32."""
    out = str(tmp_path / "fp16")
    mp.spawn(_fp16_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    for rank in range(2):
        r = torch.load(f"{out}.{rank}", weights_only=True)
        assert r["half"].dtype == torch.float16 and torch.isfinite(r["half"]).all()
        err = (r["half"].float() - r["full"]).abs().max() / r["full"].abs().max()
        assert err < 5e-3, err


def _folder_worker(rank, world, port, root):
    """Rank 1 is given another folder than rank 0: a run folder that is not shared."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from dml_csr import distributed as du
    from dml_csr.engine.rundir import RunDirError, prepare_run_dir
    du.init_distributed("cpu")
    prepare_run_dir(os.path.join(root, "shared"), False, False, du.is_main())    # fine
    try:
        prepare_run_dir(os.path.join(root, f"node{rank}"), False, False, du.is_main())
        outcome = "no error"
    except RunDirError as exc:
        outcome = str(exc)
    with open(os.path.join(root, f"outcome{rank}.txt"), "w") as f:
        f.write(outcome)
    du.cleanup()


def test_a_run_folder_that_not_every_process_sees_is_refused_by_all(tmp_path):
    mp.spawn(_folder_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        text = (tmp_path / f"outcome{rank}.txt").read_text()
        assert "is not shared by every process: 1 of 2 (first: rank 1" in text, text
    assert os.listdir(tmp_path / "shared") == [] and os.listdir(tmp_path / "node0") == []


def test_a_forced_one_process_group_trains_through_both_stages(tmp_path, monkeypatch):
    """DMLCSR_FORCE_DISTRIBUTED=1 under a one-process launch: the process group, DDP and the
    synchronised norms all run (NCCL with one GPU in scripts/gpu_check.sh; gloo here)."""
    from torch.nn.parallel import DistributedDataParallel

    from dml_csr import distributed as du
    from dml_csr.layers.sync_bn import SyncBatchNorm1d
    monkeypatch.setenv("DMLCSR_FORCE_DISTRIBUTED", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    for key, value in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    root = tmp_path / "data"
    make_synthetic(root, num_train=4, num_valid=2, num_test=2, size=32)
    cfg = load_config("synthetic", [f"data.root={root}", *TRAIN_OVERRIDES])
    try:
        trainer = Trainer(cfg, output_dir=str(tmp_path / "run"), device="cpu")
        assert trainer.info.distributed and du.is_distributed()
        assert isinstance(trainer.ddp, DistributedDataParallel)
        assert any(isinstance(m, SyncBatchNorm1d) for m in trainer.model.modules())
        assert trainer.fit()["epochs_done"] == 3
        # the released preset keeps the graph layers' BatchNorm1d per process, as the release
        released = Trainer(load_config("synthetic", [f"data.root={root}", *TRAIN_OVERRIDES,
                                                     "preset=released"]),
                           output_dir=str(tmp_path / "released"), device="cpu")
        bns = [m for m in released.model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
        assert bns and not any(isinstance(m, SyncBatchNorm1d) for m in bns)
    finally:
        du.cleanup()


# --------------------------------------------------------------------------------------------
# tools/train.py --resume --test as 2 gloo processes (torchrun), through both stages
# --------------------------------------------------------------------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_OVERRIDES = [                   # 2 multi-task epochs + 1 CSR cycle of 1 epoch, 32 px
    "data.crop_size=[32,32]", "data.batch_size=2", "data.workers=0", "model.args.layers=[1,1,1,1]",
    "model.args.width_mult=0.125", "train.epochs=3", "train.cycles=1", "train.cycle_epochs=1",
    "train.image_log_interval=0", "eval.workers=0", "eval.batch_size=2"]


def _torchrun_train(root, out, *flags):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           os.path.join(REPO, "tools", "train.py"), "synthetic", f"data.root={root}",
           *TRAIN_OVERRIDES, "--output-dir", str(out), "--device", "cpu", *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:   # a hang: a collective reached by one rank only
        proc.terminate()                # torchrun stops its workers on SIGTERM
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail("torchrun tools/train.py hung:\n" + stderr[-6000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return stdout


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_torchrun_resume_and_test(tmp_path):
    """A run interrupted after epoch 1 (in this process) is resumed by 2 gloo processes: the
    second multi-task epoch, the CSR cycle (BN re-estimation, aggregation) and --test. The test
    split (3 images) splits unevenly over the ranks; the pooled histogram must equal a
    single-process scoring of the same best.pth (no image lost, none counted twice)."""
    root = tmp_path / "data"
    make_synthetic(root, num_train=4, num_valid=3, num_test=3, size=32)
    cfg = load_config("synthetic", [f"data.root={root}", *TRAIN_OVERRIDES])
    out = tmp_path / "run"
    Trainer(cfg, output_dir=str(out)).fit(stop_after_epoch=1)            # "interrupted"
    first = _jsonl(out / "metrics.jsonl")
    assert [(l["epoch"], l["model"]) for l in first] == [(1, "student")]

    stdout = _torchrun_train(root, out, "--resume", "--test")
    log = (out / "train.log").read_text()
    assert "resumed from" in log and "2 processes" in log
    lines = _jsonl(out / "metrics.jsonl")
    assert [(l["epoch"], l["model"]) for l in lines] == [(1, "student"), (2, "student"),
                                                         (3, "student"), (3, "aggregated")]
    assert lines[0] == first[0]                        # epoch 1 was not trained again
    last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert last["epoch"] == 3 and last["stage"] == "csr" and last["teacher"] is not None
    assert last["best"]["score"] == max(l["headline"]["value"] for l in lines)
    assert (out / "cycle1_aggregated.pth").exists()

    result = json.loads((out / "metrics_test.json").read_text())
    assert result["meta"]["split"] == "test" and result["meta"]["processes"] == 2
    assert result["meta"]["num_images"] == 3
    assert 0.0 <= result["headline"]["value"] <= 100.0
    assert stdout.count("test mean_f1") == 1       # printed by rank 0 only
    single = run_test(cfg, str(out / "best.pth"), "test", batch_size=2)
    assert single["meta"]["num_images"] == 3
    assert result["confusion"] == single["confusion"]
