"""Learned masks for figures and numbers: a generator's masks at several lambdas on fixed pairs of images, in
one call (:func:`generator_masks`), and the mask diagnostics every evaluation logs (:func:`generator_diagnostics`)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from samix.generators import self_attention_weight

from .base import split_batch

#: the lambdas at which :func:`generator_diagnostics` probes a generator (cycled over the batch)
DIAGNOSTIC_LAMS = (0.1, 0.3, 0.5, 0.7, 0.9)
#: what :func:`generator_diagnostics` returns (``metrics.jsonl`` keys)
DIAGNOSTIC_KEYS = ("mask_mu_err", "mask_std", "mask_self_attn", "mask_partner_sens")
#: their plot labels (``RUN_DIR/curves_masks.png``)
DIAGNOSTIC_LABELS = {"mask_mu_err": "|mask mean - lambda|", "mask_std": "within-mask std (0 = flat)",
                     "mask_self_attn": "self-attention weight (identity = 1)",
                     "mask_partner_sens": "partner sensitivity (0 = blind)"}


def first_test_images(ctx, n: int = 64) -> Tensor:
    """The first ``n`` images of an evaluation context's (unshuffled) test loader, on its device, with its
    input transform: the same images at every evaluation of a run."""
    images = split_batch(next(iter(ctx.test_loader)))[0]
    if isinstance(images, (tuple, list)):
        images = images[0]
    images = images[:n].to(ctx.device)
    tf = ctx.input_transform()
    return tf(images) if tf is not None else images


@torch.no_grad()
def generator_diagnostics(encoder: nn.Module, generator: nn.Module, stage: int, images: Tensor,
                          lams: Sequence[float] = DIAGNOSTIC_LAMS) -> Dict[str, Optional[float]]:
    """What a generator's raw masks (before lambda adjusting) do, in numbers, on ``images``:

    - ``mask_mu_err``: mean ``|mu_i - lam_i|``, how far each mask's mean is from its lambda;
    - ``mask_std``: mean within-mask standard deviation (0: flat masks, i.e. global mixup; 0.5: binary
      halves);
    - ``mask_self_attn``: mean weight a position's attention gives to itself (``1/hw`` uniform, 1
      identity; ``None`` for a generator without attention). For AutoMix's Mix Block, whose keys are
      the partner's positions, it is the weight on the partner's same position;
    - ``mask_partner_sens``: mean absolute pixel change of sample i's mask when its partner ``i + 1`` is
      swapped for ``i + 2`` at the same lambda (0: a mask blind to its partner).

    Sample ``i`` gets ``lams[i % len(lams)]``. Encoder and generator run in eval mode and get their modes back.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] < 3:
        raise ValueError(f"images must be a [B >= 3, C, H, W] tensor, got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    b = images.shape[0]
    dev = images.device
    was = encoder.training, generator.training
    encoder.eval()
    generator.eval()
    try:
        z = encoder.features(images, int(stage))
        lam = torch.tensor([float(lams[i % len(lams)]) for i in range(b)], device=dev)
        ar = torch.arange(b, device=dev)
        # both pairings in one call: the second copy of z pairs i with i + 2 (indices offset by b)
        g = generator(torch.cat([z, z]), torch.cat([lam, lam]), torch.cat([(ar + 1) % b, (ar + 2) % b + b]),
                      out_size=tuple(images.shape[-2:]))
        m = g.mask_raw.float()
        m1, m2 = m[:b], m[b:]
        attn = self_attention_weight(g.attention[:b] if g.attention is not None else None)
        return {"mask_mu_err": float((m1.mean((1, 2, 3)) - lam).abs().mean()),
                "mask_std": float(m1.flatten(1).std(dim=1, unbiased=False).mean()),
                "mask_self_attn": float(attn) if attn is not None else None,
                "mask_partner_sens": float((m1 - m2).abs().mean())}
    finally:
        encoder.train(was[0])
        generator.train(was[1])


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
