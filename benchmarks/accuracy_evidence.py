"""Accuracy evidence on the real Fashion-MNIST CPU recipe (DESIGN.md, "Evidence on real data").

Trains every method of ``--methods`` with every seed of ``--seeds`` on ``configs/fashion_mnist/<method>.yaml``
(2,000 stratified training images, the 10,000-image test set, PreAct ResNet-18 width 16, 80 epochs),
then reports the median top-1 of the last 5 epochs as mean +- standard deviation over seeds, the
per-seed values, the ECE and the seconds per training iteration, as a Markdown table
(``OUT/evidence.md``), JSON (``OUT/evidence.json``) and a PNG (``OUT/evidence.png``).

    python benchmarks/accuracy_evidence.py                              # all methods, seeds 0 1 2
    python benchmarks/accuracy_evidence.py --methods vanilla mixup --seeds 0 1 2 --jobs 2 --threads 1
    python benchmarks/accuracy_evidence.py --report-only                # aggregate what is there
    # what docs/results.md reports: issue-4 methods first (the long AutoMix run beside the short ones)
    python benchmarks/accuracy_evidence.py --jobs 2 --threads 1 --eval-interval 20 \
        --methods automix vanilla mixup cutmix / samix decoupled_mixup samix_p

Runs are resumable: a finished run (``summary.json`` for the requested epochs) is skipped, an
interrupted one continues from its last checkpoint (``resume=true``). ``samix_p`` needs the Mixer of
the ``samix`` run with the same seed: it is exported from that run (``samix export-mixer``) before the
SAMix-P run starts, so list ``samix`` first. Seconds per iteration are the engine's median per epoch;
with ``--jobs > 1`` the runs share the machine, so compare them only within one invocation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = ["vanilla", "mixup", "cutmix", "automix", "samix", "samix_p", "decoupled_mixup"]


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / method / f"seed{seed}"


def _finished(d: Path, epochs: int) -> bool:
    p = d / "summary.json"
    return p.is_file() and json.loads(p.read_text()).get("epochs") == epochs


def _live_trainer(d: Path) -> bool:
    """Whether a live process (Linux /proc) is training into run directory ``d``."""
    needle = f"out_dir={d}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in args:
            return True
    return False


def _train(method: str, seed: int, args, wait_for=None) -> Dict:
    if wait_for is not None:  # samix_p: the SAMix run whose Mixer it reads
        wait_for.result()
    d = run_dir(args.out, method, seed)
    while _live_trainer(d):  # a run of an earlier (interrupted) invocation still going: let it end
        time.sleep(30)
    if _finished(d, args.epochs):
        return {"method": method, "seed": seed, "status": "done before"}
    cmd = [sys.executable, "-m", "samix.cli", "train", str(ROOT / "configs" / "fashion_mnist" / f"{method}.yaml"),
           f"seed={seed}", f"epochs={args.epochs}", f"out_dir={d}", f"name={method}_seed{seed}",
           f"threads={args.threads}", "resume=true", f"eval_interval={args.eval_interval}", "log_interval=100000",
           f"data.root={args.data_root}"] + list(args.override)
    chosen = args.alphas.get(method)
    if chosen is not None:  # alpha chosen on the validation split (alpha_search.py)
        cmd.append(f"{chosen['key']}={chosen['alpha']}")
    if method == "samix_p":
        source = run_dir(args.out, "samix", seed)
        mixer_file = source / "mixer.safetensors"
        if not mixer_file.is_file():
            if not _finished(source, args.epochs):
                raise RuntimeError(f"samix_p seed {seed} needs the finished SAMix run {source} "
                                   f"(list samix before samix_p in --methods)")
            subprocess.run([sys.executable, "-m", "samix.cli", "export-mixer", str(source), str(mixer_file)],
                           check=True, cwd=ROOT)
        cmd.append(f"mixer.pretrained={mixer_file}")
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(d / "train.log", "a") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"{method} seed {seed} failed (exit {rc}); see {d / 'train.log'}")
    return {"method": method, "seed": seed, "status": f"trained in {time.time() - t0:.0f} s"}


def collect(out: Path, methods: List[str], seeds: List[int], epochs: int) -> List[Dict]:
    rows = []
    for m in methods:
        runs = []
        for s in seeds:
            d = run_dir(out, m, s)
            if _finished(d, epochs):
                runs.append((s, json.loads((d / "summary.json").read_text())))
        if not runs:
            continue
        top1 = [r["top1_median_last5"] for _, r in runs]
        rows.append({
            "method": m, "seeds": [s for s, _ in runs], "top1_per_seed": top1,
            "top1_mean": statistics.mean(top1), "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
            "ece_mean": statistics.mean(r["ece"] for _, r in runs if r.get("ece") is not None)
            if any(r.get("ece") is not None for _, r in runs) else None,
            "sec_per_iter": statistics.median(r["sec_per_iter"] for _, r in runs),
        })
    base = next((r for r in rows if r["method"] == "vanilla"), None)
    for r in rows:
        r["gain_vs_vanilla"] = r["top1_mean"] - base["top1_mean"] if base else None
        r["time_vs_vanilla"] = r["sec_per_iter"] / base["sec_per_iter"] if base else None
        # a seed fixes the training subset, the initialisation and the data order for every method:
        # the per-seed differences to vanilla are paired, and their spread is the one to judge a gain by
        diffs = [] if base is None else paired_differences(r, base)
        r["paired_seeds"] = len(diffs)
        r["paired_gain_mean"] = statistics.mean(diffs) if diffs else None
        r["paired_gain_std"] = statistics.stdev(diffs) if len(diffs) > 1 else None
    return rows


def paired_differences(row: Dict, base: Dict) -> List[float]:
    """``row``'s top-1 minus ``base``'s on every seed both have, in seed order."""
    mine = dict(zip(row["seeds"], row["top1_per_seed"]))
    theirs = dict(zip(base["seeds"], base["top1_per_seed"]))
    return [mine[s] - theirs[s] for s in sorted(mine.keys() & theirs.keys())]


def markdown(rows: List[Dict], epochs: int) -> str:
    lines = [f"| method | top-1 % (mean +- std) | vs vanilla (paired by seed, mean +- std) | per seed | ECE % "
             f"| s/iter | time vs vanilla |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        gain = "" if r["gain_vs_vanilla"] is None else f"{r['gain_vs_vanilla']:+.2f}"
        if r.get("paired_gain_std") is not None and r["method"] != "vanilla":
            gain = f"{r['paired_gain_mean']:+.2f} +- {r['paired_gain_std']:.2f}"
        tv = "" if r["time_vs_vanilla"] is None else f"{r['time_vs_vanilla']:.2f}x"
        ece = "" if r["ece_mean"] is None else f"{r['ece_mean']:.2f}"
        per = ", ".join(f"{v:.2f}" for v in r["top1_per_seed"])
        lines.append(f"| {r['method']} | {r['top1_mean']:.2f} +- {r['top1_std']:.2f} (n={len(r['seeds'])}) | {gain} "
                     f"| {per} | {ece} | {r['sec_per_iter']:.3f} | {tv} |")
    return (f"Fashion-MNIST, 2,000 stratified training images, {epochs} epochs, 10,000 test images; "
            f"top-1 = median of the last 5 epochs.\n\n" + "\n".join(lines) + "\n")


def plot(rows: List[Dict], path: Path, epochs: int) -> None:
    """Left: top-1 per method (bar: mean, whisker: std, dots: seeds). Right: top-1 against the time per
    iteration relative to vanilla, the trade-off a user chooses on."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(1.3 * len(rows) + 7, 4.2),
                                  gridspec_kw={"width_ratios": [1.3 * len(rows) + 1, 5]})
    for i, r in enumerate(rows):
        ax.bar(i, r["top1_mean"], yerr=r["top1_std"], color="#9ecae1", edgecolor="#3182bd", capsize=4)
        ax.scatter([i] * len(r["top1_per_seed"]), r["top1_per_seed"], color="#08306b", s=14, zorder=3)
    lo = min(min(r["top1_per_seed"]) for r in rows)
    hi = max(max(r["top1_per_seed"]) for r in rows)
    ax.set_ylim(lo - 1.0, hi + 0.6)
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=20)
    ax.set_ylabel("test top-1 % (median of last 5 epochs)")
    ax.set_title(f"Fashion-MNIST, 2,000 images, {epochs} epochs: mean +- std over seeds (dots: seeds)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    timed = [r for r in rows if r.get("time_vs_vanilla") is not None]
    for k, r in enumerate(timed):
        ax2.errorbar(r["time_vs_vanilla"], r["top1_mean"], yerr=r["top1_std"], fmt="o", color="#3182bd",
                     capsize=3)
        ax2.annotate(r["method"], (r["time_vs_vanilla"], r["top1_mean"]), textcoords="offset points",
                     xytext=(5, 4 if k % 2 == 0 else -11), fontsize=8)
    ax2.set_xlabel("seconds per iteration / vanilla's (median over seeds)")
    ax2.set_ylabel("test top-1 %")
    ax2.set_title("accuracy against training cost", fontsize=10)
    ax2.grid(alpha=0.3)
    if not timed:
        ax2.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help='configs/fashion_mnist/<method>.yaml; "/" separates priority groups, e.g. '
                        '"automix vanilla / samix decoupled_mixup samix_p" (put long runs first in a group)')
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--eval-interval", type=int, default=10, help="epochs between test evaluations "
                   "(the last 5 epochs are always evaluated)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "evidence")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--alphas-from", type=Path, default=None,
                   help="alpha_search.json: train each method with the alpha chosen on the validation split")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run, e.g. sched.min_lr=0.05 (use another --out)")
    args = p.parse_args(argv)
    args.alphas = {}
    if args.alphas_from is not None:
        if not args.alphas_from.is_file():
            p.error(f"--alphas-from: no file {args.alphas_from} (run benchmarks/alpha_search.py first)")
        args.alphas = json.loads(args.alphas_from.read_text()).get("chosen", {})
    bad = [o for o in args.override if "=" not in o]
    if bad:
        p.error(f"--override takes KEY=VALUE pairs, got {bad[0]!r}")
    groups, current = [], []
    for m in args.methods + ["/"]:
        if m == "/":
            groups, current = groups + ([current] if current else []), []
        else:
            current.append(m)
    args.methods = [m for g in groups for m in g]
    for m in args.methods:
        if not (ROOT / "configs" / "fashion_mnist" / f"{m}.yaml").is_file():
            p.error(f"--methods: no config configs/fashion_mnist/{m}.yaml")
    if args.jobs < 1 or args.threads < 1:
        p.error("--jobs and --threads must be >= 1")
    args.out = args.out.resolve()
    if not args.report_only:
        # priority groups (separated by "/") in order; inside a group, seed-major: every method gets
        # its first seed before any gets its third. samix_p waits for the SAMix run of its seed,
        # whose Mixer it reads.
        todo = [(m, s) for group in groups for s in args.seeds for m in group if m != "samix_p"]
        if "samix_p" in args.methods:
            # SAMix-P of seed s right after the SAMix run of the next seed is queued (by then the
            # Mixer of seed s is about ready, and no worker idles long waiting for it)
            for k, s in enumerate(args.seeds):
                later = [todo.index(("samix", t)) for t in args.seeds[k + 1:] if ("samix", t) in todo]
                todo.insert(later[0] + 1 if later else len(todo), ("samix_p", s))
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            pending = {}
            for m, s in todo:
                pending[(m, s)] = pool.submit(_train, m, s, args, pending.get(("samix", s)) if m == "samix_p" else None)
            for (m, s), fut in pending.items():
                try:
                    print(fut.result(), flush=True)
                except RuntimeError as e:
                    print(f"[evidence] {e}", file=sys.stderr, flush=True)
    rows = collect(args.out, args.methods, args.seeds, args.epochs)
    if not rows:
        print(f"no finished run under {args.out}", file=sys.stderr)
        return 1
    md = markdown(rows, args.epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evidence.md").write_text(md)
    (args.out / "evidence.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "evidence.png", args.epochs)
    print(md)
    print(f"wrote {args.out / 'evidence.md'}, {args.out / 'evidence.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
