"""Inter-Intra (samix.txt A.5.2 (a)): the pair's policy follows its pseudo labels (Mixup within a cluster,
CutMix between clusters), the reported lambda is the realised share, no label reaches the loss, the ODC
memory fills and clusters in an engine run, and bad options get a sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine_utils import make_fashion_mnist, train_killed_in_epoch
from samix.algorithms import build_algorithm
from samix.algorithms.ssl.base import derangement
from samix.engine import checkpoint as ckpt_mod
from samix.engine.config import load_config
from samix.mixing import build_mixer
from samix.models import build_model

REPO = Path(__file__).resolve().parents[1]


def _algo(seed=0, **kw):
    torch.manual_seed(seed)
    model = build_model("convnet", num_classes=10, in_chans=1, width=0.25)
    opts = dict(queue_size=40, num_clusters=4)
    opts.update(kw)
    return build_algorithm("interintra", model=model, num_classes=10,
                           generator=torch.Generator().manual_seed(seed), **opts)


def _batch(b=20, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    return ((x, x + 0.1 * torch.randn(x.shape, generator=g)), y if labels is None else labels, torch.arange(b))


def _is_linear_blend(x, xm, index, lam):
    want = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[index]
    return torch.isclose(xm, want, atol=1e-5).flatten(1).all(1)


def _box_share(x, xm, index):
    """Per sample: whether every pixel comes from x_i or x_index[i], and the share from x_i."""
    own = (xm == x).flatten(1)
    other = (xm == x[index]).flatten(1)
    return (own | other).all(1), own.float().mean(1)


def test_pairs_of_one_cluster_get_mixup_and_pairs_of_two_clusters_get_cutmix():
    algo = _algo()
    x = torch.randn(16, 1, 28, 28)
    index = derangement(16, torch.Generator().manual_seed(3))
    pl = torch.tensor([0, 1] * 8)  # derangement partners: some of one cluster, some of the other
    xm, lam, same = algo.mix_pairs(x, index, pl)
    assert torch.equal(same, pl == pl[index]) and 0 < int(same.sum()) < 16
    blend = _is_linear_blend(x, xm, index, lam)
    pasted, share = _box_share(x, xm, index)
    # intra-cluster: a pixel-wise blend with the reported lambda (x and its partner differ everywhere)
    assert bool(blend[same].all())
    # inter-cluster: every pixel from one source, and the reported lambda is the share of x_i's pixels
    assert bool(pasted[~same].all())
    assert torch.allclose(share[~same], lam[~same], atol=1e-6)
    # one lambda per policy (batch mode): all intra samples share one, all inter samples another
    assert lam[same].unique().numel() == 1 and lam[~same].unique().numel() == 1


def test_before_the_first_clustering_every_pair_is_inter_cluster_and_default_alphas_are_the_papers():
    algo = _algo()
    assert (algo.inter_policy.alpha, algo.intra_policy.alpha) == (2.0, 0.2)
    assert type(algo.inter_policy).__name__.lower().startswith("cutmix")
    assert type(algo.intra_policy).__name__.lower().startswith("mixup")
    x = torch.randn(8, 1, 28, 28)
    index = derangement(8, torch.Generator().manual_seed(0))
    xm, lam, same = algo.mix_pairs(x, index, None)
    assert not bool(same.any())
    pasted, share = _box_share(x, xm, index)
    assert bool(pasted.all()) and torch.allclose(share, lam, atol=1e-6)


def test_policies_draw_their_lambda_from_their_own_beta():
    """Over many draws the intra lambdas follow Beta(0.2, 0.2) (mostly near 0 or 1) and the inter ones
    Beta(2, 2) (mostly in the middle): the alphas reach the right policy."""
    algo = _algo()
    x = torch.randn(4, 1, 28, 28)
    index = torch.tensor([1, 0, 3, 2])
    lam_intra, lam_inter = [], []
    for _ in range(300):
        _, lam, same = algo.mix_pairs(x, index, torch.tensor([0, 0, 1, 2]))
        lam_intra.append(float(lam[0])), lam_inter.append(float(lam[2]))
    mid = lambda v: sum(0.25 < t < 0.75 for t in v) / len(v)  # noqa: E731
    # P(0.25 < lam < 0.75): Beta(2, 2) 0.69, Beta(0.2, 0.2) about 0.13; CutMix's box clipping moves it a little
    assert mid(lam_inter) > 0.5 and mid(lam_intra) < 0.25


def test_no_label_reaches_the_loss_before_or_after_clustering():
    for clustered in (False, True):
        outs = []
        for labels in (None, torch.full((20,), -1, dtype=torch.long)):
            algo = _algo()
            if clustered:
                for s in range(3):
                    algo(_batch(seed=10 + s))
                algo.on_epoch_end(0)
                assert algo.memory.is_clustered
            outs.append(algo(_batch(labels=labels)))
        assert torch.equal(outs[0]["loss"], outs[1]["loss"]), clustered


def test_memory_fills_with_keys_clusters_after_the_epoch_and_drives_the_intra_share():
    algo = _algo(num_clusters=2)
    out = algo(_batch())
    assert float(out["intra_share"]) == 0.0  # nothing clustered: every pair inter-cluster
    assert algo.memory.features.shape[0] == 20 and bool(algo.memory.seen.all())
    logs = algo.on_epoch_end(0)
    assert logs["odc_min_size"] >= 2
    out = algo(_batch())
    pl = algo.memory.labels
    # with 2 clusters some derangement partners share a cluster: the share is that of the step's pairing
    assert 0.0 < float(out["intra_share"]) < 1.0 and pl.min() >= 0
    with torch.no_grad():  # evaluation does not write the memory
        before = algo.memory.features.clone()
        algo(_batch(seed=5))
        assert torch.equal(before, algo.memory.features)


def test_bad_options_get_a_sentence():
    with pytest.raises(ValueError, match="remove mixer.name"):
        build_algorithm("interintra", model=build_model("convnet", num_classes=10, in_chans=1, width=0.25),
                        num_classes=10, mixer=build_mixer("mixup"), queue_size=40)
    with pytest.raises(ValueError, match="inter"):
        _algo(inter="nope")
    with pytest.raises(ValueError, match="needs the model"):
        _algo(intra="manifoldmix")
    with pytest.raises(ValueError, match="intra_alpha"):
        _algo(intra_alpha=0)
    with pytest.raises(ValueError, match="num_clusters"):
        _algo(num_clusters=1)
    with pytest.raises(TypeError, match="with_index=True"):
        _algo()(_batch()[:2])


TINY = ["model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=3", "num_workers=0", "threads=1",
        "log_interval=1000", "data.train_subset=null", "data.probe_subset=null", "algorithm.queue_size=40",
        "eval_interval=1", "eval.median_last=2", "viz.every=0", "algorithm.num_clusters=4"]


def test_cpu_recipe_clusters_and_resumes_exactly(tmp_path, monkeypatch):
    from samix.engine import trainer

    fm_root = make_fashion_mnist(tmp_path / "data", n_train=80, n_test=40)

    def cfg(name, *extra):
        return load_config(REPO / "configs/fashion_mnist/mocov2_interintra.yaml",
                           TINY + [f"data.root={fm_root}", f"out_dir={tmp_path / name}", *extra])

    full = trainer.train(cfg("full"))
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["intra_share"] == 0.0 and all(r["odc_min_size"] >= 1 for r in rows)
    assert any(r["intra_share"] > 0 for r in rows[1:])  # pseudo labels from epoch 2 on
    train_killed_in_epoch(monkeypatch, trainer, cfg("cut"), 3)
    resumed = trainer.train(cfg("cut", "resume=true"))
    wa = ckpt_mod.load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["algorithm"]
    wb = ckpt_mod.load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["algorithm"]
    assert wa.keys() == wb.keys() and "memory.labels" in wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["knn_top1"] == full["knn_top1"]
