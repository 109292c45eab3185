"""Ablations of Tables 4-6: the context modules, the configs of every row, one training step per row."""
import glob
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from dml_csr.config import CONFIG_DIR, config_to_dict, load_config
from dml_csr.data.edges import binary_edges, category_edges
from dml_csr.eval.paper import ABLATION_TABLES, ROW_LABELS
from dml_csr.layers.abn import ABN
from dml_csr.layers.context import CONTEXT_MODULES, build_context
from dml_csr.layers.gcn import DDualGCN, SpatialGCN
from dml_csr.losses import build_losses
from dml_csr.models import DMLCSR, family
from dml_csr.utils.complexity import count_parameters

DATASETS = ("helen", "lapa", "celebamask_hq", "synthetic")
TABLE_ROWS = {n: list(rows) for n, (_, rows) in ABLATION_TABLES.items()}
ALL_ROWS = sorted({r for rows in TABLE_ROWS.values() for r in rows})
ABLATED = {"name", "output_dir", "row", "model.args.context", "loss.tasks", "train.epochs", "train.cycles"}
EDGE_TASKS = {"binary_edge", "category_edge"}
TINY_IN, TINY_CH = 32, 16

# Full width (C5 = 2048, channels 512): documented in docs/ablations.md.
PARAMS = {"ddgcn": 25_143_042, "baseline": 4_719_104, "psp": 23_073_792, "psp_pooling": 23_073_792,
          "dgcnet": 25_143_040, "dgcnet_pooling": 25_143_040}


def _ablation_path(dataset, row):
    return os.path.join(CONFIG_DIR, "ablations", dataset, f"{row}.yaml")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _nonzero_gammas(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.split(".")[-1] in ("gamma", "gamma1"):
                p.fill_(0.5)


# ------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------
def test_every_table_row_has_a_config_per_dataset():
    for ds in DATASETS:
        found = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIG_DIR, "ablations", ds, "*.yaml"))}
        assert found == set(ALL_ROWS), (ds, found ^ set(ALL_ROWS))


@pytest.mark.parametrize("dataset", DATASETS)
def test_ablation_configs_differ_from_their_base_only_in_the_ablated_part(dataset):
    base_cfg = load_config(_ablation_path(dataset, "dml-csr"))        # the full method
    base = _flat(config_to_dict(base_cfg))
    outputs = set()
    for row in ALL_ROWS:
        cfg = load_config(_ablation_path(dataset, row))
        assert cfg.row == row and row in ROW_LABELS
        assert cfg.data.dataset == dataset
        assert dataset in cfg.name and cfg.output_dir.endswith(f"{dataset}/{row}")
        outputs.add(cfg.output_dir)
        flat = _flat(config_to_dict(cfg))
        changed = {k for k in flat if flat[k] != base[k]}
        assert changed <= ABLATED, (row, changed - ABLATED)
        assert cfg.model.args["context"] in CONTEXT_MODULES
        if row == "dml-csr":
            assert cfg.train.cycles > 0 and cfg.multitask_epochs == base_cfg.multitask_epochs
        else:   # no CSR: the multi-task stage of the full method, nothing after it
            assert cfg.train.cycles == 0 and cfg.train.epochs == base_cfg.multitask_epochs
    assert len(outputs) == len(ALL_ROWS)


def test_paper_configs_are_the_dataset_configs_and_rows_agree_across_datasets():
    for ds in ("helen", "lapa", "celebamask_hq"):
        full, plain = load_config(_ablation_path(ds, "dml-csr")), load_config(ds)
        for section in ("model", "data", "loss", "train", "eval"):
            a, b = config_to_dict(full)[section], config_to_dict(plain)[section]
            if section == "model":      # an argument set to its default is the default
                defaults = family(full.model.name).default_args()
                a["args"], b["args"] = {**defaults, **a["args"]}, {**defaults, **b["args"]}
            assert a == b, (ds, section)
    for row in ALL_ROWS:
        parts = {(c.model.args["context"], tuple(c.loss.tasks), c.train.cycles > 0)
                 for c in (load_config(_ablation_path(ds, row)) for ds in DATASETS)}
        assert len(parts) == 1, (row, parts)


def test_row_semantics():
    cfg = {row: load_config(_ablation_path("helen", row)) for row in ALL_ROWS}
    for row in ("baseline", "psp", "psp_pooling", "dgcnet", "dgcnet_pooling", "ddgcn"):
        assert cfg[row].model.args["context"] == row and cfg[row].loss.tasks == []
    short = {"b": "binary_edge", "ba": "binary_attention", "c": "category_edge", "ca": "category_attention"}
    for row in ("p+b", "p+b+ba", "p+c", "p+c+ca", "p+b+c"):
        assert cfg[row].model.args["context"] == "ddgcn"
        assert sorted(cfg[row].loss.tasks) == sorted(short[t] for t in row.split("+")[1:])
    assert sorted(cfg["dml"].loss.tasks) == sorted(short.values())
    assert cfg["dml"].train.cycles == 0 and cfg["dml-csr"].train.cycles == 5
    assert cfg["dml-csr"].train.epochs == 200 and cfg["dml"].train.epochs == 150


# ------------------------------------------------------------------------------------------
# context modules
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONTEXT_MODULES)
def test_context_forward_backward(name):
    torch.manual_seed(0)
    module = build_context(name, TINY_IN, TINY_CH, ABN)
    _nonzero_gammas(module)
    out = module(torch.randn(2, TINY_IN, 12, 12))
    assert out.shape == (2, module.out_channels, 12, 12) and torch.isfinite(out).all()
    out.square().mean().backward()
    bad = [n for n, p in module.named_parameters()
           if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not bad, bad


def test_context_parameter_counts_at_full_width():
    with torch.device("meta"):
        counts = {n: count_parameters(build_context(n, 2048, 512, ABN)) for n in CONTEXT_MODULES}
    assert counts == PARAMS


def _stride2_local(module):
    return [m.stride[0] for m in module.dualgcn.local if isinstance(m, nn.Conv2d)]


def test_context_structure():
    mods = {n: build_context(n, TINY_IN, TINY_CH, ABN) for n in CONTEXT_MODULES}
    keys = {n: set(m.state_dict()) for n, m in mods.items()}
    # baseline: conv3x3 -> channels // 2 + ABN, nothing else
    assert mods["baseline"].out_channels == TINY_CH // 2
    assert not any("dualgcn" in k for k in keys["baseline"])
    assert tuple(mods["baseline"].conv[0].weight.shape) == (TINY_CH // 2, TINY_IN, 3, 3)
    # PSP: four pooling branches 1, 2, 3, 6; "-pooling" has the same weights and no pool at all
    pools = [m for m in mods["psp"].modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    assert [p.output_size for p in pools] == [1, 2, 3, 6] and len(mods["psp"].stages) == 4
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in mods["psp_pooling"].modules())
    assert {k: v.shape for k, v in mods["psp"].state_dict().items()} == \
        {k: v.shape for k, v in mods["psp_pooling"].state_dict().items()}
    assert tuple(mods["psp"].bottleneck[0].weight.shape) == (TINY_CH, TINY_IN + 4 * TINY_CH, 3, 3)
    # DGCNet: DDGCN's keys without the gamma scalars; stride 2 local convs, 1 for "-pooling"
    gammas = {k for k in keys["ddgcn"] if k.split(".")[-1] in ("gamma", "gamma1")}
    assert gammas == {"dualgcn.gamma1", "dualgcn.gcn_local_attention.gamma"}
    for name in ("dgcnet", "dgcnet_pooling"):
        assert keys[name] == keys["ddgcn"] - gammas
    assert _stride2_local(mods["ddgcn"]) == [2, 2, 2] == _stride2_local(mods["dgcnet"])
    assert _stride2_local(mods["dgcnet_pooling"]) == [1, 1, 1]


@pytest.mark.parametrize("name,size", [("dgcnet", 2), ("dgcnet_pooling", 12), ("ddgcn", 2)])
def test_spatial_graph_resolution(name, size):
    module = build_context(name, TINY_IN, TINY_CH, ABN)
    seen = []
    module.dualgcn.gcn_local_attention.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    module(torch.randn(2, TINY_IN, 12, 12))
    assert seen == [size]


def test_fixed_fusion_is_relu_of_the_sum():
    torch.manual_seed(0)
    x = torch.randn(2, TINY_CH, 6, 6)
    fixed, learned = SpatialGCN(TINY_CH, fusion="fixed"), SpatialGCN(TINY_CH)
    learned.load_state_dict(fixed.state_dict(), strict=False)
    with torch.no_grad():
        learned.gamma.fill_(1.0)
    assert torch.allclose(fixed(x), torch.relu(learned(x)), atol=1e-6)
    fixed, learned = DDualGCN(TINY_CH, fusion="fixed"), DDualGCN(TINY_CH)
    learned.load_state_dict(fixed.state_dict(), strict=False)
    with torch.no_grad():
        learned.gamma1.fill_(1.0)
    assert torch.allclose(fixed.feature_branch(x), torch.relu(learned.feature_branch(x)), atol=1e-6)
    with pytest.raises(ValueError):
        SpatialGCN(TINY_CH, fusion="sum")


def test_unknown_context_name():
    with pytest.raises(ValueError, match="psp_pooling"):
        build_context("aspp", TINY_IN, TINY_CH, ABN)


@pytest.mark.parametrize("name", CONTEXT_MODULES)
def test_parsing_head_takes_the_context_width(name):
    model = DMLCSR(5, with_edges=False, layers=[1, 1, 1, 1], width_mult=0.125, context=name)
    assert model.layer6.conv1[0].in_channels == model.context.out_channels
    assert model.context.out_channels == (32 if name == "baseline" else 64)


# ------------------------------------------------------------------------------------------
# one training step per row of Tables 5 and 6
# ------------------------------------------------------------------------------------------
def _batch(num_classes=5, n=2, size=32):
    rng = np.random.default_rng(0)
    labels, edges, cat_edges = [], [], []
    for _ in range(n):
        label = rng.integers(0, num_classes, size=(size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
        label[:2, :2] = 255
        edge = binary_edges(label)
        labels.append(label)
        edges.append(edge)
        cat_edges.append(category_edges(label, edge))
    as_long = lambda arrays: torch.from_numpy(np.stack(arrays).astype(np.int64))  # noqa: E731
    return {"image": torch.randn(n, 3, size, size), "label": as_long(labels),
            "edge": as_long(edges), "cat_edge": as_long(cat_edges)}


@pytest.mark.parametrize("row", [r for r in ALL_ROWS if r in TABLE_ROWS[5] or r in TABLE_ROWS[6]])
def test_one_training_step_per_row(row):
    torch.manual_seed(0)
    cfg = load_config(_ablation_path("synthetic", row))
    tasks = set(cfg.loss.tasks)
    model = DMLCSR(5, with_edges=True, layers=[1, 1, 1, 1], width_mult=0.125, context=cfg.model.args["context"])
    loss_fn = build_losses(cfg)[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = {k: v.clone() for k, v in model.context.state_dict().items()}
    batch = _batch()
    parts = loss_fn(model(batch["image"]), batch)
    assert set(parts) == {"loss", "parse", "parse_ce", "parse_lovasz"} | tasks
    assert torch.isfinite(parts["loss"])
    opt.zero_grad()
    parts["loss"].backward()
    # the edge heads learn only from the edge tasks the row enables
    assert (model.edge_layer.conv5_b.weight.grad is not None) == ("binary_edge" in tasks)
    assert (model.edge_layer.conv5.weight.grad is not None) == ("category_edge" in tasks)
    assert (model.edge_layer.conv1[0].weight.grad is not None) == bool(tasks & EDGE_TASKS)
    grads = [p.grad for p in model.context.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    opt.step()
    after = model.context.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
