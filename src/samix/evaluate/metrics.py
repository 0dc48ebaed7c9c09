"""Accuracy metrics and the papers' evaluation protocol.

* :func:`topk_accuracy` -- top-k accuracy in percent.
* :func:`median_last` -- "median top-1 of the last 10 epochs" (samix.txt, automix.txt tables).
* :func:`evaluate_classifier` -- one pass over a loader: top-1/top-5, mean cross-entropy, ECE;
  single process or DDP.

Top-k convention: sample ``i`` counts as correct at ``k`` when its label is among the ``k`` largest
logits returned by ``torch.topk`` (ties are broken by ``torch.topk``); ``k`` larger than the number
of classes ``K`` is clipped to ``K`` (every sample is then correct).
"""

from __future__ import annotations

import math
import statistics
from contextlib import nullcontext
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samix._checks import check_class_indices, check_int

from .calibration import calibration_bin_stats, ece_from_bin_stats

__all__ = ["topk_correct", "topk_accuracy", "median_last", "evaluate_classifier", "unpack_batch"]


def _check_ks(ks) -> Tuple[int, ...]:
    if isinstance(ks, int) and not isinstance(ks, bool):
        ks = (ks,)
    try:
        ks = tuple(ks)
    except TypeError:
        raise TypeError(f"ks must be an int or a sequence of ints, got {type(ks).__name__}") from None
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    return ks


def topk_correct(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> Tensor:
    """Number of samples whose label is in the top ``k`` logits, for each ``k``: float ``[len(ks)]``.

    No validation and no host synchronisation (for accumulation on the device).
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # [N, kmax]
    hit = (top == labels.view(-1, 1)).float().cumsum(1)  # hit[:, j] = label within the top j + 1
    return torch.stack([hit[:, min(k, kmax) - 1].sum() for k in ks])


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> List[float]:
    """Top-k accuracies in percent (0-100), one per ``k`` of ``ks``, in that order.

    Args:
        logits: float ``[N, K]`` scores (logits or probabilities: only the order matters).
        labels: int ``[N]`` class indices in ``[0, K)``.
        ks: the ``k`` values; ``k > K`` is clipped to ``K``.

    Example: ``top1, top5 = topk_accuracy(logits, labels)``.
    """
    ks = _check_ks(ks)
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"logits must be a non-empty 2-D [N, K] tensor, got shape {tuple(logits.shape)}")
    check_class_indices(labels, logits.shape[0], logits.shape[1], rows_of="logits")
    counts = topk_correct(logits.detach(), labels.to(logits.device), ks)
    return [100.0 * float(c) / logits.shape[0] for c in counts.cpu()]


def median_last(values: Iterable[float], k: int = 10) -> float:
    """Median of the last ``k`` values (the papers' "median of the last 10 epochs").

    Fewer than ``k`` values: the median of all of them. An even count takes the mean of the two
    middle values (``statistics.median``). Raises ``ValueError`` on an empty sequence or a
    non-finite value.
    """
    k = check_int("k", k, low=1, type_error=ValueError)
    if isinstance(values, Tensor):
        values = values.detach().flatten().tolist()
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"values must be a sequence of numbers, got {type(values).__name__}") from None
    if not vals:
        raise ValueError("median_last needs at least one value, got an empty sequence")
    tail = vals[-k:]
    if not all(math.isfinite(v) for v in tail):
        raise ValueError(f"values must be finite, got {tail}")
    return float(statistics.median(tail))


# ----------------------------------------------------------------------------------------------
# One evaluation pass.
# ----------------------------------------------------------------------------------------------


def unpack_batch(batch) -> Tuple[Tensor, Tensor]:
    """``(images, labels)`` from a loader batch: a tuple/list whose first two items are them."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        "a loader batch must be a tuple/list (images, labels, ...), "
        f"got {type(batch).__name__}{'' if not isinstance(batch, (tuple, list)) else ' of length ' + str(len(batch))}"
    )


def _check_max_batches(max_batches) -> None:
    check_int("max_batches", max_batches, low=1, none_ok=True, type_error=ValueError)


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def local_sample_limit(loader) -> Optional[int]:
    """How many leading samples of this rank's loader are real, when a ``DistributedSampler`` pads.

    ``DistributedSampler(drop_last=False)`` repeats the first ``total_size - N`` indices of its list
    so that every rank gets ``num_samples = ceil(N / R)`` samples; rank ``r`` takes positions
    ``r, r + R, ...`` of that list, so the padded positions ``N .. total_size - 1`` are the *last*
    sample of the ranks ``r`` with ``(num_samples - 1) R + r >= N``. Dropping it there makes the
    all-reduced counts exact. ``None`` when no such sampler is used.
    """
    from torch.utils.data.distributed import DistributedSampler

    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    n = len(sampler.dataset)
    last_position = (sampler.num_samples - 1) * sampler.num_replicas + sampler.rank
    return sampler.num_samples - (1 if last_position >= n else 0)


class _Accumulator:
    """On-device sums: top-k hits, summed loss, sample count, calibration bins (one tensor, so a
    single all-reduce makes them global)."""

    def __init__(self, ks: Tuple[int, ...], n_bins: int, device: torch.device):
        self.ks, self.n_bins = ks, n_bins
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.sums = torch.zeros(len(ks) + 2 + 3 * (n_bins + 1), dtype=dtype, device=device)

    def update(self, logits: Tensor, labels: Tensor) -> None:
        logits = logits.float()
        k = len(self.ks)
        self.sums[:k] += topk_correct(logits, labels, self.ks).to(self.sums.dtype)
        self.sums[k] += F.cross_entropy(logits, labels, reduction="sum").to(self.sums.dtype)
        self.sums[k + 1] += labels.shape[0]
        bins = calibration_bin_stats(logits.softmax(1), labels, self.n_bins)
        self.sums[k + 2 :] += bins.flatten().to(self.sums.dtype)

    def all_reduce(self) -> None:
        if _dist_ready():
            torch.distributed.all_reduce(self.sums, op=torch.distributed.ReduceOp.SUM)

    def result(self) -> Dict[str, float]:
        s = self.sums.detach().double().cpu()
        k = len(self.ks)
        n = float(s[k + 1])
        if n <= 0:
            raise ValueError("the loader yielded no samples")
        out = {f"top{kk}": 100.0 * float(s[i]) / n for i, kk in enumerate(self.ks)}
        out["loss"] = float(s[k]) / n
        out["ece"] = ece_from_bin_stats(s[k + 2 :].view(3, self.n_bins + 1))
        out["n"] = int(round(n))
        return out


def evaluate_classifier(
    model: nn.Module,
    loader: Iterable,
    device=None,
    amp_dtype: Optional[torch.dtype] = None,
    num_classes: Optional[int] = None,
    *,
    ks: Sequence[int] = (1, 5),
    n_bins: int = 15,
    return_logits: bool = False,
    max_batches: Optional[int] = None,
    input_transform: Optional[Callable[[Tensor], Tensor]] = None,
) -> Dict[str, object]:
    """Evaluate a classifier in one pass over ``loader``.

    Returns a dict with ``top1``, ``top5`` (``top{k}`` for each ``k`` in ``ks``, percent),
    ``loss`` (mean cross-entropy, nats), ``ece`` (percent, ``n_bins`` bins, see
    :mod:`samix.evaluate.calibration`), ``n`` (number of samples counted) and, with
    ``return_logits=True``, ``logits`` (float32 ``[n, K]``, CPU) and ``labels`` (long ``[n]``, CPU)
    of this process.

    Everything accumulates on ``device`` (no host sync per batch); the model runs in eval mode
    under ``torch.inference_mode`` (and ``torch.autocast(dtype=amp_dtype)`` when given), and its
    previous train/eval mode is restored afterwards.

    DDP: when ``torch.distributed`` is initialised the sums are all-reduced, so every rank returns
    the global numbers (``logits``/``labels`` stay local). Padding of a ``DistributedSampler``
    (``drop_last=False``) is removed exactly (see :func:`local_sample_limit`), so the numbers equal a
    single-process evaluation of the whole dataset; with ``drop_last=True`` the dropped tail is
    simply not evaluated. Other samplers that pad are not detected. ``max_batches`` stops early
    (each rank after that many batches).

    Args:
        model: maps ``images`` to logits ``[B, K]``.
        loader: yields ``(images, labels, ...)``; images already normalised for the model (or use
            ``input_transform``, applied on ``device``).
        device: where to run; default: the model's device.
        amp_dtype: e.g. ``torch.bfloat16`` / ``torch.float16`` for autocast, ``None`` for full precision.
        num_classes: checked against the logits' width when given.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ks = _check_ks(ks)
    check_int("n_bins", n_bins, low=1, type_error=ValueError)
    _check_max_batches(max_batches)
    if amp_dtype is not None and not (isinstance(amp_dtype, torch.dtype) and amp_dtype.is_floating_point):
        raise TypeError(f"amp_dtype must be a floating torch.dtype or None, got {amp_dtype!r}")
    device = _model_device(model) if device is None else torch.device(device)
    limit = local_sample_limit(loader)
    acc = _Accumulator(ks, n_bins, device)
    kept_logits: List[Tensor] = []
    kept_labels: List[Tensor] = []
    autocast = torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.inference_mode():
            for b, batch in enumerate(loader):
                if max_batches is not None and b >= max_batches:
                    break
                images, labels = unpack_batch(batch)
                if limit is not None:
                    keep = max(0, min(labels.shape[0], limit - seen))
                    seen += labels.shape[0]
                    if keep < labels.shape[0]:
                        images, labels = images[:keep], labels[:keep]
                    if keep == 0:
                        continue
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                if labels.dim() != 1 or labels.is_floating_point():
                    raise ValueError(
                        f"labels must be int class indices [B], got {labels.dtype} of shape {tuple(labels.shape)}"
                    )
                if input_transform is not None:
                    images = input_transform(images)
                with autocast:
                    logits = model(images)
                if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
                    raise ValueError(
                        f"model must return logits [B, K] with B = {labels.shape[0]}, got "
                        f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
                    )
                if num_classes is not None and logits.shape[1] != num_classes:
                    raise ValueError(
                        f"model returned {logits.shape[1]} logits per sample, expected num_classes={num_classes}"
                    )
                acc.update(logits, labels)
                if return_logits:
                    kept_logits.append(logits.float().cpu())
                    kept_labels.append(labels.long().cpu())
    finally:
        model.train(was_training)
    acc.all_reduce()
    out: Dict[str, object] = dict(acc.result())
    if return_logits:
        out["logits"] = torch.cat(kept_logits) if kept_logits else torch.empty(0, 0)
        out["labels"] = torch.cat(kept_labels) if kept_labels else torch.empty(0, dtype=torch.long)
    return out
