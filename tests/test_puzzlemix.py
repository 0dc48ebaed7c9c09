"""PuzzleMix: the graph cut keeps the salient blocks, the reported lambda is the mask's mean, the transport
is a permutation of blocks that moves saliency into the kept region, the saliency pass leaves the model's
gradients and BatchNorm statistics alone, and every bad input gets a sentence."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("gco", reason="puzzlemix needs gco-wrapper (samix[dev] installs it)")

from samix.mixing import build_mixer  # noqa: E402
from samix.mixing.puzzlemix import grid_cost, level_prior, transport_blocks  # noqa: E402
from samix.mixing.signals import input_saliency  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _pm(**kw):
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return build_mixer("puzzlemix", num_classes=10, **kw)


def _blocks(x, g):
    b, c, h, w = x.shape
    t = h // g
    return x.reshape(b, c, g, t, g, t).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1)


def test_the_cut_keeps_each_images_salient_half():
    """Own image salient on the left, partner on the right, lam 0.5, no smoothness: the mask keeps the
    original on the left blocks and the partner on the right ones."""
    pm = _pm(n_labels=2, beta=0.0, gamma=0.0, block_nums=[2], transport=False)
    x = torch.randn(2, 1, 8, 8)
    s = torch.zeros(2, 8, 8)
    s[0, :, :4] = 1.0   # image 0: salient left
    s[1, :, 4:] = 1.0   # image 1: salient right
    index = torch.tensor([1, 0])
    grid = pm.optimal_masks(x, index, s, np.array([0.5]), 2)
    assert torch.equal(grid[0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(grid[1], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


@pytest.mark.parametrize("lam,expected", [(0.95, 1.0), (0.05, 0.0)])
def test_with_flat_saliency_the_prior_follows_lambda(lam, expected):
    pm = _pm(n_labels=2, block_nums=[4], transport=False)
    x = torch.randn(3, 1, 8, 8)
    grid = pm.optimal_masks(x, torch.tensor([1, 2, 0]), torch.ones(3, 8, 8), np.array([lam]), 4)
    assert torch.all(grid == expected)


def test_levels_of_a_three_label_cut_and_their_prior():
    p = level_prior(0.3, 3)
    assert np.allclose(np.exp(-p), [0.09, 0.42, 0.49], atol=1e-6)  # Binomial(2, 0.3) of (own, half, partner)
    pm = _pm(block_nums=[4], transport=False)
    x = torch.randn(6, 3, 16, 16)
    grid = pm.optimal_masks(x, torch.randperm(6), torch.rand(6, 16, 16), np.array([0.5]), 4)
    assert set(grid.unique().tolist()) <= {0.0, 0.5, 1.0}


def test_mixed_images_lambda_and_targets_on_a_real_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 10))
    pm = _pm()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(5):
        r = pm.mix_with_model(model, x, y)
        assert torch.allclose(r.lam, r.mask.flatten(1).mean(1))   # lam is the mask's mean, exactly
        assert r.images.shape == x.shape and bool(torch.isfinite(r.images).all())
    mixed, targets = pm(x, y, model=model)
    assert torch.allclose(targets.sum(1), torch.ones(16))


def test_transport_is_a_permutation_of_blocks_and_moves_saliency_into_the_kept_region():
    pm = _pm()
    g = 4
    s = torch.zeros(1, 16, 16)
    s[0, 8:12, 8:12] = 1.0                 # all saliency in block 10 (row 2, column 2)
    keep = torch.zeros(1, 1, 16, 16)
    keep[0, 0, 12:, 12:] = 1.0             # the mix keeps only block 15 (row 3, column 3)
    plan = pm.transport_plan(s, keep, g)
    assert torch.equal(plan.sort(1).values, torch.arange(g * g).unsqueeze(0))   # a permutation
    # moving it costs eps * 2/9 = 0.18 < the saliency it saves (1): the salient block lands in the kept region
    assert int(plan[0, 15]) == 10
    # a transport cost above the gain (eps 10: 2.2 > 1) moves nothing
    assert torch.equal(_pm(t_eps=10.0).transport_plan(s, keep, g), torch.arange(g * g).unsqueeze(0))
    x = torch.randn(1, 3, 16, 16)
    moved = transport_blocks(x, plan, g)
    a, b = _blocks(x, g)[0], _blocks(moved, g)[0]
    assert torch.equal(b[15], a[10])
    # the multiset of blocks is kept: each output block is exactly one input block, each used once
    match = (a.unsqueeze(1) == b.unsqueeze(0)).all(-1)
    assert torch.equal(match.sum(0), torch.ones(g * g, dtype=torch.long))
    assert torch.equal(match.sum(1), torch.ones(g * g, dtype=torch.long))


def test_mixed_pixels_come_from_the_transported_images_by_the_mask():
    """Every pixel of a mix is the transported original where the mask is 1 and the transported partner
    where it is 0: with transport, the multiset of each source's blocks is the same as before."""
    pm = _pm(n_labels=2, block_nums=[4])
    x = torch.randn(4, 1, 16, 16)
    s = torch.rand(4, 16, 16)
    r = pm.mix(x, index=torch.tensor([1, 2, 3, 0]), saliency=s)
    m = r.mask
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    for i in range(4):
        own_vals = set(x[i].flatten().tolist())
        partner_vals = set(x[r.index[i]].flatten().tolist())
        kept = r.images[i][m[i] == 1].tolist()
        pasted = r.images[i][m[i] == 0].tolist()
        assert set(kept) <= own_vals and set(pasted) <= partner_vals


def test_grid_cost_is_the_normalised_squared_distance():
    c = grid_cost(3)
    assert c[0, 0] == 0 and c[0, 8] == pytest.approx(8 / 4) and c[1, 3] == pytest.approx(2 / 4)


def test_the_saliency_pass_leaves_the_models_gradients_bn_and_mode_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 10)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
    s = input_saliency(model, x, y)
    assert model.training and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k   # BatchNorm running statistics untouched (eval mode)
    # the formula, by hand: sqrt(mean_c (dL/dx)^2) of the mean CE with the model in eval mode
    model.eval()
    xx = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(xx), y).backward()
    assert torch.allclose(s, xx.grad.pow(2).mean(1).sqrt())
    # one supervised step's gradients are those of the mixed loss alone
    from samix.algorithms import build_algorithm
    from samix.models import build_model

    net = build_model("convnet", num_classes=10, in_chans=1, width=0.25)
    algo = build_algorithm("supervised", model=net, num_classes=10, mixer=_pm(block_nums=[4]))
    xs = torch.randn(6, 1, 28, 28)
    ys = torch.randint(0, 10, (6,))
    out = algo((xs, ys))
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    assert grads and all(torch.isfinite(g).all() for g in grads.values())


def test_bad_inputs_get_a_sentence(monkeypatch):
    pm = _pm()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with pytest.raises(TypeError, match="model=model"):
        pm(x, y)
    with pytest.raises(TypeError, match="saliency"):
        pm.mix(x)
    with pytest.raises(TypeError, match="reads no"):
        build_mixer("mixup").mix(x, saliency=torch.rand(4, 28, 28))
    with pytest.raises(ValueError, match="square"):
        pm.mix(torch.randn(4, 1, 28, 32), saliency=torch.rand(4, 28, 32))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        pm.mix(x, saliency=torch.rand(4, 14, 14))
    with pytest.raises(ValueError, match="do not divide"):
        _pm(block_nums=[3]).mix(x, saliency=torch.rand(4, 28, 28))
    with pytest.raises(ValueError, match="n_labels"):
        _pm(n_labels=1)
    monkeypatch.setitem(sys.modules, "gco", None)
    with pytest.raises(ImportError, match="pip install gco-wrapper"):
        pm.mix(x, saliency=torch.rand(4, 28, 28))


def test_moco_refuses_a_policy_that_needs_labels():
    from samix.algorithms import build_algorithm
    from samix.models import build_model

    with pytest.raises(ValueError, match="no labels"):
        build_algorithm("moco", model=build_model("convnet", num_classes=10, in_chans=1, width=0.25),
                        num_classes=10, mixer=_pm(), queue_size=40)


def test_cpu_recipe_trains_an_epoch(tmp_path):
    from engine_utils import make_fashion_mnist
    from samix.engine import trainer
    from samix.engine.config import load_config

    root = make_fashion_mnist(tmp_path / "data", n_train=60, n_test=20)
    cfg = load_config(REPO / "configs/fashion_mnist/puzzlemix.yaml", [
        "model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=1", "num_workers=0", "threads=1",
        "data.train_subset=null", f"data.root={root}", f"out_dir={tmp_path / 'run'}", "log_interval=1000"])
    s = trainer.train(cfg)
    assert 0 <= s["top1_last"] <= 100


def test_adversarial_sides_follow_the_gradient_sign_within_eps_in_pixel_space():
    """adv_p = 1: both sides perturbed; in pixel space the perturbation stays within adv_eps/255, the image
    within [0, 1], and where it is not clipped its sign is the sign of the input gradient at the start."""
    from samix.mixing.signals import input_gradient

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 10))
    mean, std = [0.5], [0.25]
    raw = 0.2 + 0.6 * torch.rand(6, 1, 16, 16)           # inside (0.2, 0.8): no clipping at [0, 1]
    x, y = (raw - 0.5) / 0.25, torch.randint(0, 10, (6,))
    pm = _pm(adv_p=1.0, adv_eps=4.0, mean=mean, std=std, transport=False, block_nums=[4], n_labels=2)
    seen = {}
    orig = pm.perturb

    def keep(images, noise):
        seen.setdefault("noise", noise)
        return orig(images, noise)

    pm.perturb = keep
    r = pm.mix_with_model(model, x, y)
    noise = seen["noise"]
    eps = 4.0 / 255
    assert float(noise.abs().max()) <= eps + 1e-7 and float(noise.abs().max()) > 0
    mixed_raw = r.images * 0.25 + 0.5
    assert float(mixed_raw.min()) >= -1e-6 and float(mixed_raw.max()) <= 1 + 1e-6
    # the step: sign(noise) = sign(grad at the random start), whatever the start (|start| < step)
    g = input_gradient(model, x, y)   # the start moves x by < eps: the sign agrees on nearly every pixel
    agree = (noise.sign() == g.sign()) | (g == 0)
    assert float(agree.float().mean()) > 0.9
    # without a model there is no gradient to follow: mix() with adv_p > 0 is the plain policy
    assert pm.mix(x, saliency=torch.rand(6, 16, 16)).images.shape == x.shape


def test_adversarial_noise_needs_the_normalisation():
    with pytest.raises(ValueError, match="mean and std"):
        _pm(adv_p=0.1)
    with pytest.raises(ValueError, match="adv_p"):
        _pm(adv_p=1.5, mean=[0.5], std=[0.5])


@pytest.mark.parametrize("policy", ["puzzlemix", "comixup"])
def test_clean_lam_adds_the_saliency_pass_clean_loss_to_the_step(policy):
    """clean_lam > 0 (the official option): the step's loss is the mixed loss plus clean_lam x CE on the clean
    images from the saliency pass (train mode), whose gradient reaches the model; with a model without
    BatchNorm or dropout the masks are those of clean_lam = 0."""
    from samix.algorithms import build_algorithm

    def run(clean_lam):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, 10))
        mixer = build_mixer(policy, num_classes=10, generator=torch.Generator().manual_seed(1), clean_lam=clean_lam,
                            **({"block_nums": [4]} if policy == "puzzlemix" else {"part": 4}))
        algo = build_algorithm("supervised", model=model, num_classes=10, mixer=mixer)
        x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
        return algo((x, y)), model, x, y

    base, _, _, _ = run(0.0)
    out, model, x, y = run(0.5)
    assert "loss_clean" not in base
    torch.testing.assert_close(out["loss_clean"], 0.5 * nn.functional.cross_entropy(model(x), y))
    torch.testing.assert_close(out["loss"] - out["loss_clean"], base["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
