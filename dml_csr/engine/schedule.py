"""Learning-rate schedules (docs/training.md) as pure functions of the training position.

- Multi-task stage: poly decay per iteration, ``lr * (1 - t / T) ** power`` (power 0.9), with
  T = ``poly_epochs * iters_per_epoch``: the stage's own iterations (paper preset), or all the
  run's iterations as in the release (``train.poly_horizon``), so that the lr is still about
  0.29 lr when the stage ends at epoch 150 of 200.
- CSR stage, restarted at the start of every cycle:
  ``cosine_epoch``: ``lr_min + (csr_lr - lr_min) * (1 + cos(pi * e / N)) / 2`` for epoch e = 0..N-1
  of the cycle (constant within an epoch);
  ``cosine_iter``: the same with e and N counted in iterations of the cycle;
  ``released``: the release's warm-restart cosine, from ``train.lr / 2`` (the release halves its
  single learning rate for this stage) down to ``csr_lr_min``, stepped every iteration and
  restarted every 10 iterations.

The schedule holds no state beyond its arguments: resuming at (epoch, iteration) gives the same lr.
"""
import math
from dataclasses import dataclass

__all__ = ["poly_lr", "cosine_lr", "LRSchedule", "RELEASED_RESTART_ITERS"]

RELEASED_RESTART_ITERS = 10


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """``base_lr * (1 - step / total_steps) ** power`` (0 at and beyond the end)."""
    if total_steps <= 0:
        return base_lr
    frac = min(max(step / float(total_steps), 0.0), 1.0)
    return base_lr * (1.0 - frac) ** power


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
        csr_lr, csr_lr_min: the CSR cosine range.
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
        # released: T_0 = 10 iterations, counted from the start of the cycle
        t = (e * ipe + iteration) % RELEASED_RESTART_ITERS
        return cosine_lr(self.lr / 2.0, self.csr_lr_min, t, RELEASED_RESTART_ITERS)

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
