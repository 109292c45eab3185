"""Evaluation: the release's pooled scorer, the inference protocol, the test runner, folder
scoring, the paper's numbers and the tables.

- ``metrics``: the scorer of the release (docs/evaluation.md): one pooled confusion histogram per
  split (``ConfusionMatrix``, ``confusion_histogram``), F1 / IoU / accuracies and the data set's
  headline, with the merged groups of the data set's description (``compute_metrics``,
  ``default_headline``).
- ``inference``: the evaluation protocol of the release: the data set's un-augmented crop, then
  the test-time path that the parser shares (``dml_csr/predict.py``: logits at the crop size
  with optional TTA, argmax, warp back), scoring a model on a split (``evaluate_model``);
  ``INFERENCE_PROTOCOL`` describes it in result JSONs.
- ``runner``: the config-driven test runner behind ``tools/test.py`` and ``tools/train.py
  --test``: config + checkpoint -> result JSON (``run_test``, ``build_eval_dataset``).
- ``evaluate``: scoring a folder of predicted PNGs (``evaluate_folder``, ``tools/evaluate.py``)
  and the result JSON every run writes (``build_result``, ``write_result``, ``load_result``);
  which data set a root holds is ``dml_csr.data.layout.root_schema``'s answer.
- ``classmap``: class mappings, to score predictions of another label set or id order
  (``load_class_map``; ``--map`` in ``tools/test.py`` and ``tools/evaluate.py``).
- ``paper``: the published numbers as data (DML-CSR Tables 1 to 6, FP-LIIF) and the row keys.
- ``tables``: ours-vs-paper tables from result JSONs (``make_tables``, ``tools/make_tables.py``).

``inference`` and ``runner`` (which build and load models) are imported by their users, not here.
"""
from .evaluate import (EvaluationError, build_result, evaluate_folder, load_result,
                       write_result)
from .metrics import ConfusionMatrix, compute_metrics, confusion_histogram
from .tables import format_class_table, format_result_table, make_tables

__all__ = ["ConfusionMatrix", "compute_metrics", "confusion_histogram", "EvaluationError",
           "evaluate_folder", "build_result", "write_result", "load_result", "make_tables",
           "format_result_table", "format_class_table"]
