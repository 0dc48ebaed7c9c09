#!/usr/bin/env python
"""SAMix-P overhead: seconds per training iteration of vanilla, mixup and samix_p on the same model/batch.

One training iteration is what the engine does (``samix.engine.trainer``): the ``supervised``
algorithm's forward (mixing included), mixed CE, backward, SGD step. Candidates:

* ``vanilla``: no mixing;
* ``mixup``: ``build_mixer("mixup", alpha=1)``;
* ``samix_p``: ``build_mixer("samix_p", pretrained=FILE)``: the frozen encoder (stem + stages
  ``1..l``) forward under ``no_grad``, the frozen Mixer, lambda adjusting, the blend.

FILE is ``--pretrained`` (a real ``samix export-mixer`` file) or, by default, one written here with a
freshly initialised encoder (``--encoder``, default: the trained model itself, the worst case: a
Mixer exported from a run of the same network) and Mixer: timing does not depend on the weights.

The candidates are interleaved: after ``--warmup`` iterations each, every one of ``--repeats``
rounds times ``--steps`` iterations of every candidate in a freshly shuffled order (drifting load
on a shared machine hits all of them alike); the table reports the median seconds per iteration,
the interquartile range and the ratio of medians to ``vanilla``. ``mixer.mix()`` alone is timed the
same way (``--mix-only`` rows). Target (issue 5): samix_p <= 1.25x vanilla.

Usage::

    python benchmarks/samix_p_overhead.py                        # Fashion-MNIST CPU recipe: PreAct-18 x0.25
    python benchmarks/samix_p_overhead.py --model resnet18 --width 1 --size 32 --in-chans 3 --device cuda
    python benchmarks/samix_p_overhead.py --encoder convnet --encoder-width 0.5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

TARGET = 1.25


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_random_mixer(path: Path, encoder: str, width: float, in_chans: int, size: int, stage: int) -> None:
    """A pre-trained-Mixer file with freshly initialised weights (for timing only)."""
    from samix.generators import SAMixGenerator
    from samix.pretrained import save_pretrained_mixer
    from samix.models import build_model

    enc = build_model(encoder, num_classes=10, in_chans=in_chans, width=width).eval()
    gen = SAMixGenerator(int(enc.stage_channels[stage - 1])).eval()
    save_pretrained_mixer(path, gen, enc, stage=stage, backbone=encoder, width=width, in_chans=in_chans,
                          input_size=size, mean=[0.5] * in_chans, std=[0.25] * in_chans, dataset="synthetic")


def build_candidates(args, pretrained: str, device: torch.device) -> Dict[str, object]:
    from samix.algorithms import build_algorithm
    from samix.losses import build_loss
    from samix.mixing import build_mixer
    from samix.models import build_model

    mixers = {
        "vanilla": None,
        "mixup": build_mixer("mixup", alpha=1.0, num_classes=args.classes, generator=torch.Generator().manual_seed(1)),
        "samix_p": build_mixer("samix_p", pretrained=pretrained, alpha=2.0, num_classes=args.classes,
                               mean=[0.5] * args.in_chans, std=[0.25] * args.in_chans,
                               generator=torch.Generator().manual_seed(2)),
    }
    out = {}
    for name, mixer in mixers.items():
        torch.manual_seed(0)
        model = build_model(args.model, num_classes=args.classes, in_chans=args.in_chans, width=args.width)
        algo = build_algorithm("supervised", model=model, num_classes=args.classes, mixer=mixer,
                               loss_fn=build_loss("ce")).to(device)
        if args.channels_last:
            algo.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD([p for p in algo.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
        out[name] = (algo, opt)
    return out


def train_steps(algo, opt, x, y, steps: int, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        algo.train()
        loss = algo((x, y))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def mix_steps(mixer, x, steps: int, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        mixer.mix(x)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _stats(values: List[float]) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median_s": statistics.median(values), "q1_s": q[0], "q3_s": q[2], "n": len(values)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="preact_resnet18")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--encoder", default=None, help="backbone of the frozen encoder (default: --model)")
    p.add_argument("--encoder-width", type=float, default=None, help="default: --width")
    p.add_argument("--stage", type=int, default=3)
    p.add_argument("--pretrained", default=None, help="an exported Mixer file (default: a random one)")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=3, help="iterations per timed block")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    encoder = args.encoder or args.model
    enc_width = args.width if args.encoder_width is None else args.encoder_width

    with tempfile.TemporaryDirectory() as tmp:
        pretrained = args.pretrained
        if pretrained is None:
            pretrained = str(Path(tmp) / "mixer.safetensors")
            write_random_mixer(Path(pretrained), encoder, enc_width, args.in_chans, args.size, args.stage)
        cands = build_candidates(args, pretrained, device)
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.batch, args.in_chans, args.size, args.size, generator=g).to(device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
        mixers = {k: a.mixer for k, (a, _) in cands.items() if a.mixer is not None}
        for name, (algo, opt) in cands.items():
            train_steps(algo, opt, x, y, max(args.warmup, 1), device)
        for m in mixers.values():
            mix_steps(m, x, max(args.warmup, 1), device)
        times: Dict[str, List[float]] = {k: [] for k in cands}
        mix_times: Dict[str, List[float]] = {k: [] for k in mixers}
        rng = random.Random(args.seed)
        for _ in range(args.repeats):
            order = list(cands) + [f"mix:{k}" for k in mixers]
            rng.shuffle(order)
            for name in order:
                if name.startswith("mix:"):
                    k = name[4:]
                    mix_times[k].append(mix_steps(mixers[k], x, args.steps, device))
                else:
                    algo, opt = cands[name]
                    times[name].append(train_steps(algo, opt, x, y, args.steps, device))

    base = statistics.median(times["vanilla"])
    rows = []
    for k, v in times.items():
        rows.append({"kind": "train_step", "name": k, **_stats(v), "ratio_to_vanilla": statistics.median(v) / base})
    for k, v in mix_times.items():
        rows.append({"kind": "mix_only", "name": k, **_stats(v), "ratio_to_vanilla": statistics.median(v) / base})
    setup = {"model": args.model, "width": args.width, "encoder": encoder, "encoder_width": enc_width,
             "stage": args.stage, "size": args.size, "in_chans": args.in_chans, "batch": args.batch,
             "steps": args.steps, "repeats": args.repeats, "threads": torch.get_num_threads(),
             "device": str(device), "channels_last": args.channels_last, "torch": torch.__version__,
             "machine": platform.processor() or platform.machine(), "target_samix_p_ratio": TARGET}
    print(f"SAMix-P overhead | model {args.model} x{args.width:g} | encoder {encoder} x{enc_width:g} stem..stage "
          f"{args.stage} | batch {args.batch}x{args.in_chans}x{args.size}x{args.size} | {device}, "
          f"{torch.get_num_threads()} thread(s) | {args.repeats} rounds x {args.steps} it")
    print(f"{'what':<22} {'median ms/it':>12} {'IQR ms':>15} {'x vanilla':>10}")
    for r in rows:
        label = f"{r['name']} ({'step' if r['kind'] == 'train_step' else 'mix only'})"
        print(f"{label:<22} {r['median_s'] * 1e3:12.2f} {r['q1_s'] * 1e3:7.2f}-{r['q3_s'] * 1e3:<7.2f} "
              f"{r['ratio_to_vanilla']:10.3f}")
    ratio = next(r for r in rows if r["name"] == "samix_p" and r["kind"] == "train_step")["ratio_to_vanilla"]
    print(f"samix_p / vanilla = {ratio:.3f} (target <= {TARGET}): {'OK' if ratio <= TARGET else 'ABOVE TARGET'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
