"""Issue 15: the reference implementation's choices where the papers are silent, each a switch that
changes what it claims (separate query/key projections, N(0, 0.01) init, lambda concatenation, lambda
adjusting on the student's masks only, batch-mean mask loss), and the mask diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from samix.algorithms import build_algorithm
from samix.algorithms.masks import DIAGNOSTIC_KEYS, generator_diagnostics
from samix.generators import (MixBlock, SAMixGenerator, generator_mask_loss, mask_l1_loss, mask_variance_loss,
                              self_attention_weight)
from samix.models import build_model


def _z(b=16, c=32, h=7, w=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    # features with a large common component, as ReLU stage features have: dot products of a
    # position with itself then dominate under a shared projection
    z = scale * (torch.randn(b, c, h, w, generator=g).abs() + 0.5)
    return z, torch.randperm(b, generator=g)


# ---------------------------------------------------------------------- q/k projections and init
def test_separate_query_and_key_projections_exist_and_shared_has_one():
    sep, shared = SAMixGenerator(32), SAMixGenerator(32, qk="shared")
    assert sep.key_proj is not None and shared.key_proj is None
    n_sep = sum(p.numel() for p in sep.parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    assert n_sep - n_shared == sum(p.numel() for p in sep.key_proj.parameters()) > 0


def test_reference_init_starts_the_attention_near_uniform():
    """On a random batch with the reference init the mean self-attention weight is within 10 % of the
    uniform 1/hw; PyTorch's init with one shared projection is well above it (biased to identity)."""
    z, index = _z()
    hw = z.shape[-2] * z.shape[-1]
    torch.manual_seed(0)
    ref = SAMixGenerator(32).train()
    torch.manual_seed(0)
    old = SAMixGenerator(32, qk="shared", init="default").train()
    lam = torch.full((z.shape[0],), 0.5)
    w_ref = float(self_attention_weight(ref(z, lam, index).attention))
    w_old = float(self_attention_weight(old(z, lam, index).attention))
    assert abs(w_ref - 1 / hw) < 0.1 / hw, (w_ref, 1 / hw)
    assert w_old > 3 / hw, (w_old, 1 / hw)


def test_reference_init_draws_convolutions_with_std_001_and_zero_bias():
    torch.manual_seed(0)
    gen = SAMixGenerator(256)
    w = gen.proj.conv.weight.detach()
    assert abs(float(w.std()) - 0.01) < 0.001
    assert float(gen.proj.conv.bias.detach().abs().max()) == 0.0
    torch.manual_seed(0)
    default = SAMixGenerator(256, init="default")
    assert float(default.proj.conv.weight.detach().std()) > 2 * float(w.std())
    # BatchNorm keeps weight 1
    assert bool((gen.content_body[0].weight == 1).all())


def test_unknown_qk_or_init_names_the_argument():
    with pytest.raises(ValueError, match="qk"):
        SAMixGenerator(8, qk="both")
    with pytest.raises(ValueError, match="init"):
        MixBlock(8, init="xavier")


# ---------------------------------------------------------------------- lambda concatenation
def test_mixblock_without_lam_concat_ignores_lambda_and_has_no_lambda_weights():
    z, index = _z(b=6, c=8, h=3, w=3)
    torch.manual_seed(0)
    gen = MixBlock(8, lam_concat=False, init="default")
    assert gen.proj_lam is None and gen.content_lam is None
    a = gen(z, torch.full((6,), 0.2), index).mask
    b = gen(z, torch.full((6,), 0.8), index).mask
    torch.testing.assert_close(a, b)
    torch.manual_seed(0)
    with_lam = MixBlock(8, init="default")
    assert (with_lam(z, torch.full((6,), 0.2), index).mask - with_lam(z, torch.full((6,), 0.8), index).mask
            ).abs().max() > 1e-4


def test_automix_lam_concat_option_reaches_the_mix_block():
    m = build_model("convnet", num_classes=4, in_chans=1, width=0.25)
    algo = build_algorithm("automix", model=m, num_classes=4, generator=torch.Generator().manual_seed(0),
                           lam_concat=False)
    assert algo.mix_block.lam_concat is False and algo.mix_block.proj_lam is None


# ---------------------------------------------------------------------- lambda adjusting
def _samix(**options):
    torch.manual_seed(0)
    m = build_model("convnet", num_classes=4, in_chans=1, width=0.25)
    return build_algorithm("samix", model=m, num_classes=4, generator=torch.Generator().manual_seed(1),
                           mixup_fallback=0.0, **options)


def _capture_gen(algo):
    rec = []
    orig = algo.generate

    def gen(z, lam, index, out_size):
        out = orig(z, lam, index, out_size)
        rec.append((lam, out))
        return out

    algo.generate = gen
    return rec


def test_lambda_adjusting_never_touches_the_generators_sample():
    """Probability 1, the default ``lam_adjust_on="student"``: every student mask is adjusted to its
    lambda, no generator mask is (its mask equals its raw mask), over several steps."""
    algo = _samix(lam_adjust_prob=1.0)
    rec = _capture_gen(algo)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        x, y = torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
        algo.set_progress(step, 10)
        algo((x, y))
    for lam, out in rec:
        b = lam.shape[0] // 2
        assert bool(out.adjusted[:b].all()) and not bool(out.adjusted[b:].any())
        torch.testing.assert_close(out.mask[b:], out.mask_raw[b:])
        torch.testing.assert_close(out.mask[:b].float().mean((1, 2, 3)), lam[:b], atol=1e-5, rtol=0)


def test_lambda_adjust_on_both_adjusts_the_generators_sample_too():
    algo = _samix(lam_adjust_prob=1.0, lam_adjust_on="both")
    rec = _capture_gen(algo)
    algo.set_progress(0, 10)
    algo((torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))))
    assert bool(rec[0][1].adjusted.all())


def test_generator_gets_gradient_through_its_mask_mean_only_when_not_adjusted():
    """The reason for the default: an adjusted mask's mean is pinned to lambda, so d mean / d logits
    vanishes; the raw mask keeps it."""
    z, index = _z(b=6, c=8, h=3, w=3)
    gen = SAMixGenerator(8, init="default").eval()
    lam = torch.full((6,), 0.3)
    for adjust, expect_zero in ((True, True), (False, False)):
        gen.zero_grad()
        gen(z, lam, index, adjust=adjust).mask.float().mean().backward()
        gnorm = sum(float(p.grad.abs().sum()) for p in gen.parameters() if p.grad is not None)
        assert (gnorm < 1e-6) == expect_zero, (adjust, gnorm)


def test_adjust_tensor_is_checked():
    z, index = _z(b=4, c=8, h=3, w=3)
    gen = SAMixGenerator(8)
    with pytest.raises(ValueError, match=r"bool of shape \[B\]=\[4\]"):
        gen(z, 0.5, index, adjust=torch.ones(3, dtype=torch.bool))


# ---------------------------------------------------------------------- mask-loss reduction
def test_batch_reduction_hinges_the_batch_mean_and_sample_each_mean():
    """Two masks with means 0.1 and 0.9 at lambda 0.5: each is 0.4 off (per-sample hinge 0.3 with margin
    0.1), their batch mean is exact (batch hinge 0)."""
    mask = torch.cat([torch.full((1, 1, 4, 4), 0.1), torch.full((1, 1, 4, 4), 0.9)])
    lam = torch.tensor([0.5, 0.5])
    assert float(generator_mask_loss(mask, lam, "l1", 0.1, reduction="batch")) == pytest.approx(0.0, abs=1e-7)
    assert float(generator_mask_loss(mask, lam, "l1", 0.1, reduction="sample")) == pytest.approx(0.3, abs=1e-6)
    torch.testing.assert_close(generator_mask_loss(mask, lam, "l1", 0.1, reduction="sample"),
                               mask_l1_loss(mask, lam, margin=0.1))
    # the variance about the batch mean sees the spread between the two flat masks (0.16), each flat
    # mask alone has none
    v_batch = generator_mask_loss(mask, lam, "l1", 0.1, variance=True, reduction="batch")
    v_sample = generator_mask_loss(mask, lam, "l1", 0.1, variance=True, reduction="sample")
    assert float(v_batch) == pytest.approx(0.25 - 0.16, abs=1e-6)
    torch.testing.assert_close(v_sample, mask_l1_loss(mask, lam, margin=0.1) + mask_variance_loss(mask))
    assert generator_mask_loss(mask, lam, "none") is None


def test_samix_mask_loss_follows_the_reduction_option():
    for red in ("batch", "sample"):
        algo = _samix(mask_loss_reduction=red, lam_adjust_prob=0.0)
        rec = _capture_gen(algo)
        algo.set_progress(0, 10)
        out = algo((torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))))
        lam, g = rec[0]
        raw, lam_g = g.mask_raw[8:], lam[8:]
        expected = 0.1 * generator_mask_loss(raw, lam_g, "l1", 0.1, variance=True, reduction=red)
        torch.testing.assert_close(out["loss_mask"], expected)


# ---------------------------------------------------------------------- diagnostics
class _Identity(torch.nn.Module):
    def features(self, x, stage):
        return x


def test_diagnostics_see_a_partner_blind_flat_generator_and_a_uniform_attention():
    """A Mix Block without lambda and with zero content weights gives flat 0.5 masks: std 0, partner
    sensitivity 0, |mu - lam| = mean |0.5 - lam| over the probed lambdas; its zero query/key weights give
    exactly uniform attention (1/hw)."""
    gen = MixBlock(4, lam_concat=False)
    with torch.no_grad():
        for p in gen.parameters():
            p.zero_()
    x = torch.randn(10, 4, 5, 5)
    d = generator_diagnostics(_Identity(), gen, 1, x, lams=(0.1, 0.9))
    assert set(d) == set(DIAGNOSTIC_KEYS)
    assert d["mask_std"] == pytest.approx(0.0, abs=1e-7)
    assert d["mask_partner_sens"] == pytest.approx(0.0, abs=1e-7)
    assert d["mask_mu_err"] == pytest.approx(0.4, abs=1e-6)
    assert d["mask_self_attn"] == pytest.approx(1 / 25, abs=1e-7)


def test_diagnostics_see_a_partner_dependent_generator():
    torch.manual_seed(0)
    gen = SAMixGenerator(4, init="default")
    d = generator_diagnostics(_Identity(), gen, 1, torch.randn(10, 4, 5, 5) * 3)
    assert d["mask_partner_sens"] > 1e-3 and d["mask_std"] > 1e-3
    assert 0 < d["mask_self_attn"] <= 1
    no_attn = generator_diagnostics(_Identity(), SAMixGenerator(4, attention=False), 1, torch.randn(10, 4, 5, 5))
    assert no_attn["mask_self_attn"] is None
    assert no_attn["mask_partner_sens"] == pytest.approx(0.0, abs=1e-7)  # content only: blind to the partner
    assert not math.isnan(no_attn["mask_std"])


def test_a_run_logs_the_mask_diagnostics_and_show_draws_them(tmp_path, capsys):
    """metrics.jsonl carries every diagnostic at each evaluation of an AutoMix run, curves_masks.png is drawn
    during training and again by ``samix show RUN``; a vanilla run logs none and draws none."""
    from engine_utils import make_fashion_mnist
    from samix.cli import main
    from samix.engine.config import load_config
    from samix.engine.rundir import read_metrics
    from samix.engine.trainer import train

    root = make_fashion_mnist(tmp_path / "data", n_train=40, n_test=20)
    tiny = ["data.name=fashion_mnist", "model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=2",
            "num_workers=0", "threads=1", "log_interval=1000", f"data.root={root}", "eval_interval=1"]
    train(load_config(None, tiny + [f"out_dir={tmp_path / 'am'}", "algorithm.name=automix"]))
    rows = read_metrics(tmp_path / "am" / "metrics.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert 0 <= r["mask_mu_err"] <= 1 and 0 <= r["mask_std"] <= 0.5
        assert 0 < r["mask_self_attn"] <= 1 and r["mask_partner_sens"] >= 0
    png = tmp_path / "am" / "curves_masks.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    png.unlink()
    assert main(["show", str(tmp_path / "am")]) == 0
    assert png.is_file() and "curves_masks.png" in capsys.readouterr().out
    train(load_config(None, tiny + [f"out_dir={tmp_path / 'va'}"]))
    assert not any(k in read_metrics(tmp_path / "va" / "metrics.jsonl")[-1] for k in DIAGNOSTIC_KEYS)
    assert not (tmp_path / "va" / "curves_masks.png").exists()


@pytest.mark.parametrize("name", ["automix", "samix"])
def test_freeze_mix_block_keeps_the_random_generator_and_still_trains_the_student(name):
    """The ablation "a frozen random Mix Block": after optimizer steps the generator's weights are its
    initial ones, the student's have moved; without the switch the generator moves too."""
    moved = {}
    for freeze in (True, False):
        torch.manual_seed(0)
        m = build_model("convnet", num_classes=4, in_chans=1, width=0.25)
        algo = build_algorithm(name, model=m, num_classes=4, generator=torch.Generator().manual_seed(1),
                               freeze_mix_block=freeze)
        gen0 = {k: v.clone() for k, v in algo.mix_block.state_dict().items() if v.is_floating_point()}
        stu0 = [p.detach().clone() for p in algo.model.parameters()]
        opt = torch.optim.SGD(algo.param_groups(), lr=0.1)
        g = torch.Generator().manual_seed(0)
        for step in range(3):
            algo.set_progress(step, 10)
            out = algo((torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 4, (8,), generator=g)))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            algo.on_train_step_end()
        params = dict(algo.mix_block.named_parameters())
        moved[freeze] = [k for k in params if not torch.equal(params[k].detach(), gen0[k])]
        assert any(not torch.equal(p.detach(), q) for p, q in zip(algo.model.parameters(), stu0))
    assert moved[True] == [] and len(moved[False]) > 0
    with pytest.raises(TypeError, match="freeze_mix_block must be a bool"):
        build_algorithm("automix", model=build_model("convnet", num_classes=4, in_chans=1, width=0.25),
                        num_classes=4, freeze_mix_block="yes")
