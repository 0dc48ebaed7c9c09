"""MoCo's dictionary of negatives: a FIFO queue of the momentum encoder's normalised keys.

``queue.enqueue(keys)`` writes the keys of the step (under DDP: every process's keys, all-gathered in rank
order, so that every process holds the same queue) at the pointer and advances it; the oldest entries are
overwritten first. The queue and its pointer are buffers: they travel in the checkpoint with the algorithm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def all_gather_rows(x: Tensor) -> Tensor:
    """The rows of ``x`` from every process, in rank order (``x`` itself on one process). No gradient."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.contiguous()  # send and receive in one layout (NCCL copies raw bytes into the outputs' strides)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


class NegativeQueue(nn.Module):
    """A ``[size, dim]`` FIFO queue of L2-normalised keys (random unit vectors at the start, as MoCo)."""

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.size, self.dim = int(size), int(dim)
        init = torch.randn(self.size, self.dim, generator=generator)
        self.register_buffer("queue", F.normalize(init, dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append this step's keys (all processes' under DDP) in FIFO order."""
        keys = all_gather_rows(keys.detach().to(self.queue.dtype))
        n = keys.shape[0]
        if self.size % n != 0:
            raise ValueError(f"algorithm option queue_size ({self.size}) must be a multiple of the global batch "
                             f"size ({n}); set algorithm.queue_size to e.g. {max(n, self.size // n * n)}")
        p = int(self.ptr)
        self.queue[p:p + n] = keys
        self.ptr.fill_((p + n) % self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
