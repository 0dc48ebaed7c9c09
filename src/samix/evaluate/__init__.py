"""Evaluation: accuracy protocol, calibration, corruption robustness.

* :func:`topk_accuracy`, :func:`median_last` (median top-1 of the last 10 epochs),
  :func:`evaluate_classifier` (one pass: top-1/top-5, loss, ECE; DDP-aware).
* :func:`expected_calibration_error`, :func:`reliability_diagram` (automix.txt Fig. 6).
* :func:`corrupt`, :func:`list_corruptions`: the 15 CIFAR-10-C/100-C corruptions x 5 severities
  on batches in torch; :func:`corruption_accuracy` (automix.txt Table 2).

Accuracies and ECE are percentages (0-100).
"""

from .calibration import (
    calibration_bin_stats,
    ece_from_bin_stats,
    expected_calibration_error,
    plot_reliability,
    reliability_diagram,
    reliability_grid,
    to_probabilities,
)
from .corruptions import (
    CORRUPTION_CATEGORIES,
    CORRUPTION_PARAMS,
    SEVERITIES,
    CorruptionSpec,
    corrupt,
    get_corruption,
    list_corruptions,
    register_corruption,
)
from .metrics import evaluate_classifier, local_sample_limit, median_last, topk_accuracy, topk_correct, unpack_batch
from .robustness import CorruptionReport, corruption_accuracy
from .knn import extract_features, knn_accuracy, knn_evaluate, knn_predict, pooled_features
from .linear_probe import LinearProbeConfig, train_linear_probe

__all__ = [
    "topk_accuracy",
    "topk_correct",
    "median_last",
    "evaluate_classifier",
    "local_sample_limit",
    "unpack_batch",
    "expected_calibration_error",
    "to_probabilities",
    "calibration_bin_stats",
    "ece_from_bin_stats",
    "plot_reliability",
    "reliability_diagram",
    "reliability_grid",
    "SEVERITIES",
    "CORRUPTION_PARAMS",
    "CORRUPTION_CATEGORIES",
    "CorruptionSpec",
    "register_corruption",
    "list_corruptions",
    "get_corruption",
    "corrupt",
    "CorruptionReport",
    "corruption_accuracy",
    "pooled_features",
    "extract_features",
    "knn_predict",
    "knn_accuracy",
    "knn_evaluate",
    "LinearProbeConfig",
    "train_linear_probe",
]
