#!/usr/bin/env python
"""Training overhead of every static mixing policy: seconds per training iteration against vanilla.

Each candidate is a real samix algorithm, built the way ``samix train`` builds it
(``load_config(None, overrides)`` + ``build_algorithm_from_config`` + the engine's optimizer):

* ``vanilla``: ``algorithm.name=supervised``, no mixer;
* one candidate per name in ``samix.mixing.list_mixers()`` that needs no pre-trained file: the
  image-only policies and ``manifoldmix`` (mixes a hidden map inside the model), each with
  ``alpha=1``, ``mode=batch``.

All candidates share the model (same config, same initial weights) and one fixed synthetic batch
``[B, C, S, S]`` (no DataLoader: data loading is not measured). One iteration is exactly the
engine's: lr schedule, forward (mixing included), ``zero_grad``, backward, SGD step (nesterov,
weight decay) and ``on_train_step_end``. The candidates are interleaved: after ``--warmup``
rounds, each of ``--repeats`` rounds runs one iteration of every candidate in a freshly shuffled
order, so drifting load on a shared machine hits all of them alike. The table gives medians, the
ratio of medians to vanilla (wall time), the median of the per-round ratios (each round's time
over vanilla's time in the same round: robust to slow drifts), the same ratio on process CPU time
(insensitive to the time other processes hold the core), and the median time of the mixing call
alone (``mixer.mix(images)``, timed in the same rounds; none for ``manifoldmix``, which mixes
inside the forward pass).

Target (issue 3): <= 1.05x vanilla for every policy that needs no extra forward pass (all of the
default candidates: manifoldmix mixes inside the single forward pass).

Usage::

    python benchmarks/train_overhead.py --threads 1 --repeats 25 --json overhead.json
    python benchmarks/train_overhead.py --size 32 --in-chans 3 --width 1.0 --repeats 5 --threads 2
    python benchmarks/train_overhead.py --threads 1 --profile saliencymix   # where does the time go
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _trainbench as tb  # noqa: E402
import torch  # noqa: E402

TARGET = 1.05


def policies() -> list[str]:
    """Every registered policy that needs no pre-trained file: the image-only ones and manifoldmix
    (``samix_p`` runs a pre-trained encoder, an extra forward pass: ``benchmarks/samix_p_overhead.py``)."""
    from samix.mixing import get_mixer_class, list_mixers

    return [n for n in list_mixers() if not getattr(get_mixer_class(n), "needs_pretrained", False)]


def candidate_overrides(args, policy) -> list[str]:
    ov = tb.model_overrides(args.model, args.width, args.in_chans, args.batch, args.precision,
                            args.channels_last, model_kwargs=args.model_kwargs)
    ov.append("algorithm.name=supervised")
    if policy is not None:
        ov += [f"mixer.name={policy}", f"mixer.alpha={args.alpha}", "mixer.mode=batch"]
    return ov


def build_steps(args, device, names):
    images, labels = tb.synthetic_batch(args.batch, args.in_chans, args.size, args.num_classes, device,
                                        args.channels_last, seed=args.seed)
    steps = {}
    for name in names:
        cfg, algo, opt = tb.build_candidate(candidate_overrides(args, None if name == "vanilla" else name),
                                            args.num_classes, args.in_chans, device, seed=args.seed)
        steps[name] = tb.TrainStep(cfg, algo, opt, images, labels)
    return steps, images


def measure(args, device) -> list[dict]:
    names = ["vanilla"] + args.policies
    steps, images = build_steps(args, device, names)
    cands = [tb.Timed(n, steps[n]) for n in names]
    mix_cands = []
    for n in args.policies:
        mixer = steps[n].algo.mixer
        if not getattr(mixer, "needs_model", False):
            mix_cands.append(tb.Timed(f"mix:{n}", (lambda m=mixer: m.mix(images))))
    t0 = time.perf_counter()
    tb.interleave(cands + mix_cands, device, args.warmup, args.repeats, seed=args.seed,
                  progress=lambda r, n: print(f"\r# round {r}/{n} ({time.perf_counter() - t0:.0f} s)",
                                              end="", file=sys.stderr, flush=True))
    print(file=sys.stderr)
    base = cands[0]
    bw, bc = tb.stats(base.wall_ms)["median"], tb.stats(base.cpu_ms)["median"]
    mix_ms = {c.name[4:]: tb.stats(c.wall_ms)["median"] for c in mix_cands}
    rows = []
    for c in cands:
        w = tb.stats(c.wall_ms)
        loss = steps[c.name].mean_loss()
        row = dict(policy=c.name, median_ms=w["median"], p25_ms=w["p25"], p75_ms=w["p75"],
                   x_vanilla=w["median"] / bw, x_vanilla_paired=tb.paired_ratio(c.wall_ms, base.wall_ms),
                   cpu_ms=tb.stats(c.cpu_ms)["median"], x_vanilla_cpu=tb.stats(c.cpu_ms)["median"] / bc,
                   mix_ms=mix_ms.get(c.name), target=None if c.name == "vanilla" else TARGET,
                   meets_target=None, finite_loss=bool(loss == loss and abs(loss) != float("inf")))
        if c.name != "vanilla":
            row["meets_target"] = bool(row["x_vanilla"] <= TARGET)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| policy | median ms/it | p25–p75 ms | × vanilla | × vanilla (paired) | × vanilla (CPU time) "
             "| mix call ms (% of vanilla it) | ok (≤ 1.05) |",
             "|---|---:|---:|---:|---:|---:|---:|:-:|"]
    base = rows[0]["median_ms"]
    for r in rows:
        ok = "" if r["meets_target"] is None else ("yes" if r["meets_target"] else "**no**")
        mix = "" if r["mix_ms"] is None else f"{r['mix_ms']:.2f} ({100 * r['mix_ms'] / base:.1f} %)"
        lines.append(f"| {r['policy']} | {r['median_ms']:.1f} | {r['p25_ms']:.1f}–{r['p75_ms']:.1f} | "
                     f"{r['x_vanilla']:.3f} | {r['x_vanilla_paired']:.3f} | {r['x_vanilla_cpu']:.3f} | {mix} | {ok} |")
    return "\n".join(lines)


def profile(args, device, name: str, iters: int = 5) -> str:
    """torch.profiler tables (self time) of ``iters`` iterations of ``name`` and of vanilla."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    steps, _ = build_steps(args, device, ["vanilla", name])
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out = []
    for n in ("vanilla", name):
        for _ in range(2):
            steps[n]()
        with tprofile(activities=acts) as prof:
            for _ in range(iters):
                steps[n]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        out.append(f"## {n}: {iters} iterations\n\n" + prof.key_averages().table(sort_by=key, row_limit=25))
    return "\n\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="preact_resnet18", help="samix model name (default preact_resnet18)")
    p.add_argument("--width", type=float, default=0.25, help="width multiplier (default 0.25, the CPU recipe)")
    p.add_argument("--size", type=int, default=28, help="image side (default 28; 32 for CIFAR)")
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default 1 at size 28, else 3)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default 10 at size 28, else 100)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra model options, e.g. img_size=32 for ViTs")
    p.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    p.add_argument("--alpha", type=float, default=1.0, help="Beta(alpha, alpha) of every policy (default 1)")
    p.add_argument("--policies", nargs="+", default=None,
                   help="policies (default: every one of list_mixers() that needs no pre-trained file)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=sorted(tb.AMP_DTYPES), help="autocast (default fp32)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="OUT", help="write machine info and rows as JSON")
    p.add_argument("--profile", default=None, metavar="POLICY",
                   help="print torch.profiler tables of POLICY and vanilla instead of benchmarking")
    args = p.parse_args(argv)
    if args.in_chans is None:
        args.in_chans = 1 if args.size == 28 else 3
    if args.num_classes is None:
        args.num_classes = 10 if args.size == 28 else 100
    known = policies()
    args.policies = args.policies or known
    bad = [n for n in args.policies + ([args.profile] if args.profile else []) if n not in known]
    if bad:
        p.error(f"unknown policies {bad}; known: {known}")
    if args.batch < 2 or args.repeats < 1 or args.warmup < 0 or args.size < 8 or args.width <= 0:
        p.error("--batch must be >= 2, --repeats >= 1, --warmup >= 0, --size >= 8, --width > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = tb.set_threads(args.threads)
    device = tb.resolve_device(args.device)
    if args.profile:
        print(profile(args, device, args.profile))
        return 0
    info = tb.machine_info(threads, device)
    print(f"# training overhead: {args.model} width {args.width}, {args.batch}x{args.in_chans}x{args.size}x"
          f"{args.size}, {args.precision}, {args.repeats} interleaved rounds after {args.warmup} warm-up")
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    rows = measure(args, device)
    print(format_table(rows))
    misses = [f"{r['policy']} ({r['x_vanilla']:.3f}x)" for r in rows if r["meets_target"] is False]
    print("\nall policies within 1.05x vanilla" if not misses else "\nabove 1.05x: " + "; ".join(misses))
    if not all(r["finite_loss"] for r in rows):
        print("warning: a non-finite training loss: " + ", ".join(r["policy"] for r in rows if not r["finite_loss"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(machine=info, args=vars(args), rows=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
