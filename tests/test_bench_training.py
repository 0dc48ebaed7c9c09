"""The training benchmarks (benchmarks/train_overhead.py, benchmarks/automix_cost.py) and their helper.

Tiny models and batches: these check that the measurements mean what the scripts say, not speed.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    if str(BENCH) not in sys.path:  # the scripts import their helper as a top-level module
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


tb = _load("_trainbench")
overhead = _load("train_overhead")
cost = _load("automix_cost")

CPU = torch.device("cpu")
MIB = 2**20


# ------------------------------------------------------------------------------ memory measurement
def test_cpu_peak_allocated_follows_allocations_and_frees_in_time_order():
    def f():
        a = torch.empty(MIB, dtype=torch.uint8)
        b = torch.empty(2 * MIB, dtype=torch.uint8)
        del a  # peak was a + b = 3 MiB
        c = torch.empty(MIB // 2, dtype=torch.uint8)
        return b, c  # 2.5 MiB survive the call

    keep = []
    peak, end = tb.cpu_peak_allocated(lambda: keep.append(f()))
    assert peak == 3 * MIB
    assert end == 2 * MIB + MIB // 2


def test_cpu_peak_allocated_does_not_see_tensors_allocated_before():
    big = torch.zeros(MIB)  # 4 MiB, alive before and after
    assert tb.cpu_peak_allocated(lambda: big.neg()) == (4 * MIB, 0)  # only the temporary
    old = [torch.zeros(MIB)]

    def free_old_then_allocate():
        old.pop()  # freed inside, allocated before: not seen (hence peak_memory profiles from the build)
        return torch.zeros(MIB)

    assert tb.cpu_peak_allocated(free_old_then_allocate) == (4 * MIB, 0)


def test_state_bytes_counts_params_grads_buffers_and_optimizer_state_once():
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.BatchNorm1d(20))
    model[1].weight = model[1].weight  # noqa: PLW0127 (a parameter referenced twice is stored once)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert tb.state_bytes(model, opt) == 4 * params + buffers
    model(torch.randn(4, 10)).sum().backward()
    opt.step()  # gradients and one momentum buffer per parameter
    assert tb.state_bytes(model, opt) == 3 * 4 * params + buffers


# ------------------------------------------------------------------------------ building and timing
def test_candidates_built_like_the_trainer_start_from_the_same_weights():
    ov = tb.model_overrides("convnet", 0.25, 1, 4, "fp32", False)
    _, a, _ = tb.build_candidate(ov + ["mixer.name=cutmix"], 10, 1, CPU)
    _, b, _ = tb.build_candidate(ov + ["algorithm.name=automix"], 10, 1, CPU)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert type(a).__name__ == "Supervised" and a.mixer is not None and b.mix_block is not None


def test_train_step_is_one_optimizer_step_of_the_engine():
    ov = tb.model_overrides("convnet", 0.25, 1, 4, "fp32", False) + ["optim.momentum=0.0", "optim.weight_decay=0.0",
                                                                     "sched.name=constant", "optim.lr=0.5"]
    cfg, algo, opt = tb.build_candidate(ov, 10, 1, CPU)
    x, y = tb.synthetic_batch(4, 1, 28, 10, CPU)
    before = {k: v.clone() for k, v in algo.model.named_parameters()}
    loss = algo((x, y))["loss"]
    grads = torch.autograd.grad(loss, list(algo.model.parameters()))
    step = tb.TrainStep(cfg, algo, opt, x, y)
    step()
    for (name, p), g in zip(algo.model.named_parameters(), grads):
        torch.testing.assert_close(p.detach(), before[name] - 0.5 * g)
    assert step.step == 1 and step.mean_loss() == pytest.approx(float(loss.detach()))


def test_interleave_times_every_candidate_once_per_round_in_shuffled_orders():
    calls = []
    cands = [tb.Timed(n, (lambda n=n: calls.append(n))) for n in "abcd"]
    tb.interleave(cands, CPU, warmup=2, repeats=5, seed=1)
    assert all(len(c.wall_ms) == 5 and len(c.cpu_ms) == 5 for c in cands)
    rounds = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert len(rounds) == 7 and all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order changes between rounds


def test_paired_ratio_is_the_median_of_per_round_ratios():
    assert tb.paired_ratio([2, 3, 10], [1, 1, 2]) == 3.0  # ratios 2, 3, 5
    assert tb.paired_ratio([1.0] * 3, [1.0] * 3) == 1.0


# ------------------------------------------------------------------------------ the scripts
def test_train_overhead_script_writes_ratios_for_every_policy(tmp_path):
    out = tmp_path / "o.json"
    assert overhead.main(["--model", "convnet", "--batch", "4", "--repeats", "2", "--warmup", "0", "--threads", "1",
                          "--policies", "mixup", "cutmix", "manifoldmix", "--device", "cpu",
                          "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["policy"]: r for r in res["rows"]}
    assert list(rows) == ["vanilla", "mixup", "cutmix", "manifoldmix"]
    assert rows["vanilla"]["x_vanilla"] == 1.0 and rows["vanilla"]["meets_target"] is None
    for name in ("mixup", "cutmix", "manifoldmix"):
        r = rows[name]
        assert r["median_ms"] > 0 and r["finite_loss"]
        assert r["x_vanilla"] == pytest.approx(r["median_ms"] / rows["vanilla"]["median_ms"])
        assert r["meets_target"] == (r["x_vanilla"] <= 1.05)
    assert rows["mixup"]["mix_ms"] > 0 and rows["manifoldmix"]["mix_ms"] is None  # mixes inside the model
    assert res["machine"]["threads"] == 1


def test_train_overhead_default_policies_are_every_one_without_a_pretrained_file():
    from samix.mixing import get_mixer_class, list_mixers

    names = overhead.policies()
    assert "manifoldmix" in names and "mixup" in names and "cutmix" in names
    assert set(names) == {n for n in list_mixers() if not getattr(get_mixer_class(n), "needs_pretrained", False)}


def test_train_overhead_rejects_unknown_policies():
    with pytest.raises(SystemExit):
        overhead.parse_args(["--policies", "nosuchmix"])


def test_automix_cost_script_memory_and_phases(tmp_path):
    out = tmp_path / "c.json"
    assert cost.main(["--model", "convnet", "--batch", "4", "--repeats", "1", "--warmup", "0", "--threads", "1",
                      "--phase-iters", "2", "--device", "cpu", "--candidates", "automix", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["candidate"]: r for r in res["rows"]}
    assert list(rows) == ["vanilla", "automix"]  # vanilla always first
    van, am = rows["vanilla"], rows["automix"]
    assert 0 < van["state_mib"] < van["peak_mib"] and 0 < am["state_mib"] < am["peak_mib"]
    assert am["state_mib"] > van["state_mib"]  # the teacher and the Mix Block
    assert am["x_mem"] == pytest.approx(am["peak_mib"] / van["peak_mib"])
    ph = res["phases"]["automix"]
    for name in ("teacher features (no grad)", "generator (2 masks, 1 call)", "student fwd: mixed",
                 "student fwd: clean", "teacher fwd: generator's mixed", "bwd: teacher, inside forward",
                 "bwd: student mixed", "bwd: student clean", "EMA teacher update"):
        assert ph[name] > 0, name
    parts = sum(v for k, v in ph.items() if k != "total")
    assert 0.7 * ph["total"] <= parts <= 1.01 * ph["total"]  # the phases cover the iteration


def test_phase_timer_restores_what_it_wrapped():
    import samix.algorithms.early_backward as early_backward

    orig = early_backward.backward_now
    ov = tb.model_overrides("convnet", 0.25, 1, 4, "fp32", False) + ["algorithm.name=automix"]
    cfg, algo, opt = tb.build_candidate(ov, 10, 1, CPU)
    step = tb.TrainStep(cfg, algo, opt, *tb.synthetic_batch(4, 1, 28, 10, CPU))
    cost.phase_breakdown(step, 1, CPU, vanilla=False)
    assert early_backward.backward_now is orig
    for module in (algo.model, algo.teacher, algo.mix_block):
        assert "forward" not in vars(module) and "features" not in vars(module)


# ------------------------------------------------------------------------------ accuracy evidence report
def test_evidence_report_pairs_seeds_and_aggregates_only_finished_runs(tmp_path):
    ev = _load("accuracy_evidence")
    runs = {("vanilla", 0): 80.0, ("vanilla", 1): 82.0, ("vanilla", 2): 81.0,
            ("mixup", 0): 81.0, ("mixup", 1): 84.0, ("mixup", 2): 82.5}
    for (m, s), top1 in runs.items():
        d = ev.run_dir(tmp_path, m, s)
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"epochs": 80, "top1_median_last5": top1, "ece": 2.0 + s,
                                                    "sec_per_iter": 0.1 * (1 + (m == "mixup"))}))
    unfinished = ev.run_dir(tmp_path, "mixup", 3)  # a run of another length does not count
    unfinished.mkdir(parents=True)
    (unfinished / "summary.json").write_text(json.dumps({"epochs": 40, "top1_median_last5": 99.0, "ece": 0.0,
                                                         "sec_per_iter": 1.0}))
    rows = {r["method"]: r for r in ev.collect(tmp_path, ["vanilla", "mixup"], [0, 1, 2, 3], 80)}
    mix = rows["mixup"]
    assert mix["seeds"] == [0, 1, 2] and mix["top1_mean"] == pytest.approx(82.5)
    assert mix["gain_vs_vanilla"] == pytest.approx(1.5) and mix["time_vs_vanilla"] == pytest.approx(2.0)
    # paired differences 1.0, 2.0, 1.5: mean 1.5, sample std 0.5 (the unpaired std of mixup alone is 1.5)
    assert mix["paired_gain_mean"] == pytest.approx(1.5) and mix["paired_gain_std"] == pytest.approx(0.5)
    assert mix["top1_std"] == pytest.approx(1.5) and mix["ece_mean"] == pytest.approx(3.0)
    md = ev.markdown(list(rows.values()), 80)
    assert "| mixup | 82.50 +- 1.50 (n=3) | +1.50 +- 0.50 |" in md
    ev.plot(list(rows.values()), tmp_path / "evidence.png", 80)
    assert (tmp_path / "evidence.png").stat().st_size > 10_000


def test_ssl_cost_script_times_moco_against_the_supervised_step(tmp_path):
    ssl_cost = _load("ssl_cost")
    out = tmp_path / "s.json"
    assert ssl_cost.main(["--model", "convnet", "--batch", "4", "--queue", "8", "--repeats", "2", "--warmup", "0",
                          "--threads", "1", "--policies", "mixup", "--learnable", "--json", str(out)]) == 0
    rows = {r["candidate"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["supervised", "moco", "moco+mixup"]
    assert rows["supervised"]["x_supervised"] == 1.0 and rows["moco"]["x_moco"] == 1.0
    # MoCo runs the key encoder besides the query encoder, and mixup one more query pass: never cheaper
    assert rows["moco"]["peak_mib"] > rows["supervised"]["peak_mib"]
    assert rows["moco+mixup"]["peak_mib"] >= rows["moco"]["peak_mib"]
    with pytest.raises(SystemExit):
        ssl_cost.parse_args(["--queue", "10", "--batch", "4"])


def test_ssl_cost_script_times_the_learnable_ssl_steps(tmp_path):
    ssl_cost = _load("ssl_cost")
    out = tmp_path / "s.json"
    assert ssl_cost.main(["--model", "convnet", "--batch", "4", "--queue", "8", "--repeats", "2", "--warmup", "0",
                          "--threads", "1", "--policies", "mixup", "--json", str(out)]) == 0
    rows = {r["candidate"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["supervised", "moco", "moco+mixup", "samix_i", "samix_c", "samix_ip"]
    # the Mixer and its own pass through the momentum encoder: more memory than MoCo + a static mixup
    assert rows["samix_i"]["peak_mib"] > rows["moco+mixup"]["peak_mib"]
    assert all(r["x_moco"] > 0 for r in rows.values())


def test_alpha_search_picks_the_best_validation_alpha_and_refuses_test_scored_runs(tmp_path):
    search = _load("alpha_search")

    def fake(method, alpha, top1, split="val"):
        d = search.run_dir(tmp_path, method, alpha)
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"epochs": 4, "top1_median_last5": top1, "eval_split": split}))

    for a, t in ((0.2, 80.0), (1.0, 82.5), (2.0, 81.0)):
        fake("mixup", a, t)
    fake("cutmix", 0.2, 90.0)  # one alpha missing: no choice yet
    fake("vanilla", None, 79.0)
    args = type("A", (), {"out": tmp_path, "epochs": 4, "seed": 0, "val": 100})()
    plan = {"vanilla": (None, [None]), "mixup": ("mixer.alpha", [0.2, 1.0, 2.0]),
            "cutmix": ("mixer.alpha", [0.2, 1.0, 2.0])}
    res = search.collect(args, plan)
    assert res["chosen"] == {"mixup": {"key": "mixer.alpha", "alpha": 1.0, "val_top1": 82.5}}
    assert res["table"]["vanilla"] == {"none": 79.0} and res["table"]["cutmix"] == {"0.2": 90.0}
    md = search.markdown(res, [0.2, 1.0, 2.0])
    assert "**82.50**" in md and "79.00 (no alpha)" in md
    fake("fmix", 1.0, 85.0, split="test")
    with pytest.raises(RuntimeError, match="not evaluated on the validation split"):
        search.collect(args, {"fmix": ("mixer.alpha", [1.0])})
    assert search.alpha_key("vanilla") is None and search.alpha_key("automix") == "algorithm.alpha"
    assert search.alpha_key("cutmix") == "mixer.alpha"


def test_compare_baseline_column_is_the_gain_and_time_ratio_and_figures_are_listed(tmp_path, capsys):
    from samix.cli import compare_table, main

    for name, top1, spi in (("vanilla", 87.5, 0.25), ("cutmix", 89.0, 0.26), ("samix", 88.75, 0.625)):
        d = tmp_path / name
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"name": name, "top1_median_last5": top1, "sec_per_iter": spi,
                                                    "median_window": 5, "top1_median_last10": top1}))
    (tmp_path / "samix" / "curves_masks.png").write_bytes(b"\x89PNG")
    (tmp_path / "samix" / "masks").mkdir()
    for e in (10, 80):
        (tmp_path / "samix" / "masks" / f"masks_epoch{e:04d}.png").write_bytes(b"\x89PNG")
    dirs = [str(tmp_path / n) for n in ("vanilla", "cutmix", "samix")]
    table = compare_table(dirs, baseline="vanilla", pngs=True)
    rows = {ln.split()[0]: ln.split() for ln in table.splitlines() if ln.split() and ln.split()[0] in
            ("vanilla", "cutmix", "samix")}
    assert rows["cutmix"][-2:] == ["+1.50", "1.04x"] and rows["samix"][-2:] == ["+1.25", "2.50x"]
    assert rows["vanilla"][-2:] == ["+0.00", "1.00x"]
    assert f"samix: {tmp_path / 'samix' / 'curves_masks.png'}, {tmp_path / 'samix/masks/masks_epoch0080.png'}" in table
    assert compare_table(dirs, baseline=str(tmp_path / "cutmix")).count("-1.50") == 1
    assert main(["compare", *dirs, "--baseline", "mixup"]) == 2
    assert "--baseline 'mixup' is none of the runs compared" in capsys.readouterr().err


def test_guided_cost_script_times_the_guided_policies_and_augmix(tmp_path):
    pytest.importorskip("gco")
    guided = _load("guided_cost")
    out = tmp_path / "g.json"
    assert guided.main(["--model", "convnet", "--batch", "4", "--repeats", "2", "--warmup", "0", "--threads", "1",
                        "--candidates", "puzzlemix", "attentivemix", "augmix", "--phases", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["candidate"]: r for r in res["rows"]}
    assert list(rows) == ["vanilla", "puzzlemix", "attentivemix", "augmix"] and rows["vanilla"]["x_vanilla"] == 1.0
    # three views in one forward hold about three times the activations of one
    assert rows["augmix"]["peak_mib"] > rows["vanilla"]["peak_mib"]
    assert set(res["puzzlemix_phases"]) == {"saliency pass", "graph cut", "transport plan + apply"}


def test_mask_curves_reads_the_diagnostics_of_each_run_and_names_a_bad_input(tmp_path):
    curves = _load("mask_curves")
    run = tmp_path / "a"
    run.mkdir()
    rows = [{"epoch": e, "knn_top1": 50 + e, "mask_mu_err": 0.5 / e, "mask_std": 0.1 * e} for e in (1, 2, 3)]
    rows.insert(1, {"step": 7, "loss": 1.0})  # a row without an epoch is not a point
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = curves.read_rows(run)
    assert curves.series(got, "monitor") == ([1, 2, 3], [51, 52, 53])
    assert curves.series(got, "mask_mu_err")[1] == pytest.approx([0.5, 0.25, 0.5 / 3])
    assert curves.series(got, "mask_partner_sens") == ([], [])
    out = tmp_path / "c.png"
    assert curves.main([str(run), "--labels", "A", "--floor", "50", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    with pytest.raises(SystemExit, match="one label per run"):
        curves.main([str(run), "--labels", "A", "B", "--out", str(out)])
    with pytest.raises(SystemExit, match="no metrics.jsonl"):
        curves.main([str(tmp_path / "missing"), "--out", str(out)])
