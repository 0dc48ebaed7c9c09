#!/usr/bin/env python
"""Mixing throughput: every samix policy that needs no model vs timm, torchvision and the memory floor.

For each image size (``--sizes``) and device (CPU, plus CUDA when available) one
float32 batch ``[B, 3, S, S]`` is mixed over and over by every candidate:

* ``floor``: ``torch.lerp(x, x[perm], w)`` -- one gather and one blend, the
  memory-bound floor of any pairwise mixing that allocates its output (all ratios
  are to this row);
* ``ref``: ``x.index_select(0, perm).lerp_(x, w)``, the same result with a
  sample-wise gather and a single allocation, for information (what
  ``samix.mixing.base.gather_batch`` + an in-place blend can reach);
* ``samix <policy>``: ``mixer.mix(x)`` (images only), ``mode="batch"``, ``alpha=1``,
  for every name in ``samix.mixing.list_mixers()`` with ``needs_model`` and
  ``needs_pretrained`` False (``samix_p`` needs a pre-trained file: left out);
* ``samix mixup (x, y)``, ``samix cutmix (x, y)``: ``mixer(x, y)``, images AND soft
  targets, because that is what the competitors time:
* ``timm mixup``/``timm cutmix``: ``timm.data.Mixup`` (mixup only / cutmix only,
  ``mode="batch"``, no smoothing) -- it mixes ``x`` IN PLACE (no output allocation),
  so it runs on its own buffer that is re-mixed at every call (values stay in [0, 1]);
* ``tv MixUp``/``tv CutMix``: ``torchvision.transforms.v2.MixUp``/``CutMix``.

The candidates are interleaved: after ``--warmup`` rounds, each of ``--repeats``
rounds times every candidate once, in a freshly shuffled order (so drifting load
on a shared machine hits all of them alike); the table reports medians and the
ratios of medians. CUDA calls are bracketed by ``torch.cuda.synchronize()``.

Targets (the issue): mixup <= 1.3x floor, cutmix <= 1.0x floor, every other
image-only policy <= 3x floor, and samix no slower than timm or torchvision for
mixup and cutmix.

Usage::

    python benchmarks/mixing_throughput.py --sizes 32 224 --batch 128 --repeats 30 --threads 1 \
        --json bench.json
    python benchmarks/mixing_throughput.py --sizes 224 --profile smoothmix   # where does the time go
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

NUM_CLASSES = 1000
TARGETS = {"mixup": 1.3, "cutmix": 1.0}
DEFAULT_TARGET = 3.0


@dataclass
class Candidate:
    name: str                  # row label
    fn: Callable[[], object]
    kind: str                  # "floor" | "policy" | "samix_xy" | "timm" | "tv"
    policy: Optional[str] = None
    times: list = field(default_factory=list)


def image_policies() -> list[str]:
    """The policies of ``samix show`` (no model, no pre-trained file): ``samix.viz.default_policies``."""
    from samix.viz import default_policies

    return default_policies()


def build_candidates(size: int, batch: int, device: torch.device, policies: list[str],
                     competitors: bool = True) -> list[Candidate]:
    from samix.mixing import build_mixer

    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    perm = torch.randperm(batch, device=device)
    cands = [Candidate("floor: lerp(x, x[perm], w)", lambda: torch.lerp(x, x[perm], 0.3), "floor"),
             # for information: the same blend with a sample-wise gather and one allocation
             Candidate("ref: x.index_select(0, perm).lerp_(x, w)",
                       lambda: x.index_select(0, perm).lerp_(x, 0.7), "ref")]
    for name in policies:
        m = build_mixer(name, alpha=1.0, mode="batch", num_classes=NUM_CLASSES)
        cands.append(Candidate(f"samix {name}", (lambda m=m: m.mix(x)), "policy", name))
    if not competitors:
        return cands
    for name in ("mixup", "cutmix"):
        if name in policies:
            m = build_mixer(name, alpha=1.0, mode="batch", num_classes=NUM_CLASSES)
            cands.append(Candidate(f"samix {name} (x, y)", (lambda m=m: m(x, y)), "samix_xy", name))
    try:
        from timm.data import Mixup

        for name, kw in (("mixup", dict(mixup_alpha=1.0, cutmix_alpha=0.0)),
                         ("cutmix", dict(mixup_alpha=0.0, cutmix_alpha=1.0))):
            tm = Mixup(mode="batch", label_smoothing=0.0, num_classes=NUM_CLASSES, **kw)
            buf = x.clone()  # timm mixes in place: its own buffer, re-mixed every call
            cands.append(Candidate(f"timm {name} (x, y)", (lambda tm=tm, buf=buf: tm(buf, y)), "timm", name))
    except ImportError:
        print("timm not installed: no timm rows", file=sys.stderr)
    from torchvision.transforms import v2

    for name, cls in (("mixup", v2.MixUp), ("cutmix", v2.CutMix)):
        t = cls(alpha=1.0, num_classes=NUM_CLASSES)
        cands.append(Candidate(f"tv {cls.__name__} (x, y)", (lambda t=t: t(x, y)), "tv", name))
    return cands


def run_round(cands: list[Candidate], order: np.ndarray, device: torch.device, record: bool) -> None:
    cuda = device.type == "cuda"
    for i in order:
        c = cands[i]
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = c.fn()
        if cuda:
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        del out
        if record:
            c.times.append(dt * 1e3)


def measure(size: int, batch: int, device: torch.device, policies: list[str], warmup: int, repeats: int,
            seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    np.random.seed(seed)  # timm draws from NumPy's global RNG
    cands = build_candidates(size, batch, device, policies)
    rng = np.random.default_rng(seed)
    for r in range(warmup + repeats):
        run_round(cands, rng.permutation(len(cands)), device, record=r >= warmup)
    med = {c.name: statistics.median(c.times) for c in cands}
    floor = med[cands[0].name]
    by_kind = {(c.kind, c.policy): med[c.name] for c in cands}
    rows = []
    for c in cands:
        q1, q3 = np.percentile(c.times, [25, 75])
        row = dict(device=str(device), size=size, batch=batch, name=c.name, kind=c.kind, policy=c.policy,
                   median_ms=med[c.name], p25_ms=float(q1), p75_ms=float(q3), x_floor=med[c.name] / floor,
                   target=None, meets_target=None, x_timm=None, x_tv=None)
        if c.kind == "policy":
            row["target"] = TARGETS.get(c.policy, DEFAULT_TARGET)
            row["meets_target"] = bool(row["x_floor"] <= row["target"])
        if c.kind == "samix_xy":
            if ("timm", c.policy) in by_kind:
                row["x_timm"] = med[c.name] / by_kind[("timm", c.policy)]
            if ("tv", c.policy) in by_kind:
                row["x_tv"] = med[c.name] / by_kind[("tv", c.policy)]
            row["meets_target"] = all(v is None or v <= 1.0 for v in (row["x_timm"], row["x_tv"]))
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    def f(v, spec):
        return "" if v is None else format(v, spec)

    lines = ["| device | size | candidate | median ms | p25–p75 ms | × floor | target | × timm | × tv | ok |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|:-:|"]
    for r in rows:
        ok = "" if r["meets_target"] is None else ("yes" if r["meets_target"] else "**no**")
        target = f"≤ {r['target']:g}" if r["target"] is not None else ("≤ 1 vs timm/tv" if r["kind"] == "samix_xy"
                                                                         else "")
        lines.append(f"| {r['device']} | {r['size']} | {r['name']} | {r['median_ms']:.3f} | "
                     f"{r['p25_ms']:.3f}–{r['p75_ms']:.3f} | {r['x_floor']:.2f} | {target} | "
                     f"{f(r['x_timm'], '.2f')} | {f(r['x_tv'], '.2f')} | {ok} |")
    return "\n".join(lines)


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} logical cores)" if names else cpu
    except OSError:
        pass
    info = dict(cpu=cpu, python=platform.python_version(), torch=torch.__version__, threads=threads,
                platform=platform.platform(), loadavg=os.getloadavg() if hasattr(os, "getloadavg") else None)
    try:
        import timm
        import torchvision

        info.update(timm=timm.__version__, torchvision=torchvision.__version__)
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    return info


def profile(policy: str, size: int, batch: int, device: torch.device, calls: int = 10) -> str:
    """torch.profiler table of ``calls`` calls of ``mixer.mix(x)`` (sorted by self time)."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    from samix.mixing import build_mixer

    x = torch.rand(batch, 3, size, size, device=device)
    m = build_mixer(policy, alpha=1.0, mode="batch")
    for _ in range(3):
        m.mix(x)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tprofile(activities=acts) as prof:
        for _ in range(calls):
            m.mix(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="image sides (default 32 224)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds after warm-up (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--devices", nargs="+", default=None,
                   help="devices to run on (default: cpu, plus cuda when available)")
    p.add_argument("--policies", nargs="+", default=None, help="samix policies (default: all image-only)")
    p.add_argument("--json", default=None, metavar="OUT", help="write machine info and rows as JSON")
    p.add_argument("--profile", default=None, metavar="POLICY",
                   help="print a torch.profiler table for POLICY at every size instead of benchmarking")
    args = p.parse_args(argv)
    if args.batch < 2 or args.repeats < 1 or args.warmup < 0 or any(s < 8 for s in args.sizes):
        p.error("--batch must be >= 2 (timm needs an even batch), --repeats >= 1, --warmup >= 0, sizes >= 8")
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    devices = [torch.device(d) for d in devices]
    known = image_policies()
    policies = args.policies or known
    unknown = [n for n in policies if n not in known]
    if unknown:
        p.error(f"unknown or model-dependent policies {unknown}; image-only policies: {known}")

    if args.profile:
        for dev in devices:
            for size in args.sizes:
                print(f"\n## profile {args.profile} on {dev}, {args.batch}x3x{size}x{size}\n")
                print(profile(args.profile, size, args.batch, dev))
        return 0

    info = machine_info(threads)
    print(f"# mixing throughput, batch {args.batch}, float32, {args.repeats} repeats after "
          f"{args.warmup} warm-up rounds, interleaved")
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    rows = []
    for dev in devices:
        for size in args.sizes:
            t0 = time.perf_counter()
            part = measure(size, args.batch, dev, policies, args.warmup, args.repeats)
            rows += part
            print(f"# {dev} {size}x{size}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(format_table(rows))
    misses = [r["name"] + f" ({r['device']}, {r['size']})" for r in rows if r["meets_target"] is False]
    print("\nall targets met" if not misses else "\nmisses: " + "; ".join(misses))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(machine=info, args=vars(args), rows=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
