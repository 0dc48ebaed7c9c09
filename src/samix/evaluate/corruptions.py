"""The 15 common corruptions of CIFAR-10-C / CIFAR-100-C, on batches, in PyTorch.

Reference: D. Hendrycks and T. Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019 (arXiv:1903.12261). The severity parameters below are
those of the CIFAR generator ``ImageNet-C/create_c/make_cifar_c.py`` of the authors' repository
(github.com/hendrycks/robustness), copied as data into :data:`CORRUPTION_PARAMS`; the algorithms
are re-implemented here in torch (no OpenCV, ImageMagick or scikit-image at run time).

Use::

    from samix.evaluate import corrupt, list_corruptions
    g = torch.Generator().manual_seed(0)
    noisy = corrupt(images, "gaussian_noise", severity=3, generator=g)

Conventions
-----------
* ``images`` are *un-normalised* floats in ``[0, 1]``, shape ``[B, C, H, W]`` with ``C`` 1 or 3, any
  size. The output has the input's shape, dtype, device and memory format and lies in ``[0, 1]``.
  Computation runs in float32 (float64 for float64 inputs). The benchmark stores uint8 files; the
  output here is *not* quantised (``(out * 255).floor() / 255`` reproduces that step).
* Every random draw comes from ``generator`` (a ``torch.Generator``; ``None`` = torch's global
  RNG), and each image of the batch gets its own draws. Draws are made on the generator's device and
  moved to the images' device, so a CPU generator gives the same corruption on any device (pass a
  generator on the images' device for speed). The random streams are not NumPy's, so single images
  are not bit-identical to the released ``.npy`` files; the distributions are the benchmark's.
* Spatial parameters in pixels are the benchmark's up to 32x32 and grow with larger images: with
  ``s = max(1, min(H, W) / 32)`` blur radii and sigmas are multiplied by ``s`` (glass blur's pixel
  displacement becomes ``round(s * delta)``). They are not shrunk below CIFAR's for smaller images
  (28x28 MNIST-like data): a disk of radius ``0.875`` is a single pixel, which would make defocus
  severity 4 weaker than severity 3. Zoom factors, pixelation factors, the fog fractal and the
  elastic parameters are relative to the image size at every size (the generator writes the
  elastic ones as fractions of ``IMSIZE = 32``). For 32x32 images: CIFAR exactly.

Deviations from the generator, chosen and documented:
* ``frost`` blends the image with photos of frost in the benchmark; those assets are not shipped,
  so a procedural frost texture (fractal haze plus streaks of ice needles, pale blue-white, mean
  intensity about 0.5) stands in. The blend weights ``(a, b)`` of ``a * x + b * frost`` are the
  benchmark's.
* ``motion_blur`` and the streaks of ``snow`` use ImageMagick's one-sided motion kernel (width
  ``2 ceil(radius) + 1``, weights ``exp(-i^2 / 2 sigma^2)``, taps at ``round(i (cos t, sin t))``,
  edge pixels repeated) written here as a gather over taps.
* ``zoom_blur``: ``np.arange(1, 1.06, 0.01)`` in the generator has 7 elements because of floating
  point (1.00..1.06), the other severities 12, 16, 21 and 26; the table keeps those counts. The
  zoom is about the image centre with bilinear interpolation (the generator crops the centre and
  calls ``scipy.ndimage.zoom``; the sub-pixel alignment differs slightly).
* ``elastic_transform`` composes the random affine and the smoothed displacement field into one
  bilinear resampling (the generator resamples twice) with mirror padding.
* ``defocus_blur`` for radii above 8 px (only reached on large images) uses an integer grid.
* ``pixelate`` reproduces PIL's BOX resampling exactly (down to ``int(size * c)``, then up, which for
  BOX is nearest-neighbour), as separable resampling matrices.
* ``jpeg_compression`` rounds to uint8 and round-trips through libjpeg
  (``torchvision.io.encode_jpeg``/``decode_jpeg``) on the CPU, like the generator's PIL call.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from samix._checks import argument_error, is_int
from samix._registry import Registry

__all__ = [
    "SEVERITIES",
    "CORRUPTION_PARAMS",
    "CORRUPTION_CATEGORIES",
    "CorruptionSpec",
    "register_corruption",
    "list_corruptions",
    "get_corruption",
    "corrupt",
]

SEVERITIES: Tuple[int, ...] = (1, 2, 3, 4, 5)

# ----------------------------------------------------------------------------------------------
# Parameter tables (severity 1..5), from make_cifar_c.py of github.com/hendrycks/robustness.
# ----------------------------------------------------------------------------------------------
_PARAMS: Dict[str, tuple] = {
    # noise
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std of additive N(0, c^2)
    "shot_noise": (500, 250, 100, 75, 50),  # photons at full intensity: Poisson(x c) / c
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # salt-and-pepper amount
    # blur
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # (disk radius, alias blur)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # (sigma, delta, iters)
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),  # (radius, sigma), angle ~ U(-45, 45)
    "zoom_blur": (7, 12, 16, 21, 26),  # number of zoom factors 1.00, 1.01, ... (see module doc)
    # weather
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),  # (mean, std, zoom, threshold, blur radius, blur sigma, image weight)
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # a * x + b * frost
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # (fog weight, fractal wibble decay)
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to V of HSV
    # digital
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # (x - mean) * c + mean
    "elastic_transform": (
        (0.0, 0.0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ),  # (alpha, sigma, affine jitter) as fractions of the image size
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # resize factor
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
}

#: Read-only view: corruption name -> its 5 per-severity parameters (index ``severity - 1``).
CORRUPTION_PARAMS: Mapping[str, tuple] = MappingProxyType(_PARAMS)

#: The benchmark's four groups.
CORRUPTION_CATEGORIES: Mapping[str, Tuple[str, ...]] = MappingProxyType(
    {
        "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
        "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
        "weather": ("snow", "frost", "fog", "brightness"),
        "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
    }
)


@dataclass(frozen=True)
class CorruptionSpec:
    """One registered corruption: ``fn(images, params[severity - 1], generator) -> images``."""

    name: str
    category: str
    params: tuple
    fn: Callable[[Tensor, object, Optional[torch.Generator]], Tensor]


#: Registered corruptions by name, in registration order (the benchmark's).
CORRUPTIONS: Registry[CorruptionSpec] = Registry("corruption", sort=False)
_REGISTRY = CORRUPTIONS.entries


def register_corruption(name: str, category: str, params: Sequence):
    """Register ``fn(images, param, generator)`` under ``name`` with one parameter per severity.

    ``images`` reach ``fn`` validated, contiguous, in the compute dtype; ``fn`` may return values
    outside ``[0, 1]`` (the caller clips).
    """
    params = tuple(params)
    if len(params) != len(SEVERITIES):
        raise ValueError(f"params must have one entry per severity ({len(SEVERITIES)}), got {len(params)}")

    def deco(fn):
        CORRUPTIONS.register(name, CorruptionSpec(name, category, params, fn))
        return fn

    return deco


def list_corruptions() -> list[str]:
    """Names of the registered corruptions, in the benchmark's order (noise, blur, weather, digital)."""
    return CORRUPTIONS.list()


def get_corruption(name: str) -> CorruptionSpec:
    """The :class:`CorruptionSpec` of ``name``; unknown names raise ``ValueError`` listing the known ones."""
    return CORRUPTIONS.get(name)


def _check_severity(severity) -> int:
    if not is_int(severity) or severity not in SEVERITIES:
        raise argument_error("severity", f"one of the ints {list(SEVERITIES)}", severity)
    return severity


def _check_corruption_images(images, check_range: bool = True) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be 4-D [B, C, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor with values in [0, 1], got {images.dtype}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    if min(images.shape) < 1:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
    if check_range:
        lo, hi = torch.aminmax(images.detach())
        lo, hi = float(lo), float(hi)
        if not (lo >= -1e-3 and hi <= 1 + 1e-3):  # also catches NaN
            raise ValueError(
                "images must be un-normalised, with values in [0, 1] (normalise after corrupting); "
                f"got values in [{lo:.4g}, {hi:.4g}]"
            )


def corrupt(images: Tensor, name: str, severity: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to a batch of images in ``[0, 1]``.

    Args:
        images: float ``[B, C, H, W]``, ``C`` in {1, 3}, values in ``[0, 1]`` (un-normalised).
        name: one of :func:`list_corruptions`.
        severity: int in 1..5.
        generator: ``torch.Generator`` for every random draw (``None``: global RNG).

    Returns:
        The corrupted batch, clipped to ``[0, 1]``, same shape/dtype/device/memory format
        (detached: corruptions are for evaluation, no gradient flows through them).
    """
    spec = get_corruption(name)
    severity = _check_severity(severity)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    _check_corruption_images(images)
    return _apply(images, spec, severity, generator)


def _apply(images: Tensor, spec: CorruptionSpec, severity: int, generator: Optional[torch.Generator]) -> Tensor:
    """:func:`corrupt` without validation (the images are known to be fine)."""
    work_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.detach().to(dtype=work_dtype, memory_format=torch.contiguous_format).clamp(0, 1)
    out = spec.fn(x, spec.params[severity - 1], generator).clamp_(0, 1)
    channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return out.to(dtype=images.dtype, memory_format=fmt)


# ----------------------------------------------------------------------------------------------
# Random draws (always from the generator's device, then moved).
# ----------------------------------------------------------------------------------------------


def _draw_device(generator: Optional[torch.Generator], device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def _rand(shape, generator, like: Tensor) -> Tensor:
    u = torch.rand(shape, generator=generator, device=_draw_device(generator, like.device))
    return u.to(device=like.device, dtype=like.dtype)


def _randn(shape, generator, like: Tensor) -> Tensor:
    z = torch.randn(shape, generator=generator, device=_draw_device(generator, like.device))
    return z.to(device=like.device, dtype=like.dtype)


def _uniform(shape, low: float, high: float, generator, like: Tensor) -> Tensor:
    return _rand(shape, generator, like) * (high - low) + low


def _scale(x: Tensor) -> float:
    """Resolution factor for pixel-valued parameters: ``max(1, min(H, W) / 32)`` (module doc)."""
    return max(1.0, min(x.shape[-2], x.shape[-1]) / 32.0)


# ----------------------------------------------------------------------------------------------
# Filtering helpers.
# ----------------------------------------------------------------------------------------------


def _border_index(n: int, before: int, after: int, mode: str, device) -> Tensor:
    """Indices of a 1-D signal of length ``n`` extended by ``before``/``after`` samples.

    ``edge``: a a | a b c d | d d (scipy "nearest"); ``symmetric``: b a | a b c d | d c (scipy
    "reflect"); ``reflect``: c b | a b c d | c b (OpenCV BORDER_REFLECT_101, scipy "mirror").
    Works for any padding width (the pattern repeats).
    """
    i = torch.arange(-before, n + after, device=device)
    if mode == "edge" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "symmetric":
        m = i.remainder(2 * n)
        return torch.where(m < n, m, 2 * n - 1 - m)
    if mode == "reflect":
        m = i.remainder(2 * n - 2)
        return torch.where(m < n, m, 2 * n - 2 - m)
    raise ValueError(f"unknown border mode {mode!r}")


def _pad(x: Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> Tensor:
    h, w = x.shape[-2:]
    x = x.index_select(-2, _border_index(h, top, bottom, mode, x.device))
    return x.index_select(-1, _border_index(w, left, right, mode, x.device))


def _gaussian_kernel1d(sigma: float, radius: int) -> Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _separable(x: Tensor, k_h: Tensor, k_w: Tensor, mode: str) -> Tensor:
    """Depthwise correlation with ``k_h`` along H then ``k_w`` along W (odd lengths)."""
    c = x.shape[1]
    rh, rw = (k_h.numel() - 1) // 2, (k_w.numel() - 1) // 2
    x = _pad(x, rh, rh, rw, rw, mode)
    wh = k_h.to(x).view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    ww = k_w.to(x).view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    return F.conv2d(F.conv2d(x, wh, groups=c), ww, groups=c)


def _gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0, mode: str = "edge") -> Tensor:
    """``scipy.ndimage.gaussian_filter`` per channel: radius ``int(truncate * sigma + 0.5)``."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return x
    k = _gaussian_kernel1d(sigma, radius)
    return _separable(x, k, k, mode)


def _filter2d(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Depthwise 2-D correlation with an odd-sized ``kernel`` (like ``cv2.filter2D``)."""
    c = x.shape[1]
    kh, kw = kernel.shape
    x = _pad(x, kh // 2, kh // 2, kw // 2, kw // 2, mode)
    return F.conv2d(x, kernel.to(x).view(1, 1, kh, kw).repeat(c, 1, 1, 1), groups=c)


def _center_zoom(x: Tensor, zoom: float) -> Tensor:
    """Zoom in by ``zoom >= 1`` about the image centre, same size out (bilinear)."""
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0 / zoom
    theta[:, 1, 1] = 1.0 / zoom
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _motion_blur(x: Tensor, radius: float, sigma: float, angles_deg: Tensor) -> Tensor:
    """ImageMagick-style motion blur: ``out(p) = sum_i w_i x(p + round(i (cos t, sin t)))``.

    ``w_i ~ exp(-i^2 / (2 sigma^2))`` for ``i = 0 .. 2 ceil(radius)`` (normalised); edge pixels
    repeat. ``angles_deg`` holds one angle per image. One gather per tap, no loop over the batch.
    """
    b, c, h, w = x.shape
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(i**2) / (2.0 * sigma**2))
    weights = (weights / weights.sum()).tolist()
    theta = torch.deg2rad(angles_deg.to(device=x.device, dtype=torch.float32)).view(b, 1)
    i = i.to(device=x.device, dtype=torch.float32).view(1, width)
    ox = torch.ceil(i * torch.cos(theta) - 0.5).long()  # [B, width]
    oy = torch.ceil(i * torch.sin(theta) - 0.5).long()
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    flat = x.reshape(b, c, h * w)
    out = torch.zeros_like(flat)
    for t in range(width):
        yy = (ys + oy[:, t].view(b, 1, 1)).clamp_(0, h - 1)
        xx = (xs + ox[:, t].view(b, 1, 1)).clamp_(0, w - 1)
        idx = (yy * w + xx).view(b, 1, h * w).expand(b, c, h * w)
        out.add_(flat.gather(2, idx), alpha=weights[t])
    return out.view(b, c, h, w)


def _plasma_fractal(batch: int, h: int, w: int, wibble_decay: float, generator, like: Tensor) -> Tensor:
    """Diamond-square height maps ``[B, 1, h, w]`` in ``[0, 1]`` (the benchmark's fog pattern).

    The map side is the next power of two >= ``max(h, w)`` (32 for CIFAR), cropped to ``h x w``.
    The random amplitude starts at 1 and is divided by ``wibble_decay ** 2`` per level (the
    generator's ``wibble * U(-wibble, wibble)`` with ``wibble /= decay``; the overall scale cancels in
    the min-max normalisation).
    """
    size = 1 << max(1, math.ceil(math.log2(max(h, w, 2))))
    m = torch.zeros(batch, size, size, dtype=like.dtype, device=like.device)
    step, amp = size, 1.0

    def noisy_mean(total: Tensor) -> Tensor:
        return total / 4 + amp * _uniform(total.shape, -1.0, 1.0, generator, like)

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        m[:, half::step, half::step] = noisy_mean(squares)
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = noisy_mean(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        m[:, half::step, 0::step] = noisy_mean(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step = half
        amp /= wibble_decay**2
    m = m[:, :h, :w]
    lo = m.amin((1, 2), keepdim=True)
    hi = m.amax((1, 2), keepdim=True)
    return ((m - lo) / (hi - lo).clamp_min(1e-12)).unsqueeze(1)


def _gray(x: Tensor) -> Tensor:
    """ITU-R 601 luma (OpenCV's RGB2GRAY), ``[B, 1, H, W]``; identity for one channel."""
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _quantize_floor(x: Tensor) -> Tensor:
    """``np.uint8(x * 255) / 255`` (truncation), as the generator does between steps."""
    return torch.floor(x.clamp(0, 1) * 255) / 255


# ----------------------------------------------------------------------------------------------
# Noise.
# ----------------------------------------------------------------------------------------------


@register_corruption("gaussian_noise", "noise", _PARAMS["gaussian_noise"])
def _gaussian_noise(x: Tensor, std: float, generator) -> Tensor:
    """``x + N(0, std^2)`` per pixel and channel."""
    return x + std * _randn(x.shape, generator, x)


@register_corruption("shot_noise", "noise", _PARAMS["shot_noise"])
def _shot_noise(x: Tensor, photons: float, generator) -> Tensor:
    """``Poisson(x * photons) / photons`` per pixel and channel."""
    rates = (x * photons).to(_draw_device(generator, x.device))
    return torch.poisson(rates, generator=generator).to(x.device) / photons


@register_corruption("impulse_noise", "noise", _PARAMS["impulse_noise"])
def _impulse_noise(x: Tensor, amount: float, generator) -> Tensor:
    """Salt and pepper (scikit-image ``mode='s&p'``): each value independently becomes 0 or 1
    (equally likely) with probability ``amount``."""
    hit = _rand(x.shape, generator, x) < amount
    salt = (_rand(x.shape, generator, x) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


# ----------------------------------------------------------------------------------------------
# Blur.
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """The generator's ``disk``: a normalised disk on a grid of half-size ``max(8, ceil(radius))``,
    anti-aliased by a 3x3 (radius <= 8) or 5x5 Gaussian of std ``alias_blur`` (``cv2.GaussianBlur``),
    then cropped to its support."""
    half = 8 if radius <= 8 else math.ceil(radius)
    ksize = 3 if radius <= 8 else 5
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t.view(-1, 1) ** 2 + t.view(1, -1) ** 2) <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    g = _gaussian_kernel1d(alias_blur, ksize // 2)
    kernel = _separable(disk.view(1, 1, *disk.shape), g, g, "reflect")[0, 0]
    keep = math.floor(radius) + ksize // 2  # support of disk (+) blur
    keep = min(keep, half)
    return kernel[half - keep : half + keep + 1, half - keep : half + keep + 1].contiguous()


@register_corruption("defocus_blur", "blur", _PARAMS["defocus_blur"])
def _defocus_blur(x: Tensor, p, generator) -> Tensor:
    """Correlation with an anti-aliased disk of radius ``r * s`` (mirror borders)."""
    radius, alias_blur = p
    return _filter2d(x, _disk_kernel(float(radius) * _scale(x), float(alias_blur)), "reflect")


@functools.lru_cache(maxsize=32)
def _shuffle_schedule(h: int, w: int, delta: int, device: str) -> Tuple[Tensor, ...]:
    """Groups of pixel positions whose swaps can run at once, in an order equivalent to the
    generator's raster loop ``for h in range(H - d, d, -1): for w in range(W - d, d, -1)``.

    A swap at (h, w) touches rows/cols ``[h - d, h + d - 1] x [w - d, w + d - 1]``. Position (h, w)
    goes to wave ``t = 2d (H - d - h) + (W - d - w)``: swaps whose windows overlap keep their
    original order, swaps in one wave have disjoint windows.
    """
    waves: Dict[int, list] = {}
    for row in range(h - delta, delta, -1):
        for col in range(w - delta, delta, -1):
            t = 2 * delta * (h - delta - row) + (w - delta - col)
            waves.setdefault(t, []).append(row * w + col)
    return tuple(torch.tensor(waves[t], dtype=torch.long, device=device) for t in sorted(waves))


def _local_shuffle(x: Tensor, delta: int, generator) -> Tensor:
    """The glass-blur pixel shuffle: position (h, w) swaps its pixel with the one at
    ``(h + dy, w + dx)``, ``dy, dx ~ U{-delta, ..., delta - 1}`` (numpy ``randint(-d, d)``), in the
    generator's sequential raster order (so pixels can travel further than ``delta``)."""
    b, _, h, w = x.shape
    dev = _draw_device(generator, x.device)
    offsets = torch.randint(-delta, delta, (2, b, h, w), generator=generator, device=dev).to(x.device)
    return _swap_pixels(x, delta, offsets[0], offsets[1])


def _swap_pixels(x: Tensor, delta: int, dy: Tensor, dx: Tensor) -> Tensor:
    """Run the sequential swaps of :func:`_local_shuffle` for given offsets ``dy, dx`` ``[B, H, W]``,
    one wave of independent swaps at a time (see :func:`_shuffle_schedule`)."""
    b, c, h, w = x.shape
    waves = _shuffle_schedule(h, w, delta, str(x.device))
    if not waves:
        return x
    partner = (dy * w + dx).reshape(b, h * w)  # flat offset of each position's partner
    flat = x.reshape(b, c, h * w).clone()
    for pos in waves:
        n = pos.numel()
        ia = pos.view(1, 1, n).expand(b, c, n)
        ib = (pos.view(1, n) + partner[:, pos]).view(b, 1, n).expand(b, c, n)
        va = flat.gather(2, ia)
        vb = flat.gather(2, ib)
        flat.scatter_(2, ia, vb)
        flat.scatter_(2, ib, va)
    return flat.view(b, c, h, w)


@register_corruption("glass_blur", "blur", _PARAMS["glass_blur"])
def _glass_blur(x: Tensor, p, generator) -> Tensor:
    """Gaussian blur (std ``sigma * s``), 8-bit truncation, ``iterations`` rounds of local pixel
    swaps within ``delta`` pixels, Gaussian blur again."""
    sigma, delta, iterations = p
    s = _scale(x)
    sigma = sigma * s
    delta = round(delta * s)
    y = _quantize_floor(_gaussian_blur(x, sigma))
    for _ in range(iterations):
        y = _local_shuffle(y, delta, generator)
    return _gaussian_blur(y, sigma)


@register_corruption("motion_blur", "blur", _PARAMS["motion_blur"])
def _motion_blur_corruption(x: Tensor, p, generator) -> Tensor:
    """Motion blur of radius ``r * s`` and std ``sigma * s`` at an angle ~ U(-45, 45) degrees per image."""
    radius, sigma = p
    s = _scale(x)
    angles = _uniform((x.shape[0],), -45.0, 45.0, generator, x)
    return _motion_blur(x, radius * s, sigma * s, angles)


@register_corruption("zoom_blur", "blur", _PARAMS["zoom_blur"])
def _zoom_blur(x: Tensor, count: int, generator) -> Tensor:
    """Average of the image and its centre zooms by ``1.00, 1.01, ..., 1 + 0.01 (count - 1)``."""
    out = x.clone()
    for k in range(count):
        out += _center_zoom(x, 1.0 + 0.01 * k)
    return out / (count + 1)


# ----------------------------------------------------------------------------------------------
# Weather.
# ----------------------------------------------------------------------------------------------


@register_corruption("snow", "weather", _PARAMS["snow"])
def _snow(x: Tensor, p, generator) -> Tensor:
    """Snow layer ``N(mean, std)`` zoomed, thresholded, 8-bit truncated, motion-blurred at an angle
    ~ U(-135, -45); the image is whitened ``w x + (1 - w) max(x, 1.5 gray + 0.5)`` and the layer
    plus its 180-degree rotation is added."""
    mean, std, zoom, threshold, radius, sigma, weight = p
    b, _, h, w = x.shape
    s = _scale(x)
    layer = mean + std * _randn((b, 1, h, w), generator, x)
    layer = _center_zoom(layer, float(zoom))
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = _quantize_floor(layer)
    angles = _uniform((b,), -135.0, -45.0, generator, x)
    layer = _motion_blur(layer, radius * s, sigma * s, angles)
    x = weight * x + (1 - weight) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-2, -1)


_FROST_TINT = (0.82, 0.90, 1.0)  # pale blue-white (R, G, B)


def _frost_texture(x: Tensor, generator) -> Tensor:
    """Procedural stand-in for the benchmark's frost photos, ``[B, C, H, W]`` in ``[0, 1]``.

    Fractal haze (diamond-square, decay 2) plus ice needles: seeds (about 50 per direction per image
    at any resolution, denser where a second fractal is high, so crystals grow in patches) smeared
    by motion kernels of length ``~5 s`` px in three random directions per image, tinted pale
    blue-white. Mean intensity about 0.5 at any resolution.
    """
    b, c, h, w = x.shape
    s = _scale(x)
    haze = _plasma_fractal(b, h, w, 2.0, generator, x)
    patches = _plasma_fractal(b, h, w, 1.5, generator, x) ** 2
    density = 0.1 / (s * s) * patches
    needles = torch.zeros(b, 1, h, w, dtype=x.dtype, device=x.device)
    for _ in range(3):
        seeds = (_rand((b, 1, h, w), generator, x) < density).to(x.dtype)
        seeds = seeds * _uniform((b, 1, h, w), 0.5, 1.0, generator, x)
        angles = _uniform((b,), 0.0, 360.0, generator, x)
        needles = needles + _motion_blur(seeds, 2.5 * s, 2.5 * s, angles)
    needles = _gaussian_blur(needles, 0.5 * s)
    needles = needles / needles.amax((1, 2, 3), keepdim=True).clamp_min(1e-12)
    tex = (0.25 + 0.35 * haze * (0.5 + patches) + 1.2 * needles.sqrt() * patches.sqrt()).clamp(0, 1)
    if c == 1:
        return tex * (sum(_FROST_TINT) / 3)
    tint = torch.tensor(_FROST_TINT, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return tex * tint


@register_corruption("frost", "weather", _PARAMS["frost"])
def _frost(x: Tensor, p, generator) -> Tensor:
    """``a * x + b * frost`` with a procedural frost texture (see :func:`_frost_texture`)."""
    a, b = p
    return a * x + b * _frost_texture(x, generator)


@register_corruption("fog", "weather", _PARAMS["fog"])
def _fog(x: Tensor, p, generator) -> Tensor:
    """``(x + c * fractal) * max(x) / (max(x) + c)`` with a diamond-square fractal per image."""
    strength, decay = p
    b, _, h, w = x.shape
    peak = x.amax((1, 2, 3), keepdim=True)
    x = x + strength * _plasma_fractal(b, h, w, decay, generator, x)
    return x * peak / (peak + strength)


@register_corruption("brightness", "weather", _PARAMS["brightness"])
def _brightness(x: Tensor, delta: float, generator) -> Tensor:
    """Add ``delta`` to the HSV value ``V = max_c x_c`` (clipped at 1), hue and saturation kept.

    With H and S fixed every channel is proportional to V, so ``x * V' / V`` is the exact HSV round
    trip; black pixels (V = 0, S = 0 by convention) become grey ``V'``.
    """
    v = x.amax(1, keepdim=True)
    v_new = (v + delta).clamp(max=1.0)
    return torch.where(v > 0, x * (v_new / v.clamp_min(1e-12)), v_new.expand_as(x))


# ----------------------------------------------------------------------------------------------
# Digital.
# ----------------------------------------------------------------------------------------------


@register_corruption("contrast", "digital", _PARAMS["contrast"])
def _contrast(x: Tensor, factor: float, generator) -> Tensor:
    """``(x - m) * factor + m`` with ``m`` the per-image, per-channel mean."""
    m = x.mean((2, 3), keepdim=True)
    return (x - m) * factor + m


@register_corruption("elastic_transform", "digital", _PARAMS["elastic_transform"])
def _elastic(x: Tensor, p, generator) -> Tensor:
    """Random affine plus smooth random displacement (Simard et al. 2003), size-relative.

    With ``S = min(H, W)`` and ``(alpha, sigma, jitter) = p * S``: three points around the centre
    (``+-S // 3``) move by ``U(-jitter, jitter)`` each (the affine); the displacement fields are
    ``alpha * gaussian_filter(U(-1, 1), sigma, truncate=3)`` (symmetric borders). The output at pixel
    ``q`` samples ``A^-1 (q + d(q))``, bilinear, mirror padding.
    """
    b, c, h, w = x.shape
    size = min(h, w)
    alpha, sigma, jitter = (f * size for f in p)
    f64 = torch.float64
    cx, cy, sq = float(w // 2), float(h // 2), float(max(size // 3, 1))
    pts1 = torch.tensor([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]], dtype=f64, device=x.device)
    pts2 = pts1 + _uniform((b, 3, 2), -jitter, jitter, generator, x).to(f64)
    # Map output points back to the source: [pts2, 1] @ M = pts1, M is [B, 3, 2].
    a = torch.cat([pts2, torch.ones(b, 3, 1, dtype=f64, device=x.device)], dim=2)
    m = torch.linalg.solve(a, pts1.expand(b, 3, 2))
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=x.dtype, device=x.device), torch.arange(w, dtype=x.dtype, device=x.device), indexing="ij"
    )
    qx, qy = xs.expand(b, h, w), ys.expand(b, h, w)
    if alpha > 0 and sigma > 0:
        fields = _uniform((b, 2, h, w), -1.0, 1.0, generator, x)
        fields = _gaussian_blur(fields, sigma, truncate=3.0, mode="symmetric") * alpha
        qx, qy = qx + fields[:, 0], qy + fields[:, 1]
    m = m.to(x.dtype)
    sx = qx * m[:, 0, 0].view(b, 1, 1) + qy * m[:, 1, 0].view(b, 1, 1) + m[:, 2, 0].view(b, 1, 1)
    sy = qx * m[:, 0, 1].view(b, 1, 1) + qy * m[:, 1, 1].view(b, 1, 1) + m[:, 2, 1].view(b, 1, 1)
    gx = sx * (2.0 / (w - 1)) - 1 if w > 1 else torch.zeros_like(sx)
    gy = sy * (2.0 / (h - 1)) - 1 if h > 1 else torch.zeros_like(sy)
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


@functools.lru_cache(maxsize=64)
def _pil_box_matrix(n_in: int, n_out: int) -> Tensor:
    """``[n_out, n_in]`` weights of PIL's BOX resampling (Pillow ``precompute_coeffs`` with the box
    filter ``1 if -0.5 < t <= 0.5``): area averaging when shrinking, nearest when enlarging."""
    scale = n_in / n_out
    filter_scale = max(scale, 1.0)
    support = 0.5 * filter_scale
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):  # the output size, cached: not a per-sample loop
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        for j in range(lo, hi):
            t = (j - centre + 0.5) / filter_scale
            if -0.5 < t <= 0.5:
                m[i, j] = 1.0
    return m / m.sum(1, keepdim=True)


@register_corruption("pixelate", "digital", _PARAMS["pixelate"])
def _pixelate(x: Tensor, factor: float, generator) -> Tensor:
    """BOX-resize to ``int(H * factor) x int(W * factor)`` and back (PIL semantics)."""
    h, w = x.shape[-2:]
    h2, w2 = max(1, int(h * factor)), max(1, int(w * factor))
    mh = (_pil_box_matrix(h2, h) @ _pil_box_matrix(h, h2)).to(x)  # [H, H]
    mw = (_pil_box_matrix(w2, w) @ _pil_box_matrix(w, w2)).to(x)  # [W, W]
    return torch.matmul(torch.matmul(mh, x), mw.t())


def _jpeg_roundtrip(images: Sequence[Tensor], quality: int) -> list:
    """Encode and decode uint8 ``[C, H, W]`` CPU images with libjpeg at ``quality``.

    ``torchvision.io.encode_jpeg``/``decode_jpeg`` (batched); torchvision 0.29 marks them deprecated
    in favour of TorchCodec, so that warning is silenced here and PIL (what the benchmark used;
    bit-identical output with the same libjpeg) takes over once they are gone.
    """
    import warnings

    try:
        from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
    except ImportError:  # pragma: no cover - future torchvision without image codecs
        encode_jpeg = None
    if encode_jpeg is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io.*")
            return decode_jpeg(encode_jpeg(list(images), quality=quality), mode=ImageReadMode.UNCHANGED)
    import io  # pragma: no cover

    import numpy as np
    from PIL import Image

    out = []
    for img in images:  # pragma: no cover
        buf = io.BytesIO()
        arr = img.permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, "JPEG", quality=quality)
        dec = torch.from_numpy(np.array(Image.open(buf)))
        out.append(dec.unsqueeze(0) if dec.dim() == 2 else dec.permute(2, 0, 1))
    return out


@register_corruption("jpeg_compression", "digital", _PARAMS["jpeg_compression"])
def _jpeg(x: Tensor, quality: int, generator) -> Tensor:
    """Round to uint8 and round-trip through libjpeg at ``quality`` (CPU, 4:2:0 chroma subsampling)."""
    u8 = (x * 255).round_().clamp_(0, 255).to(device="cpu", dtype=torch.uint8)
    decoded = _jpeg_roundtrip(u8.unbind(0), int(quality))
    return torch.stack(list(decoded)).to(device=x.device, dtype=x.dtype) / 255
