"""Self-supervised evidence on the real Fashion-MNIST (DESIGN.md, "Self-supervised evidence").

Pre-trains ``configs/fashion_mnist/<method>.yaml`` (MoCo v2 and MoCo v2 + cross-view mixup policies; the
2,000 stratified training images, labels unused) for every seed, then evaluates each backbone twice on the
same 2,000 labeled images, tested on the 10,000 test images: the kNN monitor of the last epoch
(``knn_top1``, k 200, T 0.1) and a linear probe (``samix eval RUN --linear``: 100 epochs, SGD lr 0.1,
x0.1 at 60 and 80, batch 256, precomputed features of the frozen eval-mode backbone). The floor every
SSL number must clear, ``random_init``, is the same kNN and probe on the backbone at its initialisation
(the same seed's weights, never trained). Reports mean +- std over seeds and gains paired by seed against
MoCo v2 (a seed fixes the subset, the initialisation and the data order), as Markdown, JSON and a PNG.

    python benchmarks/ssl_evidence.py --seeds 0 1 2 --jobs 2 --threads 1
    python benchmarks/ssl_evidence.py --report-only

Runs are resumable (``resume=true``); a finished run is skipped, a finished probe too.
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
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["mocov2", "mocov2_mixup", "mocov2_cutmix"]
BASE = "mocov2"


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / method / f"seed{seed}"


def _summary(d: Path) -> Dict:
    p = d / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _train_and_probe(method: str, seed: int, args) -> str:
    d = run_dir(args.out, method, seed)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log = open(d / "evidence.log", "a")
    if _summary(d).get("epochs") != args.epochs:
        cmd = [sys.executable, "-m", "samix.cli", "train", str(ROOT / "configs/fashion_mnist" / f"{method}.yaml"),
               f"seed={seed}", f"epochs={args.epochs}", f"out_dir={d}", f"name={method}_seed{seed}",
               f"threads={args.threads}", "resume=true", "log_interval=100000", f"data.root={args.data_root}"]
        if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise RuntimeError(f"{method} seed {seed}: training failed, see {d / 'train.log'}")
    if "linear_top1" not in _summary(d):
        cmd = [sys.executable, "-m", "samix.cli", "eval", str(d), "--linear", "--mode", "features"]
        env = {"OMP_NUM_THREADS": str(args.threads)}
        import os

        if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                          env={**os.environ, **env}).returncode != 0:
            raise RuntimeError(f"{method} seed {seed}: linear probe failed, see {d / 'evidence.log'}")
    return f"{method} seed {seed}: {time.time() - t0:.0f} s"


def random_init(seed: int, args) -> Dict:
    """kNN and linear probe of the seed's initial backbone (never trained), as the runs evaluate theirs."""
    d = run_dir(args.out, "random_init", seed)
    if (d / "summary.json").is_file():
        return _summary(d)
    import torch

    from samix.engine.assembly import build_algorithm_from_config, build_data, run_generator, seed_everything
    from samix.engine.config import load_config
    from samix.evaluate.knn import knn_evaluate
    from samix.evaluate.linear_probe import LinearProbeConfig, train_linear_probe

    torch.set_num_threads(max(1, args.threads))
    cfg = load_config(ROOT / "configs/fashion_mnist" / f"{BASE}.yaml", [f"seed={seed}", f"data.root={args.data_root}"])
    seed_everything(seed)
    data = build_data(cfg, 0, 1)
    algo = build_algorithm_from_config(cfg, data.info, torch.device("cpu"), run_generator(seed, 0))
    backbone = algo.eval_model()
    knn = knn_evaluate(backbone, data.memory_loader(), data.test_loader, torch.device("cpu"), data.info.num_classes)
    probe = train_linear_probe(backbone, data.memory_loader(), data.test_loader, data.info.num_classes,
                               torch.device("cpu"), LinearProbeConfig(mode="features", seed=seed), progress=False)
    res = {"knn_top1": knn["top1"], "linear_top1": probe["top1_last"], "epochs": 0, "sec_per_iter": None}
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


def collect(out: Path, methods: List[str], seeds: List[int], epochs: int) -> List[Dict]:
    rows = []
    for m in ["random_init", *methods]:
        per = {}
        for s in seeds:
            r = _summary(run_dir(out, m, s))
            if r and (m == "random_init" or (r.get("epochs") == epochs and "linear_top1" in r)):
                per[s] = r
        if not per:
            continue
        row = {"method": m, "seeds": sorted(per)}
        for key in ("knn_top1", "linear_top1"):
            vals = [per[s][key] for s in sorted(per)]
            row[key] = vals
            row[key + "_mean"] = statistics.mean(vals)
            row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        spi = [per[s]["sec_per_iter"] for s in per if per[s].get("sec_per_iter")]
        row["sec_per_iter"] = statistics.median(spi) if spi else None
        row["per_seed"] = per
        rows.append(row)
    base = next((r for r in rows if r["method"] == BASE), None)
    for r in rows:
        for key in ("knn_top1", "linear_top1"):
            diffs = [] if base is None else [r["per_seed"][s][key] - base["per_seed"][s][key]
                                             for s in r["seeds"] if s in base["per_seed"]]
            r[key + "_gain"] = statistics.mean(diffs) if diffs else None
            r[key + "_gain_std"] = statistics.stdev(diffs) if len(diffs) > 1 else None
        r["time_vs_base"] = (r["sec_per_iter"] / base["sec_per_iter"]) if base and r["sec_per_iter"] else None
    for r in rows:
        r.pop("per_seed")
    return rows


def _pm(m, s, n):
    return f"{m:.2f} +- {s:.2f} (n={n})"


def _gain(g, s):
    if g is None:
        return "-"
    return f"{g:+.2f}" + (f" +- {s:.2f}" if s is not None else "")


def markdown(rows: List[Dict], epochs: int) -> str:
    lines = [f"Fashion-MNIST SSL, 2,000 images pre-trained {epochs} epochs (labels unused), kNN and linear probe "
             f"on the same 2,000 labeled images, 10,000 test images; gains paired by seed vs {BASE}.", "",
             "| method | kNN top-1 % | gain (paired) | linear top-1 % | gain (paired) | s/iter | time |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        n = len(r["seeds"])
        t = f"{r['time_vs_base']:.2f}x" if r["time_vs_base"] else "-"
        spi = f"{r['sec_per_iter']:.3f}" if r["sec_per_iter"] else "-"
        lines.append(f"| {r['method']} | {_pm(r['knn_top1_mean'], r['knn_top1_std'], n)} | "
                     f"{_gain(r['knn_top1_gain'], r['knn_top1_gain_std'])} | "
                     f"{_pm(r['linear_top1_mean'], r['linear_top1_std'], n)} | "
                     f"{_gain(r['linear_top1_gain'], r['linear_top1_gain_std'])} | {spi} | {t} |")
    return "\n".join(lines) + "\n"


def plot(out: Path, methods: List[str], seeds: List[int], rows: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in methods:
        curves = []
        for s in seeds:
            p = run_dir(out, m, s) / "metrics.jsonl"
            if p.is_file():
                rs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
                curves.append({r["epoch"]: r["knn_top1"] for r in rs if r.get("knn_top1") is not None})
        if not curves:
            continue
        epochs = sorted(set.intersection(*[set(c) for c in curves]))
        a.plot(epochs, [statistics.mean(c[e] for c in curves) for e in epochs], marker="o", label=m)
    floor = next((r for r in rows if r["method"] == "random_init"), None)
    if floor:
        a.axhline(floor["knn_top1_mean"], color="gray", ls="--", label="random init")
    a.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN monitor during pre-training (mean over seeds)")
    a.legend()
    names = [r["method"] for r in rows]
    x = range(len(rows))
    b.bar([i - 0.2 for i in x], [r["knn_top1_mean"] for r in rows], 0.4, yerr=[r["knn_top1_std"] for r in rows],
          label="kNN")
    b.bar([i + 0.2 for i in x], [r["linear_top1_mean"] for r in rows], 0.4,
          yerr=[r["linear_top1_std"] for r in rows], label="linear probe")
    b.set_xticks(list(x), names, rotation=20)
    lo = min(min(r["knn_top1_mean"], r["linear_top1_mean"]) for r in rows)
    b.set_ylim(max(0, lo - 5), 100)
    b.set(ylabel="top-1 (%)", title="final accuracy (mean +- std over seeds)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "ssl_evidence")
    p.add_argument("--data-root", default="data")
    p.add_argument("--late", nargs="*", default=[], help="methods to run after every seed of the others "
                   "(e.g. to get paired seeds of two methods first)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for s in args.seeds:
            random_init(s, args)
        jobs = [(m, s) for s in args.seeds for m in args.methods if m not in args.late]
        jobs += [(m, s) for s in args.seeds for m in args.methods if m in args.late]
        with ThreadPoolExecutor(max_workers=args.jobs) as ex:
            for f in [ex.submit(_train_and_probe, m, s, args) for m, s in jobs]:
                try:
                    print(f.result(), flush=True)
                except RuntimeError as e:
                    print(f"FAILED: {e}", flush=True)
    rows = collect(args.out, args.methods, args.seeds, args.epochs)
    md = markdown(rows, args.epochs)
    (args.out / "ssl_evidence.md").write_text(md)
    (args.out / "ssl_evidence.json").write_text(json.dumps(rows, indent=2) + "\n")
    if rows:
        plot(args.out, args.methods, args.seeds, rows, args.out / "ssl_evidence.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
