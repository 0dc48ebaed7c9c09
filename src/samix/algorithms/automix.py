"""AutoMix (automix.txt Sec. 4): a Mix Block trained end to end through a Momentum Pipeline.

One step (B images ``x``, labels ``y``)::

    z      = teacher.features(x, l)                       # EMA teacher, no grad
    lam_s, index_s ~ Beta(a, a), randperm                  # the student's pair
    lam_g, index_g ~ Beta(a, a), randperm                  # the Mix Block's own pair
    s_s, s_g = MixBlock(z, lam, index)                     # one generator call for both (batched)
    # classification: the student learns on its mixed sample; the mask is detached
    L_cls = MCE(student(s_s.detach()*x + (1-s_s.detach())*x[index_s]), y, lam_s, index_s)
            [+ CE(student(x), y)                           # clean CE, switchable]
    # generation: only the Mix Block learns, through the frozen teacher
    L_gen = MCE(teacher(s_g*x + (1-s_g)*x[index_g]), y, lam_g, index_g) + w(t) * mask_loss(s_g, lam_g)
    loss  = L_cls + L_gen ; after the optimizer step: teacher <- m*teacher + (1-m)*student

Facts of the published recipe (DESIGN.md) kept as defaults: stage l = 3, alpha = 2, mask loss L1 with
margin 0.1 and weight 0.1 -> 0 linearly, momentum 0.999 held for the first 10 % of the iterations then a
cosine curve to ``momentum_end``; when the student's lambda is within 0.08 of 0 or 1 its sample falls back
to plain mixup (``mixup_fallback``).

Choices documented here:
- The teacher's BN layers use batch statistics in its forward passes (train mode, as the reference
  runs it); its running statistics are copied from the student after each step, while its parameters
  follow the EMA formula exactly.
- ``momentum_pipeline=false`` (Table 6 ablation) makes the student its own teacher: features and the
  generation loss go through the online network, whose parameters then also receive the generation
  gradient (end-to-end joint training, the setting the paper compares against).

SAMix (:mod:`samix.algorithms.samix`) subclasses this class and changes only the generator and the
generation loss.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Algorithm, register_algorithm


@register_algorithm("automix")
class AutoMix(Algorithm):
    DEFAULTS: Dict[str, Any] = {
        "alpha": 2.0,  # lambda ~ Beta(alpha, alpha)
        "stage": 3,  # feature stage l read by the Mix Block
        "momentum": 0.999,  # EMA momentum at the start
        "momentum_end": 1.0,  # ... cosine curve towards this value (0.999999 on CIFAR)
        "momentum_warmup": 0.1,  # fraction of iterations the momentum is held at `momentum`
        "momentum_pipeline": True,  # False: no EMA teacher (ablation)
        "clean_ce": True,  # add the clean-sample CE to the student's loss
        "mask_loss": "l1",  # none | l1 | l2
        "mask_loss_weight": 0.1,  # linearly decayed to mask_loss_weight_end over training
        "mask_loss_weight_end": 0.0,
        "mask_margin": 0.1,
        "mixup_fallback": 0.08,  # |lam - 0|, |lam - 1| below this: plain mixup for the student
        "upsample": "nearest",
        "mix_block_lr": None,  # None: the engine's lr
        "mix_block_min_lr": None,
        "mix_block_weight_decay": None,
        "mix_block_kwargs": {},  # extra keyword arguments of the generator class
    }

    def __init__(self, model: nn.Module, num_classes: int, mixer=None, **kwargs) -> None:
        super().__init__(model, num_classes, mixer, **kwargs)
        o = self.options
        if o["mask_loss"] not in ("none", "l1", "l2"):
            raise ValueError(f"algorithm option mask_loss must be one of ['none', 'l1', 'l2'], got {o['mask_loss']!r}")
        stage = o["stage"]
        if not isinstance(stage, int) or not 1 <= stage <= 4:
            raise ValueError(f"algorithm option stage must be an int in [1, 4], got {stage!r}")
        if not float(o["alpha"]) > 0:
            raise ValueError(f"algorithm option alpha must be > 0, got {o['alpha']!r}")
        channels = int(model.stage_channels[stage - 1])
        self.mix_block = self.build_generator(channels)
        if o["momentum_pipeline"]:
            self.teacher = copy.deepcopy(model)
            self.teacher.requires_grad_(False)
        else:
            self.teacher = None
        self.momentum = float(o["momentum"])

    # ------------------------------------------------------------------ hooks for subclasses
    def build_generator(self, channels: int) -> nn.Module:
        from samix.generators import MixBlock

        return MixBlock(channels, upsample=self.options["upsample"], **dict(self.options["mix_block_kwargs"]))

    def generation_loss(self, logits: Tensor, labels: Tensor, out) -> Dict[str, Tensor]:
        """The Mix Block's objective on its own mixed sample (teacher logits)."""
        from samix.generators.mask_losses import linear_weight, mask_l1_loss, mask_l2_loss

        o = self.options
        terms = {"loss_gen_cls": self.loss_fn(logits, labels, out.lam, out.index)}
        if o["mask_loss"] != "none":
            w = linear_weight(self.progress, float(o["mask_loss_weight"]), float(o["mask_loss_weight_end"]))
            fn = mask_l1_loss if o["mask_loss"] == "l1" else mask_l2_loss
            terms["loss_mask"] = w * fn(out.mask_raw, out.lam, margin=float(o["mask_margin"]))
        return terms

    # ------------------------------------------------------------------ draws
    def _draw(self, b: int, device) -> tuple[float, Tensor, Tensor]:
        """One lambda per batch (as the reference) and a random pairing, drawn on the CPU from the
        run's generator (no host-device synchronisation)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
        a = float(self.options["alpha"])
        lam = float(np.random.default_rng(seed).beta(a, a))
        index = torch.randperm(b, generator=self.generator).to(device, non_blocking=True)
        return lam, torch.full((b,), lam, device=device), index

    def _teacher(self) -> nn.Module:
        return self.teacher if self.teacher is not None else self.model

    # ------------------------------------------------------------------ the step
    def forward(self, images: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        o = self.options
        b = images.shape[0]
        dev = images.device
        teacher = self._teacher()
        with torch.no_grad():
            z = teacher.features(images, int(o["stage"]))
        lam_val, lam_s, index_s = self._draw(b, dev)
        _, lam_g, index_g = self._draw(b, dev)
        # Both masks in one generator call: the second half pairs sample i with B + index_g[i].
        gen = self.mix_block(torch.cat([z, z]), torch.cat([lam_s, lam_g]),
                             torch.cat([index_s, index_g + b]), out_size=images.shape[-2:])
        mask_s, mask_g = gen.mask[:b], gen.mask[b:]
        out_g = _Slice(gen, b, index_g, lam_g)

        # ---- classification (student): detached mask
        fb = float(o["mixup_fallback"])
        if lam_val < fb or lam_val > 1 - fb:
            x_s = torch.lerp(images[index_s], images, lam_val)
        else:
            m = mask_s.detach().to(images.dtype)
            x_s = torch.lerp(images[index_s], images, m)
        logits_s = self.model(x_s)
        out: Dict[str, Tensor] = {"loss_cls": self.loss_fn(logits_s, labels, lam_s, index_s)}
        if o["clean_ce"]:
            logits_c = self.model(images)
            out["loss_clean"] = F.cross_entropy(logits_c.float(), labels)

        # ---- generation (Mix Block) through the frozen teacher
        x_g = torch.lerp(images[index_g], images, mask_g.to(images.dtype))
        logits_g = teacher(x_g)
        out.update(self.generation_loss(logits_g, labels, out_g))

        out["loss"] = sum(v for k, v in out.items() if k.startswith("loss_"))
        with torch.no_grad():
            out["mask_mean_err"] = (mask_g.float().mean((1, 2, 3)) - lam_g).abs().mean()
        return out

    # ------------------------------------------------------------------ momentum
    def current_momentum(self) -> float:
        o = self.options
        base, end, warm = float(o["momentum"]), float(o["momentum_end"]), float(o["momentum_warmup"])
        p = self.progress
        if p <= warm:
            return base
        t = (p - warm) / max(1.0 - warm, 1e-12)
        return end - (end - base) * (math.cos(math.pi * t) + 1) / 2

    @torch.no_grad()
    def on_train_step_end(self) -> None:
        if self.teacher is None:
            return
        m = self.current_momentum()
        self.momentum = m
        t_params = list(self.teacher.parameters())
        s_params = [p.detach() for p in self.model.parameters()]
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, s_params, alpha=1 - m)
        for tb, sb in zip(self.teacher.buffers(), self.model.buffers()):
            tb.copy_(sb)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> List[Dict[str, Any]]:
        o = self.options
        gen_group: Dict[str, Any] = {"params": list(self.mix_block.parameters()), "name": "mix_block"}
        if o["mix_block_lr"] is not None:
            gen_group["lr"] = float(o["mix_block_lr"])
        if o["mix_block_min_lr"] is not None:
            gen_group["min_lr"] = float(o["mix_block_min_lr"])
        if o["mix_block_weight_decay"] is not None:
            gen_group["weight_decay"] = float(o["mix_block_weight_decay"])
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "name": "model"}, gen_group]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(mode)
        return self

    # ------------------------------------------------------------------ looking
    @torch.no_grad()
    def masks_for(self, images: Tensor, lams: List[float]) -> Tensor:
        """Masks ``[len(lams), P, 1, H, W]`` for the fixed pairs (0,1), (2,3), ... at each lambda."""
        n = images.shape[0] // 2 * 2
        x = images[:n]
        index = torch.arange(n, device=x.device).view(-1, 2).flip(1).reshape(-1)
        teacher = self._teacher()
        was = teacher.training, self.mix_block.training
        teacher.eval()
        self.mix_block.eval()
        try:
            z = teacher.features(x, int(self.options["stage"]))
            out = []
            for lam in lams:
                g = self.mix_block(z, torch.full((n,), float(lam), device=x.device), index, out_size=x.shape[-2:])
                out.append(g.mask[0::2].float())
        finally:
            teacher.train(was[0])
            self.mix_block.train(was[1])
        return torch.stack(out)

    def save_visuals(self, out_dir, epoch: int, images: Tensor, labels: Tensor) -> Optional[str]:
        from samix.viz import save_mask_grid

        lams = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
        masks = self.masks_for(images, lams)
        path = Path(out_dir) / "masks" / f"masks_epoch{epoch:04d}.png"
        return str(save_mask_grid(path, images[: masks.shape[1] * 2], masks, lams,
                                  title=f"{self.algorithm_name}: learned masks, epoch {epoch}"))


class _Slice:
    """The generator-output fields the generation loss reads, for the second half of a batched call."""

    def __init__(self, gen, b: int, index: Tensor, lam: Tensor):
        self.mask = gen.mask[b:]
        self.mask_raw = gen.mask_raw[b:]
        self.mask_small = gen.mask_small[b:]
        self.lam = lam
        self.index = index
