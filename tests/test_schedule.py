"""Learning-rate schedules: poly per iteration, cosine per cycle (epoch / iteration), released."""
import math

import pytest

from dml_csr.engine.schedule import LRSchedule, cosine_lr, poly_lr


def _sched(mode, **kw):
    args = dict(lr=1e-3, poly_power=0.9, multitask_epochs=4, cycle_epochs=3, iters_per_epoch=5,
                csr_lr=1e-5, csr_lr_min=0.0, csr_mode=mode)
    args.update(kw)
    return LRSchedule(**args)


def test_poly_per_iteration():
    s = _sched("cosine_epoch")
    assert s(0, 0) == pytest.approx(1e-3)
    assert s(1, 2) == pytest.approx(1e-3 * (1 - 7 / 20) ** 0.9)
    assert s(3, 4) == pytest.approx(1e-3 * (1 / 20) ** 0.9)
    assert poly_lr(1.0, 20, 20) == 0.0


def test_cosine_epoch_restarts_every_cycle():
    s = _sched("cosine_epoch")
    for cycle_start in (4, 7):
        assert s(cycle_start, 0) == pytest.approx(1e-5)
        assert s(cycle_start, 4) == pytest.approx(1e-5)       # constant within an epoch
        assert s(cycle_start + 1, 0) == pytest.approx(1e-5 * 0.5 * (1 + math.cos(math.pi / 3)))
        assert s(cycle_start + 2, 3) == pytest.approx(1e-5 * 0.5 * (1 + math.cos(2 * math.pi / 3)))


def test_cosine_iter():
    s = _sched("cosine_iter", csr_lr_min=1e-6)
    assert s(4, 0) == pytest.approx(1e-5)
    assert s(5, 2) == pytest.approx(cosine_lr(1e-5, 1e-6, 7, 15))
    assert s(7, 0) == pytest.approx(1e-5)                     # restart at cycle 2


def test_released_warm_restarts_every_10_iterations():
    s = _sched("released")
    assert s(4, 0) == pytest.approx(5e-4)                     # lr / 2
    assert s(4, 4) == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * 4 / 10)))
    assert s(5, 0) == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert s(5, 4) == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert s(5, 5) == pytest.approx(5e-4)                     # iteration 10 of the cycle
    assert s(7, 0) == pytest.approx(5e-4)                     # new cycle


def test_unknown_mode():
    with pytest.raises(ValueError):
        _sched("step")
