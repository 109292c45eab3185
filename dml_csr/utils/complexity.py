"""Parameters, FLOPs and CPU latency of a model (the numbers behind docs/benchmarks.md)."""
import statistics
import time
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "count_flops", "measure_latency", "complexity_report"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_size: Sequence[int], **forward_kwargs) -> int:
    """FLOPs of one forward pass at ``input_size`` (N, C, H, W), a multiply-add counted as 2.

    Counted by PyTorch's FlopCounterMode (convolutions, matrix products, bmm); element-wise ops,
    normalisation and interpolation are not counted, as in the usual MAC counters.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(*input_size), **forward_kwargs)
    model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def measure_latency(model: nn.Module, input_size: Sequence[int], warmup: int = 2, runs: int = 5,
                    threads: Optional[int] = None, **forward_kwargs) -> Dict[str, float]:
    """Median / min wall time (ms) of eval-mode forward passes after ``warmup`` passes."""
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    x = torch.randn(*input_size)
    for _ in range(warmup):
        model(x, **forward_kwargs)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(x, **forward_kwargs)
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs,
            "threads": torch.get_num_threads()}


def complexity_report(model: nn.Module, input_size: Sequence[int], latency: bool = True,
                      warmup: int = 2, runs: int = 5, **forward_kwargs) -> Dict[str, float]:
    flops = count_flops(model, input_size, **forward_kwargs)
    report = {"params": count_parameters(model), "flops": flops, "gflops": flops / 1e9,
              "gmacs": flops / 2e9, "input_size": list(input_size)}
    if latency:
        report.update(measure_latency(model, input_size, warmup, runs, **forward_kwargs))
    return report
