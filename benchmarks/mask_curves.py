"""Overlay the monitor and the mask diagnostics of several runs over the epochs, one PNG (issue 17's question:
does the gap to MoCo v2 open where the learned masks stop following lambda?).

Reads each run's ``metrics.jsonl`` (rows with ``epoch``) and draws, per run, the monitor (``knn_top1``, else
``top1``) and the mask diagnostics that the learnable mixers log every ``eval_interval``: ``mask_mu_err``
(|mu - lambda| of the raw masks), ``mask_std`` (within-mask standard deviation) and ``mask_partner_sens``
(how much a mask changes when its partner is swapped). A horizontal line marks an optional floor
(``--floor``, e.g. the random-init kNN of the same seed).

    python benchmarks/mask_curves.py runs/ssl_evidence/samix_i/seed2 runs/ssl_evidence/samix_c/seed2 \
        --labels SAMix-I SAMix-C --floor 61.05 --out docs/img/ssl_mask_curves_seed2.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

PANELS = [("monitor", "kNN / test top-1 %"), ("mask_mu_err", "|mu - lambda| (raw masks)"),
          ("mask_std", "within-mask std"), ("mask_partner_sens", "partner sensitivity")]


def read_rows(run: Path) -> List[Dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"mask_curves: {run} has no metrics.jsonl (is it a run directory?)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "epoch" in r]


def series(rows: List[Dict], key: str):
    if key == "monitor":
        key = "knn_top1" if any("knn_top1" in r for r in rows) else "top1"
    pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--labels", nargs="*", default=None)
    p.add_argument("--floor", type=float, default=None, help="a horizontal line on the monitor panel")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    labels = args.labels or [str(r) for r in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"mask_curves: {len(args.runs)} runs but {len(labels)} --labels; give one label per run")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for run, label in zip(args.runs, labels):
        rows = read_rows(run)
        for ax, (key, _) in zip(axes, PANELS):
            x, y = series(rows, key)
            if x:
                ax.plot(x, y, marker="o", ms=3, label=label)
    for ax, (key, title) in zip(axes, PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if args.floor is not None:
        axes[0].axhline(args.floor, color="grey", ls="--", lw=1, label="random-init floor")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
