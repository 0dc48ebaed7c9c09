"""Looking at mixed samples and training curves (matplotlib, Agg, no display).

* :func:`load_sample_photos` -- real photos bundled with scikit-image as a float
  ``[N, 3, size, size]`` tensor in ``[0, 1]``.
* :func:`mixing_cells` / :func:`mixing_grid` -- one pair of photos mixed by every
  policy at every requested ``lam`` (rows = policies, columns = ``lam``), the figure
  behind ``samix show``.
* :func:`mask_grid_cells` / :func:`save_mask_grid` -- masks of a learnable mixer
  (AutoMix, SAMix) at several ``lam`` with the mixes they make.
* :func:`save_image_grid`, :func:`plot_curves` -- generic helpers (image grids,
  metric curves) for the engine.

Convention shown in the grid (the one of :mod:`samix.mixing.base`)::

    cell = mask * A + (1 - mask) * B,     realised lam = mask.mean()

``A`` is the *original* sample and ``B`` its partner, so a cell at ``lam = 0.9``
is mostly ``A``. Each cell is produced by the policy's own ``_mix`` hook with the
requested ``lam`` forced and the fixed pairing ``index = [1, 0]``; policies that
draw their own geometry (e.g. resizemix picks its own box) may realise another
share, which is why every cell is annotated with the realised ``lam``.

``docs/img/mixing_grid.png`` is ``mixing_grid("docs/img/mixing_grid.png", seed=4, colors=256)``.

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas,
never through ``pyplot``: no global state, no display, safe in worker threads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

PathLike = Union[str, os.PathLike]

#: Photos bundled with scikit-image (no download needed), in the order ``load_sample_photos`` uses.
SAMPLE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
    "immunohistochemistry", "retina", "camera", "coins", "moon",
)

#: The default columns of :func:`mixing_grid`.
DEFAULT_LAMS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


# --------------------------------------------------------------------------- helpers
def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _new_figure(width: float, height: float, dpi: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _to_hwc(image: Tensor) -> np.ndarray:
    """``[C, H, W]`` tensor (C = 1 or 3) -> float ``[H, W(, 3)]`` NumPy array clipped to [0, 1]."""
    img = image.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    if img.shape[0] == 1:
        return img[0].numpy()
    return img.permute(1, 2, 0).numpy()


def _as_image_batch(images, name: str = "images") -> Tensor:
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name} must hold at least one image, got an empty sequence")
        if not all(isinstance(t, Tensor) for t in images):
            raise TypeError(f"{name} must be a tensor or a sequence of tensors")
        images = torch.stack([t.detach().to("cpu") for t in images])
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a [N, C, H, W] tensor or a sequence of [C, H, W] tensors, "
                        f"got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise ValueError(f"{name} must have shape [N, C, H, W] with N >= 1 and C in (1, 3), "
                         f"got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be floating point in [0, 1], got {images.dtype}")
    return images


# --------------------------------------------------------------------------- photos
def load_sample_photos(size: int = 128, n: int = 4, names: Optional[Sequence[str]] = None) -> Tensor:
    """Real photos bundled with scikit-image, as float32 ``[N, 3, size, size]`` in ``[0, 1]``.

    Each photo is center-cropped to a square (its shorter side) and resized to
    ``size`` with antialiasing (``torchvision.transforms.v2.functional``);
    grayscale photos are repeated over 3 channels.

    Args:
        size: side of the square output (>= 8).
        n: how many photos, taken in the order of :data:`SAMPLE_PHOTOS` (ignored when ``names`` is given).
        names: explicit scikit-image photo names (e.g. ``("chelsea", "rocket")``).
    """
    import skimage.data
    from torchvision.transforms.v2 import functional as F

    size = _check_int("size", size, 8)
    if names is None:
        n = _check_int("n", n, 1)
        if n > len(SAMPLE_PHOTOS):
            raise ValueError(f"n must be <= {len(SAMPLE_PHOTOS)} (the bundled photos), got {n}")
        names = SAMPLE_PHOTOS[:n]
    else:
        if isinstance(names, str) or not names:
            raise ValueError(f"names must be a non-empty sequence of photo names, got {names!r}")
        unknown = [m for m in names if m not in SAMPLE_PHOTOS]
        if unknown:
            raise ValueError(f"unknown photo name(s) {unknown}; known: {', '.join(SAMPLE_PHOTOS)}")
    out = []
    for name in names:
        arr = np.ascontiguousarray(getattr(skimage.data, name)())
        img = torch.from_numpy(arr)
        img = img.unsqueeze(0) if img.dim() == 2 else img.permute(2, 0, 1)[:3]
        img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
        img = F.to_dtype(img, torch.float32, scale=True)
        side = min(img.shape[-2:])
        img = F.center_crop(img, [side, side])
        img = F.resize(img, [size, size], antialias=True)
        out.append(img.clamp_(0.0, 1.0))
    return torch.stack(out).contiguous()


# --------------------------------------------------------------------------- mixing grid
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


def _check_lams(lams) -> np.ndarray:
    try:
        arr = np.asarray(lams, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"lams must be a sequence of numbers in [0, 1], got {lams!r}") from None
    if arr.size == 0:
        raise ValueError("lams must hold at least one value, got none")
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"lams must lie in [0, 1], got {arr.tolist()}")
    return arr


def _check_pair(photos) -> Tensor:
    photos = _as_image_batch(photos, "photos")
    if photos.shape[0] < 2:
        raise ValueError(f"photos must hold at least 2 images (A and B), got {photos.shape[0]}")
    return photos[:2]


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
    if cls.needs_model:
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
        try:
            result = mixer._mix(pair, index, np.array([lam], dtype=np.float64))
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
    pair = _check_pair(load_sample_photos(128, 2) if photos is None else photos)
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
    for r, cell in enumerate(cells):
        axes[r, 0].annotate(cell.policy, xy=(0, 0.5), xycoords="axes fraction", xytext=(-4, 0),
                            textcoords="offset points", ha="right", va="center", fontsize=9,
                            rotation=90)
    _save_png(fig, path, dpi, colors)
    return path


def _save_png(fig, path: Path, dpi: float, colors: Optional[int] = None) -> None:
    if colors is None:
        fig.savefig(path, format="png", dpi=dpi)
        return
    from PIL import Image

    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    rgb.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG) \
        .save(path, format="PNG", optimize=True)


# --------------------------------------------------------------------------- learned masks
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


# --------------------------------------------------------------------------- generic helpers
def save_image_grid(path: PathLike, images, nrow: int, titles: Optional[Sequence[str]] = None,
                    dpi: float = 100, cell_inches: float = 1.5) -> Path:
    """Save ``images`` (``[N, C, H, W]`` in [0, 1], C = 1 or 3, or a list of ``[C, H, W]``)
    as a PNG grid with ``nrow`` images per row (torchvision's ``make_grid`` convention),
    optionally titled; values outside [0, 1] are clipped. Returns the path."""
    path = _check_path(path)
    images = _as_image_batch(images)
    nrow = _check_int("nrow", nrow, 1)
    n = images.shape[0]
    if titles is not None:
        if isinstance(titles, str) or len(titles) != n:
            raise ValueError(f"titles must be a sequence of {n} strings (one per image), got {titles!r}")
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    extra = 0.3 if titles is not None else 0.0
    fig = _new_figure(cols * cell_inches, rows * (cell_inches + extra), dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99 - (0.25 / rows if titles else 0),
                        wspace=0.05, hspace=0.25 if titles else 0.05)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(_to_hwc(images[i]), cmap="gray" if images.shape[1] == 1 else None, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=8)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def plot_curves(path: PathLike, series: Mapping[str, Sequence[float]], xlabel: str = "epoch",
                ylabel: str = "", title: str = "", x: Optional[Sequence[float]] = None,
                dpi: float = 100) -> Path:
    """Line plot of several named series (e.g. ``{"train_loss": [...], "val_loss": [...]}``).

    The x values are ``x`` when given (shared by all series, as long as the longest),
    else ``1, 2, ...`` (epochs); series may differ in length and hold NaN (gaps).
    Returns the path of the PNG.
    """
    path = _check_path(path)
    if not isinstance(series, Mapping) or not series:
        raise ValueError(f"series must be a non-empty dict name -> list of numbers, got {series!r}")
    data = {}
    for name, values in series.items():
        try:
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise TypeError(f"series[{name!r}] must be a sequence of numbers, got {values!r}") from None
        if arr.size == 0:
            raise ValueError(f"series[{name!r}] is empty")
        data[str(name)] = arr
    longest = max(a.size for a in data.values())
    if x is None:
        xs = np.arange(1, longest + 1, dtype=np.float64)
    else:
        xs = np.asarray(x, dtype=np.float64).reshape(-1)
        if xs.size < longest:
            raise ValueError(f"x must have at least {longest} values (the longest series), got {xs.size}")
    fig = _new_figure(6.0, 4.0, dpi)
    ax = fig.subplots()
    for name, arr in data.items():
        ax.plot(xs[:arr.size], arr, label=name, marker="o" if arr.size <= 20 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=dpi)
    return path


__all__ = ["DEFAULT_LAMS", "MixCells", "SAMPLE_PHOTOS", "default_policies", "load_sample_photos",
           "mask_grid_cells", "mixing_cells", "mixing_grid", "plot_curves", "save_image_grid",
           "save_mask_grid"]
