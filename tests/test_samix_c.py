"""SAMix-C: online deep clustering (memory, re-clustering, small clusters, state), the pseudo-label generation
objective against its formula, where the gradients go, no labels, and exact resume of an engine run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine_utils import make_fashion_mnist, train_killed_in_epoch
from samix.algorithms import build_algorithm
from samix.algorithms.ssl.odc import ODCMemory
from samix.engine import checkpoint as ckpt_mod
from samix.engine.config import load_config
from samix.losses import eta_balanced_loss, mixed_cross_entropy, pbce_loss
from samix.models import build_model

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ ODC memory
def _blobs(n_per=30, c=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(c, dim, generator=g), dim=1) * 5
    x = torch.cat([centers[k] + 0.3 * torch.randn(n_per, dim, generator=g) for k in range(c)])
    truth = torch.arange(c).repeat_interleave(n_per)
    perm = torch.randperm(len(x), generator=g)
    return x[perm], truth[perm]


def test_memory_copies_new_entries_and_moves_seen_ones_by_the_momentum():
    mem = ODCMemory(2, 3, momentum=0.5)
    a = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), dim=1)
    mem.update(torch.tensor([4, 1]), a)
    assert mem.features.shape == (5, 3) and mem.seen.tolist() == [False, True, False, False, True]
    torch.testing.assert_close(mem.features[4], a[0])
    mem.update(torch.tensor([4]), torch.tensor([[0.0, 0, 1.0]]))
    torch.testing.assert_close(mem.features[4], F.normalize(torch.tensor([0.5, 0, 0.5]), dim=0))
    assert mem.labels.tolist() == [-1] * 5 and not mem.is_clustered
    with pytest.raises(ValueError, match="indices must be >= 0"):
        mem.update(torch.tensor([-1]), a[:1])


def test_reclustering_recovers_separated_clusters_and_batches_are_then_reassigned():
    x, truth = _blobs()
    mem = ODCMemory(4, 8)
    mem.update(torch.arange(len(x)), x)
    logs = mem.recluster(epoch=1)
    assert mem.is_clustered and logs["odc_changed"] == 1.0 and logs["odc_min_size"] == 30
    lab = mem.labels
    # a bijection between clusters and the truth: every cluster is pure
    for k in range(4):
        assert len(set(truth[lab == k].tolist())) == 1
    # a new step re-assigns the batch's labels to the nearest centroid
    moved = F.normalize(mem.centroids[(lab[0] + 1) % 4].unsqueeze(0), dim=1)
    mem.update(torch.tensor([0]), moved)
    assert int(mem.labels[0]) == int(mem.assign(mem.features[:1])[0])
    assert mem.recluster(epoch=2)["odc_changed"] < 0.05  # warm-started: the clusters stay


def test_small_clusters_are_split_off_the_largest():
    """Two real groups and C = 4: plain k-means leaves clusters empty or tiny; after the split every cluster
    has at least min_cluster_size members."""
    x, _ = _blobs(n_per=40, c=2)
    mem = ODCMemory(4, 8, min_cluster_size=5)
    mem.update(torch.arange(len(x)), x)
    logs = mem.recluster(epoch=1)
    counts = torch.bincount(mem.labels, minlength=4)
    assert int(counts.min()) >= 5 and logs["odc_min_size"] >= 5 and int(counts.sum()) == 80


def test_clustering_is_a_deterministic_function_of_the_state_and_survives_a_state_dict_round_trip():
    x, _ = _blobs(seed=3)
    runs = []
    for _ in range(2):
        mem = ODCMemory(5, 8, seed=7)
        mem.update(torch.arange(len(x)), x)
        mem.recluster(epoch=1)
        runs.append(mem)
    assert torch.equal(runs[0].labels, runs[1].labels) and torch.equal(runs[0].centroids, runs[1].centroids)
    fresh = ODCMemory(5, 8, seed=7)
    fresh.load_state_dict(runs[0].state_dict())
    assert fresh.is_clustered and torch.equal(fresh.features, runs[0].features)
    for m in (fresh, runs[0]):
        m.recluster(epoch=2)
    assert torch.equal(fresh.labels, runs[0].labels)
    other_seed = ODCMemory(5, 8, seed=8)
    other_seed.update(torch.arange(len(x)), x)
    other_seed.recluster(epoch=1)
    assert other_seed.centroids.shape == (5, 8)  # another seed is allowed to differ, same shapes


# ------------------------------------------------------------------------------------------ the algorithm
def _algo(seed=0, **options):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    options.setdefault("queue_size", 32)
    options.setdefault("num_clusters", 3)
    return build_algorithm("samix_c", model=build_model("convnet", num_classes=10, in_chans=1, width=0.25),
                           num_classes=10, generator=g, **options)


def _batch(b=8, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 28, 28, generator=g)
    views = (x, x + 0.3 * torch.randn(b, 1, 28, 28, generator=g))
    y = torch.randint(0, 10, (b,), generator=g) if labels is None else labels
    return (views, y, torch.arange(b))


def _clustered(algo, b=8):
    """Fill the memory with one step and cluster it, as the first epoch's end does."""
    algo(_batch(b))
    algo.on_epoch_end(1)
    assert algo.memory.is_clustered
    return algo


def test_warm_up_trains_the_mixer_on_samix_i_objective():
    """Before the first clustering SAMix-C's step is SAMix-I's (same weights, same draws; the Mixer's dropout
    draws from the global RNG, seeded alike before each step)."""
    c = _algo()
    torch.manual_seed(0)
    i = build_algorithm("samix_i", model=build_model("convnet", num_classes=10, in_chans=1, width=0.25),
                        num_classes=10, generator=torch.Generator().manual_seed(0), queue_size=32)
    torch.manual_seed(5)
    out_c = c(_batch())
    torch.manual_seed(5)
    out_i = i(_batch()[:2])
    for name in ("loss_nce", "loss_mix", "loss_gen", "loss_mask"):
        assert torch.equal(out_c[name], out_i[name]), name
    assert float(out_c["loss_cluster"].detach()) == 0.0 and c.memory.features.shape[0] == 8


@pytest.mark.parametrize("gen_loss,eta", [("pl_eta", 0.5), ("pl_eta", 0.0), ("pl_ce", 0.5), ("pl_ce_nce", 0.5)])
def test_pseudo_label_objective_equals_its_formula(gen_loss, eta):
    algo = _clustered(_algo(gen_loss=gen_loss, eta=eta))
    g = torch.Generator().manual_seed(1)
    z, keys = torch.randn(8, 128, generator=g), F.normalize(torch.randn(8, 128, generator=g), dim=1)
    index, lam = torch.roll(torch.arange(8), 1), torch.full((8,), 0.3)
    pl = torch.tensor([0, 1, 2, 0, 1, 2, 2, 0])
    algo._pseudo_labels = pl
    got = algo.generation_loss(z, keys, index, lam, algo.queue.queue)["loss"]
    logits = F.normalize(z, dim=1) @ algo.cluster_head.weight.t() + algo.cluster_head.bias
    if gen_loss == "pl_eta":
        want = eta_balanced_loss(logits, pl, lam, index, eta=eta)
        if eta == 0.0:
            torch.testing.assert_close(want, pbce_loss(logits, pl, lam, index))
    else:
        want = mixed_cross_entropy(logits, pl, lam, index)
        if gen_loss == "pl_ce_nce":
            from samix.losses import cross_view_mixup_infonce
            want = want + cross_view_mixup_infonce(z, keys, index, lam, algo.queue.queue, temperature=0.2)
    torch.testing.assert_close(got, want)


def test_gradients_mixer_loss_only_the_mixer_head_loss_only_the_head():
    algo = _clustered(_algo())
    monkey = algo._backward_now
    algo._backward_now = lambda device_type: False  # keep the generation graph to inspect it
    out = algo(_batch(seed=2))
    algo._backward_now = monkey
    assert not bool((algo.memory.labels_of(torch.arange(8)) < 0).any())
    head = list(algo.cluster_head.parameters())
    mix = [p for p in algo.mix_block.parameters() if p.requires_grad]
    enc = [p for p in algo.encoder.parameters() if p.requires_grad]
    assert all(g is None for g in torch.autograd.grad(out["loss_gen"], head + enc, retain_graph=True,
                                                      allow_unused=True))
    assert any(g is not None and bool(g.abs().sum() > 0)
               for g in torch.autograd.grad(out["loss_gen"], mix, retain_graph=True, allow_unused=True))
    g_head = torch.autograd.grad(out["loss_cluster"], head + mix + enc, retain_graph=True, allow_unused=True)
    assert all(g is not None for g in g_head[:2]) and all(g is None for g in g_head[2:])
    groups = {g["name"] for g in algo.param_groups()}
    assert groups == {"encoder", "mix_block", "cluster_head"}


def test_no_label_reaches_any_loss_before_or_after_clustering():
    for clustered in (False, True):
        ref_algo = _clustered(_algo()) if clustered else _algo()
        torch.manual_seed(3)
        ref = ref_algo(_batch(seed=4))
        for labels in (torch.full((8,), -1), torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(9))):
            a = _clustered(_algo()) if clustered else _algo()
            torch.manual_seed(3)
            out = a(_batch(seed=4, labels=labels))
            for name in ("loss", "loss_nce", "loss_mix", "loss_gen", "loss_cluster"):
                assert torch.equal(out[name], ref[name]), (clustered, name)


def test_a_batch_without_indices_gets_a_sentence_and_bad_options_name_themselves():
    with pytest.raises(TypeError, match="with_index=True"):
        _algo()(_batch()[:2])
    for opt, val in (("num_clusters", 1), ("gen_loss", "nce"), ("cluster_weight", -1), ("kmeans_iters", 0)):
        with pytest.raises(ValueError, match=opt):
            _algo(**{opt: val})


# ------------------------------------------------------------------------------------------ engine
TINY = ["model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=3", "num_workers=0", "threads=1",
        "log_interval=1000", "data.train_subset=null", "data.probe_subset=null", "algorithm.queue_size=40",
        "eval_interval=1", "eval.median_last=2", "viz.every=1", "algorithm.num_clusters=4"]


def test_cpu_recipe_clusters_after_each_epoch_and_resumes_exactly(tmp_path, monkeypatch):
    from samix.engine import trainer

    fm_root = make_fashion_mnist(tmp_path / "data", n_train=80, n_test=40)

    def cfg(name, *extra):
        return load_config(REPO / "configs/fashion_mnist/samix_c.yaml",
                           TINY + [f"data.root={fm_root}", f"out_dir={tmp_path / name}", *extra])

    full = trainer.train(cfg("full"))
    assert 0 <= full["knn_top1"] <= 100
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["odc_changed"] is not None and r["odc_min_size"] >= 1 for r in rows)
    assert rows[0]["loss_cluster"] == 0.0 and rows[1]["loss_cluster"] > 0  # warm-up, then pseudo labels
    assert all(r["mask_mu_err"] is not None for r in rows)
    train_killed_in_epoch(monkeypatch, trainer, cfg("cut"), 3)
    resumed = trainer.train(cfg("cut", "resume=true"))
    wa = ckpt_mod.load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["algorithm"]
    wb = ckpt_mod.load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["algorithm"]
    assert wa.keys() == wb.keys() and "memory.labels" in wa and wa["memory.features"].shape[0] == 80
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["knn_top1"] == full["knn_top1"]


def test_samix_cp_a_mixer_exported_from_samix_c_drives_moco_frozen(tmp_path):
    """SAMix-CP (and -IP alike): ``samix export-mixer`` on an SSL run, then ``mixer.name=samix_p`` in a MoCo
    config: the MoCo run trains on the frozen Mixer's masks and never changes it."""
    from safetensors.torch import load_file

    from samix.cli import main
    from samix.engine import trainer

    fm_root = make_fashion_mnist(tmp_path / "data", n_train=80, n_test=40)
    tiny = [t for t in TINY if not t.startswith(("eval_interval", "viz.every", "epochs"))] + [
        "epochs=2", "eval_interval=2", "viz.every=0", f"data.root={fm_root}"]
    trainer.train(load_config(REPO / "configs/fashion_mnist/samix_c.yaml", tiny + [f"out_dir={tmp_path / 'c'}"]))
    mixer = tmp_path / "c.safetensors"
    assert main(["export-mixer", str(tmp_path / "c"), str(mixer)]) == 0
    moco = [t for t in tiny if "num_clusters" not in t]
    # the CPU recipe of the pre-trained pipeline (samix_ip.yaml), pointed at this SAMix-C Mixer: SAMix-CP
    s = trainer.train(load_config(REPO / "configs/fashion_mnist/samix_ip.yaml", moco + [
        f"out_dir={tmp_path / 'cp'}", f"mixer.pretrained={mixer}"]))
    assert 0 <= s["knn_top1"] <= 100
    rows = [json.loads(x) for x in (tmp_path / "cp" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss_mix"] > 0 for r in rows)
    from samix.engine.assembly import build_algorithm_from_config
    from samix.data import dataset_info

    cfg = load_config(tmp_path / "cp" / "config.yaml")
    algo = build_algorithm_from_config(cfg, dataset_info("fashion_mnist"), torch.device("cpu"),
                                       torch.Generator().manual_seed(0))
    assert type(algo).__name__ == "MoCo" and type(algo.mixer).__name__ == "SAMixP"
    frozen = algo.mixer.frozen
    assert not any(p.requires_grad for p in frozen.parameters())
    trained = {id(p) for g in algo.param_groups() for p in g["params"]}
    assert not trained & {id(p) for p in frozen.parameters()}
    file = load_file(str(mixer))
    gen = {k[len("generator."):]: v for k, v in file.items() if k.startswith("generator.")}
    for k, v in frozen.generator.state_dict().items():
        assert torch.equal(v, gen[k]), k


def test_odc_memory_under_ddp_is_the_same_on_every_process(tmp_path):
    """2 gloo processes, each updating the memory with its own images: after the all-gathered updates and a
    re-clustering every process holds the same features, labels and centroids, covering both shards."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_odc.py"
    script.write_text(f"""
import json, torch, torch.distributed as dist
from samix.algorithms.ssl.odc import ODCMemory
dist.init_process_group("gloo")
rank = dist.get_rank()
mem = ODCMemory(3, 4)
g = torch.Generator().manual_seed(100 + rank)
for step in range(3):
    idx = torch.arange(6) * 2 + rank          # rank 0: even images, rank 1: odd ones
    mem.update(idx, torch.randn(6, 4, generator=g))
mem.recluster(epoch=1)
mem.update(torch.tensor([rank]), torch.randn(1, 4, generator=g))
out = {{}}
for name in ("features", "labels", "centroids", "seen"):
    t = getattr(mem, name)
    parts = [torch.empty_like(t) for _ in range(2)]
    dist.all_gather(parts, t)
    out[name] = bool(torch.equal(parts[0], parts[1]))
out["n"] = int(mem.seen.sum())
json.dump(out, open({str(tmp_path)!r} + f"/r{{rank}}.json", "w"))
dist.destroy_process_group()
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for i in range(2):
        res = json.loads((tmp_path / f"r{i}.json").read_text())
        assert res == {"features": True, "labels": True, "centroids": True, "seen": True, "n": 12}, res
