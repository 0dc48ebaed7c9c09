"""MoCo v2 with cross-view instance mixup: the losses' mathematics, the pairing and label guarantees, the
queue, the momentum encoder, exact resume and the queue under DDP (2 gloo processes)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine_utils import make_fashion_mnist, train_killed_in_epoch
from samix.algorithms import build_algorithm
from samix.algorithms.ssl.base import derangement
from samix.algorithms.ssl.queue import NegativeQueue
from samix.engine import checkpoint as ckpt_mod
from samix.engine.config import load_config
from samix.losses import cross_view_mixup_infonce, moco_infonce
from samix.mixing import build_mixer, get_mixer_class, list_mixers
from samix.models import build_model

REPO = Path(__file__).resolve().parents[1]


def _algo(mixer=None, seed=0, **options):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    m = build_mixer(mixer, num_classes=10, generator=g) if mixer else None
    options.setdefault("queue_size", 32)
    return build_algorithm("moco", model=build_model("convnet", num_classes=10, in_chans=1, width=0.25),
                           num_classes=10, mixer=m, generator=g, **options)


def _views(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 28, 28, generator=g)
    return x, x + 0.3 * torch.randn(b, 1, 28, 28, generator=g), torch.randint(0, 10, (b,), generator=g)


# ------------------------------------------------------------------------------------------ losses
def _nce_reference(q, k, queue, t):
    q, k, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    out = []
    for i in range(q.shape[0]):
        pos = torch.exp(q[i] @ k[i] / t)
        neg = torch.exp(queue @ q[i] / t).sum()
        out.append(-torch.log(pos / (pos + neg)))
    return torch.stack(out)


def test_moco_infonce_is_one_positive_against_the_queue():
    g = torch.Generator().manual_seed(1)
    q, k, queue = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g), torch.randn(11, 7, generator=g)
    torch.testing.assert_close(moco_infonce(q, k, queue, temperature=0.2),
                               _nce_reference(q, k, queue, 0.2).mean())
    torch.testing.assert_close(moco_infonce(q, k, queue, temperature=0.07, reduction="none"),
                               _nce_reference(q, k, queue, 0.07))


def test_mixup_infonce_with_lam_one_is_plain_infonce_and_lam_zero_targets_the_partner():
    g = torch.Generator().manual_seed(2)
    z, k, queue = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.randn(12, 8, generator=g)
    index = derangement(6, g)
    torch.testing.assert_close(cross_view_mixup_infonce(z, k, index, 1.0, queue), moco_infonce(z, k, queue))
    torch.testing.assert_close(cross_view_mixup_infonce(z, k, index, 0.0, queue), moco_infonce(z, k[index], queue))
    lam = torch.rand(6, generator=g)
    want = lam * _nce_reference(z, k, queue, 0.2) + (1 - lam) * _nce_reference(z, k[index], queue, 0.2)
    torch.testing.assert_close(cross_view_mixup_infonce(z, k, index, lam, queue, reduction="none"), want)


# ------------------------------------------------------------------------------------------ pairing
@pytest.mark.parametrize("b", [2, 3, 4, 7, 64])
def test_derangement_never_pairs_a_sample_with_itself(b):
    g = torch.Generator().manual_seed(b)
    seen = set()
    for _ in range(200):
        idx = derangement(b, g)
        assert sorted(idx.tolist()) == list(range(b))  # a permutation
        assert not (idx == torch.arange(b)).any()  # without a fixed point
        seen.add(tuple(idx.tolist()))
    assert len(seen) == 1 if b == 2 else len(seen) > 1  # b = 2 has one derangement; otherwise they vary


def test_a_batch_of_one_cannot_be_mixed():
    with pytest.raises(ValueError, match="batch_size"):
        derangement(1)


# every policy that reads the images alone (a label-guided one, puzzlemix or transmix, is refused: their tests)
@pytest.mark.parametrize("policy", [n for n in list_mixers() if n != "samix_p" and not get_mixer_class(n).requires
                                    and not get_mixer_class(n).relabels])
def test_every_policy_mixes_with_the_derangement_and_scores_both_keys(policy, monkeypatch):
    """The index handed to the policy is the one that selects the partner's key in the loss."""
    algo = _algo(policy)
    seen = {}
    orig = algo.mixer.mix

    def spy(images, index=None):
        r = orig(images, index=index)
        seen["index"], seen["lam"] = index, r.lam
        return r

    monkeypatch.setattr(algo.mixer, "mix", spy)
    orig_loss = cross_view_mixup_infonce
    captured = {}

    def loss_spy(z_m, keys, index, lam, queue, **kw):
        captured.update(index=index, lam=lam, keys=keys)
        return orig_loss(z_m, keys, index, lam, queue, **kw)

    import samix.algorithms.ssl.moco as moco_mod

    monkeypatch.setattr(moco_mod, "cross_view_mixup_infonce", loss_spy)
    xq, xk, y = _views()
    out = algo(((xq, xk), y))
    assert torch.isfinite(out["loss"]) and "loss_mix" in out
    assert not (seen["index"] == torch.arange(8)).any()
    assert captured["index"] is seen["index"] and captured["lam"] is seen["lam"]


# ------------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize("policy", [None, "mixup", "cutmix"])
def test_no_label_reaches_the_loss(policy):
    xq, xk, y = _views()
    a, b = _algo(policy), _algo(policy)
    la = a(((xq, xk), y))["loss"]
    lb = b(((xq, xk), torch.full_like(y, -1)))["loss"]
    assert torch.equal(la, lb)
    c = _algo(policy)
    assert torch.equal(la, c(((xq, xk), y[torch.randperm(8)]))["loss"])


# ------------------------------------------------------------------------------------------ gradients, EMA
def test_gradients_reach_only_the_query_side_and_the_key_encoder_follows_by_ema():
    algo = _algo("mixup", momentum=0.9)
    xq, xk, y = _views()
    out = algo(((xq, xk), y))
    out["loss"].backward()
    assert all(p.grad is not None for p in algo.encoder.parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in algo.model.get_classifier().parameters())  # unused: frozen
    assert all(p.grad is None and not p.requires_grad for p in algo.key_encoder.parameters())
    before = [p.detach().clone() for p in algo.key_encoder.parameters()]
    with torch.no_grad():
        for p in algo.encoder.parameters():
            p.add_(1.0)
    algo.on_train_step_end()
    for t, t0, s in zip(algo.key_encoder.parameters(), before, algo.encoder.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)
    groups = algo.param_groups()
    trainable = {id(p) for g in groups for p in g["params"]}
    assert not trainable & {id(p) for p in algo.key_encoder.parameters()}


def test_cross_view_false_scores_against_the_same_views_keys(monkeypatch):
    algo = _algo("mixup", cross_view=False)
    calls = []
    orig = algo.keys

    def spy(x):
        calls.append(x)
        return orig(x)

    monkeypatch.setattr(algo, "keys", spy)
    xq, xk, y = _views()
    algo(((xq, xk), y))
    assert len(calls) == 2 and calls[0] is xk and calls[1] is xq


# ------------------------------------------------------------------------------------------ queue
def test_queue_is_fifo_and_wraps():
    q = NegativeQueue(6, 3)
    first = torch.eye(3)[:2]
    q.enqueue(first)
    torch.testing.assert_close(q.queue[:2], first)
    assert int(q.ptr) == 2
    q.enqueue(torch.ones(2, 3))
    q.enqueue(torch.full((2, 3), 2.0))
    assert int(q.ptr) == 0
    q.enqueue(torch.full((2, 3), 3.0))  # overwrites the oldest entries first
    assert torch.equal(q.queue[:2], torch.full((2, 3), 3.0)) and torch.equal(q.queue[2:4], torch.ones(2, 3))


def test_queue_size_not_a_multiple_of_the_batch_is_a_clear_error():
    algo = _algo(queue_size=30)
    xq, xk, y = _views()
    with pytest.raises(ValueError, match="queue_size"):
        algo(((xq, xk), y))


def test_negatives_are_the_queue_before_this_steps_keys(monkeypatch):
    algo = _algo()
    snapshot = algo.queue.queue.clone()
    import samix.algorithms.ssl.moco as moco_mod

    seen = {}
    orig = moco_mod.moco_infonce

    def spy(q, k, queue, **kw):
        seen["queue"] = queue.clone()
        return orig(q, k, queue, **kw)

    monkeypatch.setattr(moco_mod, "moco_infonce", spy)
    xq, xk, y = _views()
    algo(((xq, xk), y))
    assert torch.equal(seen["queue"], snapshot)
    assert not torch.equal(algo.queue.queue, snapshot) and int(algo.queue.ptr) == 8


def test_bad_options_name_themselves():
    with pytest.raises(ValueError, match="temperature"):
        _algo(temperature=0.0)
    with pytest.raises(TypeError, match="cross_view"):
        _algo(cross_view="yes")
    with pytest.raises(ValueError, match="allowed options"):
        _algo(nosuch=1)


# ------------------------------------------------------------------------------------------ engine
TINY = ["model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=3", "num_workers=0", "threads=1",
        "log_interval=1000", "data.train_subset=null", "data.probe_subset=null", "algorithm.queue_size=40",
        "eval_interval=1", "eval.median_last=2"]


@pytest.fixture()
def fm_root(tmp_path):
    return make_fashion_mnist(tmp_path / "data", n_train=80, n_test=40)


def _weights(run: Path):
    return ckpt_mod.load_checkpoint(run / "checkpoints" / "last.pt")["algorithm"]


def test_moco_mixup_run_writes_knn_metrics_and_resumes_exactly(tmp_path, fm_root, monkeypatch):
    from samix.engine import trainer

    def cfg(name, *extra):
        return load_config(REPO / "configs/fashion_mnist/mocov2_mixup.yaml",
                           TINY + [f"data.root={fm_root}", f"out_dir={tmp_path / name}", *extra])

    full = trainer.train(cfg("full"))
    assert 0 <= full["knn_top1"] <= 100 and full["knn_top1_last"] == full["knn_top1"]
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["knn_top1"] is not None and "loss_mix" in r for r in rows)

    train_killed_in_epoch(monkeypatch, trainer, cfg("cut"), 3)
    resumed = trainer.train(cfg("cut", "resume=true"))
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert wa.keys() == wb.keys() and any(k.startswith("queue.") for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["knn_top1"] == full["knn_top1"]


@pytest.mark.slow
def test_queue_under_ddp_holds_every_process_keys(tmp_path, fm_root):
    """2 gloo processes: the queue (all-gathered keys, rank order) is identical on both ranks and advances
    by the global batch; shuffle-BN runs."""
    script = tmp_path / "ddp_queue.py"
    script.write_text(f"""
import json, sys, torch, torch.distributed as dist
sys.path.insert(0, {str(REPO / 'tests')!r})
from samix.algorithms import build_algorithm
from samix.models import build_model
from samix.mixing import build_mixer
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
algo = build_algorithm("moco", model=build_model("convnet", num_classes=10, in_chans=1, width=0.25), num_classes=10,
                       mixer=build_mixer("mixup", num_classes=10, generator=torch.Generator().manual_seed(rank)),
                       generator=g, queue_size=16)
ddp = torch.nn.parallel.DistributedDataParallel(algo)
x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(10 + rank))
out = ddp(((x[:4], x[4:]), torch.zeros(4, dtype=torch.long)))
out["loss"].backward()
q = algo.queue.queue
parts = [torch.empty_like(q) for _ in range(2)]
dist.all_gather(parts, q)
with torch.no_grad():
    k = torch.nn.functional.normalize(algo.key_encoder(x[4:]), dim=1)
json.dump({{"same": bool(torch.equal(parts[0], parts[1])), "ptr": int(algo.queue.ptr),
           "loss": float(out["loss"])}}, open({str(tmp_path)!r} + f"/r{{rank}}.json", "w"))
dist.destroy_process_group()
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    assert all(x["same"] for x in res) and all(x["ptr"] == 8 for x in res)
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in res)


def test_stl10_row_pretrains_on_train_plus_unlabeled_and_probes_on_train(tmp_path):
    """The STL-10 protocol of Table 5 on files in STL-10's real binary format: pre-training reads
    train+unlabeled (unlabeled images carry label -1, never read), the kNN monitor the labeled train split."""
    from fake_datasets import write_stl10
    from samix.engine.assembly import build_data
    from samix.engine.trainer import train

    write_stl10(tmp_path / "data", n_train=10, n_test=6, n_unlabeled=10)
    overrides = [f"data.root={tmp_path / 'data'}", "model.name=convnet", "model.width=0.25", "batch_size=4",
                 "epochs=1", "algorithm.queue_size=8", "data.image_size=32", "threads=1", "log_interval=1000",
                 f"out_dir={tmp_path / 'run'}", "num_workers=0", "eval.median_last=1"]
    cfg = load_config(REPO / "configs/stl10/mocov2_mixup_r18_ep400.yaml", overrides)
    data = build_data(cfg, 0, 1)
    assert len(data.train_loader.dataset) == 20 and len(data.memory_loader().dataset) == 10
    labels = {int(data.train_loader.dataset.dataset[i][1]) for i in range(20)}
    assert -1 in labels  # the unlabeled images are in the pre-training set
    summary = train(cfg)
    assert 0 <= summary["knn_top1"] <= 100
