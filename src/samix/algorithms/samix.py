"""SAMix for supervised learning (samix.txt Sec. 3, A.2-A.3): AutoMix's momentum pipeline with the Mixer
(Mix Block+) and the eta-balanced generation loss.

Differences from :mod:`samix.algorithms.automix` (everything else is inherited):

- generator: :class:`samix.generators.Mixer` (adaptive lambda encoding, mixing attention over both
  samples' features, non-linear content, bilinear upsampling, lambda adjusting with probability
  ``lam_adjust_prob`` in training; each switchable for the Table 10 ablation);
- generation loss: ``l_eta = pBCE + eta * CE`` on the teacher's logits of the Mixer's own mixed sample
  (Eq. 6, 8; eta = 0.5 for small datasets, 0.1 for large ones), ``gen_loss="ce"`` restores AutoMix's;
- mask loss: ``beta * (l_mu + l_sigma)`` (L1 with margin + the variance term), beta 0.1 -> 0 linearly.

The student keeps the mixed CE of the engine's loss (``loss.name``).
"""

from __future__ import annotations

from typing import Any, Dict

from torch import Tensor, nn

from .automix import AutoMix
from .base import register_algorithm


@register_algorithm("samix")
class SAMix(AutoMix):
    DEFAULTS: Dict[str, Any] = {
        **AutoMix.DEFAULTS,
        "upsample": "bilinear",
        "eta": 0.5,
        "gen_loss": "eta_balanced",  # eta_balanced | ce (AutoMix's objective, for the ablation)
        "variance_loss": True,
        "attention": True,
        "adaptive_lambda": True,
        "nonlinear_content": True,
        "lam_adjust": True,
        "lam_adjust_prob": 0.25,
    }

    def build_generator(self, channels: int) -> nn.Module:
        from samix.generators import Mixer

        o = self.options
        if o["gen_loss"] not in ("eta_balanced", "ce"):
            raise ValueError(f"algorithm option gen_loss must be 'eta_balanced' or 'ce', got {o['gen_loss']!r}")
        return Mixer(channels, upsample=o["upsample"], attention=bool(o["attention"]),
                     adaptive_lambda=bool(o["adaptive_lambda"]), nonlinear_content=bool(o["nonlinear_content"]),
                     lam_adjust=bool(o["lam_adjust"]), lam_adjust_prob=float(o["lam_adjust_prob"]),
                     **dict(o["mix_block_kwargs"]))

    def generation_loss(self, logits: Tensor, labels: Tensor, out) -> Dict[str, Tensor]:
        from samix.generators.mask_losses import linear_weight, mask_l1_loss, mask_l2_loss, mask_variance_loss
        from samix.losses import eta_balanced_loss

        o = self.options
        if o["gen_loss"] == "eta_balanced":
            terms = {"loss_gen_cls": eta_balanced_loss(logits, labels, out.lam, out.index, eta=float(o["eta"]))}
        else:
            terms = {"loss_gen_cls": self.loss_fn(logits, labels, out.lam, out.index)}
        if o["mask_loss"] != "none":
            w = linear_weight(self.progress, float(o["mask_loss_weight"]), float(o["mask_loss_weight_end"]))
            fn = mask_l1_loss if o["mask_loss"] == "l1" else mask_l2_loss
            m = fn(out.mask_raw, out.lam, margin=float(o["mask_margin"]))
            if o["variance_loss"]:
                m = m + mask_variance_loss(out.mask_raw)
            terms["loss_mask"] = w * m
        return terms
