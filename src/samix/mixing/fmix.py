"""FMix (Harris et al., 2020): binary masks thresholded from low-frequency Fourier noise.

Construction, per mask (one per batch in ``mode="batch"``, one per sample in
``mode="elem"``, all masks of a batch drawn in one vectorised pass):

1. complex Gaussian noise ``z(f) = a + i b``, ``a, b ~ N(0, 1)``, on the
   half-spectrum grid of ``torch.fft.rfft2`` for an ``H x W`` image;
2. scale by ``1 / max(|f|, 1 / max(H, W)) ** decay_power`` where
   ``|f| = sqrt(f_y^2 + f_x^2)`` in cycles per pixel (``torch.fft.fftfreq`` /
   ``rfftfreq``); the floor ``1 / max(H, W)`` (the lowest non-zero frequency)
   keeps the DC term finite. Larger ``decay_power`` -> smoother, blobbier masks;
3. ``g = irfft2(scaled noise, s=(H, W))``, a real "grey" mask;
4. binarise: the ``k = floor(lam * H * W + 0.5)`` pixels with the largest
   ``g`` take the original sample (mask 1), the others the partner (mask 0).
   Ties are broken by a stable descending sort, so **exactly** ``k`` pixels are 1
   and the realised ``lam = k / (H W)`` equals the mask mean.

``lam ~ Beta(alpha, alpha)`` as for the other policies; ``lam`` weights the
original sample (``mixed = mask * x + (1 - mask) * x[index]``). The soft
variant of the paper (``max_soft > 0``) is not implemented.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from samix._checks import check_number

from .base import MixResult, Mixer, lam_tensor, mask_mix
from .registry import register_mixer


def fourier_frequencies(h: int, w: int, device=None) -> Tensor:
    """``|f|`` (cycles per pixel) on the ``rfft2`` grid of an ``h x w`` image: float32 ``[h, w // 2 + 1]``."""
    fy = torch.fft.fftfreq(h, device=device, dtype=torch.float32)
    fx = torch.fft.rfftfreq(w, device=device, dtype=torch.float32)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def grey_fourier_masks(noise: Tensor, h: int, w: int, decay_power: float) -> Tensor:
    """Low-frequency grey masks from complex Gaussian ``noise`` ``[N, h, w // 2 + 1, 2]`` -> float32 ``[N, h, w]``."""
    freqs = fourier_frequencies(h, w, device=noise.device)
    scale = 1.0 / freqs.clamp_min(1.0 / max(h, w)).pow(decay_power)
    spectrum = torch.view_as_complex(noise.float().contiguous()) * scale
    return torch.fft.irfft2(spectrum, s=(h, w))


def binarise_top_k(grey: Tensor, k: Tensor) -> Tensor:
    """Bool ``[N, P]`` with exactly ``k[n]`` True entries per row: the ``k[n]`` largest values of ``grey[n]``.

    ``grey`` is ``[N, P]``, ``k`` a long ``[N]`` with ``0 <= k <= P``. One stable
    sort over the whole batch (no loop over rows); ties go to the lower index.
    """
    n, p = grey.shape
    order = torch.sort(grey, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(p, device=grey.device).expand(n, p))
    return ranks < k.to(grey.device).view(n, 1)


@register_mixer("fmix")
class FMix(Mixer):
    """FMix: binary low-frequency Fourier masks with exactly ``round(lam H W)`` original pixels.

    Args:
        decay_power: exponent of the ``1 / f ** decay_power`` spectrum decay (> 0; paper default 3).
        **kwargs: the common :class:`~samix.mixing.base.Mixer` arguments.

    See the module docstring for the exact construction.
    """

    def __init__(self, *args, decay_power: float = 3.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.decay_power = check_number("decay_power", decay_power, low=0.0, low_open=True)

    def sample_masks(self, n: int, h: int, w: int, lam: np.ndarray, device) -> tuple[Tensor, np.ndarray]:
        """``n`` bool masks ``[n, 1, h, w]`` (True = original) and the realised lam ``[n]`` (float64)."""
        noise = torch.randn(n, h, w // 2 + 1, 2, generator=self.generator, device=self._gen_device)
        grey = grey_fourier_masks(noise.to(device, non_blocking=True), h, w, self.decay_power)
        k = np.floor(np.asarray(lam, dtype=np.float64) * (h * w) + 0.5).astype(np.int64)
        k = np.clip(k, 0, h * w)
        mask = binarise_top_k(grey.reshape(n, h * w), torch.as_tensor(k)).view(n, 1, h, w)
        return mask, k / float(h * w)

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        b = images.shape[0]
        h, w = images.shape[-2:]
        mask, lam_real = self.sample_masks(lam.size, h, w, lam, images.device)
        mixed = mask_mix(images, index, mask)
        mask = mask.to(images.dtype).expand(b, 1, h, w)
        return MixResult(mixed, lam_tensor(lam_real, b, images.device), index, mask)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", decay_power={self.decay_power})"


__all__ = ["FMix", "binarise_top_k", "fourier_frequencies", "grey_fourier_masks"]
