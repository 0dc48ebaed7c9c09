"""Run part of a backward pass early, inside ``forward``, to free activations sooner (a memory trick).

:func:`backward_now` differentiates the graph between an input ``x`` and a scalar ``loss`` at once
(``torch.autograd.grad``, which releases that part of the graph's saved activations) and returns a
tensor with ``loss``'s value whose gradient w.r.t. ``x`` is the one just computed. Everything upstream of
``x`` then receives, in the engine's ordinary backward, the gradient it would have received from
``loss``. AutoMix/SAMix use it for the generation loss through the frozen teacher: the teacher's
activations are freed before the student's passes (peak memory 2.9x -> 2.0x vanilla on the
Fashion-MNIST CPU recipe; ``benchmarks/automix_cost.py``).

Valid only when nothing between ``x`` and ``loss`` needs a gradient of its own (a frozen network), and
not under fp16 autocast with a GradScaler (this backward would run unscaled).
"""

from __future__ import annotations

import torch
from torch import Tensor


class _KnownGradient(torch.autograd.Function):
    """``y = value`` (a 0-d tensor, no graph) whose gradient w.r.t. ``x`` is ``dy * grad``."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, dy: Tensor):
        (grad,) = ctx.saved_tensors
        return dy * grad, None, None


def backward_now(loss: Tensor, x: Tensor) -> Tensor:
    """``loss`` (a scalar) with its graph between ``x`` and ``loss`` differentiated now and freed
    (see the module docstring)."""
    (g,) = torch.autograd.grad(loss, x)
    return _KnownGradient.apply(x, loss.detach(), g)
