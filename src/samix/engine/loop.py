"""The loop: one training step and one epoch, as public functions (``benchmarks/`` call these, never a copy).

::

    step = Stepper(algo, module, optimizer, cfg)         # module: algo, or algo under DDP
    for i, batch in enumerate(loader):
        out = step(to_device(batch, device, channels_last), global_step)

One step, in order: learning rate of ``global_step``, ``algo.set_progress``, forward under autocast
(``module(batch)``: the loader's batch, unchanged), ``zero_grad``, backward (GradScaler for fp16),
optional gradient clipping, optimizer step, ``algo.on_train_step_end()`` and the running sums of the
scalar logs. A loss that is not finite stops the run (:class:`DivergenceError`).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
from omegaconf import DictConfig

from . import distributed as D
from .optim import set_lr

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DivergenceError(FloatingPointError):
    """The training loss became NaN or infinite."""


def to_device(batch, device: torch.device, channels_last: bool = False):
    """Move every tensor of a (nested) tuple/list/dict batch to ``device``; 4-d float tensors (images)
    go to channels_last when asked. The structure is kept."""
    if torch.is_tensor(batch):
        t = batch.to(device, non_blocking=True)
        if channels_last and t.dim() == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device, channels_last) for v in batch)
    return batch


def amp_dtype_of(precision: str, device: torch.device) -> Optional[torch.dtype]:
    dtype = AMP_DTYPES[precision]
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device; use precision=bf16 or fp32 on the CPU")
    return dtype


@dataclass
class EpochStats:
    train_loss: float
    extras: Dict[str, float]
    time_s: float
    lr: float
    iters: int


class Stepper:
    """One optimisation step of ``algo`` (see the module docstring); keeps the running sums of an epoch.

    Args:
        algo: the :class:`~samix.algorithms.Algorithm` (hooks, parameters).
        module: what runs the forward (``algo`` or ``DistributedDataParallel(algo)``).
        optimizer: from :func:`samix.engine.optim.build_optimizer`.
        cfg: the run config (``precision``, ``optim.grad_clip``, ``sched``).
        total_steps, warmup_steps: the horizon of the schedules.
    """

    def __init__(self, algo, module, optimizer, cfg: DictConfig, device: torch.device, total_steps: int,
                 warmup_steps: int = 0) -> None:
        self.algo, self.module, self.optimizer, self.cfg = algo, module, optimizer, cfg
        self.device = device
        amp = amp_dtype_of(cfg.precision, device)
        self.autocast: Callable[[], Any] = (lambda: torch.autocast(device.type, dtype=amp)) if amp else nullcontext
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
        self.grad_clip = cfg.optim.grad_clip
        self.total, self.warmup = max(int(total_steps), 1), int(warmup_steps)
        self.lr = float("nan")
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.extra_sums: Dict[str, torch.Tensor] = {}
        self.count = 0

    # the step, in two halves (benchmarks time them apart)
    def forward(self, batch, step: int) -> Dict[str, torch.Tensor]:
        self.lr = set_lr(self.optimizer, step % self.total, self.total, self.warmup, self.cfg.sched)
        self.algo.set_progress(step % self.total, self.total)
        with self.autocast():
            return self.module(batch)

    def backward(self, out: Dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """zero_grad, backward, :meth:`optimizer_step`, :meth:`end_step`."""
        loss = out["loss"]
        # on the CPU a NaN/Inf loss stops the run at its step (free); on accelerators at the epoch's end
        # (a per-step check would synchronise the host with the device every step)
        if self.device.type == "cpu" and not torch.isfinite(loss.detach()).item():
            raise DivergenceError(f"training loss is {float(loss.detach())} at step {step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.optimizer_step()
        self.end_step(out)
        return loss

    def optimizer_step(self) -> None:
        """Optional gradient clipping, the optimizer step and the GradScaler update."""
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.algo.parameters(), float(self.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def end_step(self, out: Dict[str, torch.Tensor]) -> None:
        """``algo.on_train_step_end()`` (EMA updates) and the running sums of the step's scalar logs."""
        self.algo.on_train_step_end()
        self.loss_sum += out["loss"].detach().float()
        for k, v in out.items():
            if k != "loss" and torch.is_tensor(v):
                self.extra_sums[k] = self.extra_sums.get(k, torch.zeros((), device=self.device)) + v.detach().float()
        self.count += 1

    def __call__(self, batch, step: int) -> Dict[str, torch.Tensor]:
        out = self.forward(batch, step)
        self.backward(out, step)
        return out

    def epoch_means(self) -> Dict[str, float]:
        n = max(self.count, 1)
        means = {"train_loss": float(D.all_reduce_mean(self.loss_sum / n))}
        means.update({k: float(D.all_reduce_mean(v / n)) for k, v in self.extra_sums.items()})
        return means


@dataclass
class Progress:
    """tqdm bar with ETA on a terminal; plain log lines every ``interval`` iterations otherwise."""

    total: int
    desc: str
    enabled: bool
    interval: int
    log: Callable[[str], None] = print
    t0: float = field(default_factory=time.time)
    bar: Any = None

    def __post_init__(self):
        import sys

        self.interval = max(int(self.interval), 1)
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, dynamic_ncols=True, leave=False)

    def update(self, i: int, loss_fn: Callable[[], float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if i % 10 == 0:
                self.bar.set_postfix(loss=f"{loss_fn():.4f}")
        elif (i + 1) % self.interval == 0:
            el = time.time() - self.t0
            eta = el / (i + 1) * (self.total - i - 1)
            self.log(f"{self.desc} it {i + 1}/{self.total} loss {loss_fn():.4f} eta {eta:.0f}s")

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train_one_epoch(stepper: Stepper, loader, epoch: int, channels_last: bool = False,
                    progress: Optional[Progress] = None,
                    on_batch: Optional[Callable[[Any], None]] = None) -> EpochStats:
    """Run one epoch (0-based ``epoch``) of ``loader`` through ``stepper``; returns the epoch's means.
    ``on_batch`` sees each device batch before its step (the engine keeps the first for figures)."""
    iters = len(loader)
    stepper.algo.train()
    stepper.reset()
    last: Dict[str, torch.Tensor] = {"loss": torch.zeros(())}
    t0 = time.perf_counter()
    for i, batch in enumerate(loader):
        batch = to_device(batch, stepper.device, channels_last)
        if on_batch is not None:
            on_batch(batch)
        last = stepper(batch, epoch * iters + i)
        if progress is not None:
            progress.update(i, lambda: float(last["loss"].detach()))
    if progress is not None:
        progress.close()
    if stepper.device.type == "cuda":
        torch.cuda.synchronize(stepper.device)
    elapsed = time.perf_counter() - t0
    means = stepper.epoch_means()
    train_loss = means.pop("train_loss")
    if not math.isfinite(train_loss):
        raise DivergenceError(f"training loss is {train_loss} at epoch {epoch + 1}")
    return EpochStats(train_loss, means, elapsed, stepper.lr, iters)
