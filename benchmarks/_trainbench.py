"""Shared machinery of the training benchmarks (``train_overhead.py``, ``automix_cost.py``).

* :func:`build_candidate` builds an algorithm exactly as ``samix train`` does
  (:func:`samix.engine.assembly.build_for_benchmark` with ``key=value`` overrides, then the
  engine's optimizer), with the
  same seed for every candidate, so all of them start from the same weights.
* :class:`TrainStep` is one iteration of the engine's own step (:class:`samix.engine.loop.Stepper`,
  not a copy) on a fixed synthetic batch (no DataLoader, so data loading is not measured).
* :func:`interleave` times candidates in interleaved rounds: after the warm-up rounds every round
  runs each candidate once, in a freshly shuffled order, so drifting load on a shared machine hits
  all of them alike. It records wall time (CUDA calls bracketed by ``torch.cuda.synchronize``) and
  process CPU time (``time.process_time``: all threads of this process; on a loaded machine it does
  not count the time other processes held the core).
* :func:`peak_memory` measures the peak memory of building a candidate and running iterations of
  it: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the peak of the bytes held by
  PyTorch's CPU allocator, reconstructed from the allocation/free events of
  ``torch.profiler.profile(profile_memory=True)`` (see :func:`cpu_peak_allocated`).

This is a private helper of the benchmark scripts, not part of the samix API.
"""

from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler's log lines off stderr

import gc
import platform
import statistics
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from samix.engine.loop import AMP_DTYPES  # noqa: F401 (the engine's precision table; scripts read it here)

# --------------------------------------------------------------------------------------- building
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return dev


def build_candidate(overrides: Sequence[str], num_classes: int, in_chans: int, device: torch.device,
                    seed: int = 0):
    """``(cfg, algo, optimizer)`` built as the trainer builds them, from ``key=value`` overrides.

    ``num_classes``/``in_chans`` stand in for the dataset's :class:`~samix.data.DatasetInfo` (the only
    fields the assembly reads). The global RNGs and the run's generator are seeded with ``seed`` as in
    ``samix train``, so candidates built with the same model overrides start from identical weights.
    """
    from samix.engine.assembly import build_for_benchmark
    from samix.engine.optim import build_optimizer

    cfg, algo = build_for_benchmark(overrides, num_classes, in_chans, device, seed=seed)
    optimizer = build_optimizer(algo.param_groups(), cfg.optim, cfg.sched)
    return cfg, algo, optimizer


def synthetic_batch(batch: int, in_chans: int, size: int, num_classes: int, device: torch.device,
                    channels_last: bool = False, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A normalised-looking float32 batch ``N(0, 1)`` ``[B, C, S, S]`` and uniform integer labels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, in_chans, size, size, generator=g).to(device)
    labels = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


class TrainStep:
    """One iteration of the engine's loop (:class:`samix.engine.loop.Stepper`) on a fixed batch (call it;
    returns the loss). ``total_steps`` sets the horizon of the schedules (lr, momentum, mask-loss weight);
    the step counter wraps around it. ``forward``/``optimizer_step``/``accumulate`` are the engine's
    pieces, for the phase breakdown of ``automix_cost.py``.
    """

    def __init__(self, cfg, algo, optimizer, images, labels, total_steps: int = 10_000, batch=None) -> None:
        from samix.engine.loop import Stepper

        self.cfg, self.algo, self.optimizer = cfg, algo, optimizer
        self.images, self.labels = images, labels
        # the loader's batch as the algorithm expects it: (images, labels), or e.g. ((view_q, view_k), labels)
        self.batch = (images, labels) if batch is None else batch
        self.stepper = Stepper(algo, algo, optimizer, cfg, images.device, int(total_steps))
        self.scaler = self.stepper.scaler
        self.step = 0

    def forward(self):
        return self.stepper.forward(self.batch, self.step)

    def backward_and_step(self, out) -> torch.Tensor:
        loss = self.stepper.backward(out, self.step)
        self.step += 1
        return loss

    def optimizer_step(self) -> None:
        self.stepper.optimizer_step()

    def accumulate(self, out) -> None:
        self.stepper.end_step(out)
        self.step += 1

    def __call__(self) -> torch.Tensor:
        return self.backward_and_step(self.forward())

    def mean_loss(self) -> float:
        return float(self.stepper.loss_sum) / max(self.stepper.count, 1)


# --------------------------------------------------------------------------------------- timing
@dataclass
class Timed:
    """A candidate of an interleaved benchmark: ``fn()`` is one timed call."""

    name: str
    fn: Callable[[], object]
    wall_ms: List[float] = field(default_factory=list)
    cpu_ms: List[float] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(cands: Sequence[Timed], device: torch.device, warmup: int, repeats: int, seed: int = 0,
               progress: Optional[Callable[[int, int], None]] = None) -> None:
    """``warmup`` untimed and ``repeats`` timed rounds; each round calls every candidate once, in a
    fresh random order. Appends to ``c.wall_ms`` / ``c.cpu_ms``."""
    rng = np.random.default_rng(seed)
    for r in range(warmup + repeats):
        for i in rng.permutation(len(cands)):
            c = cands[i]
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            out = c.fn()
            _sync(device)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            del out
            if r >= warmup:
                c.wall_ms.append(dt * 1e3)
                c.cpu_ms.append(dc * 1e3)
        if progress is not None:
            progress(r + 1, warmup + repeats)


def stats(values: Sequence[float]) -> Dict[str, float]:
    q1, q3 = np.percentile(values, [25, 75])
    return {"median": statistics.median(values), "p25": float(q1), "p75": float(q3)}


def paired_ratio(values: Sequence[float], base: Sequence[float]) -> float:
    """Median over rounds of ``values[r] / base[r]`` (both timed in round ``r``)."""
    return statistics.median(v / b for v, b in zip(values, base))


# --------------------------------------------------------------------------------------- memory
def cpu_peak_allocated(fn: Callable[[], object]) -> Tuple[int, int]:
    """``(peak, end)`` bytes held by PyTorch's CPU allocator while ``fn()`` runs, relative to its start.

    Method: ``torch.profiler.profile(profile_memory=True)`` records one ``[memory]`` event per
    allocation (+bytes) and free (-bytes) of the c10 CPU allocator, with a timestamp; the running
    sum of the events in time order is the number of bytes allocated since ``fn`` started, its
    maximum the peak -- the CPU analogue of ``torch.cuda.max_memory_allocated`` minus the memory
    allocated before. Tensors only: the Python heap, oneDNN scratch buffers and allocator
    fragmentation are not counted (the RSS cross-check of ``automix_cost.py --rss`` sees them).
    The profiler does not know the size of a block allocated before it started, so freeing such a
    tensor inside ``fn`` is not subtracted: profile from the creation of everything ``fn`` frees
    (:func:`peak_memory` users build the candidate inside ``fn``).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cpu = torch._C._autograd.DeviceType.CPU
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == cpu]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += int(e.nbytes())
        peak = max(peak, cur)
    return peak, cur


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by PyTorch on ``device`` while ``fn()`` runs, above what was allocated
    when it started (``torch.cuda.max_memory_allocated`` on CUDA, :func:`cpu_peak_allocated` on the CPU)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    return cpu_peak_allocated(fn)[0]


def state_bytes(algo: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the persistent training state: parameters, buffers, gradients and optimizer state
    (each storage counted once; the teacher of a momentum pipeline included)."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if torch.is_tensor(t):
            s = t.untyped_storage()
            key = (s.data_ptr(), s.device)
            if key not in seen and s.nbytes():
                seen.add(key)
                total += s.nbytes()

    for p in algo.parameters():
        add(p)
        add(p.grad)
    for b in algo.buffers():
        add(b)
    for st in optimizer.state.values():
        for v in st.values():
            add(v)
    return total


# --------------------------------------------------------------------------------------- reporting
def machine_info(threads: int, device: torch.device) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical cores)" if names else cpu
    except OSError:
        pass
    info = dict(cpu=cpu, python=platform.python_version(), torch=torch.__version__, threads=threads,
                device=str(device), platform=platform.platform(),
                loadavg=[round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
                date=time.strftime("%Y-%m-%d %H:%M %Z"))
    if device.type == "cuda":
        info["cuda"] = torch.cuda.get_device_name(device)
    return info


def set_threads(threads: Optional[int]) -> int:
    if threads is not None:
        if threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def mib(n: Optional[float]) -> Optional[float]:
    return None if n is None else n / 2**20


def model_overrides(model: str, width: float, in_chans: int, batch: int, precision: str,
                    channels_last: bool, optim: Optional[str] = None,
                    model_kwargs: Iterable[str] = ()) -> List[str]:
    ov = [f"model.name={model}", f"model.width={width}", f"model.in_chans={in_chans}", f"batch_size={batch}",
          f"precision={precision}", f"channels_last={str(bool(channels_last)).lower()}"]
    if optim:
        ov.append(f"optim.name={optim}")
    ov += [f"model.kwargs.{kv}" for kv in model_kwargs]
    return ov
