"""The momentum (EMA) teacher every momentum method shares: AutoMix/SAMix's momentum pipeline, MoCo's key
encoder, BYOL's target network, SAMix-I/-C.

``ema = MomentumUpdater(base, end, warmup)``; ``teacher = ema.make_teacher(student)`` (a frozen copy);
after each optimizer step the algorithm calls ``ema.update(teacher, student, progress)``::

    theta_k <- m(p) * theta_k + (1 - m(p)) * theta_q        (fused ``torch._foreach`` ops)

with ``p`` the fraction of training done and, ``w`` = ``warmup``::

    m(p) = base                                                   p <= w
    m(p) = end - (end - base) * (cos(pi * (p - w) / (1 - w)) + 1) / 2     p > w

non-decreasing from ``base`` to ``end`` (``end == base``: a constant momentum, MoCo's 0.999; AutoMix's
published recipe holds 0.999 for the first 10 % then follows the cosine curve to 0.999999 or 1).

Only parameters follow the EMA formula. BatchNorm running statistics are the teacher's own (updated by
its forward passes in train mode), as in the reference AutoMix and in MoCo; ``ema_buffers=True``
copies the student's buffers instead (BYOL-style implementations do). The teacher follows the
algorithm's train/eval mode and lives in the checkpoint with it (an ordinary submodule).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from samix._checks import check_number


def momentum_at(progress: float, base: float, end: float, warmup: float) -> float:
    """``m(p)`` of the module docstring."""
    p = min(max(float(progress), 0.0), 1.0)
    if p <= warmup or end == base:
        return base
    t = (p - warmup) / (1.0 - warmup)
    return end - (end - base) * (math.cos(math.pi * t) + 1) / 2


class MomentumUpdater:
    """Copy, schedule and EMA update of a momentum teacher (see the module docstring).

    The teacher itself is a plain frozen copy of the student, made by :meth:`make_teacher` and held by
    the algorithm as an ordinary submodule: it follows the algorithm's train/eval mode and is saved in
    the checkpoint with it. The schedule is a function of training progress (nothing to checkpoint).

    Args:
        base, end, warmup: the schedule ``m(p)``; ``end=None`` means ``end = base`` (constant).
        ema_buffers: also copy the student's buffers at each update (default: the teacher keeps its own).
        what: the option name used in error messages (e.g. ``"algorithm option momentum"``).
    """

    def __init__(self, base: float = 0.999, end: float | None = None, warmup: float = 0.0,
                 ema_buffers: bool = False, what: str = "algorithm option momentum") -> None:
        self.base = check_number(what, base, 0.0, 1.0)
        self.end = self.base if end is None else check_number(f"{what}_end", end, self.base, 1.0)
        self.warmup = check_number(f"{what}_warmup", warmup, 0.0, 1.0, high_open=True)
        self.ema_buffers = bool(ema_buffers)
        self.current = self.base  # the momentum of the last update (logged)

    @staticmethod
    def make_teacher(student: nn.Module) -> nn.Module:
        """A frozen deep copy of ``student`` (same initial weights, no gradient)."""
        teacher = copy.deepcopy(student)
        teacher.requires_grad_(False)
        return teacher

    def momentum(self, progress: float) -> float:
        return momentum_at(progress, self.base, self.end, self.warmup)

    @torch.no_grad()
    def update(self, teacher: nn.Module, student: nn.Module, progress: float) -> float:
        """``theta_k <- m theta_k + (1 - m) theta_q`` at training progress ``progress``; returns ``m``."""
        m = self.momentum(progress)
        self.current = m
        t_params = list(teacher.parameters())
        s_params = [p.detach() for p in student.parameters()]
        if len(t_params) != len(s_params):
            raise RuntimeError(f"the teacher has {len(t_params)} parameter tensors, the student {len(s_params)}: "
                               "they must be the same architecture")
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, s_params, alpha=1 - m)
        if self.ema_buffers:
            for tb, sb in zip(teacher.buffers(), student.buffers()):
                tb.copy_(sb)
        return m
