"""Learning-rate schedules (docs/training.md) as pure functions of the training position.

- Multi-task stage: poly decay per iteration, ``lr * (1 - t / T) ** power`` (power 0.9), with
  T = ``poly_epochs * iters_per_epoch``: the stage's own iterations (paper preset), or all the
  run's iterations as in the release (``train.poly_horizon``), so that the lr is still about
  0.29 lr when the stage ends at epoch 150 of 200.
- CSR stage, restarted at the start of every cycle:
  ``cosine_epoch``: ``lr_min + (csr_lr - lr_min) * (1 + cos(pi * e / N)) / 2`` for epoch e = 0..N-1
  of the cycle (constant within an epoch);
  ``cosine_iter``: the same with e and N counted in iterations of the cycle;
  ``released``: the release's ``SGDRScheduler(total_epoch=epochs, eta_min=lr / 100,
  warmup_epoch=10, start_cyclical=schp_start, cyclical_base_lr=lr / 2,
  cyclical_epoch=cycle_epochs)``, stepped once per iteration from the first iteration of the run,
  so that its "epoch" counter is the global iteration i. In the CSR stage iteration i gets
  ``lr/100 + (lr/2 - lr/100) * (1 + cos(pi * ((i - schp_start) % cycle_epochs) / cycle_epochs))
  / 2``: the period is ``cycle_epochs`` iterations, the phase counts from ``schp_start`` (the
  multi-task epochs) as an iteration number, the floor is lr / 100, whatever the settings
  (``train.csr_lr`` and ``train.csr_lr_min`` are not read).

The schedule holds no state beyond its arguments: resuming at (epoch, iteration) gives the same lr.
"""
import math
from dataclasses import dataclass

__all__ = ["poly_lr", "cosine_lr", "LRSchedule", "released_csr_lr"]


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step / total_steps) ** power`` (0 at and beyond the end)."""
    if total_steps <= 0:
        return base_lr
    frac = min(max(step / float(total_steps), 0.0), 1.0)
    return base_lr * (1.0 - frac) ** power


def released_csr_lr(lr: float, iteration: int, schp_start: int, cycle_epochs: int) -> float:
    """The release's CSR-stage lr at global iteration ``iteration`` (module docstring): its
    scheduler's epoch counter is the iteration, ``schp_start`` and ``cycle_epochs`` are epoch
    numbers read as iterations, the range is lr / 2 down to lr / 100."""
    period = max(1, cycle_epochs)
    return cosine_lr(lr / 2.0, lr / 100.0, (iteration - schp_start) % period, period)


def cosine_lr(lr_max: float, lr_min: float, step: int, period: int) -> float:
    """Cosine annealing from ``lr_max`` (step 0) towards ``lr_min`` (step = period)."""
    if period <= 0:
        return lr_max
    t = min(max(step, 0), period) / float(period)
    return lr_min + (lr_max - lr_min) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass
class LRSchedule:
    """The whole run's learning rate as a function of (epoch, iteration within the epoch).

    Args:
        lr: base lr of the multi-task stage (poly) and, halved, of the ``released`` CSR schedule.
        poly_power: poly exponent.
        multitask_epochs: epochs of the multi-task stage.
        poly_epochs: the poly horizon in epochs (default ``multitask_epochs``).
        cycle_epochs: N, epochs per CSR cycle.
        iters_per_epoch: optimiser steps per epoch.
        csr_lr, csr_lr_min: the CSR cosine range (not read by ``released``: lr / 2 to lr / 100).
        csr_mode: ``cosine_epoch`` | ``cosine_iter`` | ``released``.
    """
    lr: float
    poly_power: float
    multitask_epochs: int
    cycle_epochs: int
    iters_per_epoch: int
    csr_lr: float
    csr_lr_min: float = 0.0
    csr_mode: str = "cosine_epoch"
    poly_epochs: int = 0

    def __post_init__(self):
        if self.poly_epochs <= 0:
            self.poly_epochs = self.multitask_epochs
        if self.poly_epochs < self.multitask_epochs:
            raise ValueError(f"poly_epochs ({self.poly_epochs}) ends before the multi-task stage "
                             f"({self.multitask_epochs} epochs)")
        if self.csr_mode not in ("cosine_epoch", "cosine_iter", "released"):
            raise ValueError(f"unknown CSR lr schedule {self.csr_mode!r}")

    def __call__(self, epoch: int, iteration: int) -> float:
        ipe = max(1, self.iters_per_epoch)
        if epoch < self.multitask_epochs:
            return poly_lr(self.lr, epoch * ipe + iteration, self.poly_epochs * ipe,
                           self.poly_power)
        e = (epoch - self.multitask_epochs) % max(1, self.cycle_epochs)
        if self.csr_mode == "cosine_epoch":
            return cosine_lr(self.csr_lr, self.csr_lr_min, e, self.cycle_epochs)
        if self.csr_mode == "cosine_iter":
            return cosine_lr(self.csr_lr, self.csr_lr_min, e * ipe + iteration,
                             self.cycle_epochs * ipe)
        # released: the release's scheduler, whose counter is the run's global iteration
        return released_csr_lr(self.lr, epoch * ipe + iteration, self.multitask_epochs,
                               self.cycle_epochs)

    @classmethod
    def from_config(cls, cfg, iters_per_epoch: int) -> "LRSchedule":
        """The schedule of a resolved ``Config`` (``train.*``) with ``iters_per_epoch`` steps."""
        t = cfg.train
        return cls(lr=t.lr, poly_power=t.poly_power, multitask_epochs=cfg.multitask_epochs,
                   cycle_epochs=t.cycle_epochs, iters_per_epoch=iters_per_epoch, csr_lr=t.csr_lr,
                   csr_lr_min=t.csr_lr_min, csr_mode=t.csr_lr_schedule,
                   poly_epochs=t.epochs if t.poly_horizon == "total" else cfg.multitask_epochs)

    def state_dict(self) -> dict:
        return dict(self.__dict__)
