"""Training: the DML-CSR schedule and what it is made of.

- ``trainer.py``: :class:`~dml_csr.engine.trainer.Trainer`, the loop (``fit``, ``train_one_epoch``),
  the CSR cycle bookkeeping (teachers, aggregation, BN re-estimation), validation, the best model
  and the checkpoints.
- ``stages.py``: the multi-task (eq. 5) and distillation (eq. 7) stages, ``batch -> loss dict``,
  the frozen teacher and FP-LIIF's sampled queries.
- ``build.py``: the data check, data sets and loader, the model to train, the optimiser.
- ``rundir.py``: the run folder's files and safety (``--overwrite``), the ``--resume`` config rules,
  the RNG state saved in ``last.pth``.
- ``tb.py``: TensorBoard scalars and the training image grid.
- ``csr.py``: eq. 6, teacher updates and BN re-estimation as pure functions.
- ``schedule.py``: the learning rates (poly, cosine restarts).
- ``launch.py``: the torchrun launcher of ``scripts/train.sh``.

The torchrun helpers shared with evaluation are ``dml_csr/distributed.py``.
"""
