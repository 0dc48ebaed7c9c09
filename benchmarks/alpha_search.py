"""Choose alpha of Beta(alpha, alpha) per method on a validation split (issue 15, "a fair protocol").

Trains ``configs/fashion_mnist/<method>.yaml`` with every alpha of ``--alphas`` (one seed), evaluating on
``--val`` stratified training images held out of training (``data.val_subset``: the same images for every
run, disjoint from the 2,000 training images; the test set is never read), and picks per method the alpha
of the best validation top-1 (median of the last 5 epochs). The alpha is the mixing policy's
(``mixer.alpha``) for the static policies and the algorithm's (``algorithm.alpha``) for AutoMix / SAMix.
``vanilla`` (no alpha) is trained once as the validation reference.

    python benchmarks/alpha_search.py --methods vanilla mixup cutmix automix samix --alphas 0.2 1 2 \\
        --jobs 2 --threads 1
    python benchmarks/alpha_search.py --report-only --methods vanilla mixup cutmix automix samix

Writes ``OUT/alpha_search.md``, ``OUT/alpha_search.json`` (``{"chosen": {method: {"key", "alpha"}}, ...}``,
read by ``accuracy_evidence.py --alphas-from``) and ``OUT/alpha_search.png``. Runs are resumable and
skipped once finished.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from accuracy_evidence import _finished, _live_trainer  # noqa: E402  (sibling script)


def alpha_key(method: str) -> Optional[str]:
    """The config key that holds the method's alpha (``None``: the method has none, e.g. vanilla)."""
    from samix.engine.config import load_config

    cfg = load_config(ROOT / "configs" / "fashion_mnist" / f"{method}.yaml")
    if str(cfg.mixer.name) != "none":
        return "mixer.alpha"
    if "alpha" in cfg.algorithm:
        return "algorithm.alpha"
    return None


def run_dir(out: Path, method: str, alpha: Optional[float]) -> Path:
    return out / method / ("no_alpha" if alpha is None else f"alpha{alpha:g}")


def _train(method: str, alpha: Optional[float], key: Optional[str], args) -> str:
    d = run_dir(args.out, method, alpha)
    while _live_trainer(d):
        time.sleep(30)
    if _finished(d, args.epochs):
        return f"{method} alpha {alpha}: done before"
    cmd = [sys.executable, "-m", "samix.cli", "train", str(ROOT / "configs" / "fashion_mnist" / f"{method}.yaml"),
           f"seed={args.seed}", f"epochs={args.epochs}", f"out_dir={d}", f"name={d.parent.name}_{d.name}",
           f"threads={args.threads}", "resume=true", f"eval_interval={args.eval_interval}", "log_interval=100000",
           f"data.root={args.data_root}", f"data.val_subset={args.val}"]
    if key is not None:
        cmd.append(f"{key}={alpha}")
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(d / "train.log", "a") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"{method} alpha {alpha} failed (exit {rc}); see {d / 'train.log'}")
    return f"{method} alpha {alpha}: trained in {time.time() - t0:.0f} s"


def collect(args, plan: Dict[str, tuple]) -> Dict:
    table, chosen = {}, {}
    for method, (key, alphas) in plan.items():
        scores = {}
        for a in alphas:
            d = run_dir(args.out, method, a)
            if _finished(d, args.epochs):
                s = json.loads((d / "summary.json").read_text())
                if s.get("eval_split") != "val":
                    raise RuntimeError(f"{d} was not evaluated on the validation split (eval_split="
                                       f"{s.get('eval_split')!r}): remove it and run again")
                scores["none" if a is None else f"{a:g}"] = s["top1_median_last5"]
        if not scores:
            continue
        table[method] = scores
        if key is not None and len(scores) == len(alphas):  # a choice only once every alpha has run
            best = max(scores, key=scores.get)
            chosen[method] = {"key": key, "alpha": float(best), "val_top1": scores[best]}
    return {"seed": args.seed, "val_images": args.val, "epochs": args.epochs, "table": table, "chosen": chosen}


def markdown(res: Dict, alphas: List[float]) -> str:
    cols = [f"{a:g}" for a in alphas]
    lines = ["| method | " + " | ".join(f"alpha {c}" for c in cols) + " | chosen |",
             "|---|" + "---|" * (len(cols) + 1)]
    for m, scores in res["table"].items():
        if "none" in scores:
            cells = [f"{scores['none']:.2f} (no alpha)"] + [""] * (len(cols) - 1)
        else:
            best = max(scores.values())
            cells = [("**%.2f**" if scores[c] == best else "%.2f") % scores[c] if c in scores else "-" for c in cols]
        ch = res["chosen"].get(m)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {'' if ch is None else '%g' % ch['alpha']} |")
    return (f"Validation top-1 % (median of the last 5 epochs) on {res['val_images']} held-out training images, "
            f"seed {res['seed']}, {res['epochs']} epochs, 2,000 training images; the test set is not read.\n\n"
            + "\n".join(lines) + "\n")


def plot(res: Dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m, scores in res["table"].items():
        if "none" in scores:
            ax.axhline(scores["none"], color="grey", ls="--", label=f"{m} (no alpha)")
            continue
        xs = sorted(scores, key=float)
        ax.plot([float(x) for x in xs], [scores[x] for x in xs], "o-", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("alpha of Beta(alpha, alpha)")
    ax.set_ylabel("validation top-1 %")
    ax.set_title(f"alpha search on {res['val_images']} validation images (seed {res['seed']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["vanilla", "mixup", "cutmix", "automix", "samix"])
    p.add_argument("--alphas", nargs="+", type=float, default=[0.2, 1.0, 2.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=int, default=5000, help="validation images held out of the training split")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--eval-interval", type=int, default=20)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "alpha_search")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    for m in args.methods:
        if not (ROOT / "configs" / "fashion_mnist" / f"{m}.yaml").is_file():
            p.error(f"--methods: no config configs/fashion_mnist/{m}.yaml")
    if args.jobs < 1 or args.threads < 1 or args.val < 1:
        p.error("--jobs, --threads and --val must be >= 1")
    if any(a <= 0 for a in args.alphas):
        p.error(f"--alphas must be positive, got {args.alphas}")
    args.out = args.out.resolve()
    plan = {}
    for m in args.methods:
        key = alpha_key(m)
        plan[m] = (key, [None] if key is None else list(args.alphas))
    if not args.report_only:
        # alpha-major: every method gets its first alpha before any gets its last
        todo = [(m, a) for i in range(len(args.alphas)) for m, (key, al) in plan.items() if i < len(al)
                for a in [al[i]]]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futs = [pool.submit(_train, m, a, plan[m][0], args) for m, a in todo]
            for f in futs:
                try:
                    print(f.result(), flush=True)
                except RuntimeError as e:
                    print(f"[alpha_search] {e}", file=sys.stderr, flush=True)
    res = collect(args, plan)
    if not res["table"]:
        print(f"no finished run under {args.out}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(res, args.alphas)
    (args.out / "alpha_search.md").write_text(md)
    (args.out / "alpha_search.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, args.out / "alpha_search.png")
    print(md)
    print(f"wrote {args.out / 'alpha_search.md'}, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
