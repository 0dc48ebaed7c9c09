"""Calibration: expected calibration error (ECE) and reliability diagrams.

ECE (Naeini et al. 2015; Guo et al. 2017, "On calibration of modern neural networks"), as the
papers report it (automix.txt, Fig. 6), in percent::

    conf_i = max_k p_ik,   correct_i = [argmax_k p_ik == y_i]
    ECE    = 100 * sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)|
           = 100 / N * sum_b |sum_{i in B_b} (correct_i - conf_i)|

Binning follows torchmetrics' ``MulticlassCalibrationError`` (which computes the ECE here): bin
``b`` holds ``b / M <= conf < (b + 1) / M`` for ``b = 0 .. M - 1``, and a confidence of exactly 1
gets a bin of its own. :func:`calibration_bin_stats` returns sums per bin (``M + 1`` entries) so the
ECE can be accumulated over batches and all-reduced across processes (see
:func:`samix.evaluate.evaluate_classifier`).

Inputs are either probabilities (rows in ``[0, 1]`` summing to 1) or logits; ``inputs="auto"``
decides by that test, ``"probs"``/``"logits"`` force it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from samix._checks import check_choice, check_class_indices, check_int
from samix._plot import new_figure, save_figure

__all__ = [
    "to_probabilities",
    "calibration_bin_stats",
    "ece_from_bin_stats",
    "expected_calibration_error",
    "plot_reliability",
    "reliability_diagram",
    "reliability_grid",
]

_INPUT_KINDS = ("auto", "probs", "logits")


def _check_n_bins(n_bins) -> int:
    return check_int("n_bins", n_bins, low=1, type_error=ValueError)


def _check_scores_labels(scores, labels) -> None:
    if not isinstance(scores, Tensor):
        raise TypeError(f"probs_or_logits must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"probs_or_logits must be a non-empty 2-D [N, K] tensor, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"probs_or_logits must be floating point, got {scores.dtype}")
    check_class_indices(labels, scores.shape[0], scores.shape[1], rows_of="probs_or_logits")


def to_probabilities(probs_or_logits: Tensor, inputs: str = "auto") -> Tensor:
    """Float32 probabilities ``[N, K]`` from probabilities or logits.

    ``inputs="auto"``: rows already in ``[0, 1]`` that sum to 1 (within 1e-3) are taken as
    probabilities, anything else goes through a softmax.
    """
    check_choice("inputs", inputs, _INPUT_KINDS)
    x = probs_or_logits.detach().float()
    if inputs == "logits":
        return x.softmax(1)
    if inputs == "probs":
        return x
    is_probs = bool(((x >= 0) & (x <= 1)).all()) and bool(((x.sum(1) - 1).abs() <= 1e-3).all())
    return x if is_probs else x.softmax(1)


def calibration_bin_stats(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """Per-bin sums ``[3, n_bins + 1]`` (rows: count, sum of correct, sum of confidence).

    ``probs`` are probabilities ``[N, K]`` (use :func:`to_probabilities`); no validation (hot path),
    everything stays on ``probs``' device, no host synchronisation. Bins as torchmetrics: left-closed
    ``[b / M, (b + 1) / M)``, the last entry holds confidences equal to 1.
    """
    conf, pred = probs.max(1)
    conf = conf.float()
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1, device=conf.device, dtype=conf.dtype)
    idx = torch.bucketize(conf, edges, right=True) - 1
    stats = torch.zeros(3, n_bins + 1, device=conf.device, dtype=torch.float32)
    stats[0].scatter_add_(0, idx, torch.ones_like(conf))
    stats[1].scatter_add_(0, idx, correct)
    stats[2].scatter_add_(0, idx, conf)
    return stats


def ece_from_bin_stats(stats: Tensor) -> float:
    """ECE in percent from (possibly accumulated) :func:`calibration_bin_stats`."""
    n = stats[0].sum()
    if float(n) <= 0:
        raise ValueError("no samples: the calibration bins are empty")
    return float(100.0 * (stats[1] - stats[2]).abs().sum() / n)


def expected_calibration_error(
    probs_or_logits: Tensor, labels: Tensor, n_bins: int = 15, inputs: str = "auto"
) -> float:
    """Expected calibration error in percent (0-100), L1 norm, ``n_bins`` equal-width bins.

    Computed with torchmetrics' ``multiclass_calibration_error`` (``norm="l1"``) on probabilities.

    Args:
        probs_or_logits: float ``[N, K]`` probabilities or logits.
        labels: int ``[N]`` class indices in ``[0, K)``.
        n_bins: number of confidence bins (15 as in Guo et al.).
        inputs: ``"auto"``, ``"probs"`` or ``"logits"`` (see :func:`to_probabilities`).
    """
    from torchmetrics.functional.classification import multiclass_calibration_error

    n_bins = _check_n_bins(n_bins)
    _check_scores_labels(probs_or_logits, labels)
    probs = to_probabilities(probs_or_logits, inputs)
    ece = multiclass_calibration_error(
        probs, labels.long(), num_classes=probs.shape[1], n_bins=n_bins, norm="l1", validate_args=False
    )
    return 100.0 * float(ece)


# ----------------------------------------------------------------------------------------------
# Reliability diagrams (matplotlib, object-oriented API on the Agg canvas: no pyplot state).
# ----------------------------------------------------------------------------------------------


def plot_reliability(ax, probs_or_logits: Tensor, labels: Tensor, n_bins: int = 15, title: Optional[str] = None,
                     inputs: str = "auto", show_counts: bool = True) -> float:
    """Draw a reliability diagram on the matplotlib ``ax`` and return the ECE (percent).

    Bars (black outline): accuracy of each non-empty confidence bin; hatched: the gap between that
    accuracy and the bin's mean confidence (above the bar when over-confident, inside it when
    under-confident);
    the red dashed diagonal is perfect calibration; the legend shows the ECE. For display, the
    ``conf == 1`` bin is merged into the last bar (the ECE uses the exact torchmetrics bins).
    ``show_counts`` adds a faint grey histogram (not in the legend) along the bottom: the share of
    samples per bin, scaled by 0.25.
    """
    n_bins = _check_n_bins(n_bins)
    _check_scores_labels(probs_or_logits, labels)
    probs = to_probabilities(probs_or_logits, inputs)
    stats = calibration_bin_stats(probs, labels.to(probs.device), n_bins).double().cpu()
    ece = ece_from_bin_stats(stats)
    stats[:, n_bins - 1] += stats[:, n_bins]
    stats = stats[:, :n_bins]
    count = stats[0]
    nonempty = count > 0
    acc = torch.where(nonempty, stats[1] / count.clamp_min(1), torch.zeros_like(count))
    conf = torch.where(nonempty, stats[2] / count.clamp_min(1), torch.zeros_like(count))
    width = 1.0 / n_bins
    left = torch.arange(n_bins, dtype=torch.float64) * width
    sel = nonempty.numpy()
    l, a, c = left.numpy()[sel], acc.numpy()[sel], conf.numpy()[sel]

    ax.plot([], [], " ", label=f"ECE = {ece:.2f}%")
    if show_counts:
        share = (count / count.sum()).numpy()
        ax.bar(left.numpy(), share * 0.25, width=width, align="edge", color="dimgrey", alpha=0.35, zorder=4)
    ax.bar(l, a, width=width, align="edge", color="#4C72B0", linewidth=0, zorder=1, label="Accuracy")
    ax.bar(l, c - a, bottom=a, width=width, align="edge", color="#F4B9A0", edgecolor="#C44E52", hatch="//",
           linewidth=0.6, zorder=2, label="Gap to mean confidence")
    ax.bar(l, a, width=width, align="edge", fill=False, edgecolor="black", linewidth=0.7, zorder=3)
    ax.plot([0, 1], [0, 1], linestyle="--", color="#C44E52", linewidth=1.2, zorder=5, label="Perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Accuracy")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize="x-small", framealpha=0.85)
    ax.grid(True, linestyle=":", linewidth=0.5, alpha=0.6)
    return ece


def reliability_diagram(path: Union[str, os.PathLike], logits: Tensor, labels: Tensor, n_bins: int = 15,
                        title: Optional[str] = None, inputs: str = "auto", dpi: int = 150) -> Path:
    """Save a reliability diagram (like automix.txt Fig. 6) of one model to ``path`` (PNG, or any
    format matplotlib infers from the suffix); returns the path. See :func:`plot_reliability`."""
    fig = new_figure(4.2, 4.2, dpi)
    plot_reliability(fig.add_subplot(1, 1, 1), logits, labels, n_bins=n_bins, title=title, inputs=inputs)
    return save_figure(fig, path, tight_layout=True)


def reliability_grid(path: Union[str, os.PathLike], runs: Mapping[str, Tuple[Tensor, Tensor]], n_bins: int = 15,
                     ncols: int = 4, inputs: str = "auto", dpi: int = 150) -> Path:
    """Side-by-side reliability diagrams of several methods (``{title: (logits, labels)}``), the
    layout of automix.txt Fig. 6; returns the path."""
    if not runs:
        raise ValueError("runs must hold at least one {title: (logits, labels)} entry, got none")
    ncols = min(check_int("ncols", ncols, low=1, type_error=ValueError), len(runs))
    nrows = -(-len(runs) // ncols)
    fig = new_figure(3.6 * ncols, 3.6 * nrows, dpi)
    for i, (name, pair) in enumerate(runs.items()):
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"runs[{name!r}] must be a (logits, labels) pair, got {type(pair).__name__}")
        plot_reliability(fig.add_subplot(nrows, ncols, i + 1), pair[0], pair[1], n_bins=n_bins, title=name,
                         inputs=inputs)
    return save_figure(fig, path, tight_layout=True)
