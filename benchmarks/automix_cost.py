#!/usr/bin/env python
"""Cost of the learnable mixers: time per iteration and peak memory of AutoMix and SAMix vs vanilla.

Candidates (``--candidates``), all on the same backbone, batch and synthetic data, built the way
``samix train`` builds them (``load_config(None, overrides)`` + ``build_algorithm_from_config`` +
the engine's optimizer); one iteration is exactly the engine's (forward, ``zero_grad``, backward,
optimizer step, ``on_train_step_end``, i.e. the EMA teacher update):

* ``vanilla``: supervised, no mixing;
* ``mixup``: supervised + input mixup (a static reference);
* ``automix``: AutoMix with its defaults (momentum pipeline, stage 3, clean CE, L1 mask loss);
* ``automix_no_clean``: the Table 6 ablation without the clean-sample CE (``clean_ce=false``);
* ``automix_no_momentum``: the ablation without the momentum pipeline (``momentum_pipeline=false``);
* ``samix``, ``samix_no_clean``: SAMix (Mixer + eta-balanced generation loss), with/without clean CE;
* ``automix_late``, ``automix_no_clean_late``, ``samix_late``: the same steps with the generation
  pass last and the whole backward at the end, i.e. without the backward through the teacher
  inside ``forward`` (same values and gradients, more memory): what that optimisation saves.

Time: interleaved rounds (after ``--warmup`` rounds each of ``--repeats`` rounds runs one iteration
of every candidate, in a freshly shuffled order), medians, ratios to vanilla (ratio of medians, the
median of per-round ratios, and the ratio of process CPU times).

Peak memory (per candidate, measured apart from the timing on freshly built objects): the peak of
the bytes allocated by PyTorch while the candidate is built and runs ``--mem-iters`` iterations
(the input batch, allocated before, is added). On CUDA that is ``torch.cuda.max_memory_allocated``
minus what was allocated before; on the CPU the same quantity is reconstructed from the
allocation/free events of ``torch.profiler.profile(profile_memory=True)`` (running sum in time order,
its maximum): tensor memory only, as on the GPU. ``state`` is the persistent part (parameters,
buffers, gradients, optimizer state, teacher), ``activations`` the rest of the peak. ``--rss``
adds a cross-check seen by the OS: each candidate in a fresh subprocess, growth of the peak
resident set size (``VmHWM``, reset to the current size first) over the resident size before
building (this includes allocator caches, oneDNN scratch memory and fragmentation).

Phase breakdown (``--phase-iters``, 0 to skip): instrumented iterations of each candidate, timing
the calls the algorithm makes: the teacher's feature pass (no grad), the generator (both masks in
one call), the student's forward on its mixed sample and on the clean sample, the teacher's
forward on the generator's mixed sample, the rest of the forward (draws, mixing, losses), then the
backward split by loss group (``torch.autograd.backward`` on each group with ``retain_graph``:
generation loss -> teacher -> Mix Block; student mixed CE; clean CE), the optimizer step and the
EMA update. The instrumented iteration computes the same gradients as the plain one.

Targets (issue 4): AutoMix <= 1.6x vanilla time and <= 1.6x vanilla peak memory.

Usage::

    python benchmarks/automix_cost.py --threads 1 --repeats 10 --rss --json automix_cpu.json
    python benchmarks/automix_cost.py --width 1.0 --size 32 --in-chans 3 --num-classes 100 --repeats 3
    python benchmarks/automix_cost.py --model deit_small --size 32 --model-kwargs img_size=32 patch_size=4 \
        --width 0.5 --optim adamw --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _trainbench as tb  # noqa: E402
import torch  # noqa: E402

TARGET_TIME = 1.6
TARGET_MEM = 1.6
LEARNABLE = ("automix", "samix")

CANDIDATES: Dict[str, List[str]] = {
    "vanilla": ["algorithm.name=supervised"],
    "mixup": ["algorithm.name=supervised", "mixer.name=mixup", "mixer.alpha=1.0"],
    "automix": ["algorithm.name=automix"],
    "automix_no_clean": ["algorithm.name=automix", "algorithm.clean_ce=false"],
    "automix_no_momentum": ["algorithm.name=automix", "algorithm.momentum_pipeline=false"],
    "samix": ["algorithm.name=samix"],
    "samix_no_clean": ["algorithm.name=samix", "algorithm.clean_ce=false"],
    # the same steps with the generation pass last and the whole backward at the end (the schedule
    # before the backward through the teacher moved into forward): same values and gradients
    "automix_late": ["algorithm.name=automix"],
    "automix_no_clean_late": ["algorithm.name=automix", "algorithm.clean_ce=false"],
    "samix_late": ["algorithm.name=samix"],
}
DEFAULT_CANDIDATES = ["vanilla", "automix", "automix_no_clean", "samix"]

PHASES = [
    "teacher features (no grad)",
    "generator (2 masks, 1 call)",
    "student fwd: mixed",
    "student fwd: clean",
    "student fwd: other",
    "teacher fwd: generator's mixed",
    "bwd: teacher, inside forward",
    "rest of forward (draws, mixing, losses)",
    "bwd: generation (teacher -> generator)",
    "bwd: student mixed",
    "bwd: student clean",
    "bwd: other",
    "optimizer (zero_grad + step)",
    "EMA teacher update",
]
LOSS_GROUPS = {"loss_gen_cls": "bwd: generation (teacher -> generator)",
               "loss_mask": "bwd: generation (teacher -> generator)",
               "loss_cls": "bwd: student mixed", "loss_clean": "bwd: student clean"}


# --------------------------------------------------------------------------------------- building
def overrides(args, name: str) -> List[str]:
    ov = tb.model_overrides(args.model, args.width, args.in_chans, args.batch, args.precision, args.channels_last,
                            optim=args.optim, model_kwargs=args.model_kwargs)
    return ov + CANDIDATES[name] + list(args.set)


def batch(args, device):
    return tb.synthetic_batch(args.batch, args.in_chans, args.size, args.num_classes, device,
                              args.channels_last, seed=args.seed)


def make_step(args, device, name, images, labels) -> tb.TrainStep:
    cfg, algo, opt = tb.build_candidate(overrides(args, name), args.num_classes, args.in_chans, device,
                                        seed=args.seed)
    if name.endswith("_late"):
        algo._teacher_backward_now = lambda device_type: False  # instance attribute hides the method
    return tb.TrainStep(cfg, algo, opt, images, labels)


# --------------------------------------------------------------------------------------- memory
def memory(args, device, name, images, labels) -> dict:
    """Peak bytes of building ``name`` and running ``--mem-iters`` iterations (see the module docstring)."""
    holder = {}

    def run():
        step = make_step(args, device, name, images, labels)
        for _ in range(args.mem_iters):
            step()
        holder["state"] = tb.state_bytes(step.algo, step.optimizer)
        holder["step"] = step

    peak = tb.peak_memory(run, device)
    inputs = images.untyped_storage().nbytes() + labels.untyped_storage().nbytes()
    del holder["step"]
    return dict(peak=peak + inputs, state=holder["state"], inputs=inputs,
                activations=peak - holder["state"])


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_child(args) -> None:
    """In a fresh process: growth of the peak resident set (VmHWM) while ``args.rss_child`` is built and
    runs ``--mem-iters`` iterations. (``ru_maxrss`` is not used: Linux carries the parent's high-water
    mark across fork + exec.)"""
    import gc

    device = tb.resolve_device(args.device)
    # warm up the libraries (lazy kernel/library loading adds hundreds of MiB of RSS once) with a
    # 2-sample batch of the same candidate, then take the baseline
    tiny = tb.synthetic_batch(2, args.in_chans, args.size, args.num_classes, device, args.channels_last)
    warm = make_step(args, device, args.rss_child, *tiny)
    warm()
    del warm, tiny
    gc.collect()
    images, labels = batch(args, device)
    try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    before = _proc_status_bytes("VmRSS")
    hwm_before = _proc_status_bytes("VmHWM")
    step = make_step(args, device, args.rss_child, images, labels)
    for _ in range(args.mem_iters):
        step()
    peak = _proc_status_bytes("VmHWM")
    # if the reset failed, the high-water mark of the warm-up bounds the growth from below
    print(json.dumps({"rss_growth": peak - max(before, hwm_before),
                      "rss_before": before, "hwm_before": hwm_before, "hwm_after": peak}))


def rss(args, name) -> int:
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", name] + args.argv_model
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    return int(json.loads(out.stdout.strip().splitlines()[-1])["rss_growth"])


# --------------------------------------------------------------------------------------- phases
class PhaseTimer:
    """Wraps the calls an algorithm makes (instance attributes, removed by :meth:`restore`) and
    accumulates wall time per phase for the current iteration."""

    def __init__(self, algo, device):
        self.device = device
        self.cur: Dict[str, float] = defaultdict(float)
        self.model_calls = 0
        self.patched = []
        teacher = getattr(algo, "teacher", None)
        gen = getattr(algo, "mix_block", None)
        # the online model's calls, in the order AutoMix.forward makes them
        self.model_labels = ["student fwd: mixed"]
        if getattr(algo, "options", {}).get("clean_ce"):
            self.model_labels.append("student fwd: clean")
        if gen is not None and teacher is None:  # no momentum pipeline: the student is its own teacher
            self.model_labels.append("teacher fwd: generator's mixed")
            self._patch(algo.model, "features", lambda: "teacher features (no grad)")
        self._patch(algo.model, "forward", self._student_label)
        if teacher is not None:
            self._patch(teacher, "features", lambda: "teacher features (no grad)")
            self._patch(teacher, "forward", lambda: "teacher fwd: generator's mixed")
        if gen is not None:
            self._patch(gen, "forward", lambda: "generator (2 masks, 1 call)")
            import samix.algorithms.early_backward as early_backward

            # the backward through the teacher, inside forward
            self._patch(early_backward, "backward_now", lambda: "bwd: teacher, inside forward")

    def _student_label(self) -> str:
        self.model_calls += 1
        i = self.model_calls - 1
        return self.model_labels[i] if i < len(self.model_labels) else "student fwd: other"

    def _patch(self, obj, attr, label):
        fn = getattr(obj, attr)

        def wrapper(*a, **k):
            name = label()
            t0 = self.tic()
            out = fn(*a, **k)
            self.cur[name] += self.toc(t0)
            return out

        setattr(obj, attr, wrapper)  # on a module: a plain function in the instance __dict__
        self.patched.append((obj, attr, fn))

    def tic(self) -> float:
        tb._sync(self.device)
        return time.perf_counter()

    def toc(self, t0: float) -> float:
        tb._sync(self.device)
        return (time.perf_counter() - t0) * 1e3

    def restore(self):
        for obj, attr, orig in reversed(self.patched):
            if isinstance(obj, torch.nn.Module):
                delattr(obj, attr)  # the instance attribute hid the class's method
            else:
                setattr(obj, attr, orig)


def phase_breakdown(step: tb.TrainStep, iters: int, device, vanilla: bool) -> dict:
    timer = PhaseTimer(step.algo, device)
    per_iter: List[Dict[str, float]] = []
    try:
        for _ in range(iters + 1):  # the first one is a warm-up
            timer.cur = defaultdict(float)
            timer.model_calls = 0
            t_start = t0 = timer.tic()
            out = step.forward()
            fwd = timer.toc(t0)
            inner = sum(timer.cur.values())
            timer.cur["rest of forward (draws, mixing, losses)"] += fwd - inner
            if vanilla:  # the single forward is "the student's", on clean (vanilla) or mixed data
                timer.cur["student fwd: clean" if step.algo.mixer is None else "student fwd: mixed"] = \
                    timer.cur.pop("student fwd: mixed", 0.0)
            t0 = timer.tic()
            step.optimizer.zero_grad(set_to_none=True)
            opt_ms = timer.toc(t0)
            groups: Dict[str, torch.Tensor] = {}
            for k, v in out.items():
                if k.startswith("loss_"):
                    g = LOSS_GROUPS.get(k, "bwd: other")
                    groups[g] = groups[g] + v if g in groups else v
            if not groups:
                groups = {"bwd: student clean" if step.algo.mixer is None else "bwd: student mixed": out["loss"]}
            items = list(groups.items())
            for i, (g, loss) in enumerate(items):
                t0 = timer.tic()
                step.scaler.scale(loss).backward(retain_graph=i < len(items) - 1)
                timer.cur[g] += timer.toc(t0)
            t0 = timer.tic()
            step.optimizer_step()
            timer.cur["optimizer (zero_grad + step)"] += opt_ms + timer.toc(t0)
            t0 = timer.tic()
            step.accumulate(out)  # on_train_step_end (EMA) + loss sums
            timer.cur["EMA teacher update"] += timer.toc(t0)
            timer.cur["total"] = timer.toc(t_start)
            per_iter.append(dict(timer.cur))
    finally:
        timer.restore()
    per_iter = per_iter[1:]
    keys = sorted({k for d in per_iter for k in d})
    return {k: tb.stats([d.get(k, 0.0) for d in per_iter])["median"] for k in keys}


# --------------------------------------------------------------------------------------- syncs
def count_syncs(step: tb.TrainStep, device) -> Optional[int]:
    """CUDA only: synchronising calls (``torch.cuda.set_sync_debug_mode("warn")`` warnings) in one
    iteration (the engine's own ``float(loss)`` for logging is not part of it). ``None`` on the CPU."""
    if device.type != "cuda":
        return None
    import warnings

    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(1 for w in caught if "synchroniz" in str(w.message))


# --------------------------------------------------------------------------------------- main
def run(args, device) -> dict:
    images, labels = batch(args, device)
    names = args.candidates
    # --- time (interleaved)
    cands = [tb.Timed(n, None) for n in names]
    phases, syncs, losses = {}, dict.fromkeys(names), dict.fromkeys(names)
    if not args.memory_only:
        steps = {n: make_step(args, device, n, images, labels) for n in names}
        for c in cands:
            c.fn = steps[c.name]
        t0 = time.perf_counter()
        tb.interleave(cands, device, args.warmup, args.repeats, seed=args.seed,
                      progress=lambda r, n: print(f"\r# round {r}/{n} ({time.perf_counter() - t0:.0f} s)", end="",
                                                  file=sys.stderr, flush=True))
        print(file=sys.stderr)
        # --- phases
        if args.phase_iters > 0:
            for n in names:
                phases[n] = phase_breakdown(steps[n], args.phase_iters, device, vanilla=n in ("vanilla", "mixup"))
        syncs = {n: count_syncs(steps[n], device) for n in names}
        losses = {n: steps[n].mean_loss() for n in names}
        del steps
    # --- memory (fresh objects, one candidate at a time)
    mem = {}
    for n in names:
        mem[n] = memory(args, device, n, images, labels)
        if args.rss:
            mem[n]["rss_growth"] = rss(args, n)
    base = cands[0]
    rows = []
    for c in cands:
        m = mem[c.name]
        row = dict(candidate=c.name, median_ms=None, p25_ms=None, p75_ms=None, x_time=None, x_time_paired=None,
                   x_time_cpu=None)
        if c.wall_ms:
            w = tb.stats(c.wall_ms)
            row.update(median_ms=w["median"], p25_ms=w["p25"], p75_ms=w["p75"],
                       x_time=w["median"] / tb.stats(base.wall_ms)["median"],
                       x_time_paired=tb.paired_ratio(c.wall_ms, base.wall_ms),
                       x_time_cpu=tb.stats(c.cpu_ms)["median"] / tb.stats(base.cpu_ms)["median"])
        row.update(peak_mib=tb.mib(m["peak"]), x_mem=m["peak"] / mem[base.name]["peak"],
                   state_mib=tb.mib(m["state"]), activations_mib=tb.mib(m["activations"]),
                   x_activations=m["activations"] / max(mem[base.name]["activations"], 1),
                   rss_growth_mib=tb.mib(m.get("rss_growth")),
                   x_rss=(m["rss_growth"] / mem[base.name]["rss_growth"]) if "rss_growth" in m else None,
                   syncs_per_iter=syncs[c.name], mean_loss=losses[c.name], meets_target=None)
        if c.name.split("_")[0] in LEARNABLE and c.name != base.name:
            row["meets_target"] = bool((row["x_time"] is None or row["x_time"] <= TARGET_TIME)
                                       and row["x_mem"] <= TARGET_MEM)
        rows.append(row)
    return dict(rows=rows, phases=phases)


def format_tables(res: dict) -> str:
    def f(v, spec):
        return "" if v is None else format(v, spec)

    rows = res["rows"]
    lines = ["| candidate | ms/it (median) | p25–p75 | × vanilla time | paired | CPU time | peak MiB | × vanilla "
             "peak | state MiB | activations MiB | RSS growth MiB (× vanilla) | ≤ 1.6× time and memory |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|"]
    for r in rows:
        ok = "" if r["meets_target"] is None else ("yes" if r["meets_target"] else "**no**")
        rss_s = "" if r["rss_growth_mib"] is None else f"{r['rss_growth_mib']:.0f} ({r['x_rss']:.2f})"
        spread = "" if r["p25_ms"] is None else f"{r['p25_ms']:.0f}–{r['p75_ms']:.0f}"
        lines.append(f"| {r['candidate']} | {f(r['median_ms'], '.0f')} | {spread} | {f(r['x_time'], '.2f')} | "
                     f"{f(r['x_time_paired'], '.2f')} | {f(r['x_time_cpu'], '.2f')} | {r['peak_mib']:.1f} | "
                     f"{r['x_mem']:.2f} | {r['state_mib']:.1f} | {r['activations_mib']:.1f} | {rss_s} | {ok} |")
    if any(r["syncs_per_iter"] is not None for r in rows):
        lines += ["", "Host-device synchronisations per iteration (CUDA sync debug mode): " + ", ".join(
            f"{r['candidate']} {r['syncs_per_iter']}" for r in rows)]
    phases = res["phases"]
    if phases:
        names = list(phases)
        lines += ["", "Phase breakdown, ms per iteration (median of the instrumented iterations):", "",
                  "| phase | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for ph in PHASES + ["total"]:
            vals = [phases[n].get(ph) for n in names]
            if all(v is None or v < 0.005 for v in vals):
                continue
            cells = []
            for n, v in zip(names, vals):
                share = "" if v is None else f" ({100 * v / phases[n]['total']:.0f}%)"
                cells.append("" if v is None else f"{f(v, '.1f')}{share if ph != 'total' else ''}")
            lines.append(f"| {ph} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MODEL_ARGS = ("model", "width", "size", "in_chans", "num_classes", "model_kwargs", "batch", "optim",
              "precision", "channels_last", "device", "seed", "mem_iters", "set")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="preact_resnet18", help="samix model name (default preact_resnet18)")
    p.add_argument("--width", type=float, default=0.25, help="width multiplier (default 0.25, the CPU recipe)")
    p.add_argument("--size", type=int, default=28, help="image side (default 28)")
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default 1 at size 28, else 3)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default 10 at size 28, else 100)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra model options, e.g. img_size=32 patch_size=4 for DeiT")
    p.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    p.add_argument("--optim", default=None, choices=["sgd", "adamw", "lamb"], help="optimizer (default sgd)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for every candidate (e.g. algorithm.stage=2 only for learnable)")
    p.add_argument("--candidates", nargs="+", default=DEFAULT_CANDIDATES, choices=sorted(CANDIDATES),
                   help=f"candidates (default {' '.join(DEFAULT_CANDIDATES)}; vanilla is always first)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--phase-iters", type=int, default=5, help="instrumented iterations per candidate (0: none)")
    p.add_argument("--mem-iters", type=int, default=2, help="iterations run for the peak memory (default 2)")
    p.add_argument("--rss", action="store_true", help="also measure RSS growth in a fresh subprocess each")
    p.add_argument("--memory-only", action="store_true", help="measure the peak memory only (no timing)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=sorted(tb.AMP_DTYPES), help="autocast (default fp32)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="OUT", help="write machine info, rows and phases as JSON")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.in_chans is None:
        args.in_chans = 1 if args.size == 28 else 3
    if args.num_classes is None:
        args.num_classes = 10 if args.size == 28 else 100
    args.candidates = ["vanilla"] + [c for c in dict.fromkeys(args.candidates) if c != "vanilla"]
    if args.batch < 2 or args.repeats < 1 or args.warmup < 0 or args.mem_iters < 1 or args.phase_iters < 0:
        p.error("--batch must be >= 2, --repeats >= 1, --warmup >= 0, --mem-iters >= 1, --phase-iters >= 0")
    # the arguments a --rss child needs to rebuild the same candidates
    args.argv_model = []
    for k in MODEL_ARGS:
        v = getattr(args, k)
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.argv_model += [flag] if v else []
        elif isinstance(v, list):
            args.argv_model += [flag, *map(str, v)] if v else []
        elif v is not None:
            args.argv_model += [flag, str(v)]
    if args.threads is not None:
        args.argv_model += ["--threads", str(args.threads)]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = tb.set_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return 0
    device = tb.resolve_device(args.device)
    info = tb.machine_info(threads, device)
    print(f"# learnable-mixer cost: {args.model} width {args.width} {' '.join(args.model_kwargs)}, "
          f"{args.batch}x{args.in_chans}x{args.size}x{args.size}, {args.precision}, optimizer "
          f"{args.optim or 'sgd'}, " + ("peak memory only" if args.memory_only else
                                          f"{args.repeats} interleaved rounds after {args.warmup} warm-up"))
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    res = run(args, device)
    print(format_tables(res))
    misses = [r["candidate"] for r in res["rows"] if r["meets_target"] is False]
    print("\nall learnable candidates within 1.6x time and memory" if not misses
          else "\nabove 1.6x time or memory: " + ", ".join(misses))
    if args.json:
        a = {k: v for k, v in vars(args).items() if k != "argv_model"}
        with open(args.json, "w") as fh:
            json.dump(dict(machine=info, args=a, **res), fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
