"""Learned masks for figures: a generator's masks at several lambdas on fixed pairs of images, in one call."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


@torch.no_grad()
def generator_masks(encoder: nn.Module, generator: nn.Module, stage: int, images: Tensor,
                    lams: Sequence[float]) -> Tensor:
    """Raw masks ``[L, P, 1, H, W]`` (float32) of ``generator`` reading ``encoder.features(x, stage)``, for the
    fixed pairs ``(images[2p], images[2p + 1])``, ``p < P = B // 2``, at each ``lam`` of ``lams``: the weight
    of ``images[2p]``.

    Encoder and generator run in eval mode (BatchNorm running statistics, no Dropout) and get their modes
    back. The mask is the generator's own output before lambda adjusting (``mask_raw``), so a figure shows
    masks that ignore ``lam`` even where SAMix's adjusting would rescale them. All lambdas go through one
    batched call (copy ``l`` pairs sample ``i`` with ``l * n + index[i]``).
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] < 2:
        raise ValueError(f"images must be a [B >= 2, C, H, W] tensor, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    lam_list = [float(v) for v in lams]
    if not lam_list or any(not 0.0 <= v <= 1.0 for v in lam_list):
        raise ValueError(f"lams must be a non-empty sequence of numbers in [0, 1], got {list(lams)!r}")
    n = images.shape[0] // 2 * 2
    x = images[:n]
    index = torch.arange(n, device=x.device).view(-1, 2).flip(1).reshape(-1)
    was = encoder.training, generator.training
    encoder.eval()
    generator.eval()
    try:
        z = encoder.features(x, int(stage))
        k = len(lam_list)
        lam = torch.tensor(lam_list, device=x.device).repeat_interleave(n)
        idx = (index.unsqueeze(0) + n * torch.arange(k, device=x.device).unsqueeze(1)).reshape(-1)
        g = generator(z.repeat(k, 1, 1, 1), lam, idx, out_size=tuple(x.shape[-2:]))
        return g.mask_raw.float().view(k, n, 1, *x.shape[-2:])[:, 0::2]
    finally:
        encoder.train(was[0])
        generator.train(was[1])
