"""SAMix-I (samix.txt Sec. 3.1, Eq. 7-8): the eta-balanced instance loss against its formula, which encoder
and view feed the Mixer, where the gradients go, the pairing and label guarantees, one engine run with
masks and export, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import samix.algorithms.ssl.samix_i as samix_i_mod
from engine_utils import make_fashion_mnist, train_killed_in_epoch
from samix.algorithms import build_algorithm
from samix.algorithms.ssl.samix_i import eta_balanced_instance_loss
from samix.engine import checkpoint as ckpt_mod
from samix.engine.config import load_config
from samix.mixing import build_mixer
from samix.models import build_model

REPO = Path(__file__).resolve().parents[1]


def _algo(seed=0, **options):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    options.setdefault("queue_size", 32)
    return build_algorithm("samix_i", model=build_model("convnet", num_classes=10, in_chans=1, width=0.25),
                           num_classes=10, generator=g, **options)


def _views(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 28, 28, generator=g)
    return x, x + 0.3 * torch.randn(b, 1, 28, 28, generator=g), torch.randint(0, 10, (b,), generator=g)


# ------------------------------------------------------------------------------------------ the loss
def _reference(z, k, index, lam, queue, eta, t):
    """l+ + eta l-, written out sample by sample (Eq. 7, 8)."""
    z, k, queue = F.normalize(z, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    bce, nce = [], []
    for i in range(z.shape[0]):
        j = int(index[i])
        ei, ej = torch.exp(z[i] @ k[i] / t), torch.exp(z[i] @ k[j] / t)
        p_i, p_j = ei / (ei + ej), ej / (ei + ej)
        bce.append(-lam[i] * torch.log(p_i) - (1 - lam[i]) * torch.log(p_j))
        neg = torch.exp(queue @ z[i] / t).sum()
        nce.append(-lam[i] * torch.log(ei / (ei + neg)) - (1 - lam[i]) * torch.log(ej / (ej + neg)))
    bce, nce = torch.stack(bce).mean(), torch.stack(nce).mean()
    return bce + eta * nce, bce, nce


@pytest.mark.parametrize("eta", [0.0, 0.5, 2.0])
def test_eta_balanced_instance_loss_is_bce_plus_eta_infonce(eta):
    g = torch.Generator().manual_seed(3)
    z, k = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    queue = torch.randn(10, 5, generator=g, dtype=torch.float64)
    index = torch.tensor([3, 0, 5, 1, 2, 4])
    lam = torch.rand(6, generator=g, dtype=torch.float64)
    got = eta_balanced_instance_loss(z, k, index, lam, queue, eta=eta, temperature=0.2)
    want, bce, nce = _reference(z, k, index, lam, queue, eta, 0.2)
    torch.testing.assert_close(got["loss"], want)
    torch.testing.assert_close(got["bce"], bce)
    torch.testing.assert_close(got["nce"], nce)
    if eta == 0.0:
        torch.testing.assert_close(got["loss"], bce)


@pytest.mark.parametrize("which", ["eta", "bce", "nce"])
def test_table_9s_instance_objectives_are_the_terms_they_name(which):
    """algorithm.instance_loss: l+ + eta l- (default), l+ alone, l- alone, on the Mixer's embeddings."""
    algo = _algo(instance_loss=which, eta=0.5)
    g = torch.Generator().manual_seed(4)
    z, k = torch.randn(6, 128, generator=g), torch.randn(6, 128, generator=g)
    neg = torch.randn(32, 128, generator=g)
    index, lam = torch.tensor([3, 0, 5, 1, 2, 4]), torch.rand(6, generator=g)
    got = algo.generation_loss(z, k, index, lam, neg)
    ref = eta_balanced_instance_loss(z, k, index, lam, neg, eta=0.5, temperature=0.2)
    want = {"eta": ref["loss"], "bce": ref["bce"], "nce": ref["nce"]}[which]
    torch.testing.assert_close(got["loss"], want)
    with pytest.raises(ValueError, match="instance_loss"):
        _algo(instance_loss="ce")


def test_eta_must_be_non_negative():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="eta"):
        eta_balanced_instance_loss(z, z, torch.tensor([1, 2, 3, 0]), 0.5, z, eta=-0.1)


# ------------------------------------------------------------------------------------------ views, encoders
def test_mixer_reads_the_momentum_encoders_stage_l_features_of_the_query_view(monkeypatch):
    algo = _algo()
    xq, xk, y = _views()
    seen = {}
    orig_features, orig_keys, orig_generate = algo.momentum_backbone.features, algo.keys, algo.generate

    def features(x, stage):
        seen.setdefault("features", []).append((x, stage))
        return orig_features(x, stage)

    def keys(x):
        seen.setdefault("keys", []).append(x)
        return orig_keys(x)

    def generate(z, lam, index, out_size):
        seen["gen"] = (z, lam, index)
        return orig_generate(z, lam, index, out_size)

    monkeypatch.setattr(algo.momentum_backbone, "features", features)
    monkeypatch.setattr(algo, "keys", keys)
    monkeypatch.setattr(algo, "generate", generate)
    algo(((xq, xk), y))
    at_l = [x for x, stage in seen["features"] if stage == 3]  # the others: whole passes (keys, x_g) at stage 4
    assert len(at_l) == 1 and at_l[0] is xq
    assert len(seen["keys"]) == 1 and seen["keys"][0] is xk  # the targets: the key view (cross-view)
    assert algo.momentum_backbone is algo.key_encoder.backbone
    assert algo.mask_generator() == (algo.mix_block, algo.key_encoder.backbone, 3)
    z = seen["gen"][0]
    assert not z.requires_grad and z.shape == (16, 32, 3, 3)  # both halves, convnet stage 3 at 28 px
    with torch.no_grad():
        torch.testing.assert_close(z[:8], algo.key_encoder.backbone.features(xq, 3))


# ------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("early", [True, False])
def test_generation_loss_reaches_only_the_mixer_and_the_online_loss_never_the_mixer(monkeypatch, early):
    algo = _algo()
    if not early:
        monkeypatch.setattr(algo, "_backward_now", lambda device_type: False)
    assert not any(p.requires_grad for p in algo.key_encoder.parameters())  # frozen
    xq, xk, y = _views()
    out = algo(((xq, xk), y))
    enc = [p for p in algo.encoder.parameters() if p.requires_grad]
    mix = [p for p in algo.mix_block.parameters() if p.requires_grad]
    gen = out["loss_gen"] + out["loss_mask"]
    g_enc = torch.autograd.grad(gen, enc, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in g_enc)
    g_mix = torch.autograd.grad(out["loss_gen"], mix, retain_graph=True, allow_unused=True)
    assert all(g is not None for g in g_mix)
    assert sum(bool(g.abs().sum() > 0) for g in g_mix) >= len(mix) - 1
    online = out["loss_nce"] + out["loss_mix"]
    assert all(g is None for g in torch.autograd.grad(online, mix, retain_graph=True, allow_unused=True))
    g_on = torch.autograd.grad(online, enc, allow_unused=True)
    assert all(g is not None for g in g_on)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in algo.param_groups()}
    assert groups["mix_block"] == {id(p) for p in mix} and groups["encoder"] == {id(p) for p in enc}
    assert not (groups["encoder"] | groups["mix_block"]) & {id(p) for p in algo.key_encoder.parameters()}


def test_early_and_plain_backward_give_the_same_mixer_gradients(monkeypatch):
    grads = []
    for early in (True, False):
        algo = _algo()
        if not early:
            monkeypatch.setattr(algo, "_backward_now", lambda device_type: False)
        xq, xk, y = _views()
        algo(((xq, xk), y))["loss"].backward()
        grads.append([p.grad.clone() for p in algo.mix_block.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------ pairing
def test_both_pairings_are_derangements_and_the_losses_use_the_masks_pairing(monkeypatch):
    algo = _algo()
    seen = {}
    orig_generate = algo.generate

    def generate(z, lam, index, out_size):
        seen["index"], seen["lam"] = index.clone(), lam.clone()
        return orig_generate(z, lam, index, out_size)

    monkeypatch.setattr(algo, "generate", generate)
    calls = []
    orig_eta, orig_nce = samix_i_mod.eta_balanced_instance_loss, samix_i_mod.cross_view_mixup_infonce

    def eta_spy(z_m, keys, index, lam, queue, **kw):
        calls.append(("gen", index, lam))
        return orig_eta(z_m, keys, index, lam, queue, **kw)

    def nce_spy(z_m, keys, index, lam, queue, **kw):
        calls.append(("nce", index, lam))
        return orig_nce(z_m, keys, index, lam, queue, **kw)

    monkeypatch.setattr(samix_i_mod, "eta_balanced_instance_loss", eta_spy)
    monkeypatch.setattr(samix_i_mod, "cross_view_mixup_infonce", nce_spy)
    xq, xk, y = _views()
    algo(((xq, xk), y))
    idx_s, idx_g = seen["index"][:8], seen["index"][8:] - 8
    for idx in (idx_s, idx_g):
        assert sorted(idx.tolist()) == list(range(8)) and not (idx == torch.arange(8)).any()
    gen = [c for c in calls if c[0] == "gen"]
    assert len(gen) == 1 and torch.equal(gen[0][1], idx_g) and torch.equal(gen[0][2], seen["lam"][8:])
    # the online term: the mixed-infoNCE call made outside the generation loss, with the first half's pairing
    online = [c for c in calls if c[0] == "nce" and torch.equal(c[1], idx_s)]
    assert online and torch.equal(online[-1][2], seen["lam"][:8])


def _permuted(fn):
    def wrapper(z_m, keys, index, lam, queue, **kw):
        return fn(z_m, keys, index[index], lam, queue, **kw)  # another derangement for a single 8-cycle
    return wrapper


@pytest.mark.parametrize("target", ["eta_balanced_instance_loss", "cross_view_mixup_infonce"])
def test_permuting_the_pairing_after_the_masks_are_made_changes_the_loss(monkeypatch, target):
    xq, xk, y = _views()
    ref = _algo()(((xq, xk), y))
    monkeypatch.setattr(samix_i_mod, target, _permuted(getattr(samix_i_mod, target)))
    out = _algo()(((xq, xk), y))
    assert torch.equal(out["loss_nce"], ref["loss_nce"])  # untouched: no pairing in it
    assert not torch.equal(out["loss"], ref["loss"])
    if target == "eta_balanced_instance_loss":  # the Mixer's targets
        assert not torch.equal(out["gen_bce"], ref["gen_bce"]) and torch.equal(out["loss_mix"], ref["loss_mix"])
    else:  # the online network's (and the l- term inside the Mixer's)
        assert not torch.equal(out["loss_mix"], ref["loss_mix"]) and torch.equal(out["gen_bce"], ref["gen_bce"])
        assert not torch.equal(out["gen_nce"], ref["gen_nce"])


def test_index_squared_of_a_single_cycle_is_another_derangement():
    idx = samix_i_mod.derangement(8, torch.Generator().manual_seed(0))
    sq = idx[idx]
    assert not (sq == torch.arange(8)).any() and not torch.equal(sq, idx)


# ------------------------------------------------------------------------------------------ labels
def test_no_label_reaches_any_loss():
    xq, xk, y = _views()
    ref = _algo()(((xq, xk), y))
    for labels in (torch.full_like(y, -1), y[torch.randperm(8, generator=torch.Generator().manual_seed(5))]):
        out = _algo()(((xq, xk), labels))
        for name in ("loss", "loss_nce", "loss_mix", "loss_gen", "loss_mask"):
            assert torch.equal(out[name], ref[name]), name


# ------------------------------------------------------------------------------------------ options, masks
def test_bad_options_name_themselves():
    with pytest.raises(ValueError, match="stage"):
        _algo(stage=5)
    with pytest.raises(ValueError, match="eta"):
        _algo(eta=-1.0)
    with pytest.raises(TypeError, match="variance_loss"):
        _algo(variance_loss="yes")
    with pytest.raises(ValueError, match="mask_loss"):
        _algo(mask_loss="l3")
    with pytest.raises(ValueError, match="temperature"):  # MoCo's own checks still run
        _algo(temperature=0.0)
    with pytest.raises(ValueError, match="allowed options"):
        _algo(nosuch=1)
    with pytest.raises(ValueError, match="mixer.name=none"):
        build_algorithm("samix_i", model=build_model("convnet", num_classes=10, in_chans=1, width=0.25),
                        num_classes=10, mixer=build_mixer("mixup", num_classes=10))


def test_options_reach_the_mixer_and_its_parameter_group():
    algo = _algo(gamma_init=1.0, attention=False, lam_adjust_prob=0.0, mix_block_lr=0.05, mix_block_min_lr=0.001)
    assert algo.mix_block.gamma == 1.0 and algo.mix_block.proj is None and algo.mix_block.lam_adjust_prob == 0.0
    group = algo.param_groups()[-1]
    assert group["name"] == "mix_block" and group["lr"] == 0.05 and group["min_lr"] == 0.001
    xq, xk, y = _views()
    out = _algo(mask_loss="none")(((xq, xk), y))
    assert "loss_mask" not in out and "mask_mean_err" in out


def test_masks_for_draws_the_raw_masks_of_fixed_pairs():
    algo = _algo()
    xq, _, _ = _views()
    masks = algo.masks_for(xq, [0.0, 0.5, 1.0])
    assert masks.shape == (3, 4, 1, 28, 28) and masks.dtype == torch.float32
    assert ((masks >= 0) & (masks <= 1)).all() and algo.training and algo.key_encoder.training


# ------------------------------------------------------------------------------------------ engine
TINY = ["model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=3", "num_workers=0", "threads=1",
        "log_interval=1000", "data.train_subset=null", "data.probe_subset=null", "algorithm.queue_size=40",
        "eval_interval=1", "eval.median_last=2", "viz.every=1"]


def _weights(run: Path):
    return ckpt_mod.load_checkpoint(run / "checkpoints" / "last.pt")["algorithm"]


def test_cpu_recipe_runs_draws_masks_exports_the_mixer_and_resumes_exactly(tmp_path, monkeypatch):
    from samix.cli import main
    from samix.engine import trainer

    fm_root = make_fashion_mnist(tmp_path / "data", n_train=80, n_test=40)

    def cfg(name, *extra):
        return load_config(REPO / "configs/fashion_mnist/samix_i.yaml",
                           TINY + [f"data.root={fm_root}", f"out_dir={tmp_path / name}", *extra])

    full = trainer.train(cfg("full"))
    assert 0 <= full["knn_top1"] <= 100
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["knn_top1"] is not None and "loss_gen" in r and "mask_mean_err" in r for r in rows)
    assert sorted(p.name for p in (tmp_path / "full" / "masks").glob("*.png"))
    assert main(["export-mixer", str(tmp_path / "full"), str(tmp_path / "mixer.safetensors")]) == 0
    assert (tmp_path / "mixer.safetensors").stat().st_size > 0

    train_killed_in_epoch(monkeypatch, trainer, cfg("cut"), 3)
    resumed = trainer.train(cfg("cut", "resume=true"))
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert wa.keys() == wb.keys() and any(k.startswith("mix_block.") for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["knn_top1"] == full["knn_top1"]
