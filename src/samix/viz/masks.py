"""Figures of learned masks (AutoMix, SAMix): the mixes a mask makes at several ``lam``, and the
masks of several runs side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from ._common import PathLike, _check_lams, _check_path, _new_figure, _save_png, _to_hwc

__all__ = ["mask_grid_cells", "save_mask_comparison", "save_mask_grid"]


def _display_range(images: Tensor) -> Tensor:
    """Map a batch to [0, 1] for display with ONE affine map (identity when already in [0, 1]).

    Normalised data (mean/std) is rescaled by the batch's global min/max; a common map
    commutes with mixing, so ``display(m A + (1 - m) B) == m display(A) + (1 - m) display(B)``.
    """
    x = images.detach().to("cpu", torch.float32)
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0:
        return x
    return (x - lo) / max(hi - lo, 1e-12)


def mask_grid_cells(images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The data of :func:`save_mask_grid`: pairs and their mixes under the given masks.

    Args:
        images: ``[2P(+1), C, H, W]``; pair ``k`` is ``A = images[2k]`` (original) and
            ``B = images[2k + 1]`` (partner), the pairing of ``AutoMix.masks_for``.
        masks: ``[L, P, 1, H, W]`` (or ``[L, P, H, W]``), weight of ``A``; resized
            bilinearly to ``H x W`` if needed and clipped to [0, 1].

    Returns:
        ``(A, B, masks, mixed)`` on the CPU in display range: ``A``, ``B`` ``[P, C, H, W]``,
        ``masks`` ``[L, P, 1, H, W]``, ``mixed = masks * A + (1 - masks) * B`` ``[L, P, C, H, W]``.
    """
    if not isinstance(masks, Tensor) or masks.dim() not in (4, 5):
        raise ValueError("masks must be a [L, P, 1, H, W] or [L, P, H, W] tensor, got "
                         f"{tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__}")
    if masks.dim() == 4:
        masks = masks.unsqueeze(2)
    if masks.shape[2] != 1:
        raise ValueError(f"masks must have one channel ([L, P, 1, H, W]), got shape {tuple(masks.shape)}")
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError("images must be a [N, C, H, W] tensor with C in (1, 3), got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    n_lam, n_pairs = masks.shape[:2]
    if n_lam < 1 or n_pairs < 1:
        raise ValueError(f"masks must hold at least one lam and one pair, got shape {tuple(masks.shape)}")
    if images.shape[0] < 2 * n_pairs:
        raise ValueError(f"images must hold 2 * P = {2 * n_pairs} images for {n_pairs} mask pairs, "
                         f"got {images.shape[0]}")
    x = _display_range(images[: 2 * n_pairs].float())
    a, b = x[0::2], x[1::2]
    h, w = x.shape[-2:]
    m = masks.detach().to("cpu", torch.float32)
    if m.shape[-2:] != (h, w):
        m = torch.nn.functional.interpolate(m.flatten(0, 1), size=(h, w), mode="bilinear",
                                            align_corners=False).view(n_lam, n_pairs, 1, h, w)
    m = m.clamp(0.0, 1.0)
    mixed = m * a + (1 - m) * b
    return a, b, m, mixed


_LABEL_BOX = dict(facecolor="black", alpha=0.6, pad=1.2, linewidth=0)


def _cell_figure(rows: int, cols: int, cell_inches: float, dpi: float, title: Optional[str], left: float,
                 hspace: float = 0.04):
    """A figure of ``rows x cols`` square image cells without ticks; ``left`` inches of margin."""
    top = 0.45 + (0.3 if title else 0.0)
    fig = _new_figure(cols * cell_inches + left, rows * cell_inches + top, dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=left / (cols * cell_inches + left), right=0.995, bottom=0.01,
                        top=1.0 - top / (rows * cell_inches + top), wspace=0.04, hspace=hspace)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 - 0.12 / (rows * cell_inches + top))
    return fig, axes


def _image_cell(ax, image: Tensor, label: str) -> None:
    ax.imshow(_to_hwc(image), cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
    ax.text(0.04, 0.05, label, transform=ax.transAxes, fontsize=8, color="white", weight="bold",
            va="bottom", bbox=_LABEL_BOX)


def _mask_cell(ax, mask: Tensor) -> None:
    ax.imshow(mask[0].numpy(), cmap="gray", vmin=0, vmax=1)
    ax.text(0.04, 0.05, f"λ̂={float(mask.mean()):.2f}", transform=ax.transAxes, fontsize=7,
            color="white", va="bottom", bbox=_LABEL_BOX)


def save_mask_grid(path: PathLike, images: Tensor, masks: Tensor, lams: Sequence[float],
                   title: Optional[str] = None, dpi: float = 100, cell_inches: float = 1.1) -> Path:
    """PNG of learned masks: two rows per pair (the mix, then the mask), one column per ``lam``.

    The left column shows the pair (``A`` above, ``B`` below); every mask cell is
    annotated with its mean (the realised share of ``A``). See :func:`mask_grid_cells`
    for the conventions of ``images`` and ``masks``. Returns the path.
    """
    path = _check_path(path)
    lam_arr = _check_lams(lams)
    a, b, m, mixed = mask_grid_cells(images, masks)
    if lam_arr.size != m.shape[0]:
        raise ValueError(f"lams must have one value per mask set ({m.shape[0]}), got {lam_arr.size}")
    n_pairs, n_lam = a.shape[0], lam_arr.size
    fig, axes = _cell_figure(2 * n_pairs, n_lam + 1, cell_inches, dpi, title, left=0.3)
    gray = a.shape[1] == 1
    for k in range(n_pairs):
        _image_cell(axes[2 * k, 0], a[k], "A")
        _image_cell(axes[2 * k + 1, 0], b[k], "B")
        axes[2 * k, 0].set_ylabel(f"pair {k}", fontsize=8)
        for c in range(n_lam):
            axes[2 * k, c + 1].imshow(_to_hwc(mixed[c, k]), cmap="gray" if gray else None, vmin=0, vmax=1)
            _mask_cell(axes[2 * k + 1, c + 1], m[c, k])
            if k == 0:
                axes[0, c + 1].set_title(f"λ={lam_arr[c]:g}", fontsize=9)
    axes[0, 0].set_title("pair", fontsize=9)
    _save_png(fig, path, dpi)
    return path


def save_mask_comparison(path: PathLike, images: Tensor, masks_by_run: "dict[str, Tensor]",
                         lams: Sequence[float], title: Optional[str] = None, dpi: float = 100,
                         cell_inches: float = 1.0) -> Path:
    """PNG comparing the learned masks of several runs on the SAME pairs: one row per run and pair,
    the pair's images ``A`` and ``B`` in the first two columns of every row (so each row reads on its
    own), the run's name on the left, then one mask per ``lam``, each annotated with its mean.
    ``masks_by_run``: run name -> ``[L, P, 1, H, W]`` as :func:`save_mask_grid` takes them (weight of
    ``A``)."""
    path = _check_path(path)
    lam_arr = _check_lams(lams)
    if not masks_by_run:
        raise ValueError("masks_by_run must name at least one run")
    cells = {name: mask_grid_cells(images, m) for name, m in masks_by_run.items()}
    a, b = next(iter(cells.values()))[:2]
    n_pairs, n_lam, n_runs = a.shape[0], lam_arr.size, len(cells)
    for name, (_, _, m, _) in cells.items():
        if m.shape[0] != n_lam or m.shape[1] != n_pairs:
            raise ValueError(f"masks of run {name!r} must be [L={n_lam}, P={n_pairs}, 1, H, W], got {tuple(m.shape)}")
    fig, axes = _cell_figure(n_pairs * n_runs, n_lam + 2, cell_inches, dpi, title, left=1.3, hspace=0.06)
    for k in range(n_pairs):
        for r, name in enumerate(cells):
            row = k * n_runs + r
            _image_cell(axes[row, 0], a[k], "A")
            _image_cell(axes[row, 1], b[k], "B")
            axes[row, 0].set_ylabel(f"{name}\npair {k}", fontsize=8, rotation=0, ha="right", va="center")
            for c in range(n_lam):
                _mask_cell(axes[row, c + 2], cells[name][2][c, k])
    for c in range(n_lam):
        axes[0, c + 2].set_title(f"λ={lam_arr[c]:g}", fontsize=9)
    axes[0, 0].set_title("A", fontsize=9)
    axes[0, 1].set_title("B", fontsize=9)
    _save_png(fig, path, dpi)
    return path
