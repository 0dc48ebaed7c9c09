"""Corruption robustness: accuracy under the 15 x 5 CIFAR-C corruptions (automix.txt Table 2).

:func:`corruption_accuracy` corrupts the *un-normalised* test images on the fly with
:func:`samix.evaluate.corrupt`, normalises them with ``mean``/``std``, and counts top-1 hits per
(corruption, severity). Each batch is loaded once and corrupted 75 times, so the data pipeline
runs once. The mean corruption accuracy is the plain mean over all evaluated (corruption,
severity) cells, as "CIFAR-100-C" in Table 2 (mean over 15 types x 5 severities); the mean
corruption error is ``100 - mean``.

Reproducibility: every (corruption, severity) cell draws from its own ``torch.Generator`` seeded
from ``seed``, the corruption's name and the severity, so a cell's number does not depend on which
other corruptions are evaluated, and two runs with the same seed, data order and device agree.
"""

from __future__ import annotations

import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .corruptions import CORRUPTION_CATEGORIES, SEVERITIES, _apply, _check_corruption_images, get_corruption
from .corruptions import list_corruptions
from .metrics import _check_max_batches, _dist_ready, _model_device, local_sample_limit, unpack_batch

__all__ = ["CorruptionReport", "corruption_accuracy"]


@dataclass
class CorruptionReport:
    """Result of :func:`corruption_accuracy`.

    Attributes:
        table: ``{corruption: {severity: top-1 accuracy in percent}}``.
        mean_top1: mean over all cells of ``table`` (the "mean corruption accuracy").
        clean_top1: top-1 on the uncorrupted images (``None`` if not evaluated).
        n: number of test images behind each cell.
        seed: the seed of the corruption draws.
    """

    table: Dict[str, Dict[int, float]]
    mean_top1: float
    clean_top1: Optional[float] = None
    n: int = 0
    seed: int = 0

    @property
    def mean_error(self) -> float:
        """Mean corruption error in percent: ``100 - mean_top1``."""
        return 100.0 - self.mean_top1

    def per_corruption(self) -> Dict[str, float]:
        """Mean top-1 of each corruption over its severities."""
        return {name: sum(row.values()) / len(row) for name, row in self.table.items()}

    def per_severity(self) -> Dict[int, float]:
        """Mean top-1 of each severity over the corruptions."""
        sev = sorted({s for row in self.table.values() for s in row})
        return {s: sum(row[s] for row in self.table.values()) / len(self.table) for s in sev}

    def per_category(self) -> Dict[str, float]:
        """Mean top-1 of each benchmark group (noise, blur, weather, digital) that was evaluated."""
        out = {}
        for cat, names in CORRUPTION_CATEGORIES.items():
            cells = [v for n in names if n in self.table for v in self.table[n].values()]
            if cells:
                out[cat] = sum(cells) / len(cells)
        return out

    def as_dict(self) -> Dict[str, object]:
        """Plain JSON-serialisable dict (severity keys as strings)."""
        return {
            "table": {n: {str(s): v for s, v in row.items()} for n, row in self.table.items()},
            "mean_top1": self.mean_top1,
            "mean_error": self.mean_error,
            "clean_top1": self.clean_top1,
            "n": self.n,
            "seed": self.seed,
        }

    def to_markdown(self) -> str:
        """A Markdown table: one row per corruption, one column per severity plus the mean."""
        sevs = sorted({s for row in self.table.values() for s in row})
        head = "| corruption | " + " | ".join(f"s{s}" for s in sevs) + " | mean |"
        lines = [head, "|" + "---|" * (len(sevs) + 2)]
        means = self.per_corruption()
        for name, row in self.table.items():
            cells = " | ".join(f"{row[s]:.2f}" for s in sevs)
            lines.append(f"| {name} | {cells} | {means[name]:.2f} |")
        lines.append(f"| **mean** | " + " | ".join(f"{v:.2f}" for v in self.per_severity().values())
                     + f" | **{self.mean_top1:.2f}** |")
        if self.clean_top1 is not None:
            lines.append(f"\nclean top-1: {self.clean_top1:.2f}, mean corruption error: {self.mean_error:.2f}")
        return "\n".join(lines)


def _cell_seed(seed: int, name: str, severity: int) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(f"{name}/{severity}".encode())) % (2**63)


def _as_normalizer(mean, std, channels: int, device, dtype):
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError(f"mean and std must be given together (or both None), got mean={mean!r}, std={std!r}")
    m = torch.as_tensor(mean, dtype=torch.float32).flatten()
    s = torch.as_tensor(std, dtype=torch.float32).flatten()
    if m.numel() not in (1, channels) or s.numel() not in (1, channels):
        raise ValueError(f"mean and std must have 1 or {channels} values, got {m.numel()} and {s.numel()}")
    if bool((s <= 0).any()):
        raise ValueError(f"std must be positive, got {s.tolist()}")
    m = m.view(1, -1, 1, 1).to(device=device, dtype=dtype)
    s = s.view(1, -1, 1, 1).to(device=device, dtype=dtype)
    return lambda x: (x - m) / s


def corruption_accuracy(
    model: nn.Module,
    dataset_or_loader,
    *,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    corruptions: Optional[Sequence[str]] = None,
    severities: Sequence[int] = SEVERITIES,
    device=None,
    batch_size: int = 100,
    num_workers: int = 0,
    max_batches: Optional[int] = None,
    seed: int = 0,
    amp_dtype: Optional[torch.dtype] = None,
    clean: bool = True,
) -> CorruptionReport:
    """Top-1 accuracy of ``model`` under each corruption and severity.

    Args:
        model: classifier mapping normalised images to logits ``[B, K]``.
        dataset_or_loader: a ``Dataset`` (wrapped in a sequential ``DataLoader`` of ``batch_size``;
            under ``torch.distributed``, sharded with a ``DistributedSampler``) or any iterable of
            ``(images, labels, ...)`` batches. Images must be *un-normalised* floats in ``[0, 1]``
            (e.g. ``v2.ToImage(), v2.ToDtype(torch.float32, scale=True)`` only).
        mean, std: per-channel normalisation applied after corrupting (both ``None``: none).
        corruptions: names to evaluate (default: all of :func:`list_corruptions`, the 15 of the benchmark).
        severities: subset of 1..5.
        device: default: the model's device.
        max_batches: evaluate only the first ``max_batches`` batches (quick runs).
        seed: seeds the per-cell generators (created on ``device``).
        amp_dtype: autocast dtype for the model, or ``None``.
        clean: also measure clean top-1.

    Returns:
        :class:`CorruptionReport` (``table``, ``mean_top1``, ``clean_top1``, ``n``, ...).

    Under DDP the hit counts are all-reduced (every rank gets the global table) and the padding of
    a ``DistributedSampler`` is removed as in :func:`samix.evaluate.evaluate_classifier`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = list_corruptions() if corruptions is None else list(corruptions)
    if isinstance(corruptions, str):
        raise TypeError("corruptions must be a sequence of names, got a single string; wrap it in a list")
    if not names:
        raise ValueError("corruptions must name at least one corruption, got an empty sequence")
    specs = [get_corruption(n) for n in names]
    sevs = list(severities)
    if not sevs or any(isinstance(s, bool) or not isinstance(s, int) or s not in SEVERITIES for s in sevs):
        raise ValueError(f"severities must be a non-empty subset of {list(SEVERITIES)}, got {severities!r}")
    if len(set(names)) != len(names) or len(set(sevs)) != len(sevs):
        raise ValueError(f"corruptions and severities must not repeat, got {names!r} and {sevs!r}")
    _check_max_batches(max_batches)
    device = _model_device(model) if device is None else torch.device(device)

    if isinstance(dataset_or_loader, Dataset) and not isinstance(dataset_or_loader, DataLoader):
        sampler = None
        if _dist_ready():
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(dataset_or_loader, shuffle=False)
        loader: Iterable = DataLoader(dataset_or_loader, batch_size=batch_size, shuffle=False, sampler=sampler,
                                      num_workers=num_workers, pin_memory=device.type == "cuda")
    else:
        loader = dataset_or_loader
    limit = local_sample_limit(loader)

    gens = [[torch.Generator(device=device).manual_seed(_cell_seed(seed, n, s)) for s in sevs] for n in names]
    counts_dtype = torch.float32 if device.type == "mps" else torch.float64
    hits = torch.zeros(len(names) * len(sevs) + 2, dtype=counts_dtype, device=device)  # cells, clean, n
    autocast = torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    normalize = None
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
                    images, labels = images[:keep], labels[:keep]
                    if keep == 0:
                        continue
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                _check_corruption_images(images)
                if normalize is None:
                    normalize = _as_normalizer(mean, std, images.shape[1], device, images.dtype) or (lambda x: x)

                def count(x: Tensor) -> Tensor:
                    with autocast:
                        logits = model(normalize(x))
                    return (logits.argmax(1) == labels).sum()

                if clean:
                    hits[-2] += count(images)
                hits[-1] += labels.shape[0]
                for i, spec in enumerate(specs):
                    for j, s in enumerate(sevs):
                        hits[i * len(sevs) + j] += count(_apply(images, spec, s, gens[i][j]))
    finally:
        model.train(was_training)
    if _dist_ready():
        torch.distributed.all_reduce(hits, op=torch.distributed.ReduceOp.SUM)
    h = hits.double().cpu()
    n = float(h[-1])
    if n <= 0:
        raise ValueError("the data yielded no samples")
    table = {
        name: {s: 100.0 * float(h[i * len(sevs) + j]) / n for j, s in enumerate(sevs)} for i, name in enumerate(names)
    }
    cells = [v for row in table.values() for v in row.values()]
    return CorruptionReport(
        table=table,
        mean_top1=sum(cells) / len(cells),
        clean_top1=100.0 * float(h[-2]) / n if clean else None,
        n=int(round(n)),
        seed=seed,
    )
