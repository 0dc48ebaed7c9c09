"""SAMix for supervised learning (samix.txt Sec. 3, A.2-A.3): AutoMix's momentum pipeline with the Mixer
(Mix Block+) and the eta-balanced generation loss.

Differences from :mod:`samix.algorithms.automix` (everything else is inherited: the two lambdas and
pairings, the batched generator call, the EMA teacher, the clean loss, the mixup fallback)::

    generator   Mixer: adaptive lambda encoding z (1 + gamma lam), gamma in [0, 1] from 0; mixing
                attention over concat(z_i, z_j); non-linear content; bilinear upsampling; lambda
                adjusting of a sample's mask with probability lam_adjust_prob in training
    L_gen_cls = l+ + eta * l-  = pBCE(f_k(x_k), y, lam_k, idx_k) + eta * MCE(f_k(x_k), y, lam_k, idx_k)
                                                                        (Eq. 6, 8; samix.txt A.3)
    L_mask    = beta(t) * (max(|lam_k - mu_k| - eps, 0) + l_sigma)    beta 0.1 -> 0 linearly   (A.2)

``eta = 0.5`` for small data sets (CIFAR, Tiny, CUB, Aircraft), ``0.1`` for large ones (ImageNet,
iNat). The student keeps the engine's mixed loss (``loss.name``). ``gen_loss="ce"`` restores
AutoMix's generation objective (the "without l_eta" row of Table 10).

Documented choices:

- Lambda adjusting compares each mask with the lambda it was generated for (the reference compared
  the student's mask with the Mix Block's lambda, a pitfall) and, by default
  (``lam_adjust_on="student"``, the reference), touches only the student's detached masks: the
  paper calls it a step on the mask used for mixing, and an adjusted generator sample has its mean
  pinned to lambda, which projects away the gradient through the mean that the generation loss
  needs. ``lam_adjust_on="both"`` also adjusts the generator's own samples (the behaviour before
  this option). The draws come from the run's ``torch.Generator`` (reproducible and resumable). The
  mask losses read the mask *before* adjusting.
- The Mixer has separate query and key projections (``qk_proj="separate"``, the reference;
  ``"shared"`` is Eq. 10's single ``W_P``) and the reference's N(0, 0.01) init
  (``mix_block_init``): see :mod:`samix.generators.samix_generator`.
- ``l_sigma`` is :func:`samix.generators.mask_variance_loss`: the printed variance with the sign that
  rewards non-flat masks (see that function); it is part of the mask loss, so ``mask_loss="none"``
  drops it too, and ``variance_loss=false`` drops it alone.
- The engine loss's ``label_smoothing`` also smooths both terms of the eta-balanced loss.

Every module of Table 10 is a switch: ``attention``, ``adaptive_lambda``, ``nonlinear_content``,
``mask_loss``/``variance_loss``, ``lam_adjust``, ``gen_loss`` (and ``eta``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from samix.generators import SAMixGenerator
from samix.losses import eta_balanced_loss

from .automix import GENERATOR_INITS, AutoMix, _check_bool, _check_choice, _check_number
from .base import register_algorithm

GEN_LOSSES = ("eta_balanced", "ce")
QK_PROJ = ("separate", "shared")
LAM_ADJUST_ON = ("student", "both")


def student_half_adjust(lam_adjust_on: str, n: int, device) -> Optional[Tensor]:
    """The ``adjust`` argument of a batched ``[student; generator]`` Mixer call of ``n`` samples: ``None``
    (the Mixer's own policy for every sample) for ``"both"``, else a bool ``[n]`` marking the first half."""
    if lam_adjust_on == "both":
        return None
    eligible = torch.zeros(n, dtype=torch.bool, device=device)
    eligible[: n // 2] = True
    return eligible


@register_algorithm("samix")
class SAMix(AutoMix):
    """SAMix (see the module docstring). Options: those of :class:`AutoMix` (``upsample`` defaults to
    ``"bilinear"``) plus ``eta`` (0.5), ``gen_loss`` (``"eta_balanced"`` | ``"ce"``),
    ``variance_loss``, ``attention``, ``adaptive_lambda``, ``nonlinear_content``, ``lam_adjust``
    (all True), ``lam_adjust_prob`` (0.25, the 800-epoch CIFAR recipe; 0 in the Tiny recipe) and
    ``gamma_init`` (0, the paper; 1 in the Fashion-MNIST CPU recipe, see :mod:`samix.generators.samix_generator`)."""

    DEFAULTS: Dict[str, Any] = {
        **AutoMix.DEFAULTS,
        "upsample": "bilinear",
        "eta": 0.5,
        "gen_loss": "eta_balanced",
        "variance_loss": True,
        "attention": True,
        "adaptive_lambda": True,
        "nonlinear_content": True,
        "lam_adjust": True,
        "lam_adjust_prob": 0.25,
        "gamma_init": 0.0,
        "qk_proj": "separate",
        "lam_adjust_on": "student",
    }

    def _check_options(self) -> None:
        super()._check_options()
        o = self.options
        _check_number("eta", o["eta"], 0.0)
        _check_choice("gen_loss", o["gen_loss"], GEN_LOSSES)
        for name in ("variance_loss", "attention", "adaptive_lambda", "nonlinear_content", "lam_adjust"):
            _check_bool(name, o[name])
        _check_number("lam_adjust_prob", o["lam_adjust_prob"], 0.0, 1.0)
        _check_number("gamma_init", o["gamma_init"], 0.0, 1.0)
        _check_choice("qk_proj", o["qk_proj"], QK_PROJ)
        _check_choice("lam_adjust_on", o["lam_adjust_on"], LAM_ADJUST_ON)

    def build_generator(self, channels: int) -> nn.Module:
        o = self.options
        kwargs = dict(o["mix_block_kwargs"])
        clash = sorted(set(kwargs) & {"in_channels", "upsample", "attention", "adaptive_lambda",
                                      "nonlinear_content", "lam_adjust", "lam_adjust_prob", "gamma_init",
                                      "qk", "init"})
        if clash:
            raise ValueError(f"algorithm option mix_block_kwargs must not set {clash}: use the algorithm options")
        return SAMixGenerator(channels, upsample=o["upsample"], attention=o["attention"],
                     adaptive_lambda=o["adaptive_lambda"], nonlinear_content=o["nonlinear_content"],
                     lam_adjust=o["lam_adjust"], lam_adjust_prob=float(o["lam_adjust_prob"]),
                     gamma_init=float(o["gamma_init"]), qk=o["qk_proj"], init=o["mix_block_init"], **kwargs)

    def generate(self, z: Tensor, lam: Tensor, index: Tensor, out_size):
        """The Mixer's call on the batched ``[student; generator]`` halves (:meth:`AutoMix.forward`):
        with ``lam_adjust_on="student"`` only the first half may be lambda-adjusted."""
        return self.mix_block(z, lam, index, out_size=out_size, generator=self.generator,
                              adjust=student_half_adjust(self.options["lam_adjust_on"], z.shape[0], z.device))

    def _label_smoothing(self) -> float:
        return float(getattr(self.loss_fn, "options", {}).get("label_smoothing", 0.0))

    def generation_cls_loss(self, logits: Tensor, labels: Tensor, lam: Tensor, index: Tensor) -> Tensor:
        if self.options["gen_loss"] == "ce":
            return super().generation_cls_loss(logits, labels, lam, index)
        return eta_balanced_loss(logits, labels, lam, index, eta=float(self.options["eta"]),
                                 label_smoothing=self._label_smoothing())

    def forward(self, batch) -> Dict[str, Tensor]:
        out = super().forward(batch)
        if self.mix_block.gamma_raw is not None:
            out["gamma"] = self.mix_block.gamma_raw.detach().clamp(0.0, 1.0)
        return out
