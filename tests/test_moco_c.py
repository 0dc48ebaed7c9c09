"""MoCo v2 (C) (samix.txt A.5.2 (b), "MoCo.V2(C) PuzzleMix"): a model-guided policy in contrastive learning
reads a cluster classifier on ODC pseudo labels. The saliency is the input gradient of that classifier's CE
against the pseudo labels (uniform rows before the first clustering), it leaves the online network's
gradients and every BatchNorm statistic alone, no dataset label reaches the loss, the head trains on its CE,
and policies the cross-view loss cannot score get a sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine_utils import make_fashion_mnist, train_killed_in_epoch
from samix.algorithms import build_algorithm
from samix.engine import checkpoint as ckpt_mod
from samix.engine.config import load_config
from samix.mixing import build_mixer
from samix.mixing.signals import input_saliency
from samix.models import build_model

REPO = Path(__file__).resolve().parents[1]
FM_PUZZLE = dict(alpha=1.0, neigh_size=4, t_size=4, n_labels=3)


def _algo(policy="puzzlemix", seed=0, mixer_kw=None, **kw):
    torch.manual_seed(seed)
    model = build_model("convnet", num_classes=10, in_chans=1, width=0.25)
    g = torch.Generator().manual_seed(seed)
    mixer = build_mixer(policy, num_classes=10, generator=g, **(mixer_kw if mixer_kw is not None else FM_PUZZLE))
    opts = dict(queue_size=40, num_clusters=4)
    opts.update(kw)
    return build_algorithm("moco_c", model=model, num_classes=10, mixer=mixer, generator=g, **opts)


def _batch(b=20, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    return ((x, x + 0.1 * torch.randn(x.shape, generator=g)), y if labels is None else labels, torch.arange(b))


def _cluster(algo):
    for s in range(3):
        algo(_batch(seed=10 + s))
    algo.on_epoch_end(0)
    assert algo.memory.is_clustered


def _spy_saliency(algo, monkeypatch):
    seen = {}
    orig = algo.mixer.mix

    def mix(images, index=None, **signals):
        seen.update(signals, images=images.detach().clone(), index=index)
        return orig(images, index, **signals)

    monkeypatch.setattr(algo.mixer, "mix", mix)
    return seen


@pytest.mark.parametrize("clustered", [False, True])
def test_the_saliency_is_the_cluster_classifiers_input_gradient_on_the_pseudo_labels(clustered, monkeypatch):
    algo = _algo()
    if clustered:
        _cluster(algo)
    batch = _batch()
    pl = algo.pseudo_labels(batch)
    assert (pl is not None) == clustered
    seen = _spy_saliency(algo, monkeypatch)
    algo(batch)
    labels = pl if clustered else torch.full((20, 4), 0.25)
    want = input_saliency(algo.cluster_classifier(), batch[0][0], labels)
    assert torch.allclose(seen["saliency"], want, atol=1e-6)
    # the uniform rows and the pseudo labels give different saliencies: the labels are what it reads
    other = input_saliency(algo.cluster_classifier(), batch[0][0], torch.full((20, 4), 0.25) if clustered
                           else torch.zeros(20, dtype=torch.long))
    assert not torch.allclose(seen["saliency"], other, atol=1e-6)
    assert seen["index"] is not None and not bool((seen["index"] == torch.arange(20)).any())


def test_the_saliency_pass_leaves_the_online_gradients_and_batchnorm_statistics_alone():
    algo = _algo()
    _cluster(algo)
    x = _batch()[0][0]
    stats = {k: v.clone() for k, v in algo.state_dict().items() if "running" in k or "num_batches" in k}
    mode = algo.key_encoder.training
    labels = algo.guide_labels(20, x.device)
    algo.mixer.mix_with_model(algo.cluster_classifier(), x, labels, torch.roll(torch.arange(20), 1))
    assert all(p.grad is None for p in algo.parameters())
    after = algo.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in stats.items())
    assert algo.key_encoder.training == mode


def test_no_label_reaches_the_loss_before_or_after_clustering():
    for clustered in (False, True):
        outs = []
        for labels in (None, torch.full((20,), -1, dtype=torch.long)):
            algo = _algo()
            if clustered:
                _cluster(algo)
            outs.append(algo(_batch(labels=labels)))
        assert torch.equal(outs[0]["loss"], outs[1]["loss"]), clustered


def test_the_head_trains_on_its_pseudo_label_ce_only_after_clustering():
    algo = _algo()
    out = algo(_batch())
    assert float(out["loss_cluster"].detach()) == 0.0
    _cluster(algo)
    out = algo(_batch())
    assert float(out["loss_cluster"].detach()) > 0
    out["loss_cluster"].backward()
    assert algo.cluster_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in algo.encoder.parameters())  # the head reads detached keys


def test_attentivemix_reads_the_momentum_backbones_last_map(monkeypatch):
    algo = _algo("attentivemix", mixer_kw={"top_k": 6})
    seen = _spy_saliency(algo, monkeypatch)
    batch = _batch()
    out = algo(batch)
    assert torch.isfinite(out["loss_mix"])
    bb = algo.key_encoder.backbone
    bb.eval()
    with torch.no_grad():
        want = bb.features(batch[0][0], bb.num_stages).float().mean(1)
    assert torch.allclose(seen["activation"], want, atol=1e-6)


def test_policies_the_cross_view_loss_cannot_score_get_a_sentence():
    model = build_model("convnet", num_classes=10, in_chans=1, width=0.25)
    with pytest.raises(ValueError, match="algorithm.name=moco_c"):
        build_algorithm("moco", model=model, num_classes=10, mixer=build_mixer("puzzlemix", num_classes=10),
                        queue_size=40)
    with pytest.raises(ValueError, match="cam; algorithm MoCoC gives a guided policy saliency, activation only"):
        _algo("snapmix", mixer_kw={})
    with pytest.raises(ValueError, match="set mixer.name"):
        build_algorithm("moco_c", model=model, num_classes=10, queue_size=40)
    with pytest.raises(ValueError, match="clean_lam=0"):
        _algo(mixer_kw=dict(FM_PUZZLE, clean_lam=1.0))
    with pytest.raises(ValueError, match="more than two inputs"):
        _algo("comixup", mixer_kw={})(_batch())
    with pytest.raises(ValueError, match="cluster_weight"):
        _algo(cluster_weight=-1)


TINY = ["model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=3", "num_workers=0", "threads=1",
        "log_interval=1000", "data.train_subset=null", "data.probe_subset=null", "algorithm.queue_size=40",
        "eval_interval=1", "eval.median_last=2", "viz.every=0", "algorithm.num_clusters=4"]


def test_cpu_recipe_clusters_and_resumes_exactly(tmp_path, monkeypatch):
    from samix.engine import trainer

    fm_root = make_fashion_mnist(tmp_path / "data", n_train=80, n_test=40)

    def cfg(name, *extra):
        return load_config(REPO / "configs/fashion_mnist/mocov2_puzzlemix_c.yaml",
                           TINY + [f"data.root={fm_root}", f"out_dir={tmp_path / name}", *extra])

    full = trainer.train(cfg("full"))
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss_cluster"] == 0.0 and rows[-1]["loss_cluster"] > 0  # pseudo labels from epoch 2 on
    train_killed_in_epoch(monkeypatch, trainer, cfg("cut"), 3)
    resumed = trainer.train(cfg("cut", "resume=true"))
    wa = ckpt_mod.load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["algorithm"]
    wb = ckpt_mod.load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["algorithm"]
    assert wa.keys() == wb.keys() and "memory.labels" in wa and "cluster_head.weight" in wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["knn_top1"] == full["knn_top1"]
