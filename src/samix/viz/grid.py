"""The mixing grid behind ``samix show``: one pair of photos mixed by every policy at every
requested ``lam`` (rows = policies, columns = ``lam``). Conventions: :mod:`samix.viz`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from . import images as _images
from ._common import PathLike, _check_int, _check_lams, _check_pair, _check_path, _new_figure, _save_png, _to_hwc

__all__ = ["DEFAULT_LAMS", "MixCells", "default_policies", "mixing_cells", "mixing_grid"]

#: The default columns of :func:`mixing_grid`.
DEFAULT_LAMS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class MixCells:
    """One policy applied to one pair ``(A, B)`` at several requested ``lam``.

    Attributes:
        policy: the registered policy name.
        lams: float64 ``[L]`` requested shares of ``A``.
        images: float ``[L, C, H, W]``, the mixed cells (``A`` is the original, ``B`` the partner).
        realised: float64 ``[L]``, realised share of ``A``: ``mask.mean()`` for mask-based
            policies, the reported ``MixResult.lam`` for global ones.
        masks: ``[L, 1, H, W]`` weight of ``A`` per pixel, or ``None`` (global policy).
    """

    policy: str
    lams: np.ndarray
    images: Tensor
    realised: np.ndarray
    masks: Optional[Tensor]


def default_policies() -> list[str]:
    """Every registered policy that needs no model and no file (``needs_model`` and
    ``needs_pretrained`` both False), sorted."""
    from samix.mixing import get_mixer_class, list_mixers

    return [name for name in list_mixers()
            if not (get_mixer_class(name).needs_model or get_mixer_class(name).needs_pretrained)]


def stand_in_signals(names: Sequence[str], photos: Tensor) -> dict:
    """Model-free stand-ins for what a model-guided policy reads, to show it on photos without a network:
    the spectral-residual saliency (SaliencyMix's) at full size for ``saliency``, and the same map
    average-pooled to a 7 x 7 grid (a ResNet's last map at 224 px) for ``activation``, to a token grid that
    divides the image (8 x 8 at 128 px: a ViT/16's) for ``attention``, and normalised to sum
    to 1 for ``cam`` (a semantic percent map). A figure of such a
    policy says so in its row label; in training the signals come from the online model."""
    import torch.nn.functional as F

    from samix.mixing.saliencymix import spectral_residual_saliency

    out = {}
    if not names:
        return out
    sal = spectral_residual_saliency(photos).float().unsqueeze(1)
    sal = F.interpolate(sal, size=photos.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    for n in names:
        if n == "saliency":
            out[n] = sal
        elif n == "activation":
            out[n] = F.adaptive_avg_pool2d(sal.unsqueeze(1), 7).squeeze(1)
        elif n == "attention":  # a ViT/16's token grid: the patch must divide the image (128 px: 8 x 8)
            side = min(photos.shape[-2:])
            grid = next((g for g in (8, 7, 4) if photos.shape[-2] % g == 0 and photos.shape[-1] % g == 0), 7)
            out[n] = F.adaptive_avg_pool2d(sal.unsqueeze(1), grid if side >= grid else 1).squeeze(1)
        elif n == "cam":  # a semantic percent map: non-negative, summing to 1
            c = sal - sal.flatten(1).min(1).values.view(-1, 1, 1)
            out[n] = c / c.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1)
        else:
            raise ValueError(f"no photo stand-in for the model signal {n!r}")
    return out


def mixing_cells(policy: str, photos: Tensor, lams: Sequence[float] = DEFAULT_LAMS, seed: int = 0,
                 **mixer_kwargs) -> MixCells:
    """Mix photo ``A = photos[0]`` (original) with ``B = photos[1]`` (partner) at each ``lam``.

    The policy is built with ``mode="batch"`` and a ``torch.Generator`` seeded with
    ``seed`` afresh for every ``lam`` (so random geometry, e.g. a box centre, is the
    same draw in every column); its ``_mix`` hook is then called on the batch
    ``[A, B]`` with the fixed pairing ``index = [1, 0]`` and ``lam`` forced, and the
    first sample is kept: ``mask * A + (1 - mask) * B``. This is the data
    :func:`mixing_grid` draws.

    Raises:
        ValueError: unknown policy, a policy that needs a model, bad ``lams``/``photos``.
    """
    from samix.mixing import build_mixer, get_mixer_class

    cls = get_mixer_class(policy)
    if cls.needs_model and not (cls.requires or cls.relabels):  # nothing to stand in for the model
        raise ValueError(f"policy {policy!r} needs a model (needs_model=True) and cannot be shown "
                         f"on photos alone; choose one of {default_policies()}")
    seed = _check_int("seed", seed, 0)
    lam_arr = _check_lams(lams)
    pair = _check_pair(photos)
    index = torch.tensor([1, 0], device=pair.device)
    images, realised, masks = [], [], []
    for lam in lam_arr:
        gen = torch.Generator().manual_seed(seed)
        mixer = build_mixer(policy, mode="batch", generator=gen, **mixer_kwargs)
        signals = stand_in_signals(cls.requires, pair)
        try:
            result = mixer._mix(pair, index, np.array([lam], dtype=np.float64), **signals)
        except Exception as err:  # name the policy and lam, keep the original error type
            err.add_note(f"while mixing policy {policy!r} at lam={lam:g} for the mixing grid")
            raise
        images.append(result.images[0].detach())
        if result.mask is not None:
            mask = result.mask[0].detach().to(torch.float64)
            masks.append(mask)
            realised.append(float(mask.mean()))
        else:
            masks.append(None)
            realised.append(float(result.lam[0]))
    if all(m is None for m in masks):
        mask_t = None
    else:  # mixing global and mask results (e.g. mixup_cutmix): a global cell is a constant mask
        h, w = pair.shape[-2:]
        mask_t = torch.stack([m.expand(1, h, w) if m is not None
                              else torch.full((1, h, w), r, dtype=torch.float64)
                              for m, r in zip(masks, realised)])
    return MixCells(policy, lam_arr, torch.stack(images), np.asarray(realised, dtype=np.float64), mask_t)


def mixing_grid(path: PathLike, policies: Optional[Sequence[str]] = None,
                lams: Sequence[float] = DEFAULT_LAMS, photos: Optional[Tensor] = None, seed: int = 0,
                dpi: float = 100, cell_inches: float = 1.25, colors: Optional[int] = None) -> Path:
    """Write ONE PNG: rows = policies, columns = requested ``lam``; return its path.

    Every cell mixes the same pair (``A`` original, ``B`` partner) -- see
    :func:`mixing_cells` -- and is annotated with the realised share of ``A``
    (``λ̂``, the mask mean). A left column shows the sources (``A`` in the first row,
    ``B`` in the second; with a single row both side by side).

    Args:
        path: output PNG file (parent folders are created).
        policies: names from :func:`samix.mixing.list_mixers`; default :func:`default_policies`.
        lams: requested shares of ``A``, one column each (in [0, 1]).
        photos: ``[N >= 2, 3, H, W]`` in [0, 1]; default ``load_sample_photos(128, 2)``
            (astronaut = A, chelsea = B).
        seed: seed of every cell's generator.
        dpi, cell_inches: resolution and size of one cell.
        colors: when given (2..256), store the PNG with an adaptive palette of that many
            colours (Floyd-Steinberg dithered): about 3x smaller files, e.g. for docs.
    """
    path = _check_path(path)
    if policies is None:
        policies = default_policies()
    if isinstance(policies, str):
        policies = [policies]
    policies = list(policies)
    if not policies:
        raise ValueError("policies must name at least one policy, got none")
    if colors is not None:
        colors = _check_int("colors", colors, 2)
        if colors > 256:
            raise ValueError(f"colors must be <= 256 (a PNG palette), got {colors}")
    pair = _check_pair(_images.load_sample_photos(128, 2) if photos is None else photos)
    cells = [mixing_cells(p, pair, lams, seed) for p in policies]
    lam_arr = cells[0].lams

    rows, cols = len(policies), len(lam_arr) + 1
    fig = _new_figure(cols * cell_inches + 0.6, rows * cell_inches + 0.5, dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.6 / (cols * cell_inches + 0.6), right=0.995, bottom=0.01,
                        top=1.0 - 0.4 / (rows * cell_inches + 0.5), wspace=0.04, hspace=0.04)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    # source column
    if rows == 1:
        axes[0, 0].imshow(_to_hwc(torch.cat([pair[0], pair[1]], dim=-1)))
        axes[0, 0].set_title("A | B", fontsize=9)
    else:
        for r, (label, img) in enumerate((("A (original)", pair[0]), ("B (partner)", pair[1]))):
            axes[r, 0].imshow(_to_hwc(img))
            axes[r, 0].text(0.03, 0.04, label.split()[0], transform=axes[r, 0].transAxes, fontsize=9,
                            color="white", weight="bold", va="bottom",
                            bbox=dict(facecolor="black", alpha=0.6, pad=1.5, linewidth=0))
        axes[0, 0].set_title("source", fontsize=9)
        for r in range(2, rows):
            axes[r, 0].axis("off")
    # mixed cells
    for r, cell in enumerate(cells):
        for c in range(len(lam_arr)):
            ax = axes[r, c + 1]
            ax.imshow(_to_hwc(cell.images[c]))
            ax.text(0.03, 0.04, f"λ̂={cell.realised[c]:.2f}", transform=ax.transAxes, fontsize=7,
                    color="white", va="bottom",
                    bbox=dict(facecolor="black", alpha=0.6, pad=1.2, linewidth=0))
            if r == 0:
                ax.set_title(f"λ={lam_arr[c]:g}", fontsize=9)
    # policy names on the left of each row (outside the source column)
    from samix.mixing import get_mixer_class

    for r, cell in enumerate(cells):
        label = cell.policy
        if get_mixer_class(cell.policy).requires:
            label += "\n(stand-in " + ", ".join(get_mixer_class(cell.policy).requires) + ")"
        elif get_mixer_class(cell.policy).relabels:
            label += "\n(area λ)"
        axes[r, 0].annotate(label, xy=(0, 0.5), xycoords="axes fraction", xytext=(-4, 0),
                            textcoords="offset points", ha="right", va="center", fontsize=9,
                            rotation=90)
    _save_png(fig, path, dpi, colors)
    return path
