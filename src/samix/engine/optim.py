"""Optimizers (SGD with nesterov, AdamW, LAMB) and the per-iteration learning-rate schedule.

The schedule is a pure function of the iteration, so a resumed run needs only the step counter:
``lr(t) = min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * t'))`` after a linear warmup, with
``t'`` the fraction of the post-warmup iterations done. A parameter group may carry its own
``lr``/``min_lr`` (e.g. a learnable mixer's); the engine stores them as ``base_lr``/``min_lr``.
"""

from __future__ import annotations

import math
from typing import Iterable, List

import torch
from omegaconf import DictConfig


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2020): Adam moments with a per-tensor trust ratio ||w|| / ||update||.

    Written here because torch ships none; used by the RSB A3 (ImageNet) recipes.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    st["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    st["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                st["step"] += 1
                t = st["step"].item()
                st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                m = st["exp_avg"] / (1 - b1 ** t)
                v = st["exp_avg_sq"] / (1 - b2 ** t)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update = update + group["weight_decay"] * p.float()
                w_norm, u_norm = p.float().norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.add_((update * trust).to(p.dtype), alpha=-group["lr"])
        return loss


def _split_decay(params: Iterable[torch.nn.Parameter]):
    """Biases and norm weights (1-D tensors) get no weight decay (standard practice)."""
    decay, no_decay = [], []
    for p in params:
        (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def build_optimizer(groups: List[dict], cfg: DictConfig, sched_cfg: DictConfig) -> torch.optim.Optimizer:
    """Build the optimizer from algorithm parameter groups; each keeps ``base_lr`` and ``min_lr``."""
    wd = float(cfg.weight_decay)
    out = []
    for g in groups:
        g = dict(g)
        params = [p for p in g.pop("params") if p.requires_grad]
        if not params:
            continue
        base_lr = float(g.pop("lr", cfg.lr))
        min_lr = float(g.pop("min_lr", sched_cfg.min_lr))
        gwd = float(g.pop("weight_decay", wd))
        decay, no_decay = _split_decay(params)
        for ps, w in ((decay, gwd), (no_decay, 0.0)):
            if ps:
                out.append({**g, "params": ps, "lr": base_lr, "base_lr": base_lr, "min_lr": min_lr,
                            "weight_decay": w})
    name = cfg.name
    if name == "sgd":
        return torch.optim.SGD(out, lr=float(cfg.lr), momentum=float(cfg.momentum),
                               nesterov=bool(cfg.nesterov) and float(cfg.momentum) > 0)
    if name == "adamw":
        return torch.optim.AdamW(out, lr=float(cfg.lr), betas=tuple(cfg.betas))
    if name == "lamb":
        return Lamb(out, lr=float(cfg.lr), betas=tuple(cfg.betas))
    raise ValueError(f"optim.name must be one of ['sgd', 'adamw', 'lamb'], got {name!r}")


def lr_factor(step: int, total: int, warmup: int, name: str = "cosine", start_factor: float = 0.01) -> float:
    """Fraction of the way from ``min_lr`` (0) to ``base_lr`` (1) at iteration ``step``."""
    if warmup > 0 and step < warmup:
        return start_factor + (1.0 - start_factor) * step / warmup
    if name == "constant":
        return 1.0
    t = (step - warmup) / max(total - warmup, 1)
    t = min(max(t, 0.0), 1.0)
    if name == "step":  # x0.1 at 50% and 75% of training (classic CIFAR schedule)
        return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, warmup: int, sched_cfg: DictConfig) -> float:
    f = lr_factor(step, total, warmup, sched_cfg.name, float(sched_cfg.warmup_start_factor))
    for g in optimizer.param_groups:
        if warmup > 0 and step < warmup:
            g["lr"] = g["base_lr"] * f
        else:
            g["lr"] = g["min_lr"] + (g["base_lr"] - g["min_lr"]) * f
    return optimizer.param_groups[0]["lr"]
