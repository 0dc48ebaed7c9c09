"""Tests of samix.generators: MixBlock (AutoMix), Mixer (SAMix), lambda adjusting, mask losses."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from samix.generators import (
    GeneratorOutput,
    MixBlock,
    SAMixGenerator,
    build_generator,
    lambda_adjust,
    linear_weight,
    list_generators,
    mask_l1_loss,
    mask_l2_loss,
    mask_mean,
    mask_variance_loss,
)
from samix.generators.mixblock import attention_logits_softmax

HYP = settings(max_examples=25, deadline=None)
GENERATOR_FACTORIES = {
    "mixblock": lambda c, **kw: MixBlock(c, **kw),
    "mixer": lambda c, **kw: SAMixGenerator(c, **kw),
}
ALL_SWITCHES = list(itertools.product([True, False], repeat=4))  # attention, adaptive, nonlinear, adjust


def _inputs(b=4, c=8, h=4, w=4, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(b, c, h, w, generator=g) * scale).to(dtype)
    lam = torch.rand(b, generator=g)
    index = torch.randperm(b, generator=g)
    return z, lam, index


# ---------------------------------------------------------------------- shapes, ranges, conventions
@pytest.mark.parametrize("name", ["mixblock", "mixer"])
@HYP
@given(b=st.integers(1, 5), h=st.integers(1, 6), w=st.integers(1, 6), up=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_mask_shape_and_range(name, b, h, w, up, seed):
    c = 6
    torch.manual_seed(seed)
    gen = GENERATOR_FACTORIES[name](c)
    if b * h * w == 1:
        gen.eval()  # BatchNorm needs more than one value per channel in training mode
    z, lam, index = _inputs(b, c, h, w, seed)
    out_size = (h * up + 1, w * up)  # also a non-integer factor
    out = gen(z, lam, index, out_size=out_size)
    assert isinstance(out, GeneratorOutput)
    assert out.mask.shape == (b, 1) + out_size
    assert out.mask_raw.shape == (b, 1) + out_size
    assert out.mask_small.shape == (b, 1, h, w)
    assert out.logits.shape == out.content.shape == (b, 1, h, w)
    assert out.mask.dtype == z.dtype
    for m in (out.mask, out.mask_small, out.mask_raw):
        assert torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
    assert torch.allclose(out.attention.sum(-1), torch.ones(b, h * w), atol=1e-5)
    assert torch.equal(out.mask_partner, 1 - out.mask)  # s_j = 1 - s_i
    assert torch.equal(out.lam, lam) and torch.equal(out.index, index)


@pytest.mark.parametrize("name", ["mixblock", "mixer"])
def test_mix_follows_the_samix_convention(name):
    torch.manual_seed(0)
    z, lam, index = _inputs(b=3, c=4, h=2, w=3)  # odd batch
    gen = GENERATOR_FACTORIES[name](4)
    out = gen(z, lam, index, out_size=(6, 9))
    images = torch.randn(3, 3, 6, 9)
    expected = out.mask * images + (1 - out.mask) * images[index]
    torch.testing.assert_close(out.mix(images), expected)
    with pytest.raises(ValueError, match="images"):
        out.mix(torch.randn(3, 3, 5, 9))


def test_no_upsampling_without_out_size():
    torch.manual_seed(0)
    z, lam, index = _inputs(b=2, c=4, h=3, w=5)
    out = MixBlock(4)(z, lam, index)
    assert out.mask.shape == (2, 1, 3, 5)
    torch.testing.assert_close(out.mask, out.mask_small)


def test_nearest_and_bilinear_upsampling():
    torch.manual_seed(0)
    z, lam, index = _inputs(b=3, c=4, h=4, w=4)
    near = MixBlock(4, upsample="nearest", init="default")  # PyTorch's init: a mask far from flat
    bil = MixBlock(4, upsample="bilinear", init="default")
    bil.load_state_dict(near.state_dict())
    a, b = near(z, lam, index, out_size=16), bil(z, lam, index, out_size=16)
    torch.testing.assert_close(a.mask_small, b.mask_small)
    # nearest by an integer factor: every 4x4 block is one value, and the mean is kept
    torch.testing.assert_close(a.mask, a.mask_small.repeat_interleave(4, 2).repeat_interleave(4, 3))
    torch.testing.assert_close(mask_mean(a.mask), mask_mean(a.mask_small))
    # bilinear: a convex combination of the small mask's values, smoother than nearest
    small = b.mask_small.flatten(1)
    assert (b.mask.flatten(1).min(1).values >= small.min(1).values - 1e-6).all()
    assert (b.mask.flatten(1).max(1).values <= small.max(1).values + 1e-6).all()
    tv = lambda m: (m[..., 1:, :] - m[..., :-1, :]).abs().sum()  # noqa: E731
    assert tv(b.mask) < tv(a.mask)


# ---------------------------------------------------------------------- the formulas, literally
def test_mixblock_matches_the_literal_formula():
    """Eq. 4-5 written the slow, literal way: concat a constant lam channel, shared W_P."""
    torch.manual_seed(0)
    b, c, h, w = 3, 6, 3, 4
    z, lam, index = _inputs(b, c, h, w)
    gen = MixBlock(c)
    out = gen(z, lam, index, out_size=(6, 8))

    def concat_lam(x, value):
        return torch.cat([x, value.view(-1, 1, 1, 1).expand(-1, 1, h, w)], dim=1)

    w_p = torch.cat([gen.proj.weight, gen.proj_lam.view(-1, 1, 1, 1)], dim=1)
    w_z = torch.cat([gen.content.weight, gen.content_lam.view(1, 1, 1, 1)], dim=1)
    zi, zj = concat_lam(z, lam), concat_lam(z[index], 1 - lam)
    q = F.conv2d(zi, w_p, gen.proj.bias).flatten(2)  # [B, d, hw]
    k = F.conv2d(zj, w_p, gen.proj.bias).flatten(2)
    d = q.shape[1]
    p = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(d), dim=-1)
    content = F.conv2d(zi, w_z, gen.content.bias).flatten(2).transpose(1, 2)  # [B, hw, 1]
    s = torch.sigmoid(p @ content).transpose(1, 2).reshape(b, 1, h, w)
    torch.testing.assert_close(out.attention, p)
    torch.testing.assert_close(out.mask_small, s)
    torch.testing.assert_close(out.mask, F.interpolate(s, size=(6, 8), mode="nearest"))
    assert d == c // 2  # attention width C/2


def test_mixer_matches_the_literal_formula():
    """Eq. 9-11: (1 + gamma lam) encoding, attention over concat(z_i, z_j), non-linear content."""
    torch.manual_seed(0)
    b, c, h, w = 4, 6, 3, 3
    z, lam, index = _inputs(b, c, h, w)
    gen = SAMixGenerator(c).eval()
    with torch.no_grad():
        gen.gamma_raw.fill_(0.7)
    out = gen(z, lam, index, out_size=(5, 5), adjust=False)
    lam4 = lam.view(-1, 1, 1, 1)
    zi, zj = (1 + 0.7 * lam4) * z, (1 + 0.7 * (1 - lam4)) * z[index]
    qk = gen.proj.conv(torch.cat([zi, zj], 1)).flatten(2)
    p = torch.softmax(qk.transpose(1, 2) @ qk / math.sqrt(qk.shape[1]), dim=-1)
    # the (1 + gamma lam) factor of the content path acts after its BatchNorm (module docstring)
    hidden = gen.content_body[0](gen.content_in.conv(z)) * (1 + 0.7 * lam4)
    content = gen.content_body[1:](hidden).flatten(2).transpose(1, 2)
    s = torch.sigmoid(p @ content).transpose(1, 2).reshape(b, 1, h, w)
    torch.testing.assert_close(out.mask_small, s)
    torch.testing.assert_close(out.mask, F.interpolate(s, size=(5, 5), mode="bilinear", align_corners=False))
    # the mixing attention is symmetric before the softmax (shared query/key of z~)
    logits = qk.transpose(1, 2) @ qk
    torch.testing.assert_close(logits, logits.transpose(1, 2))


def test_mixer_switches_build_the_ablation_modules():
    full = SAMixGenerator(8)
    names = {n for n, _ in full.named_parameters()}
    assert "gamma_raw" in names and any(n.startswith("proj.") for n in names)
    assert any("content_body.0" in n for n in names)  # BatchNorm
    assert isinstance(full.content_body[2], torch.nn.Dropout) and full.content_body[2].p == 0.1
    bare = SAMixGenerator(8, attention=False, adaptive_lambda=False, nonlinear_content=False)
    names = {n for n, _ in bare.named_parameters()}
    assert names == {"content_in.conv.weight", "content_in.conv.bias", "content_in.lam_weight"}
    torch.manual_seed(0)
    z, lam, index = _inputs(b=3, c=8, h=2, w=2)
    out = bare(z, lam, index, adjust=False)
    assert out.attention is None
    w_ = torch.cat([bare.content_in.conv.weight, bare.content_in.lam_weight.view(1, 1, 1, 1)], dim=1)
    zi = torch.cat([z, lam.view(-1, 1, 1, 1).expand(-1, 1, 2, 2)], dim=1)
    torch.testing.assert_close(out.mask_small, torch.sigmoid(F.conv2d(zi, w_, bare.content_in.conv.bias)))


# ---------------------------------------------------------------------- lambda dependence
def test_mixblock_mask_depends_on_lam():
    torch.manual_seed(0)
    z, _, index = _inputs(b=4, c=8, h=3, w=3)
    gen = MixBlock(8, init="default")  # the function, not the near-flat reference init
    a = gen(z, torch.full((4,), 0.2), index).mask
    b = gen(z, torch.full((4,), 0.8), index).mask
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("adaptive", [True, False])
def test_mixer_mask_depends_on_lam(adaptive):
    torch.manual_seed(0)
    z, _, index = _inputs(b=4, c=8, h=3, w=3)
    gen = SAMixGenerator(8, adaptive_lambda=adaptive, init="default").eval()
    masks = lambda: [gen(z, torch.full((4,), v), index, adjust=False).mask for v in (0.2, 0.8)]  # noqa: E731
    a, b = masks()
    if adaptive:
        # gamma starts at 0 (the paper's init): the encoding is off until gamma is learned ...
        torch.testing.assert_close(a, b)
        with torch.no_grad():
            gen.gamma_raw.fill_(0.5)
        a, b = masks()
    assert (a - b).abs().max() > 1e-3  # ... and then lam steers the mask


@pytest.mark.parametrize("adaptive", [True, False])
def test_mixer_mask_depends_on_a_per_batch_lam_in_training_mode(adaptive):
    """The pipelines draw ONE lam per batch and run the Mixer in training mode (BatchNorm on batch
    statistics). A lam encoding placed before the BatchNorm is normalised away there: the raw mask
    would be the same for every lam (the bug this guards against)."""
    torch.manual_seed(0)
    z, _, index = _inputs(b=8, c=8, h=3, w=3)
    # the content path alone (the attention path has no BatchNorm)
    gen = SAMixGenerator(8, attention=False, adaptive_lambda=adaptive, dropout=0.0, init="default").train()
    with torch.no_grad():
        (gen.gamma_raw if adaptive else gen.content_lam).fill_(1.0)
    a, b = (gen(z, torch.full((8,), v), index, adjust=False).mask_raw for v in (0.2, 0.8))
    assert (a - b).abs().max() > 1e-2
    if adaptive:  # and gamma receives a gradient from a per-batch lam
        gen.gamma_raw.data.fill_(0.5)
        mask_l1_loss(gen(z, torch.full((8,), 0.9), index, adjust=False).mask_raw,
                     torch.full((8,), 0.9), margin=0.0).backward()
        assert gen.gamma_raw.grad is not None and gen.gamma_raw.grad.abs() > 1e-6


# ---------------------------------------------------------------------- gamma in [0, 1]
def test_gamma_starts_at_zero_and_stays_in_unit_interval():
    gen = SAMixGenerator(4)
    assert gen.gamma == 0.0 and gen.gamma_raw.item() == 0.0
    opt = torch.optim.Adam([gen.gamma_raw], lr=0.2)
    for sign, steps in ((+1, 15), (-1, 40), (+1, 40)):  # push below 0, above 1, then back down
        for _ in range(steps):
            g = gen.gamma_tensor()
            assert 0.0 <= g.item() <= 1.0
            opt.zero_grad()
            (sign * g).backward()
            opt.step()
            assert 0.0 <= gen.gamma <= 1.0
        if sign > 0 and steps == 15:
            assert gen.gamma == 0.0
            # the push against the bound is not passed on: the raw value does not drift at all
            assert gen.gamma_raw.item() == 0.0
        elif sign < 0:
            assert gen.gamma == 1.0
    assert gen.gamma < 0.5  # it came back from the upper bound: the gradient was never dead


def test_gamma_gradient_passes_inside_and_inward_only():
    gen = SAMixGenerator(4)
    for raw, sign, passes in ((0.0, +1, False), (0.0, -1, True), (0.5, +1, True), (1.0, -1, False),
                              (1.0, +1, True), (-0.3, -1, True), (1.4, +1, True)):
        with torch.no_grad():
            gen.gamma_raw.fill_(raw)
        gen.gamma_raw.grad = None
        (sign * gen.gamma_tensor()).backward()
        assert gen.gamma_raw.grad.item() == (sign if passes else 0.0), (raw, sign)


# ---------------------------------------------------------------------- gradients, every branch
@pytest.mark.parametrize("attention,adaptive,nonlinear,adjust", ALL_SWITCHES)
def test_gradient_reaches_every_parameter(attention, adaptive, nonlinear, adjust):
    torch.manual_seed(0)
    gen = SAMixGenerator(6, attention=attention, adaptive_lambda=adaptive, nonlinear_content=nonlinear,
                lam_adjust=adjust, lam_adjust_prob=1.0)
    if adaptive:
        with torch.no_grad():
            gen.gamma_raw.fill_(0.3)
    z, lam, index = _inputs(b=5, c=6, h=3, w=4)
    out = gen(z, lam, index, out_size=(6, 8))
    assert bool(out.adjusted.all()) == adjust
    weights = torch.randn(out.mask.shape, generator=torch.Generator().manual_seed(1))
    loss = (out.mask * weights).sum() + mask_l1_loss(out.mask_raw, lam, margin=0.0) \
        + mask_variance_loss(out.mask_raw)
    loss.backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"no gradient reaches {name}"


def test_mixblock_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    gen = MixBlock(6)
    z, lam, index = _inputs(b=3, c=6, h=2, w=5)
    out = gen(z, lam, index, out_size=(4, 10))
    (out.mask * torch.randn(out.mask.shape)).sum().backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


# ---------------------------------------------------------------------- training: the mean tracks lam
def _train_on_mask_loss(gen, steps, lr, b=16, c=16, h=4, seed=0, per_batch=False):
    """Train ``gen`` on the L1 mask loss alone; mean |mu - lam| before and after (eval mode).
    ``per_batch``: one lam per training batch (as the pipelines draw it) instead of one per sample."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, c, h, h, generator=g)
    opt = torch.optim.Adam(gen.parameters(), lr=lr)

    def error():  # mean |mu - lam| over 4 fresh batches of lam and pairings
        errors = []
        for _ in range(4):
            lam = torch.rand(b, generator=g)
            out = gen(z, lam, torch.randperm(b, generator=g), out_size=(8, 8), adjust=False)
            errors.append((mask_mean(out.mask_raw) - lam).abs().mean().item())
        return sum(errors) / len(errors)

    with torch.no_grad():
        before = error()
    for _ in range(steps):
        lam = torch.rand(1 if per_batch else b, generator=g).expand(b)
        out = gen(z, lam, torch.randperm(b, generator=g), out_size=(8, 8), adjust=False)
        loss = mask_l1_loss(out.mask_raw, lam, margin=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gen.eval()
    with torch.no_grad():
        after = error()
    return before, after


def test_mixblock_learns_to_follow_lam():
    torch.manual_seed(0)
    before, after = _train_on_mask_loss(_MixBlockAdjustIgnored(16), steps=300, lr=0.03)
    # a lam-blind mask can do no better than E|lam - 1/2| = 0.25 for lam ~ U(0, 1)
    assert before > 0.15
    assert after < 0.05


def test_mixer_learns_to_follow_lam():
    torch.manual_seed(0)
    gen = SAMixGenerator(16)
    before, after = _train_on_mask_loss(gen, steps=800, lr=0.03)
    assert before > 0.15  # gamma = 0 at the start: the mask ignores lam
    assert 0.0 < gen.gamma <= 1.0  # the adaptive encoding switched itself on
    # measured 0.054-0.07 over 3 seeds (MixBlock: 0.02 in 300 steps): the content logit is
    # (1 + gamma lam) f(z) + b with gamma <= 1, a weaker handle on the mean than AutoMix's lam
    # channel (lambda adjusting then fixes the mean exactly); gamma ends near 1
    assert after < 0.1


class _MixBlockAdjustIgnored(MixBlock):
    """A MixBlock that accepts (and ignores) ``adjust=`` so one training helper serves both."""

    def forward(self, z, lam, index, out_size=None, adjust=None):
        return super().forward(z, lam, index, out_size=out_size)


# ---------------------------------------------------------------------- lambda adjusting
@HYP
@given(b=st.integers(1, 6), n=st.integers(1, 40), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["uniform", "binary", "peaked", "constant"]))
def test_lambda_adjust_hits_lam_exactly(b, n, seed, kind):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, 1, n, 1, generator=g)
    if kind == "binary":
        mask = (mask > 0.5).float()
    elif kind == "peaked":
        mask = mask ** 6
    elif kind == "constant":
        mask = torch.rand(b, 1, 1, 1, generator=g).expand(b, 1, n, 1).clone()
    lam = torch.rand(b, generator=g)
    lam[0] = mask_mean(mask)[0] if b > 1 else lam[0]  # one sample already at its target
    adjusted = lambda_adjust(mask, lam)
    torch.testing.assert_close(mask_mean(adjusted), lam, atol=1e-5, rtol=0)
    assert adjusted.min() >= 0 and adjusted.max() <= 1
    # order preserving: a pixel that had more of x_i still has at least as much
    order = mask.flatten(1).argsort(dim=1)
    sorted_adj = adjusted.flatten(1).gather(1, order)
    assert (sorted_adj[:, 1:] - sorted_adj[:, :-1] >= -1e-6).all()
    # the over-represented sample only loses: mu > lam shrinks s_i, mu < lam shrinks s_j
    mu = mask_mean(mask).view(-1, 1, 1, 1)
    lam4 = lam.view(-1, 1, 1, 1)
    assert torch.where(mu > lam4, adjusted <= mask + 1e-6, adjusted >= mask - 1e-6).all()


def test_lambda_adjust_edge_cases_and_gradient():
    zeros = torch.zeros(2, 1, 3, 3, requires_grad=True)
    out = lambda_adjust(zeros, torch.tensor([0.3, 0.0]))
    torch.testing.assert_close(out[0], torch.full((1, 3, 3), 0.3))
    torch.testing.assert_close(out[1], torch.zeros(1, 3, 3))
    out.sum().backward()
    assert torch.isfinite(zeros.grad).all()
    # saturated masks (sigmoid of large logits): means near 0 or 1 must not give NaN gradients
    for value, target in ((1e-25, 0.5), (1e-25, 0.0), (1 - 1e-7, 0.3), (1.0, 1.0), (0.0, 0.0)):
        m = torch.full((1, 1, 2, 2), value, requires_grad=True)
        out = lambda_adjust(m, torch.tensor([target]))
        torch.testing.assert_close(mask_mean(out), torch.tensor([target]), atol=1e-6, rtol=0)
        (out * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)).sum().backward()
        assert torch.isfinite(m.grad).all(), (value, target)
    ones = torch.ones(1, 1, 2, 2)
    torch.testing.assert_close(lambda_adjust(ones, 0.25), torch.full((1, 1, 2, 2), 0.25))
    half = torch.tensor([[[[0.0, 1.0]]]])
    torch.testing.assert_close(lambda_adjust(half, 0.5), half)  # mean already lam: unchanged
    bf = torch.rand(3, 1, 4, 4).bfloat16()
    assert lambda_adjust(bf, torch.rand(3)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="lam"):
        lambda_adjust(half, 1.5)
    with pytest.raises(ValueError, match="lam"):
        lambda_adjust(half, torch.rand(3))


def test_mixer_adjust_policy():
    torch.manual_seed(0)
    z, lam, index = _inputs(b=400, c=4, h=2, w=2)
    gen = SAMixGenerator(4, lam_adjust_prob=0.25)
    out = gen(z, lam, index, generator=torch.Generator().manual_seed(0))
    frac = out.adjusted.float().mean().item()
    assert 0.17 < frac < 0.33  # Binomial(400, 0.25): sd 0.022
    a = out.adjusted
    torch.testing.assert_close(mask_mean(out.mask)[a], lam[a], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.mask[~a], out.mask_raw[~a])
    assert not torch.allclose(mask_mean(out.mask_raw), lam, atol=1e-3)
    # overrides and modes
    assert gen(z, lam, index, adjust=True).adjusted.all()
    assert not gen(z, lam, index, adjust=False).adjusted.any()
    gen.eval()
    out = gen(z, lam, index)
    assert out.adjusted.all()  # test-time adjusting
    torch.testing.assert_close(mask_mean(out.mask), lam, atol=1e-5, rtol=0)
    assert not gen(z, lam, index, adjust=False).adjusted.any()
    off = SAMixGenerator(4, lam_adjust=False).eval()
    assert not off(z, lam, index).adjusted.any()
    assert SAMixGenerator(4, lam_adjust_prob=1.0)(z, lam, index).adjusted.all()
    assert not SAMixGenerator(4, lam_adjust_prob=0.0)(z, lam, index).adjusted.any()


# ---------------------------------------------------------------------- dtypes, numerics, modes
@pytest.mark.parametrize("name", ["mixblock", "mixer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast", [False, True])
def test_large_features_low_precision_no_nan(name, dtype, autocast):
    torch.manual_seed(0)
    gen = GENERATOR_FACTORIES[name](16)
    z, lam, index = _inputs(b=5, c=16, h=4, w=3, dtype=dtype, scale=1e3)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    kwargs = {"adjust": True} if name == "mixer" else {}  # adjusting saturated masks included
    with amp:
        out = gen(z, lam, index, out_size=(8, 6), **kwargs)
        loss = mask_l1_loss(out.mask_raw, lam) + mask_variance_loss(out.mask_raw) + out.mask.float().mean()
    loss.backward()
    assert out.mask.dtype == dtype
    assert torch.isfinite(out.mask).all() and out.mask.min() >= 0 and out.mask.max() <= 1
    assert torch.isfinite(out.attention).all()
    for n, p in gen.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n


def test_attention_runs_in_float32():
    """Half-precision q.k would overflow (|q.k| ~ 1e8 > 65504); the attention must not."""
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(2, 64, 3, 3, generator=g) * 1e3).half()
    qf = q.flatten(2).float()
    assert not torch.isfinite((qf.transpose(1, 2) @ qf).half()).all()  # what fp16 logits would hold
    for norm in ("scaled", "cosine"):
        p = attention_logits_softmax(q, q, norm)
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 9))


def test_cosine_attention_has_bounded_logits():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 16, 4, 4, generator=g) * 1e4, torch.randn(2, 16, 4, 4, generator=g)
    p = attention_logits_softmax(q, k, "cosine")
    # logits in [-sqrt(d), sqrt(d)]: no weight can be below exp(-2 sqrt(d)) / n of the largest
    ratio = p.min(-1).values / p.max(-1).values
    assert (ratio >= math.exp(-2 * 4.0) - 1e-12).all()
    scaled = attention_logits_softmax(q, k, "scaled")
    assert (scaled.max(-1).values > 0.999).any()  # unbounded logits saturate on large features


@pytest.mark.parametrize("name", ["mixblock", "mixer"])
def test_channels_last_gives_the_same_mask(name):
    torch.manual_seed(0)
    gen = GENERATOR_FACTORIES[name](8).eval()
    z, lam, index = _inputs(b=3, c=8, h=4, w=4)
    a = gen(z, lam, index, out_size=8)
    b = gen(z.contiguous(memory_format=torch.channels_last), lam, index, out_size=8)
    torch.testing.assert_close(a.mask, b.mask)


def test_frozen_mixer_is_deterministic_under_no_grad():
    torch.manual_seed(0)
    gen = SAMixGenerator(8)
    z, lam, index = _inputs(b=4, c=8, h=3, w=3)
    train_a = gen(z, lam, index, adjust=False).mask
    train_b = gen(z, lam, index, adjust=False).mask
    assert not torch.equal(train_a, train_b)  # Dropout(0.1) is active in training
    gen.eval().requires_grad_(False)  # SAMix-P
    with torch.no_grad():
        a = gen(z, lam, index, out_size=12)
        b = gen(z, lam, index, out_size=12)
    assert torch.equal(a.mask, b.mask) and not a.mask.requires_grad
    torch.testing.assert_close(mask_mean(a.mask), lam, atol=1e-5, rtol=0)


def test_batch_of_one_and_scalar_lam():
    torch.manual_seed(0)
    z = torch.randn(1, 4, 3, 2)
    for gen in (MixBlock(4), SAMixGenerator(4)):
        out = gen(z, 0.3, torch.zeros(1, dtype=torch.long), out_size=(6, 4))
        assert out.mask.shape == (1, 1, 6, 4) and out.lam.tolist() == [pytest.approx(0.3)]
    with pytest.raises(ValueError, match="BatchNorm"):
        SAMixGenerator(4)(torch.randn(1, 4, 1, 1), 0.5, torch.zeros(1, dtype=torch.long))
    assert SAMixGenerator(4).eval()(torch.randn(1, 4, 1, 1), 0.5, torch.zeros(1, dtype=torch.long)).mask.shape == (1, 1, 1, 1)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["mixblock", "mixer"])
def test_bad_inputs_raise_clear_errors(name):
    gen = GENERATOR_FACTORIES[name](4)
    z, lam, index = _inputs(b=3, c=4, h=2, w=2)
    cases = [
        ((z[0], lam, index), {}, ValueError, "z must be 4-D"),
        ((z.long(), lam, index), {}, TypeError, "z must be a floating-point"),
        ((torch.randn(3, 5, 2, 2), lam, index), {}, ValueError, "in_channels=4"),
        ((z, lam[:2], index), {}, ValueError, r"lam must have shape \[B\]=\[3\]"),
        ((z, torch.tensor([0.2, 1.2, 0.5]), index), {}, ValueError, r"lam must lie in \[0, 1\]"),
        ((z, torch.tensor([1, 0, 1]), index), {}, TypeError, "lam must be a floating-point"),
        ((z, lam, index.float()), {}, TypeError, "index must be an integer"),
        ((z, lam, torch.tensor([0, 1, 3])), {}, ValueError, r"index must hold partners in \[0, B-1\]"),
        ((z, lam, index[:2]), {}, ValueError, "index must have shape"),
        ((z, lam, index), {"out_size": (4, 0)}, ValueError, "out_size"),
        (("z", lam, index), {}, TypeError, "z must be a torch.Tensor"),
    ]
    for args, kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            gen(*args, **kwargs)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="upsample"):
        MixBlock(4, upsample="bicubic")
    with pytest.raises(ValueError, match="in_channels"):
        SAMixGenerator(0)
    with pytest.raises(ValueError, match="attn_norm"):
        SAMixGenerator(4, attn_norm="l2")
    with pytest.raises(ValueError, match="lam_adjust_prob"):
        SAMixGenerator(4, lam_adjust_prob=1.5)
    with pytest.raises(ValueError, match="gamma_init"):
        SAMixGenerator(4, gamma_init=-0.5)
    with pytest.raises(TypeError, match="attention"):
        SAMixGenerator(4, attention="yes")
    with pytest.raises(ValueError, match="mixblock"):
        build_generator("automix", in_channels=4)
    assert list_generators() == ["mixblock", "mixer"]
    assert isinstance(build_generator("mixer", in_channels=4), SAMixGenerator)


# ---------------------------------------------------------------------- mask losses
def test_mask_losses_on_hand_made_masks():
    half = torch.zeros(2, 1, 4, 4)
    half[:, :, :, :2] = 1.0  # mean 0.5, binary: variance 1/4
    flat = torch.full((2, 1, 4, 4), 0.3)  # mean 0.3, variance 0
    lam = torch.tensor([0.8, 0.45])
    # |0.8 - 0.5| - 0.1 = 0.2 ; |0.45 - 0.5| - 0.1 < 0 -> 0
    torch.testing.assert_close(mask_l1_loss(half, lam, reduction="none"), torch.tensor([0.2, 0.0]))
    torch.testing.assert_close(mask_l1_loss(half, lam), torch.tensor(0.1))
    torch.testing.assert_close(mask_l1_loss(half, lam, reduction="sum"), torch.tensor(0.2))
    torch.testing.assert_close(mask_l1_loss(half, lam, margin=0.0), torch.tensor((0.3 + 0.05) / 2))
    torch.testing.assert_close(mask_l2_loss(half, lam, reduction="none"), torch.tensor([0.04, 0.0]))
    torch.testing.assert_close(mask_l2_loss(flat, 0.3, margin=0.0), torch.tensor(0.0))
    torch.testing.assert_close(mask_variance_loss(half), torch.tensor(0.0))
    torch.testing.assert_close(mask_variance_loss(flat), torch.tensor(0.25))
    quarter = torch.tensor([[[[0.0, 0.0, 0.0, 1.0]]]])  # mu 1/4, var 3/16
    torch.testing.assert_close(mask_variance_loss(quarter), torch.tensor(0.25 - 3 / 16))


@HYP
@given(b=st.integers(1, 5), n=st.integers(1, 30), margin=st.floats(0, 0.5), seed=st.integers(0, 2**16))
def test_mask_losses_equal_their_formulas(b, n, margin, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, 1, n, 2, generator=g, dtype=torch.float64)
    lam = torch.rand(b, generator=g, dtype=torch.float64)
    rows = mask.reshape(b, -1).tolist()
    mus = [sum(r) / len(r) for r in rows]
    l1 = [max(abs(la - mu) - margin, 0.0) for la, mu in zip(lam.tolist(), mus)]
    var = [sum((mu - v) ** 2 for v in r) / len(r) for r, mu in zip(rows, mus)]
    assert mask_l1_loss(mask, lam, margin).item() == pytest.approx(sum(l1) / b, abs=1e-6)
    assert mask_l2_loss(mask, lam, margin).item() == pytest.approx(sum(x * x for x in l1) / b, abs=1e-6)
    assert mask_variance_loss(mask).item() == pytest.approx(sum(0.25 - v for v in var) / b, abs=1e-6)
    assert 0.0 <= mask_variance_loss(mask).item() <= 0.25


def test_variance_loss_descent_makes_masks_more_binary():
    logits = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 0.1
    logits.requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    start = mask_variance_loss(torch.sigmoid(logits)).item()
    for _ in range(100):
        opt.zero_grad()
        mask_variance_loss(torch.sigmoid(logits)).backward()
        opt.step()
    mask = torch.sigmoid(logits)
    assert mask_variance_loss(mask).item() < start - 0.1
    assert ((mask < 0.1) | (mask > 0.9)).float().mean() > 0.8


def test_mask_loss_bad_input():
    with pytest.raises(ValueError, match="lam must have shape"):
        mask_l1_loss(torch.rand(2, 1, 2, 2), torch.rand(3))
    with pytest.raises(ValueError, match="margin"):
        mask_l1_loss(torch.rand(2, 1, 2, 2), 0.5, margin=-0.1)
    with pytest.raises(ValueError, match="reduction"):
        mask_l2_loss(torch.rand(2, 1, 2, 2), 0.5, reduction="max")
    with pytest.raises(TypeError, match="mask"):
        mask_variance_loss(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="mask"):
        mask_variance_loss(torch.rand(3))


def test_linear_weight():
    assert linear_weight(0.0) == pytest.approx(0.1)
    assert linear_weight(0.5) == pytest.approx(0.05)
    assert linear_weight(1.0) == pytest.approx(0.0)
    assert linear_weight(torch.tensor(0.25), start=1.0, end=0.2) == pytest.approx(0.8)
    values = [linear_weight(i / 10) for i in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="progress"):
        linear_weight(1.5)
    with pytest.raises(ValueError, match="progress"):
        linear_weight(float("nan"))
    with pytest.raises(TypeError, match="progress"):
        linear_weight("0.5")


# ---------------------------------------------------------------------- GPU (skipped without CUDA)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["mixblock", "mixer"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_large_features(name, dtype):
    torch.manual_seed(0)
    gen = GENERATOR_FACTORIES[name](64).cuda()
    z, lam, index = _inputs(b=8, c=64, h=8, w=8, scale=1e3)
    z = z.cuda().contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=dtype):
        out = gen(z, lam.cuda(), index.cuda(), out_size=(32, 32))
        loss = mask_l1_loss(out.mask_raw, lam.cuda()) + mask_variance_loss(out.mask_raw)
    loss.backward()
    assert out.mask.device.type == "cuda" and torch.isfinite(out.mask).all()
    assert out.attention.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in gen.parameters() if p.grad is not None)
