"""The device-dependent tests: they run on a CUDA GPU (``scripts/gpu_check.sh`` runs them first
on a GPU machine) and are skipped where there is none (tests/conftest.py). Where CUDA kernels are
not deterministic the comparisons have tolerances; the exact contracts are the CPU tests'."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.cuda

KW = dict(num_classes=11, layers=[1, 1, 1, 1], width_mult=0.125)
TINY = ["data.crop_size=[64,64]", "data.batch_size=2", "data.workers=0", "model.args.layers=[1,1,1,1]",
        "model.args.width_mult=0.125", "train.epochs=3", "train.cycles=1", "train.cycle_epochs=1",
        "train.image_log_interval=0", "eval.workers=0", "eval.batch_size=2"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from dml_csr.data.synthetic import make_synthetic
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(root, num_train=4, num_valid=2, num_test=2, size=64)
    return str(root)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_training_on_cuda_through_both_stages_and_resume(precision, data_root, tmp_path):
    from dml_csr.config import load_config
    from dml_csr.engine.trainer import Trainer
    cfg = lambda: load_config("synthetic", [f"data.root={data_root}", *TINY,  # noqa: E731
                                            f"train.precision={precision}"])
    full = Trainer(cfg(), output_dir=str(tmp_path / "full"), device="cuda")
    assert full.device.type == "cuda"
    assert full.fit()["epochs_done"] == 3
    part = Trainer(cfg(), output_dir=str(tmp_path / "part"), device="cuda")
    part.fit(stop_after_epoch=2)
    resumed = Trainer(cfg(), output_dir=str(tmp_path / "part"), resume=True, device="cuda")
    resumed.fit()
    a = torch.load(tmp_path / "full" / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pth", map_location="cpu", weights_only=True)
    for key, value in a["model"].items():
        if value.is_floating_point():          # CUDA kernels are not all deterministic
            assert torch.allclose(value, b["model"][key], atol=1e-3, rtol=1e-2), key


def test_compiled_abn_matches_native_on_cuda():
    """The compiled inplace-abn (norm_backend=auto's CUDA training path where it is installed)
    against the native layers: one layer forward and backward, in training and eval mode."""
    from dml_csr.layers.abn import ABN, compiled_abn_available
    if not compiled_abn_available():
        pytest.skip("the compiled inplace-abn does not import (scripts/build_inplace_abn.sh)")
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 16, 9, 9, generator=g) * 2 + 0.5).cuda()
    w = torch.randn(4, 16, 9, 9, generator=g).cuda()
    for training in (True, False):
        outs = []
        for backend in ("native", "compiled"):
            torch.manual_seed(0)
            layer = ABN(16, backend=backend).cuda().train(training)
            xi = x.clone().requires_grad_(True)
            y = layer(xi * 1.0)             # the compiled kernel overwrites its input
            (y * w).sum().backward()
            outs.append((y.detach(), xi.grad, layer.weight.grad, layer.running_var.clone()))
        for a, b in zip(*outs):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), training


def test_memory_abn_equals_native_on_cuda():
    from dml_csr.layers.abn import ABN
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 16, 9, 9, generator=g) * 2 + 0.5).cuda()
    w = torch.randn(4, 16, 9, 9, generator=g).cuda()
    outs = []
    for backend in ("native", "memory"):
        torch.manual_seed(0)
        layer = ABN(16, backend=backend).cuda().train()
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        (y * w).sum().backward()
        outs.append((y.detach(), xi.grad, layer.running_var.clone()))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_parser_on_cuda_labels_as_on_the_cpu(tmp_path):
    import dml_csr
    from dml_csr.models import DMLCSR, ModelSpec, save_checkpoint
    from dml_csr.utils.random_weights import randomise_norms
    torch.manual_seed(0)
    model = randomise_norms(DMLCSR(with_edges=False, **KW))
    save_checkpoint(str(tmp_path / "m.pth"), model.state_dict(),
                    ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=(64, 64)))
    photo = np.random.default_rng(0).integers(0, 256, (80, 100, 3), np.uint8)
    cpu = dml_csr.FaceParser.from_checkpoint(str(tmp_path / "m.pth"), detector=None)
    gpu = dml_csr.FaceParser.from_checkpoint(str(tmp_path / "m.pth"), detector=None,
                                             device="cuda")
    a = cpu(photo, detect=False).label_maps[0]
    b = gpu(photo, detect=False).label_maps[0]
    assert (a == b).mean() > 0.99


def test_video_frames_in_batches_on_cuda_label_as_one_at_a_time(tmp_path):
    """parse_video(batch=4) on the GPU (what dml-csr infer does for a clip with --device cuda)
    labels as one frame at a time there, and as the CPU does."""
    import dml_csr
    from dml_csr.models import DMLCSR, ModelSpec, save_checkpoint
    from dml_csr.utils.random_weights import randomise_norms
    torch.manual_seed(0)
    model = randomise_norms(DMLCSR(with_edges=False, **KW))
    save_checkpoint(str(tmp_path / "m.pth"), model.state_dict(),
                    ModelSpec.for_dataset("dml_csr", KW, "helen", crop_size=(64, 64)))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (80, 100, 3), np.uint8)
    frames = [np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
              for _ in range(9)]
    gpu = dml_csr.FaceParser.from_checkpoint(str(tmp_path / "m.pth"), detector=None,
                                             device="cuda")
    cpu = dml_csr.FaceParser.from_checkpoint(str(tmp_path / "m.pth"), detector=None)
    one = [f.result.combined[0] for f in gpu.video(frames, smooth=0.5)]
    many = [f.result.combined[0] for f in gpu.video(frames, smooth=0.5, batch=4)]
    ref = [f.result.combined[0] for f in cpu.video(frames, smooth=0.5)]
    assert len(many) == 9
    assert min((a == b).mean() for a, b in zip(one, many)) > 0.999
    assert min((a == b).mean() for a, b in zip(ref, many)) > 0.99


def test_fp_liif_bf16_on_cuda_decodes_at_float32_positions():
    from dml_csr.models import FPLIIF
    torch.manual_seed(0)
    model = FPLIIF(num_classes=11, width=16, blocks=[1, 1, 1], reduce_dims=[32, 16],
                   decoder_dims=[32, 32]).cuda().eval()
    x = torch.randn(1, 3, 256, 256, device="cuda")
    with torch.no_grad():
        ref = model(x, size=(512, 512)).parsing.argmax(1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(x, size=(512, 512)).parsing
    assert torch.isfinite(low).all() and (low.argmax(1) == ref).float().mean() > 0.985


def test_graph_norms_under_fp16_autocast_on_cuda_stay_finite():
    from dml_csr.layers.gcn import DDualGCN
    torch.manual_seed(0)
    model = DDualGCN(512).cuda().train()
    x = torch.randn(2, 512, 60, 60, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        y = model(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
