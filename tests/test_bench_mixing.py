"""Smoke test of benchmarks/mixing_throughput.py on a tiny batch (the script, its rows and its ratios)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mixing_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mixing_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    yield mod
    torch.set_num_threads(threads)  # --threads changes a process-wide setting
    sys.modules.pop(spec.name, None)


def test_benchmark_rows_cover_every_policy_and_ratios_are_consistent(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--sizes", "8", "--batch", "4", "--repeats", "2", "--warmup", "0", "--threads", "1",
                       "--devices", "cpu", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    policies = bench.image_policies()
    assert {r["policy"] for r in rows if r["kind"] == "policy"} == set(policies)
    assert sum(r["kind"] == "floor" for r in rows) == 1 and sum(r["kind"] == "ref" for r in rows) == 1
    kinds = {(r["kind"], r["policy"]) for r in rows}
    for comp in ("samix_xy", "timm", "tv"):
        assert {(comp, "mixup"), (comp, "cutmix")} <= kinds
    floor = next(r for r in rows if r["kind"] == "floor")["median_ms"]
    by = {(r["kind"], r["policy"]): r for r in rows}
    for r in rows:
        assert r["p25_ms"] <= r["median_ms"] <= r["p75_ms"]
        assert r["x_floor"] == pytest.approx(r["median_ms"] / floor)
        if r["kind"] == "policy":
            assert r["target"] == bench.TARGETS.get(r["policy"], bench.DEFAULT_TARGET)
            assert r["meets_target"] == (r["x_floor"] <= r["target"])
        if r["kind"] == "samix_xy":
            assert r["x_timm"] == pytest.approx(r["median_ms"] / by[("timm", r["policy"])]["median_ms"])
            assert r["x_tv"] == pytest.approx(r["median_ms"] / by[("tv", r["policy"])]["median_ms"])
            assert r["meets_target"] == (r["x_timm"] <= 1.0 and r["x_tv"] <= 1.0)
    assert data["machine"]["threads"] == 1
    table = capsys.readouterr().out
    for r in rows:
        assert r["name"] in table


def test_benchmark_rejects_bad_options(bench):
    for argv in (["--batch", "1"], ["--sizes", "4"], ["--policies", "no_such_policy"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            bench.main(argv)
