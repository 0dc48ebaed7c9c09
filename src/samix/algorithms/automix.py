"""AutoMix (automix.txt Sec. 4): a Mix Block trained end to end through a Momentum Pipeline.

One step (B images ``x``, labels ``y``; ``f_q`` the student, ``f_k`` the EMA teacher, ``M`` the Mix Block)::

    z            = f_k.features(x, l)                    # teacher, no grad (stop-gradient)
    lam_q, idx_q ~ Beta(a, a), randperm                   # the student's pair
    lam_k, idx_k ~ Beta(a, a), randperm                   # the Mix Block's own pair (independent draw)
    s_q, s_k     = M(z, [lam_q, lam_k], [idx_q, idx_k])   # ONE batched generator call for both
    # classification (Eq. 10): the student learns on its mixed sample; the mask is detached
    x_q    = s_q.detach() * x + (1 - s_q.detach()) * x[idx_q]     (plain mixup if lam_q < 0.08 or > 0.92)
    L_cls  = MCE(f_q(x_q), y, lam_q, idx_q)  [+ CE(f_q(x), y)   # clean CE, Eq. 8, switchable]
    # generation (Eq. 11): only M learns, through the frozen teacher
    x_k    = s_k * x + (1 - s_k) * x[idx_k]
    L_gen  = MCE(f_k(x_k), y, lam_k, idx_k) + w(t) * max(|lam_k - mean(s_k)| - eps, 0)   # Eq. 6
    loss   = L_cls + L_gen           # one backward: f_q gets L_cls, M gets L_gen (stop-gradients)
    # after the optimizer step (Eq. 12):  theta_k <- m(t) theta_k + (1 - m(t)) theta_q

Mask convention (:mod:`samix.mixing`): ``s`` weights the ORIGINAL sample, ``lam`` is its share
(``lam ~ mean(s)``); AutoMix's Eq. 7 writes the roles the other way round, with the same meaning.

Defaults are the published recipe (DESIGN.md, "Facts from the reference implementation"): stage
``l = 3``, ``alpha = 2``, mask loss L1 with margin ``eps = 0.1`` and weight ``w`` from 0.1 linearly
to 0, momentum 0.999 held for the first 10 % of the iterations then a cosine curve to
``momentum_end`` (0.999999 in the CIFAR/Tiny recipes), plain-mixup fallback for the student when
``lam_q`` lies within 0.08 of 0 or 1, one lambda per batch (as the reference).

Momentum schedule (:meth:`AutoMix.current_momentum`), ``p`` = fraction of training done,
``w`` = ``momentum_warmup``::

    m(p) = momentum                                                   p <= w
    m(p) = end - (end - momentum) * (cos(pi * (p - w) / (1 - w)) + 1) / 2     p > w

non-decreasing from ``momentum`` to ``momentum_end``.

Documented choices:

- The teacher runs in train mode, as the reference does: its BatchNorm layers normalise with batch
  statistics and keep *their own* running statistics (updated by the teacher's forward passes);
  only its parameters follow the EMA formula. They are used in eval mode only (the mask figure).
- The clean term is the engine's loss (``loss.name``, with its label smoothing) on unmixed samples,
  i.e. the plain CE of Eq. 8 for ``loss.name=ce``.
- ``momentum_pipeline=false`` (Table 6 ablation, rows without "+MP") makes the student its own
  teacher: features and the generation loss go through the online network, whose parameters then
  also receive the generation gradient (joint end-to-end training, what the paper compares against).
- ``mask_loss="l2"`` is the squared hinge ``max(|lam - mu| - eps, 0)^2``
  (:func:`samix.generators.mask_l2_loss`).
- ``mask_loss_reduction="batch"`` (default, the reference): the hinge is taken on the *batch* means,
  ``max(|mean_i lam_i - mean_i mu_i| - eps, 0)`` (SAMix's variance term likewise about the batch mean);
  ``"sample"`` hinges every sample's own mean and averages (a literal reading of Eq. 6 with a
  per-sample ``mu_i``). The per-sample hinge is much tighter: with one lambda per batch it pins each
  mask's mean, and at a large weight a constant offset of every mask is its cheapest answer (flat,
  lambda-coloured masks); the batch hinge leaves each mask free to cover its objects as long as the
  batch keeps the ratio.
- ``lam_concat`` (default True, the paper's Eq. 4 and the reference on ImageNet-scale data): whether
  the Mix Block concatenates lambda. The reference's CIFAR configs leave it out ("no lambda concat for
  small-scale datasets"), and so do this library's CIFAR, Tiny-ImageNet and Fashion-MNIST configs.
- ``mix_block_init="reference"`` (default): every generator convolution N(0, 0.01), the reference's
  init (attention near uniform at the start); ``"default"``: PyTorch's
  (:func:`samix.generators.init_generator_weights`).
- Mask diagnostics (:meth:`AutoMix.mask_diagnostics`) are logged with every evaluation:
  ``mask_mu_err`` (mean ``|mu - lam|`` of the raw masks), ``mask_std`` (the within-mask standard
  deviation: 0 for a flat, global-mixup mask), ``mask_self_attn`` (the mean weight a position gives
  itself: ``1/hw`` for uniform attention, 1 for identity) and ``mask_partner_sens`` (the mean absolute
  change of sample i's mask when its partner is swapped for another: 0 for a mask blind to its
  partner).
- The Mix Block may have its own lr / min_lr / weight decay (``mix_block_lr`` ...): a separate
  optimizer parameter group that the engine schedules with its own ``min_lr``.
- Peak memory (an implementation detail; values and gradients are those of the step above): with
  the momentum pipeline, whose teacher has no trainable parameter, the generation pass runs before
  the student's and its backward through the teacher (down to ``x_k``) runs at once, inside
  ``forward`` (:func:`samix.algorithms.early_backward.backward_now`); ``L_gen`` then carries that gradient on to the generator in
  the engine's backward. The teacher's activations are freed before the student's passes: one
  network's activations fewer at the peak (AutoMix 2.9x -> 2.0x vanilla on the Fashion-MNIST CPU
  recipe, 2.0x -> 1.1x without the clean CE; ``benchmarks/automix_cost.py``). Only the order of
  the passes changes (which matters only to the draws of Dropout/DropPath layers, if any). Not
  under fp16 autocast (that backward would run outside the engine's GradScaler) nor without the
  momentum pipeline: there the generation pass runs last, as written above.

SAMix (:mod:`samix.algorithms.samix`) subclasses this class and changes only the generator and the
generation loss.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from samix import _checks
from samix.generators import MixBlock, generator_mask_loss, linear_weight
from samix.generators.mask_losses import MASK_LOSS_REDUCTIONS, MASK_LOSSES
from samix.losses import build_loss
from samix.mixing.base import gather_batch, mask_mix

from . import early_backward
from .base import Algorithm, register_algorithm, split_batch
from .masks import DIAGNOSTIC_KEYS, DIAGNOSTIC_LAMS, first_test_images, generator_diagnostics, generator_masks
from .momentum import MomentumUpdater

UPSAMPLE_MODES = ("nearest", "bilinear")
GENERATOR_INITS = ("reference", "default")

_WHAT = "algorithm option"
_check_number = partial(_checks.check_number, what=_WHAT, type_error=ValueError)
_check_bool = partial(_checks.check_bool, what=_WHAT)
_check_choice = partial(_checks.check_choice, what=_WHAT)


@register_algorithm("automix")
class AutoMix(Algorithm):
    """AutoMix: Mix Block + Momentum Pipeline (see the module docstring for the step and the formulas).

    Options (``algorithm.<name>`` in a config; every one is checked, an unknown one names the allowed):
        alpha: ``lam ~ Beta(alpha, alpha)`` for both pairs (2).
        stage: feature stage ``l`` in 1..4 read by the Mix Block (3).
        momentum, momentum_end, momentum_warmup: the EMA schedule (0.999 -> 1.0, held for 10 %).
        momentum_pipeline: EMA teacher on (True) or the student as its own teacher (ablation).
        clean_ce: add the clean-sample loss to the student's (True).
        mask_loss: ``"none" | "l1" | "l2"``; mask_margin ``eps`` (0.1); mask_loss_weight
            (0.1) -> mask_loss_weight_end (0.0) linearly over training.
        mixup_fallback: the student's sample is plain mixup when ``lam < f`` or ``lam > 1 - f`` (0.08).
        upsample: ``"nearest"`` (AutoMix) or ``"bilinear"``.
        mix_block_lr, mix_block_min_lr, mix_block_weight_decay: the Mix Block's own optimizer
            settings (``None``: the engine's).
        mix_block_kwargs: extra keyword arguments of the generator class (e.g. ``attn_norm``).
        mask_loss_reduction: ``"batch"`` (the reference) or ``"sample"`` hinge (module docstring).
        lam_concat: the Mix Block concatenates lambda (True; False on small data sets, as the reference).
        freeze_mix_block: the ablation "a frozen random Mix Block" (False): the generator keeps its
            initial weights (its BatchNorm still tracks running statistics), the generation loss is still
            computed and logged but trains nothing: what the learned masks add over random ones.
        mix_block_init: ``"reference"`` (N(0, 0.01)) or ``"default"`` (PyTorch's) generator init.
    """

    EVAL_KEYS = Algorithm.EVAL_KEYS + DIAGNOSTIC_KEYS

    DEFAULTS: Dict[str, Any] = {
        "alpha": 2.0,
        "stage": 3,
        "momentum": 0.999,
        "momentum_end": 1.0,
        "momentum_warmup": 0.1,
        "momentum_pipeline": True,
        "clean_ce": True,
        "mask_loss": "l1",
        "mask_loss_weight": 0.1,
        "mask_loss_weight_end": 0.0,
        "mask_margin": 0.1,
        "mixup_fallback": 0.08,
        "upsample": "nearest",
        "mix_block_lr": None,
        "mix_block_min_lr": None,
        "mix_block_weight_decay": None,
        "mix_block_kwargs": {},
        "mask_loss_reduction": "batch",
        "lam_concat": True,
        "freeze_mix_block": False,
        "mix_block_init": "reference",
    }

    def __init__(self, model: nn.Module, num_classes: int, mixer=None, **kwargs) -> None:
        super().__init__(model, num_classes, mixer, **kwargs)
        if mixer is not None:
            raise ValueError(f"algorithm {self.algorithm_name!r} generates its own mixed samples; "
                             f"set mixer.name=none (got a {type(mixer).__name__} mixer)")
        self._check_options()
        o = self.options
        channels = tuple(getattr(model, "stage_channels", ()) or ())
        if not hasattr(model, "features") or not channels:
            raise TypeError(f"model must be a samix Backbone with features(x, stage) and stage_channels, "
                            f"got {type(model).__name__}")
        stage = o["stage"]
        if stage > len(channels):
            raise ValueError(f"algorithm option stage must be in [1, {len(channels)}] for this model, got {stage}")
        self.mix_block = self.build_generator(int(channels[stage - 1]))
        _check_bool("freeze_mix_block", o["freeze_mix_block"])
        if o["freeze_mix_block"]:
            self.mix_block.requires_grad_(False)
        self.ema = MomentumUpdater(o["momentum"], o["momentum_end"], o["momentum_warmup"])
        self.teacher = self.ema.make_teacher(model) if o["momentum_pipeline"] else None

    def _check_options(self) -> None:
        o = self.options
        _check_number("alpha", o["alpha"], 0.0, low_open=True)
        stage = o["stage"]
        if isinstance(stage, bool) or not isinstance(stage, int) or not 1 <= stage <= 4:
            raise ValueError(f"algorithm option stage must be an int in [1, 4], got {stage!r}")
        m0 = _check_number("momentum", o["momentum"], 0.0, 1.0)
        _check_number("momentum_end", o["momentum_end"], m0, 1.0)
        _check_number("momentum_warmup", o["momentum_warmup"], 0.0, 1.0, high_open=True)
        for name in ("momentum_pipeline", "clean_ce"):
            _check_bool(name, o[name])
        _check_choice("mask_loss", o["mask_loss"], MASK_LOSSES)
        _check_number("mask_loss_weight", o["mask_loss_weight"], 0.0)
        _check_number("mask_loss_weight_end", o["mask_loss_weight_end"], 0.0)
        _check_number("mask_margin", o["mask_margin"], 0.0, 1.0)
        _check_number("mixup_fallback", o["mixup_fallback"], 0.0, 0.5, high_open=True)
        _check_choice("upsample", o["upsample"], UPSAMPLE_MODES)
        for name in ("mix_block_lr", "mix_block_min_lr", "mix_block_weight_decay"):
            if o[name] is not None:
                _check_number(name, o[name], 0.0, low_open=name == "mix_block_lr")
        _check_choice("mask_loss_reduction", o["mask_loss_reduction"], MASK_LOSS_REDUCTIONS)
        _check_choice("mix_block_init", o["mix_block_init"], GENERATOR_INITS)
        _check_bool("lam_concat", o["lam_concat"])
        if not isinstance(o["mix_block_kwargs"], dict):
            raise TypeError(f"algorithm option mix_block_kwargs must be a mapping, got {o['mix_block_kwargs']!r}")

    # ------------------------------------------------------------------ hooks for subclasses
    def build_generator(self, channels: int) -> nn.Module:
        """The mask generator reading ``channels``-channel features (AutoMix: :class:`MixBlock`)."""
        kwargs = dict(self.options["mix_block_kwargs"])
        clash = sorted(set(kwargs) & {"in_channels", "upsample", "lam_concat", "init"})
        if clash:
            raise ValueError(f"algorithm option mix_block_kwargs must not set {clash}: use the algorithm options")
        o = self.options
        return MixBlock(channels, upsample=o["upsample"], lam_concat=o["lam_concat"], init=o["mix_block_init"],
                        **kwargs)

    def generate(self, z: Tensor, lam: Tensor, index: Tensor, out_size) -> Any:
        """Call the generator (SAMix passes the run's ``torch.Generator`` for its lambda-adjust draws)."""
        return self.mix_block(z, lam, index, out_size=out_size)

    def mask_loss_weight(self) -> float:
        """``w(t)``: ``mask_loss_weight`` linearly to ``mask_loss_weight_end`` over training."""
        o = self.options
        return linear_weight(self.progress, float(o["mask_loss_weight"]), float(o["mask_loss_weight_end"]))

    def mask_terms(self, mask_raw: Tensor, lam: Tensor) -> Optional[Tensor]:
        """The unweighted mask loss on the generator's raw mask, or ``None`` (``mask_loss="none"``)."""
        o = self.options
        return generator_mask_loss(mask_raw, lam, o["mask_loss"], float(o["mask_margin"]),
                                   variance=bool(o.get("variance_loss", False)), reduction=o["mask_loss_reduction"])

    @property
    def generator_loss_fn(self):
        """The engine's mixed loss for the generator, without a Decoupled Mixup regulariser: DM
        (``loss.decoupled_eta``) trains the student only. Its term asks both mixed classes to be
        confident whatever λ is, which would pull the Mix Block away from masks that follow λ;
        the generator gets DM's base loss (mixed CE, or mixed BCE for DM(BCE)) with its options
        (``build_loss`` already refuses the BCE-only options with a CE base)."""
        fn = self.loss_fn
        if getattr(fn, "name", None) != "decoupled":
            return fn
        if getattr(self, "_generator_loss_of", None) is not fn:  # built once per loss object
            opts = {k: v for k, v in fn.options.items() if k not in ("loss", "eta")}
            self._generator_loss = build_loss(fn.options.get("loss", "ce"), **opts)
            self._generator_loss_of = fn
        return self._generator_loss

    def generation_cls_loss(self, logits: Tensor, labels: Tensor, lam: Tensor, index: Tensor) -> Tensor:
        """The generator's classification objective on the teacher's logits (AutoMix: the engine's
        mixed loss, MCE for ``loss.name=ce``; without DM's regulariser, see :attr:`generator_loss_fn`)."""
        return self.generator_loss_fn(logits, labels, lam, index)

    def generation_loss(self, logits: Tensor, labels: Tensor, out) -> Dict[str, Tensor]:
        """``{"loss_gen_cls": ..., "loss_mask": w(t) * mask loss}`` for the generator's own sample
        (``out``: ``lam``, ``index``, ``mask_raw`` of that half of the batched call)."""
        terms = {"loss_gen_cls": self.generation_cls_loss(logits, labels, out.lam, out.index)}
        m = self.mask_terms(out.mask_raw, out.lam)
        if m is not None:
            terms["loss_mask"] = self.mask_loss_weight() * m
        return terms

    # ------------------------------------------------------------------ draws
    def _draw(self, b: int, device) -> tuple:
        """One lambda per batch (as the reference) and a random pairing, drawn on the CPU from the
        run's generator (reproducible, resumable, no host-device synchronisation)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
        a = float(self.options["alpha"])
        lam = float(np.random.default_rng(seed).beta(a, a))
        index = torch.randperm(b, generator=self.generator).to(device, non_blocking=True)
        return lam, torch.full((b,), lam, device=device), index

    def _teacher(self) -> nn.Module:
        return self.teacher if self.teacher is not None else self.model

    def mask_generator(self):
        """The Mix Block / Mixer and the encoder that feeds it (the momentum teacher; the online network
        without a momentum pipeline), for ``samix export-mixer``."""
        return self.mix_block, self._teacher(), int(self.options["stage"])

    # ------------------------------------------------------------------ the step
    def forward(self, batch) -> Dict[str, Tensor]:
        images, labels = split_batch(batch)
        o = self.options
        b = images.shape[0]
        dev = images.device
        teacher = self._teacher()
        with torch.no_grad():
            z = teacher.features(images, int(o["stage"]))
        lam_q, lam_s, index_s = self._draw(b, dev)   # the student's
        _, lam_g, index_g = self._draw(b, dev)       # the generator's own
        # Both masks in one generator call: the second half pairs sample i with B + index_g[i],
        # i.e. with the second copy of the same features; each half carries its own lambda.
        gen = self.generate(torch.cat([z, z]), torch.cat([lam_s, lam_g]), torch.cat([index_s, index_g + b]),
                            images.shape[-2:])
        mask_s = gen.mask[:b]
        out_g = _Half(gen, slice(b, None), lam_g, index_g)

        # ---- generation: the generator learns through the frozen teacher on its own sample; it
        # runs first when the teacher's part of the backward can run at once (early_backward)
        early = self._teacher_backward_now(dev.type)
        if early:
            gen_terms = self._generation_terms(teacher, images, labels, out_g, early)

        # ---- classification (student): the mask is detached (no gradient into the generator)
        fb = float(o["mixup_fallback"])
        if lam_q < fb or lam_q > 1 - fb:
            x_s = gather_batch(images, index_s).lerp_(images, lam_q)
        else:
            x_s = mask_mix(images, index_s, mask_s.detach())
        out: Dict[str, Tensor] = {"loss_cls": self.loss_fn(self.model(x_s), labels, lam_s, index_s)}
        if o["clean_ce"]:
            out["loss_clean"] = self.loss_fn(self.model(images), labels)
        if not early:
            gen_terms = self._generation_terms(teacher, images, labels, out_g, early)
        out.update(gen_terms)

        out["loss"] = sum(v for k, v in out.items() if k.startswith("loss_"))
        with torch.no_grad():
            out["mask_mean_err"] = (gen.mask_raw[b:].float().mean((1, 2, 3)) - lam_g).abs().mean()
        return out

    def _generation_terms(self, teacher: nn.Module, images: Tensor, labels: Tensor, out_g, early: bool):
        """The generation loss on ``x_k = s_k x + (1 - s_k) x[idx_k]`` through ``teacher``; with ``early``
        the backward through the teacher runs now (:func:`~samix.algorithms.early_backward.backward_now`)."""
        x_g = mask_mix(images, out_g.index, out_g.mask)
        terms = self.generation_loss(teacher(x_g), labels, out_g)
        if early and terms["loss_gen_cls"].requires_grad:
            terms["loss_gen_cls"] = early_backward.backward_now(terms["loss_gen_cls"], x_g)
        return terms

    def _teacher_backward_now(self, device_type: str) -> bool:
        """Whether the backward through the teacher may run inside ``forward``: a momentum pipeline
        whose teacher has no trainable parameter, grad mode, and no fp16 autocast (that backward would
        run unscaled, outside the engine's GradScaler)."""
        if self.teacher is None or not torch.is_grad_enabled():
            return False
        if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
            return False
        return not any(p.requires_grad for p in self.teacher.parameters())

    # ------------------------------------------------------------------ momentum
    def current_momentum(self) -> float:
        """EMA momentum ``m(p)`` at the current progress ``p`` (:mod:`samix.algorithms.momentum`)."""
        return self.ema.momentum(self.progress)

    @property
    def momentum(self) -> float:
        """The momentum of the last EMA update."""
        return self.ema.current

    def on_train_step_end(self) -> None:
        """``theta_k <- m theta_k + (1 - m) theta_q`` (:class:`~samix.algorithms.momentum.MomentumUpdater`)."""
        if self.teacher is not None:
            self.ema.update(self.teacher, self.model, self.progress)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> List[Dict[str, Any]]:
        o = self.options
        gen_group: Dict[str, Any] = {"params": [p for p in self.mix_block.parameters() if p.requires_grad],
                                     "name": "mix_block"}
        if o["mix_block_lr"] is not None:
            gen_group["lr"] = float(o["mix_block_lr"])
        if o["mix_block_min_lr"] is not None:
            gen_group["min_lr"] = float(o["mix_block_min_lr"])
        if o["mix_block_weight_decay"] is not None:
            gen_group["weight_decay"] = float(o["mix_block_weight_decay"])
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "name": "model"}, gen_group]

    # ------------------------------------------------------------------ looking
    def evaluate(self, ctx) -> Dict[str, Any]:
        """The classifier's metrics plus :meth:`mask_diagnostics` on the first test batch."""
        res = super().evaluate(ctx)
        res.update(self.mask_diagnostics(first_test_images(ctx)))
        return res

    @torch.no_grad()
    def mask_diagnostics(self, images: Tensor) -> Dict[str, float]:
        """What the generator's raw masks do, in numbers (see the module docstring): ``mask_mu_err``,
        ``mask_std``, ``mask_self_attn`` (NaN without attention) and ``mask_partner_sens``, on ``images``
        paired with their neighbour (``i -> i + 1``) at the lambdas :data:`DIAGNOSTIC_LAMS` cycled over
        the batch; the partner swap pairs ``i`` with ``i + 2`` instead. Encoder and generator in eval mode."""
        return generator_diagnostics(self._teacher(), self.mix_block, int(self.options["stage"]), images,
                                     DIAGNOSTIC_LAMS)

    @torch.no_grad()
    def masks_for(self, images: Tensor, lams: Sequence[float]) -> Tensor:
        """Raw generator masks ``[L, P, 1, H, W]`` (float32) for the fixed pairs ``(images[2p], images[2p+1])``,
        ``p < P = B // 2``, at each ``lam`` in ``lams``: the weight of ``images[2p]``.

        Teacher and generator run in eval mode (BatchNorm running statistics, no Dropout). The mask
        shown is the generator's own output before lambda adjusting (``mask_raw``), so a figure
        reveals masks that ignore ``lam`` even when SAMix's adjusting would rescale them.
        """
        return generator_masks(self._teacher(), self.mix_block, int(self.options["stage"]), images, lams)


class _Half:
    """The generator-output fields the generation loss reads, for one half of the batched call."""

    def __init__(self, gen, part: slice, lam: Tensor, index: Tensor):
        self.mask = gen.mask[part]
        self.mask_raw = gen.mask_raw[part]
        self.mask_small = gen.mask_small[part]
        self.lam = lam
        self.index = index
