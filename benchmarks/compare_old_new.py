"""Old vs new: the ratios of ``train_overhead.py`` and ``automix_cost.py`` JSON files of two code versions,
measured alternately on one machine (``old_1, new_1, old_2, new_2``, ...), as a Markdown table of the
medians over repetitions. Used for the house reshaping (docs/benchmarks.md, "Before and after").

    python benchmarks/compare_old_new.py runs/bench      # expects {overhead,cost}_{old,new}_{1,2,...}.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _med(files, name_key, col):
    vals = {}
    for f in files:
        for r in json.loads(f.read_text())["rows"]:
            if r.get(col) is not None:
                vals.setdefault(r[name_key], []).append(r[col])
    return {k: statistics.median(v) for k, v in vals.items()}


def table(folder: Path, kind: str, name_key: str, cols) -> str:
    old = sorted(folder.glob(f"{kind}_old_*.json"))
    new = sorted(folder.glob(f"{kind}_new_*.json"))
    if not old or not new:
        return f"(no {kind} files in {folder})\n"
    head = "| " + name_key + " | " + " | ".join(f"{c} old | {c} new" for c in cols) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(cols))]
    per = {c: (_med(old, name_key, c), _med(new, name_key, c)) for c in cols}
    for name in per[cols[0]][0]:
        cells = []
        for c in cols:
            o, n = per[c][0].get(name), per[c][1].get(name)
            cells += [f"{o:.2f}" if o is not None else "-", f"{n:.2f}" if n is not None else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return f"{kind}: {len(old)} old and {len(new)} new runs, medians\n\n" + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    folder = Path((argv or sys.argv[1:] or ["runs/bench"])[0])
    print(table(folder, "overhead", "policy", ["x_vanilla_paired", "x_vanilla_cpu"]))
    print(table(folder, "cost", "candidate", ["x_time_paired", "x_time_cpu", "peak_mib", "x_mem"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
