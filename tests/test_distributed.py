"""Two CPU processes (gloo) take one DDP training step; the weights must equal a single-process step.

DDP's exact semantics: each process computes the loss on its half of the global batch, with the
normalisation statistics of ABN and of the DDGCN's BatchNorm1d layers synchronised over the whole
batch, and the gradients are averaged. The losses hold per-batch terms (Lovasz-softmax,
batch-weighted edge CE) that do not decompose over halves, so the single-process reference is NOT
the loss of the whole batch: it forwards the whole batch once (BN statistics over the whole batch,
identical to the synchronised ones) and takes the MEAN OF THE TWO PER-HALF LOSSES.
"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

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
    from dml_csr.engine import distributed as du
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
