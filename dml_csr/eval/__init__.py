"""Evaluation: the release's pooled scorer, folder scoring, the paper's numbers and tables."""
from .evaluate import (EvaluationError, build_result, evaluate_folder, load_result,
                       write_result)
from .metrics import ConfusionMatrix, compute_metrics, confusion_histogram
from .tables import format_class_table, format_result_table, make_tables

__all__ = ["ConfusionMatrix", "compute_metrics", "confusion_histogram", "EvaluationError",
           "evaluate_folder", "build_result", "write_result", "load_result", "make_tables",
           "format_result_table", "format_class_table"]
