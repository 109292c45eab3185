"""Reusable network layers; they import nothing from ``models/`` (the families build on them).

- ``abn.py``: ``ABN``, In-Place Activated BatchNorm with a pure-PyTorch backend;
- ``sync_bn.py``: ``SyncBatchNorm1d`` for the graph layers' ``BatchNorm1d`` under multi-process
  training;
- ``blocks.py``: ``conv_abn`` (conv + ABN), ``upsample`` (bilinear, align_corners=True: the
  package's one resize of that kind, used by the models, losses, protocol and parser),
  ``Bottleneck`` (the ResNet block), ``NormLayer``;
- ``gcn.py``: the graph units ``SpatialGCN`` and ``DDualGCN`` (DDGCN and DGCNet fusions);
- ``context.py``: the context modules on C5 (``DDGCNContext`` and the Table 4-5 ablations
  ``BaselineContext``, ``PSPContext``, ``DGCNetContext``), chosen by name with ``build_context``.

A layer class that pairs a convolution with a norm by attribute declares how it folds for
inference on itself (``folded_norms``, ``temporary_activations``: ``deploy/fold.py`` reads them).
"""
