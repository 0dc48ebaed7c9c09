"""SAMix-I (samix.txt Sec. 3.1 "SAMix with eta-balanced generation objectives", Eq. 7-8, Sec. 4.2, A.4,
A.5): SAMix's Mixer learned inside MoCo v2's momentum pipeline with the instance-level objective.

One step on a batch ``((x_q, x_k), _)`` (the label is never read); ``f_q`` the online encoder (backbone +
projector), ``f_k`` its momentum copy (frozen: ``requires_grad=False``, EMA only), ``f_k^l`` the momentum
backbone's stem..stage ``l``, ``M`` the Mixer, ``Q`` the queue before this step's keys, ``NCE`` MoCo's
infoNCE (one positive against ``Q``)::

    k            = normalize(f_k(x_k))                       # the key view's keys (shuffle-BN under DDP)
    z            = f_k^l(x_q)                                # no grad: the Mixer's input
    lam_q, idx_q ~ Beta(a, a), derangement                   # the online network's pair
    lam_g, idx_g ~ Beta(a, a), derangement                   # the Mixer's own pair (independent draw)
    s_q, s_g     = M(z, [lam_q, lam_g], [idx_q, idx_g])      # ONE batched Mixer call for both
    # online network (MoCo's cross-view objective); the mask is DETACHED: no gradient into M
    x_m    = s_q.detach() * x_q + (1 - s_q.detach()) * x_q[idx_q]   (plain mixup if lam_q < 0.08 or > 0.92)
    L_on   = NCE(f_q(x_q), k) + lam_q NCE(f_q(x_m), k) + (1 - lam_q) NCE(f_q(x_m), k[idx_q])
    # Mixer: the eta-balanced instance loss through the FROZEN momentum encoder (Eq. 7, 8)
    x_g    = s_g * x_q + (1 - s_g) * x_q[idx_g]
    z_g    = f_k(x_g)
    l+     = -lam_g log p(i) - (1 - lam_g) log p(j),  p(i) = sigmoid((z_g.k_i - z_g.k_j) / T)   (two-way BCE, Eq. 7)
    l-     = lam_g NCE(z_g, k_i) + (1 - lam_g) NCE(z_g, k_j)          (mixup infoNCE against Q)
    L_gen  = l+ + eta * l-                                            eta = 0.5
    L_mask = beta(t) * (max(|lam_g - mean(s_g)| - eps, 0) + (1/4 - Var(s_g)))   beta 0.1 -> 0 linearly
    loss   = L_on + L_gen + L_mask      (one backward: f_q gets L_on, M gets L_gen + L_mask)
    Q <- enqueue(k);  after the optimizer step  theta_k <- m theta_k + (1 - m) theta_q

(``k_i = k``, ``k_j = k[idx]``; every embedding is L2-normalised inside the losses; ``T`` is MoCo's
temperature.) ``l+`` is :func:`samix.losses.nonparametric_bce`, ``l-`` is
:func:`samix.losses.cross_view_mixup_infonce`, the same mixed term the online network learns from;
:func:`eta_balanced_instance_loss` is their sum. The mask terms are the supervised SAMix's
(:func:`samix.generators.mask_l1_loss` or ``mask_l2_loss``, :func:`samix.generators.mask_variance_loss`,
weight :func:`samix.generators.linear_weight`).

Which encoder and which views (documented choices):

- **The Mixer reads the momentum encoder**, stage ``l`` (3 by default, checked against the backbone),
  of the **query view** ``x_q`` of both sources ``i`` and ``j``: the "key-side" features of the issue
  are the momentum encoder's, and the view is the one the mask is applied to. Each view is its own
  random crop/flip, so a mask computed from ``x_k``'s features would be misaligned with ``x_q``'s
  pixels. The features are computed under ``no_grad`` (no gradient into any encoder) on the unmixed
  batch. This is also the encoder that ``samix export-mixer`` writes beside the Mixer (SAMix-IP).
- **Both mixed samples are mixes of ``x_q``** and both are **scored against the key view's keys**
  ``k_i, k_j`` (the cross-view pipeline of A.5.1, Fig. 8a). A mix of ``x_k`` scored against keys of
  ``x_k`` is the same-view pipeline: the momentum encoder would embed a partial copy of the very image
  that produced ``k_i`` and the Mixer could win by copying pixels (the degenerate solutions of Fig. 8).
  ``cross_view=false`` (MoCo's switch) scores both against ``f_k(x_q)`` instead.
- **The generation loss runs through the frozen momentum encoder**; its gradient reaches only the
  Mixer (through ``x_g`` and ``s_g``). As in AutoMix, its backward through ``f_k`` (down to ``x_g``)
  runs at once inside ``forward`` (:func:`samix.algorithms.early_backward.backward_now`), freeing
  ``f_k``'s activations before the online passes; not under fp16 autocast (that backward would run
  outside the engine's GradScaler), where the plain graph is kept. The momentum encoder's passes over
  ``x_q`` (features) and ``x_g`` are plain (no shuffle-BN): shuffle-BN protects the *keys* from sharing
  a batch statistic with their queries; ``z`` and ``z_g`` are no queries of the online network.
- The online network's sample falls back to plain mixup of the same pair when ``lam_q`` lies within
  ``mixup_fallback`` of 0 or 1 (AutoMix's rule); one lambda per batch for each pair, drawn like AutoMix
  from the run's generator.

Why no information about the pairing reaches a network that should not have it:

- The keys ``k`` (the targets) are computed from ``x_k`` alone, before the pairing is drawn, by a
  network that never sees a mixed image; shuffle-BN's permutation (global RNG, undone after the key
  encoder) is independent of the pairings (the run's ``torch.Generator``). The pairing reaches the losses
  only as the index that selects ``k[idx]``: the same index that made the mask (a test permutes it after
  the masks are made and the loss changes).
- Both pairings are derangements (:func:`~samix.algorithms.ssl.base.derangement`): no sample is mixed
  with itself, so no "mixed" sample is a plain view whose two targets coincide.
- The online network sees its mixed image with the mask detached and never the Mixer's input, its
  pairing or its lambda; the Mixer's own pair is an independent draw, so the Mixer is never trained
  on the online network's sample. The Mixer is given the pairing explicitly (it must know the partner
  to make a mask for the pair) but no gradient of it flows into an encoder. No label is read anywhere.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from samix import _checks
from samix.generators import SAMixGenerator, generator_mask_loss, linear_weight
from samix.generators.mask_losses import MASK_LOSS_REDUCTIONS
from samix.losses import cross_view_mixup_infonce, moco_infonce, nonparametric_bce
from samix.mixing.base import gather_batch, mask_mix

from .. import early_backward
from ..base import register_algorithm
from ..masks import DIAGNOSTIC_KEYS, DIAGNOSTIC_LAMS, first_test_images, generator_diagnostics, generator_masks
from ..samix import GENERATOR_INITS, LAM_ADJUST_ON, QK_PROJ, student_half_adjust
from .base import derangement, two_views
from .moco import MoCo

_WHAT = "algorithm option"
_check_number = partial(_checks.check_number, what=_WHAT, type_error=ValueError)
_check_bool = partial(_checks.check_bool, what=_WHAT)
_check_choice = partial(_checks.check_choice, what=_WHAT)

MASK_LOSSES = ("none", "l1", "l2")
#: Table 9's instance-level generation objectives: l+ + eta l- (the default), l+ (BCE) or l- (infoNCE) alone
INSTANCE_LOSSES = ("eta", "bce", "nce")
UPSAMPLE_MODES = ("nearest", "bilinear")


def eta_balanced_instance_loss(z_m: Tensor, keys: Tensor, index: Tensor, lam, queue: Tensor, eta: float = 0.5,
                               temperature: float = 0.2) -> Dict[str, Tensor]:
    """SAMix-I's generation objective ``l_eta = l+ + eta * l-`` (samix.txt Eq. 7, 8): ``l+`` the two-way
    BCE between ``z_m`` and the keys of its sources (:func:`samix.losses.nonparametric_bce` with
    ``z_i = keys``, ``z_j = keys[index]``), ``l-`` the mixup infoNCE against ``queue``
    (:func:`samix.losses.cross_view_mixup_infonce`). Returns ``{"loss", "bce", "nce"}`` (means over the
    batch; ``eta = 0`` gives the BCE term alone)."""
    eta = _checks.check_number("eta", eta, low=0.0, type_error=ValueError)
    index = index.to(keys.device)
    bce = nonparametric_bce(z_m, keys, keys.index_select(0, index), lam, temperature=temperature)
    nce = cross_view_mixup_infonce(z_m, keys, index, lam, queue, temperature=temperature)
    return {"loss": bce + eta * nce, "bce": bce, "nce": nce}


@register_algorithm("samix_i")
class SAMixI(MoCo):
    """SAMix-I: MoCo v2 + SAMix's Mixer trained with the eta-balanced instance loss (module docstring).

    Options: those of :class:`~samix.algorithms.ssl.moco.MoCo` plus ``alpha`` (2.0, both lambdas),
    ``stage`` (3, of the momentum backbone), ``eta`` (0.5), ``instance_loss`` (``"eta"`` | ``"bce"`` |
    ``"nce"``: Table 9's instance objectives), ``mask_loss`` (``"l1"`` | ``"l2"`` |
    ``"none"``), ``mask_loss_weight`` (0.1) -> ``mask_loss_weight_end`` (0.0) linearly, ``mask_margin``
    (0.1), ``variance_loss`` (True), ``mixup_fallback`` (0.08), ``upsample`` (``"bilinear"``), the Mixer's
    modules ``attention``, ``adaptive_lambda``, ``nonlinear_content``, ``lam_adjust`` (all True),
    ``lam_adjust_prob`` (0.25), ``gamma_init`` (0.0, the paper; see
    :mod:`samix.generators.samix_generator`) and the Mixer's own optimiser settings ``mix_block_lr``,
    ``mix_block_min_lr``, ``mix_block_weight_decay`` (None: the engine's), and the reference-faithful
    choices of the supervised SAMix (:mod:`samix.algorithms.samix`): ``qk_proj`` (``"separate"``),
    ``mix_block_init`` (``"reference"``), ``lam_adjust_on`` (``"student"``: only the online network's
    detached masks are adjusted), ``mask_loss_reduction`` (``"batch"``). Every evaluation logs the mask
    diagnostics of :func:`~samix.algorithms.masks.generator_diagnostics` beside the kNN monitor.
    """

    EVAL_KEYS = MoCo.EVAL_KEYS + DIAGNOSTIC_KEYS

    DEFAULTS: Dict[str, Any] = {
        **MoCo.DEFAULTS,
        "alpha": 2.0,
        "stage": 3,
        "eta": 0.5,
        "instance_loss": "eta",
        "mask_loss": "l1",
        "mask_loss_weight": 0.1,
        "mask_loss_weight_end": 0.0,
        "mask_margin": 0.1,
        "variance_loss": True,
        "mixup_fallback": 0.08,
        "upsample": "bilinear",
        "attention": True,
        "adaptive_lambda": True,
        "nonlinear_content": True,
        "lam_adjust": True,
        "lam_adjust_prob": 0.25,
        "gamma_init": 0.0,
        "mix_block_lr": None,
        "mix_block_min_lr": None,
        "mix_block_weight_decay": None,
        "qk_proj": "separate",
        "mix_block_init": "reference",
        "lam_adjust_on": "student",
        "mask_loss_reduction": "batch",
    }

    def __init__(self, model: nn.Module, num_classes: int, mixer=None, **kwargs) -> None:
        if mixer is not None:
            raise ValueError(f"algorithm {self.algorithm_name!r} generates its own mixed samples; "
                             f"set mixer.name=none (got a {type(mixer).__name__} mixer)")
        super().__init__(model, num_classes, None, **kwargs)
        o = self.options
        _check_number("alpha", o["alpha"], 0.0, low_open=True)
        channels = tuple(getattr(model, "stage_channels", ()) or ())
        if not hasattr(model, "features") or not channels:
            raise TypeError(f"model must be a samix Backbone with features(x, stage) and stage_channels, "
                            f"got {type(model).__name__}")
        _checks.check_int("stage", o["stage"], low=1, high=len(channels), what=_WHAT, type_error=ValueError)
        _check_number("eta", o["eta"], 0.0)
        _check_choice("instance_loss", o["instance_loss"], INSTANCE_LOSSES)
        _check_choice("mask_loss", o["mask_loss"], MASK_LOSSES)
        _check_number("mask_loss_weight", o["mask_loss_weight"], 0.0)
        _check_number("mask_loss_weight_end", o["mask_loss_weight_end"], 0.0)
        _check_number("mask_margin", o["mask_margin"], 0.0, 1.0)
        _check_number("mixup_fallback", o["mixup_fallback"], 0.0, 0.5, high_open=True)
        _check_choice("upsample", o["upsample"], UPSAMPLE_MODES)
        for name in ("variance_loss", "attention", "adaptive_lambda", "nonlinear_content", "lam_adjust"):
            _check_bool(name, o[name])
        _check_number("lam_adjust_prob", o["lam_adjust_prob"], 0.0, 1.0)
        _check_number("gamma_init", o["gamma_init"], 0.0, 1.0)
        _check_choice("qk_proj", o["qk_proj"], QK_PROJ)
        _check_choice("mix_block_init", o["mix_block_init"], GENERATOR_INITS)
        _check_choice("lam_adjust_on", o["lam_adjust_on"], LAM_ADJUST_ON)
        _check_choice("mask_loss_reduction", o["mask_loss_reduction"], MASK_LOSS_REDUCTIONS)
        for name in ("mix_block_lr", "mix_block_min_lr", "mix_block_weight_decay"):
            if o[name] is not None:
                _check_number(name, o[name], 0.0, low_open=name == "mix_block_lr")
        self.mix_block = SAMixGenerator(
            int(channels[int(o["stage"]) - 1]), upsample=o["upsample"], attention=o["attention"],
            adaptive_lambda=o["adaptive_lambda"], nonlinear_content=o["nonlinear_content"],
            lam_adjust=o["lam_adjust"], lam_adjust_prob=float(o["lam_adjust_prob"]),
            gamma_init=float(o["gamma_init"]), qk=o["qk_proj"], init=o["mix_block_init"])

    # ------------------------------------------------------------------ pieces
    @property
    def momentum_backbone(self) -> nn.Module:
        """The momentum (key) encoder's backbone: the Mixer's feature extractor."""
        return self.key_encoder.backbone

    def _draw(self, b: int, device) -> tuple:
        """One lambda per batch (AutoMix's draw: NumPy's Beta seeded from the run's generator) and a
        derangement, both from the run's generator (reproducible, resumable)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
        a = float(self.options["alpha"])
        lam = float(np.random.default_rng(seed).beta(a, a))
        index = derangement(b, self.generator, device=device)
        return lam, torch.full((b,), lam, device=device), index

    def generate(self, z: Tensor, lam: Tensor, index: Tensor, out_size):
        """The Mixer's call on the batched ``[online; Mixer]`` halves (the run's generator drives the
        lambda-adjust draws; ``lam_adjust_on="student"``: only the first half may be adjusted)."""
        return self.mix_block(z, lam, index, out_size=out_size, generator=self.generator,
                              adjust=student_half_adjust(self.options["lam_adjust_on"], z.shape[0], z.device))

    def mask_loss_weight(self) -> float:
        """``beta(t)``: ``mask_loss_weight`` linearly to ``mask_loss_weight_end`` over training."""
        o = self.options
        return linear_weight(self.progress, float(o["mask_loss_weight"]), float(o["mask_loss_weight_end"]))

    def mask_terms(self, mask_raw: Tensor, lam: Tensor):
        """The unweighted mask loss of the supervised Mixer on the raw mask (``None``: ``mask_loss="none"``)."""
        o = self.options
        return generator_mask_loss(mask_raw, lam, o["mask_loss"], float(o["mask_margin"]),
                                   variance=bool(o["variance_loss"]), reduction=o["mask_loss_reduction"])

    def _backward_now(self, device_type: str) -> bool:
        """Whether the backward through the frozen momentum encoder may run inside ``forward``."""
        if not torch.is_grad_enabled():
            return False
        if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
            return False
        return not any(p.requires_grad for p in self.key_encoder.parameters())

    def generation_loss(self, z_g: Tensor, targets: Tensor, index: Tensor, lam: Tensor,
                        neg: Tensor) -> Dict[str, Tensor]:
        """The Mixer's objective on the momentum encoder's embeddings ``z_g`` of its mixed sample:
        SAMix-I's :func:`eta_balanced_instance_loss` (``{"loss", "bce", "nce"}``); ``instance_loss`` picks
        Table 9's row: ``"eta"`` (``l+ + eta l-``), ``"bce"`` (``l+``) or ``"nce"`` (``l-``, the mixup infoNCE)."""
        o = self.options
        terms = eta_balanced_instance_loss(z_g, targets, index, lam, neg, eta=float(o["eta"]),
                                           temperature=float(o["temperature"]))
        if o["instance_loss"] != "eta":
            terms["loss"] = terms[o["instance_loss"]]
        return terms

    def generation_terms(self, x_q: Tensor, targets: Tensor, neg: Tensor, mask: Tensor, mask_raw: Tensor,
                         lam: Tensor, index: Tensor, early: bool) -> Dict[str, Tensor]:
        """The Mixer's losses on ``x_g = s_g x_q + (1 - s_g) x_q[idx_g]`` through the frozen momentum
        encoder: ``loss_gen`` (``l_eta``) and ``loss_mask`` (weighted), plus the two parts as logs."""
        x_g = mask_mix(x_q, index, mask)
        parts = self.generation_loss(self.key_encoder(x_g), targets, index, lam, neg)
        gen = parts.pop("loss")
        if early and gen.requires_grad:
            gen = early_backward.backward_now(gen, x_g)
        terms = {"loss_gen": gen, **{f"gen_{k}": v.detach() for k, v in parts.items()}}
        m = self.mask_terms(mask_raw, lam)
        if m is not None:
            terms["loss_mask"] = self.mask_loss_weight() * m
        return terms

    # ------------------------------------------------------------------ the step
    def forward(self, batch) -> Dict[str, Tensor]:
        x_q, x_k = two_views(batch)
        o = self.options
        t = float(o["temperature"])
        b, dev = x_q.shape[0], x_q.device
        neg = self.queue.queue.clone().detach()
        k = self.keys(x_k)
        targets = k if o["cross_view"] else self.keys(x_q)
        with torch.no_grad():
            z = self.momentum_backbone.features(x_q, int(o["stage"]))
        lam_q, lam_s, index_s = self._draw(b, dev)  # the online network's pair
        _, lam_g, index_g = self._draw(b, dev)      # the Mixer's own pair
        # both masks in one call: the second half pairs sample i with b + index_g[i] (the second copy of z)
        gen = self.generate(torch.cat([z, z]), torch.cat([lam_s, lam_g]), torch.cat([index_s, index_g + b]),
                            x_q.shape[-2:])
        mask_s = gen.mask[:b]

        early = self._backward_now(dev.type)
        if early:
            gen_terms = self.generation_terms(x_q, targets, neg, gen.mask[b:], gen.mask_raw[b:], lam_g, index_g, True)

        # ---- online network: MoCo's objective on its own mixed sample, the mask detached
        fb = float(o["mixup_fallback"])
        if lam_q < fb or lam_q > 1 - fb:
            x_m = gather_batch(x_q, index_s).lerp_(x_q, lam_q)
        else:
            x_m = mask_mix(x_q, index_s, mask_s.detach())
        out: Dict[str, Tensor] = {"loss_nce": moco_infonce(self.encoder(x_q), k, neg, temperature=t)}
        out["loss_mix"] = float(o["mix_weight"]) * cross_view_mixup_infonce(
            self.encoder(x_m), targets, index_s, lam_s, neg, temperature=t)
        if not early:
            gen_terms = self.generation_terms(x_q, targets, neg, gen.mask[b:], gen.mask_raw[b:], lam_g, index_g,
                                              False)
        out.update(gen_terms)
        out.update(self.extra_terms(batch, k))

        out["loss"] = sum(v for name, v in out.items() if name.startswith("loss_"))
        with torch.no_grad():
            out["mask_mean_err"] = (gen.mask_raw[b:].float().mean((1, 2, 3)) - lam_g).abs().mean()
            if self.mix_block.gamma_raw is not None:
                out["gamma"] = self.mix_block.gamma_raw.detach().clamp(0.0, 1.0)
        if torch.is_grad_enabled():
            self.queue.enqueue(k)
        return out

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> List[Dict[str, Any]]:
        o = self.options
        group: Dict[str, Any] = {"params": [p for p in self.mix_block.parameters() if p.requires_grad],
                                 "name": "mix_block"}
        for opt, key in (("mix_block_lr", "lr"), ("mix_block_min_lr", "min_lr"),
                         ("mix_block_weight_decay", "weight_decay")):
            if o[opt] is not None:
                group[key] = float(o[opt])
        return super().param_groups() + [group]

    # ------------------------------------------------------------------ looking, export
    def evaluate(self, ctx) -> Dict[str, Any]:
        """MoCo's kNN monitor plus the Mixer's mask diagnostics on the first test images."""
        res = super().evaluate(ctx)
        res.update(generator_diagnostics(self.momentum_backbone, self.mix_block, int(self.options["stage"]),
                                         first_test_images(ctx), DIAGNOSTIC_LAMS))
        return res

    def mask_generator(self):
        """The Mixer, the momentum backbone that feeds it and its stage (``samix export-mixer``)."""
        return self.mix_block, self.momentum_backbone, int(self.options["stage"])

    @torch.no_grad()
    def masks_for(self, images: Tensor, lams: Sequence[float]) -> Tensor:
        """Raw Mixer masks ``[L, P, 1, H, W]`` (float32) for the pairs ``(images[2p], images[2p + 1])`` at
        each ``lam``: the weight of ``images[2p]``. The momentum backbone and the Mixer run in eval mode;
        the mask is the Mixer's output before lambda adjusting (``mask_raw``)."""
        return generator_masks(self.momentum_backbone, self.mix_block, int(self.options["stage"]), images, lams)
