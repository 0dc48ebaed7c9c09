#!/usr/bin/env python
"""Cost of the model-guided policies and of AugMix + JSD against a vanilla step (issue 19).

Candidates built as ``samix train`` builds them (``_trainbench.build_candidate``) and stepped by the
engine's ``Stepper`` on one fixed synthetic batch:

* ``vanilla``: supervised, no mixer;
* ``mixup``, ``cutmix``: the static references;
* ``puzzlemix``: the saliency pass (forward + backward of the model in eval mode), graph cut, transport;
* ``comixup``: the saliency pass, then a graph cut per output of every partition of 20 (4 sweeps);
* ``attentivemix``: one extra forward (eval mode, no gradient) for the activation map;
* ``snapmix``: one extra forward (eval mode, no gradient) for the class activation maps;
* ``transmix``: CutMix boxes with lambda from the class token's attention of the same forward pass (the
  last block's attention computed explicitly under the watch): on a ViT only (``--vit``);
* ``tokenmix``: token-level rectangles with lambda from the activation maps of one extra forward (eval
  mode, no gradient): on a ViT only;
* ``smmix``: max-min attention windows from one extra forward (eval mode, no gradient): on a ViT only;
* ``vanilla_x3``: a vanilla step on a batch of 3 x ``--batch`` images, the floor of ``augmix`` (which runs
  its three views as one batch of that size);
* ``augmix``: the three views ``(clean, augmix_1, augmix_2)`` in one forward (the AugMix chains run in the
  data loader, so they are not part of the step; the views here are noise).

Time: interleaved rounds, median per-round ratio to ``vanilla``; memory: the peak allocated bytes while
building and running ``--memory-iters`` iterations. ``--phases`` adds PuzzleMix's breakdown (saliency
pass, graph cut, transport plan + apply) as fractions of a vanilla step.

    python benchmarks/guided_cost.py --threads 1 --repeats 15 --phases --json guided_cost_t1.json
    python benchmarks/guided_cost.py --vit --candidates mixup cutmix transmix --threads 1 --repeats 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _trainbench as tb  # noqa: E402
import torch  # noqa: E402

TARGETS = {"puzzlemix": 2.0, "comixup": 2.0, "augmix": 3.2, "transmix": 1.1, "tokenmix": 1.1, "smmix": 1.1}
CANDIDATES = ("vanilla", "mixup", "cutmix", "puzzlemix", "comixup", "attentivemix", "snapmix", "transmix", "tokenmix", "smmix",
              "augmix", "vanilla_x3")
VIT_ONLY = ("transmix", "tokenmix", "smmix")
#: configs/fashion_mnist/_vit.yaml's network
VIT_KWARGS = ["img_size=28", "patch_size=4", "depth=6", "embed_dim=96", "num_heads=3"]


def overrides(name: str, args) -> list:
    batch = 3 * args.batch if name == "vanilla_x3" else args.batch
    ov = tb.model_overrides(args.model, args.width, args.in_chans, batch, "fp32", False,
                            model_kwargs=args.model_kwargs)
    if name == "vanilla_x3":
        return ov
    if name == "augmix":
        return ov + ["algorithm.name=augmix"]
    if name != "vanilla":
        ov += [f"mixer.name={name}", "mixer.alpha=1.0"]
    if name == "tokenmix":
        ov += ["mixer.patch=4", "mixer.min_block=4"]
    return ov


def build(name: str, args, device):
    cfg, algo, opt = tb.build_candidate(overrides(name, args), 10, args.in_chans, device)
    x, y = tb.synthetic_batch(3 * args.batch if name == "vanilla_x3" else args.batch, args.in_chans, args.size, 10,
                              device)
    batch = None
    if name == "augmix":
        x2 = tb.synthetic_batch(args.batch, args.in_chans, args.size, 10, device, seed=1)[0]
        x3 = tb.synthetic_batch(args.batch, args.in_chans, args.size, 10, device, seed=2)[0]
        batch = ((x, x2, x3), y)
    return tb.TrainStep(cfg, algo, opt, x, y, batch=batch)


def phases(args, device, repeats: int) -> dict:
    """PuzzleMix's parts, each over a vanilla step timed in the same round."""
    import numpy as np

    from samix.mixing.puzzlemix import transport_blocks
    from samix.mixing.signals import input_saliency

    step = build("vanilla", args, device)
    pm = build("puzzlemix", args, device).algo.mixer
    model, x, y = step.algo.model, step.images, step.labels
    rng = np.random.default_rng(0)
    parts = {"saliency pass": [], "graph cut": [], "transport plan + apply": []}
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        base = time.perf_counter() - t
        t = time.perf_counter()
        s = input_saliency(model, x, y)
        parts["saliency pass"].append((time.perf_counter() - t) / base)
        n = int(rng.choice(pm.candidate_block_nums(x.shape[-1])))
        idx = torch.randperm(x.shape[0])
        t = time.perf_counter()
        grid = pm.optimal_masks(x, idx, s, np.array([0.5]), n)
        parts["graph cut"].append((time.perf_counter() - t) / base)
        mask = torch.nn.functional.interpolate(grid.unsqueeze(1), size=x.shape[-2:])
        t = time.perf_counter()
        g = pm.transport_grid(x.shape[-1], x.shape[-1] // n)
        transport_blocks(x, pm.transport_plan(s, mask, g), g)
        transport_blocks(x[idx], pm.transport_plan(s[idx], 1 - mask, g), g)
        parts["transport plan + apply"].append((time.perf_counter() - t) / base)
    return {k: statistics.median(v) for k, v in parts.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="preact_resnet18")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--candidates", nargs="+", default=[c for c in CANDIDATES if c not in VIT_ONLY],
                   choices=CANDIDATES)
    p.add_argument("--vit", action="store_true", help="the small ViT of configs/fashion_mnist/_vit.yaml")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--memory-iters", type=int, default=2)
    p.add_argument("--phases", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.model_kwargs = []
    if args.vit:
        args.model, args.width, args.model_kwargs = "timm:vit_tiny_patch16_224", 1.0, VIT_KWARGS
    elif set(VIT_ONLY) & set(args.candidates):
        p.error("transmix and tokenmix are measured on a vision transformer: add --vit")
    names = ["vanilla"] + [n for n in args.candidates if n != "vanilla"]
    threads = tb.set_threads(args.threads)
    device = tb.resolve_device(args.device)
    info = tb.machine_info(threads, device)
    print(f"# guided cost: {args.model} width {args.width}, batch {args.batch}x{args.in_chans}x{args.size}x"
          f"{args.size}, {args.repeats} interleaved rounds after {args.warmup} warm-up")
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    steps = {n: build(n, args, device) for n in names}
    cands = [tb.Timed(n, steps[n]) for n in names]
    tb.interleave(cands, device, args.warmup, args.repeats, seed=0)
    by = {c.name: c for c in cands}
    rows = []
    for n in names:
        def run(n=n):
            s = build(n, args, device)
            for _ in range(args.memory_iters):
                s()

        rows.append({"candidate": n, "median_ms": tb.stats(by[n].wall_ms)["median"],
                     "x_vanilla": tb.paired_ratio(by[n].wall_ms, by["vanilla"].wall_ms),
                     "peak_mib": tb.mib(tb.peak_memory(run, device))})
    base_mem = rows[0]["peak_mib"]
    print("| candidate | ms/iter | x vanilla | peak MiB | memory x vanilla | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["mem_x_vanilla"] = r["peak_mib"] / base_mem
        t = TARGETS.get(r["candidate"])
        ok = "" if t is None else (f"<= {t} {'OK' if r['x_vanilla'] <= t else 'ABOVE'}")
        print(f"| {r['candidate']} | {r['median_ms']:.1f} | {r['x_vanilla']:.2f} | {r['peak_mib']:.1f} | "
              f"{r['mem_x_vanilla']:.2f} | {ok} |")
    out = {"machine": info, "args": vars(args), "rows": rows}
    if args.phases:
        out["puzzlemix_phases"] = phases(args, device, args.repeats)
        print("PuzzleMix phases (x a vanilla step): " +
              ", ".join(f"{k} {v:.2f}" for k, v in out["puzzlemix_phases"].items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
