#!/usr/bin/env python
"""Cost of self-supervised training: a MoCo v2 step against the supervised step on the same backbone, and
MoCo v2 + cross-view mixup against MoCo v2 (time and peak memory).

Candidates, each built as ``samix train`` builds it (``_trainbench.build_candidate``: config overrides,
the engine's assembly and optimizer) and stepped by the engine's own ``Stepper`` on one fixed synthetic
batch (two views for MoCo; no DataLoader, so data loading is not measured):

* ``supervised``: vanilla classification (``algorithm.name=supervised``);
* ``moco``: MoCo v2 (query encoder forward + backward, key encoder forward, queue);
* ``moco+<policy>``: MoCo v2 with cross-view instance mixup of each ``--policies`` entry (one more
  forward + backward of the query encoder on the mixed view);
* ``samix_i``: SAMix-I (the Mixer on momentum-encoder features, its generation loss through the frozen
  momentum encoder, the online cross-view objective), the Fashion-MNIST recipe's options
  (``configs/fashion_mnist/samix_i.yaml``: stage 3, alpha 2, eta 0.5);
* ``samix_c``: SAMix-C (``samix_c.yaml``: C 20) timed after one re-clustering of its ODC memory, so every
  step runs the pseudo-label objective and the cluster head (batches carry their dataset indices);
* ``samix_ip``: MoCo v2 driven by a frozen pre-trained Mixer (``mixer.name=samix_p``; a freshly initialised
  exported-Mixer file, as ``samix_p_overhead.py`` writes: the weights do not change the cost).

Targets (issue 17): ``samix_ip`` <= 1.25x ``moco+mixup``.

Time: interleaved rounds (every round runs each candidate once, in a fresh random order); the table gives
the median ms per iteration and the median per-round ratio to ``supervised`` and to ``moco``. Memory: the
peak bytes PyTorch allocates while building a candidate and running ``--memory-iters`` iterations
(``torch.cuda.max_memory_allocated`` on CUDA, the CPU allocator's peak from the profiler on the CPU).

    python benchmarks/ssl_cost.py --threads 1 --repeats 15
    python benchmarks/ssl_cost.py --threads 2 --policies mixup cutmix --json ssl_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _trainbench as tb  # noqa: E402
import torch  # noqa: E402


# the learnable candidates' options, as configs/fashion_mnist/samix_i.yaml and samix_c.yaml set them
SAMIX_I = ["algorithm.name=samix_i", "algorithm.alpha=2.0", "algorithm.stage=3", "algorithm.eta=0.5",
           "algorithm.mask_loss=l1", "algorithm.mask_loss_weight=0.1", "algorithm.mask_loss_weight_end=0.0",
           "algorithm.mask_margin=0.1", "algorithm.variance_loss=true", "algorithm.mixup_fallback=0.08",
           "algorithm.lam_adjust_prob=0.25", "algorithm.gamma_init=1.0"]
SAMIX_C = SAMIX_I[1:] + ["algorithm.name=samix_c"]


def candidate_overrides(name: str, args, pretrained=None) -> list:
    ov = tb.model_overrides(args.model, args.width, args.in_chans, args.batch, "fp32", False)
    if name == "supervised":
        return ov
    ov += [f"algorithm.queue_size={args.queue}"]
    if name == "samix_i":
        return ov + SAMIX_I
    if name == "samix_c":  # C 20 as samix_c.yaml; fewer for a batch too small to hold 20 clusters
        return ov + SAMIX_C + [f"algorithm.num_clusters={max(2, min(20, args.batch // 2))}"]
    ov += ["algorithm.name=moco"]
    if name == "samix_ip":
        # the file's input contract is checked against the dataset's: the recipe's grayscale dataset at 1 channel
        data = ["data.name=fashion_mnist"] if args.in_chans == 1 else []
        ov += data + ["mixer.name=samix_p", f"mixer.pretrained={pretrained}", "mixer.alpha=2.0"]
    elif name.startswith("moco+"):
        ov += [f"mixer.name={name.split('+', 1)[1]}", "mixer.alpha=1.0"]
    return ov


def build(name: str, args, device, pretrained=None):
    cfg, algo, opt = tb.build_candidate(candidate_overrides(name, args, pretrained), 10, args.in_chans, device)
    x, y = tb.synthetic_batch(args.batch, args.in_chans, args.size, 10, device)
    x2 = tb.synthetic_batch(args.batch, args.in_chans, args.size, 10, device, seed=1)[0]
    batch = (x, y) if name == "supervised" else ((x, x2), y)
    if name == "samix_c":
        batch = ((x, x2), y, torch.arange(args.batch, device=device))
    step = tb.TrainStep(cfg, algo, opt, x, y, batch=batch)
    if name == "samix_c":  # fill the memory, cluster it: the timed steps run the pseudo-label objective
        step()
        algo.on_epoch_end(0)
        if not algo.memory.is_clustered:
            raise SystemExit(f"samix_c: the ODC memory did not cluster on a batch of {args.batch}; use --batch >= 4")
    return step


def write_pretrained(path, args) -> str:
    from samix_p_overhead import write_random_mixer

    write_random_mixer(path, args.model, args.width, args.in_chans, args.size, 3)
    return str(path)


def measure(args, device, pretrained=None) -> list:
    names = ["supervised", "moco"] + [f"moco+{p}" for p in args.policies] + list(args.learnable)
    steps = {n: build(n, args, device, pretrained) for n in names}
    cands = [tb.Timed(n, steps[n]) for n in names]
    tb.interleave(cands, device, args.warmup, args.repeats, seed=0)
    by = {c.name: c for c in cands}
    rows = []
    for n in names:
        c = by[n]

        def run(n=n):
            s = build(n, args, device, pretrained)
            for _ in range(args.memory_iters):
                s()

        peak = tb.peak_memory(run, device)
        rows.append({"candidate": n, "median_ms": tb.stats(c.wall_ms)["median"],
                     "x_supervised": tb.paired_ratio(c.wall_ms, by["supervised"].wall_ms),
                     "x_moco": tb.paired_ratio(c.wall_ms, by["moco"].wall_ms),
                     "peak_mib": tb.mib(peak), "_wall": list(c.wall_ms)})
    for r in rows:
        base_sup = next(x for x in rows if x["candidate"] == "supervised")["peak_mib"]
        base_moco = next(x for x in rows if x["candidate"] == "moco")["peak_mib"]
        r["mem_x_supervised"] = r["peak_mib"] / base_sup
        r["mem_x_moco"] = r["peak_mib"] / base_moco
    return rows


def format_table(rows) -> str:
    lines = ["| candidate | ms/iter | x supervised | x moco | peak MiB | mem x supervised | mem x moco |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['candidate']} | {r['median_ms']:.1f} | {r['x_supervised']:.2f} | {r['x_moco']:.2f} | "
                     f"{r['peak_mib']:.1f} | {r['mem_x_supervised']:.2f} | {r['mem_x_moco']:.2f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="preact_resnet18")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--queue", type=int, default=1000)
    p.add_argument("--policies", nargs="+", default=["mixup", "cutmix"])
    p.add_argument("--learnable", nargs="*", default=["samix_i", "samix_c", "samix_ip"],
                   choices=["samix_i", "samix_c", "samix_ip"], help="learnable candidates (none: --learnable)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--memory-iters", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.queue % args.batch:
        p.error(f"--queue ({args.queue}) must be a multiple of --batch ({args.batch})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = tb.set_threads(args.threads)
    device = tb.resolve_device(args.device)
    info = tb.machine_info(threads, device)
    print(f"# SSL cost: {args.model} width {args.width}, batch {args.batch}x{args.in_chans}x{args.size}x{args.size}, "
          f"{args.repeats} interleaved rounds after {args.warmup} warm-up")
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        pretrained = write_pretrained(Path(tmp) / "mixer.safetensors", args) if "samix_ip" in args.learnable else None
        rows = measure(args, device, pretrained)
    print(format_table(rows))
    by = {r["candidate"]: r for r in rows}
    if "samix_ip" in by and "moco+mixup" in by:
        ratio = tb.paired_ratio(by["samix_ip"]["_wall"], by["moco+mixup"]["_wall"])
        print(f"samix_ip / moco+mixup = {ratio:.3f} (target <= 1.25): {'OK' if ratio <= 1.25 else 'ABOVE TARGET'}")
    for r in rows:
        r.pop("_wall")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(machine=info, args=vars(args), rows=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
