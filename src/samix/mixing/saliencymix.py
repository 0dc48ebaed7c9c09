"""SaliencyMix (Uddin et al., 2021): a CutMix box centred on the partner's most salient pixel.

Each sample ``i`` receives a box of area ``1 - lam`` (CutMix sizing: sides
``floor(H sqrt(1 - lam)) x floor(W sqrt(1 - lam))``, clipped at the border)
**cut from its partner** ``x[index[i]]`` at the same position, centred on the
peak of the partner's saliency map, so the partner's salient content is what
gets pasted. ``lam`` is corrected to the realised share of the original,
``1 - box area / HW`` (the mean of the binary mask).

Saliency is the spectral residual of Hou & Zhang (2007), computed in torch for
the whole batch at once (no OpenCV), on the grey image (ITU-R 601 luma for 3
channels, the channel mean otherwise), downscaled with antialiasing so its
longer side is at most ``saliency_size`` pixels (64 as in the original method)::

    F = fft2(grey);  A = log(|F| + eps);  P = angle(F)
    R = A - box3x3(A)                         (circular 3x3 local average)
    S = |ifft2(exp(R + i P))|^2
    S = S * gaussian(sigma = max(h, w) / 25)  (circular, applied in frequency space)

(``sigma`` is 2.56 px on a 64-px map). Both filters are circular, as the
spectrum and the map are periodic, which also makes them valid for images of
any size, down to 1 x 1. The peak's position on the saliency map is mapped
back to full resolution (``floor((p + 0.5) * H / h)``); ties go to the first
pixel in raster order.

``mode="batch"``: one ``lam`` (one box size) for the batch, but every box is
still centred on its own partner's peak (a box at one image's salient spot
means nothing for another image); ``mode="elem"``: one ``lam`` per sample.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from samix._checks import check_int

from .base import MixResult, Mixer, lam_tensor, mask_mix
from .boxes import box_area_fraction, box_size, boxes_at, boxes_to_mask
from .registry import register_mixer

_LUMA = (0.299, 0.587, 0.114)


def _grey(images: Tensor) -> Tensor:
    x = images.to(torch.promote_types(images.dtype, torch.float32))
    if x.shape[1] == 3:  # two fused multiply-adds, no [B, 3, H, W] temporary
        return x[:, 0].mul(_LUMA[0]).add_(x[:, 1], alpha=_LUMA[1]).add_(x[:, 2], alpha=_LUMA[2])
    return x.mean(1)


def spectral_residual_saliency(images: Tensor, size: int = 64) -> Tensor:
    """Spectral-residual saliency maps ``[B, h, w]`` (float32 or float64) of ``images`` ``[B, C, H, W]``.

    The maps are computed at the downscaled resolution ``h x w`` (longer side
    at most ``size``); see the module docstring for the formula.

    Computed with real FFTs and no complex ``abs``/``angle``/``polar`` (each of those is slower
    than an FFT on the CPU): ``exp(R + iP) = exp(A - local) * F / |F| = F * exp(-local)`` (up to
    the ``eps`` of the log), and since ``A`` is point-symmetric (``F`` of a real image is
    Hermitian) so is its circular 3x3 average, so ``F * exp(-local)`` is Hermitian too: its inverse
    transform is real, ``irfft2`` of the half spectrum, and ``|.|^2`` is its square. The full
    ``A`` for the 3x3 average is rebuilt from the half spectrum by that symmetry.
    """
    grey = _grey(images)
    b, h, w = grey.shape
    if max(h, w) > size:
        scale = size / max(h, w)
        hs, ws = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        grey = F.interpolate(grey.unsqueeze(1), size=(hs, ws), mode="bilinear", align_corners=False,
                             antialias=True).squeeze(1)
        h, w = hs, ws
    half = w // 2 + 1
    spec = torch.fft.rfft2(grey)  # [B, h, half]
    ri = torch.view_as_real(spec)
    log_amp = 0.5 * torch.log(ri.square().sum(-1) + 1e-16)  # log(|F| + ~eps)
    if w > half:  # columns half..w-1 of the full spectrum: A[k1, k2] = A[-k1, w - k2]
        rows = (-torch.arange(h, device=grey.device)) % h
        cols = torch.arange(w - half, 0, -1, device=grey.device)
        mirror = log_amp.index_select(1, rows).index_select(2, cols)
        log_amp_full = torch.cat([log_amp, mirror], 2)
    else:
        log_amp_full = log_amp
    # circular 3x3 average, separable: rows then columns (over the full spectrum), kept on the half
    local = (log_amp_full + log_amp_full.roll(1, 1) + log_amp_full.roll(-1, 1))
    local = (local + local.roll(1, 2) + local.roll(-1, 2))[..., :half] / 9.0
    sal = torch.fft.irfft2(spec * torch.exp(-local), s=(h, w)).square()
    sigma = max(h, w) / 25.0
    fy = torch.fft.fftfreq(h, device=grey.device, dtype=grey.dtype)
    fx = torch.fft.rfftfreq(w, device=grey.device, dtype=grey.dtype)
    gauss = torch.exp(-2.0 * math.pi ** 2 * sigma ** 2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
    return torch.fft.irfft2(torch.fft.rfft2(sal) * gauss, s=(h, w))


def saliency_peaks(images: Tensor, size: int = 64) -> Tensor:
    """Full-resolution ``(row, col)`` of each image's saliency peak: long ``[B, 2]`` on the images' device."""
    h, w = images.shape[-2:]
    sal = spectral_residual_saliency(images, size)
    hs, ws = sal.shape[-2:]
    flat = sal.reshape(sal.shape[0], -1).argmax(1)
    py, px = torch.div(flat, ws, rounding_mode="floor"), flat % ws
    cy = torch.div((2 * py + 1) * h, 2 * hs, rounding_mode="floor")  # floor((py + 0.5) * h / hs)
    cx = torch.div((2 * px + 1) * w, 2 * ws, rounding_mode="floor")
    return torch.stack([cy, cx], 1)


@register_mixer("saliencymix")
class SaliencyMix(Mixer):
    """SaliencyMix: paste a box of the partner, of area ``1 - lam``, centred on the partner's saliency peak.

    Args:
        saliency_size: longer side (pixels) at which saliency is computed (default 64).
        **kwargs: the common :class:`~samix.mixing.base.Mixer` arguments.
    """

    def __init__(self, *args, saliency_size: int = 64, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.saliency_size = check_int("saliency_size", saliency_size, low=1, type_error=ValueError)

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        b = images.shape[0]
        h, w = images.shape[-2:]
        peaks = saliency_peaks(images, self.saliency_size)[index].cpu().numpy()
        bh, bw = box_size(np.broadcast_to(1.0 - np.asarray(lam, dtype=np.float64), (b,)), h, w)
        boxes = boxes_at(peaks[:, 0], peaks[:, 1], bh, bw, h, w)
        lam_real = 1.0 - box_area_fraction(boxes, h, w)
        mask = boxes_to_mask(boxes, h, w, images.device)
        mixed = mask_mix(images, index, mask)
        return MixResult(mixed, lam_tensor(lam_real, b, images.device), index, mask.to(images.dtype))

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", saliency_size={self.saliency_size})"


__all__ = ["SaliencyMix", "saliency_peaks", "spectral_residual_saliency"]
