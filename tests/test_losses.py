"""Tests of samix.losses: each loss against its formula computed independently
(float64, explicit exp/log, per-sample Python loops allowed here), the
identities between losses, gradients, numerics and validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from samix import losses as L
from samix.mixing import MixResult
from samix.targets import mix_targets

SETTINGS = settings(max_examples=25, deadline=None)
CLASSIFICATION = ["ce", "soft_ce", "bce", "decoupled", "pbce", "eta_balanced"]


# ---------------------------------------------------------------------------- reference math (float64)
def ref_logsoftmax(row, drop=None):
    """log softmax of a list of floats, optionally with class ``drop`` removed from the normaliser."""
    m = max(v for c, v in enumerate(row) if c != drop)
    norm = m + math.log(sum(math.exp(v - m) for c, v in enumerate(row) if c != drop))
    return [v - norm for v in row]


def ref_log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_bce(x, t):
    return -(t * ref_log_sigmoid(x) + (1 - t) * ref_log_sigmoid(-x))


def ref_mixed_ce(z, y, lam, index, eps=0.0):
    out = []
    for i, row in enumerate(z):
        lp = ref_logsoftmax(row)
        k = len(row)
        a, b = y[i], y[index[i]]
        ce = lambda c: -(1 - eps) * lp[c] - eps * sum(lp) / k  # noqa: E731
        out.append(lam[i] * ce(a) + (1 - lam[i]) * ce(b))
    return out


def ref_pbce_softmax(z, y, lam, index):
    out = []
    for i, row in enumerate(z):
        a, b = y[i], y[index[i]]
        if a == b:
            out.append(0.0)
            continue
        ea, eb = math.exp(row[a]), math.exp(row[b])
        pa, pb = ea / (ea + eb), eb / (ea + eb)
        out.append(-lam[i] * math.log(pa) - (1 - lam[i]) * math.log(pb))
    return out


def ref_pbce_sigmoid(z, y, lam, index):
    out = []
    for i, row in enumerate(z):
        a, b = y[i], y[index[i]]
        if a == b:
            out.append(ref_bce(row[a], 1.0))
        else:
            out.append(ref_bce(row[a], lam[i]) + ref_bce(row[b], 1 - lam[i]))
    return out


def ref_decoupled_ce(z, y, lam, index, eta):
    mce = ref_mixed_ce(z, y, lam, index)
    out = []
    for i, row in enumerate(z):
        a, b = y[i], y[index[i]]
        reg = 0.0
        if a != b and 0 < lam[i] < 1:
            # phi^{a,b} = exp(z_a) / sum_{c != b} exp(z_c), written out
            phi_ab = math.exp(row[a]) / sum(math.exp(v) for c, v in enumerate(row) if c != b)
            phi_ba = math.exp(row[b]) / sum(math.exp(v) for c, v in enumerate(row) if c != a)
            reg = -math.log(phi_ab) - math.log(phi_ba)
        out.append(mce[i] + eta * reg)
    return out


def batch(b=5, k=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, k, generator=g, dtype=dtype) * 2
    y = torch.randint(0, k, (b,), generator=g)
    index = torch.randperm(b, generator=g)
    lam = torch.rand(b, generator=g, dtype=torch.float32)
    return z, y, lam, index


def lists(z, y, lam, index):
    return z.double().tolist(), y.tolist(), lam.double().tolist(), index.tolist()


def grad_of(fn, z):
    z = z.detach().clone().requires_grad_(True)
    fn(z).backward()
    return z.grad


# ---------------------------------------------------------------------------- soft-target CE
def test_soft_ce_matches_formula():
    z, y, lam, index = batch()
    t = torch.rand(5, 4, dtype=torch.float64)
    t = t / t.sum(1, keepdim=True)
    got = L.soft_target_cross_entropy(z, t, reduction="none")
    want = [-sum(tk * lk for tk, lk in zip(t[i].tolist(), ref_logsoftmax(z[i].tolist()))) for i in range(5)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    assert got.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_soft_ce_low_precision_is_computed_in_float32(dtype):
    z = (torch.randn(6, 10) * 30).to(dtype)
    t = torch.softmax(torch.randn(6, 10), 1)
    got = L.soft_target_cross_entropy(z, t)
    want = -(t * torch.log_softmax(z.float(), 1)).sum(1).mean()  # same rounded logits, float32 math
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------- mixed CE
@SETTINGS
@given(b=st.integers(1, 6), k=st.integers(2, 7), eps=st.sampled_from([0.0, 0.1, 0.3]),
       seed=st.integers(0, 2**16), probs=st.booleans())
def test_mixed_ce_equals_soft_ce_of_mixed_targets(b, k, eps, seed, probs):
    z, y, lam, index = batch(b, k, seed, torch.float32)
    labels = torch.softmax(torch.randn(b, k), 1) if probs else y
    got = L.mixed_cross_entropy(z, labels, lam, index, label_smoothing=eps, reduction="none")
    targets = mix_targets(labels, MixResult(images=z, lam=lam, index=index), num_classes=k, label_smoothing=eps)
    want = L.soft_target_cross_entropy(z, targets, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_mixed_ce_matches_formula():
    z, y, lam, index = batch()
    got = L.mixed_cross_entropy(z, y, lam, index, label_smoothing=0.1, reduction="none")
    want = ref_mixed_ce(*lists(z, y, lam, index), eps=0.1)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_mixed_ce_without_mixing_is_cross_entropy(eps):
    z, y, _, _ = batch(dtype=torch.float32)
    want = F.cross_entropy(z, y, label_smoothing=eps)
    for lam, index in [(1.0, torch.arange(5)), (torch.ones(5), torch.arange(5)), (None, None)]:
        torch.testing.assert_close(L.mixed_cross_entropy(z, y, lam, index, label_smoothing=eps), want)


def test_mixed_ce_gradient_is_softmax_minus_mixed_target():
    """The talk's gradient: dL/dz = softmax(z) - t (per sample; / B for the mean)."""
    z, y, lam, index = batch()
    g = grad_of(lambda x: L.mixed_cross_entropy(x, y, lam, index, reduction="sum"), z)
    t = mix_targets(y, MixResult(images=z, lam=lam, index=index), num_classes=4, dtype=torch.float64)
    torch.testing.assert_close(g, torch.softmax(z, 1) - t)


def test_scalar_lam_broadcasts():
    z, y, _, index = batch()
    a = L.mixed_cross_entropy(z, y, 0.3, index)
    b = L.mixed_cross_entropy(z, y, torch.full((5,), 0.3), index)
    c = L.mixed_cross_entropy(z, y, torch.tensor(0.3), index)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_reductions_are_consistent(name):
    z, y, lam, index = batch()
    per = L.build_loss(name, reduction="none")(z, y, lam, index)
    assert per.shape == (5,)
    torch.testing.assert_close(L.build_loss(name, reduction="sum")(z, y, lam, index), per.sum())
    torch.testing.assert_close(L.build_loss(name)(z, y, lam, index), per.mean())


# ---------------------------------------------------------------------------- mixed BCE
@pytest.mark.parametrize("threshold", [None, 0.2])
@pytest.mark.parametrize("sum_classes", [False, True])
def test_mixed_bce_matches_formula(threshold, sum_classes):
    z, y, lam, index = batch(6, 5, seed=3)
    lam = torch.tensor([0.1, 0.5, 0.9, 0.25, 0.0, 1.0])
    got = L.mixed_binary_cross_entropy(z, y, lam, index, label_smoothing=0.1, target_threshold=threshold,
                                       sum_classes=sum_classes, reduction="none")
    zl, yl, laml, il = lists(z, y, lam, index)
    want = []
    for i in range(6):
        t = [0.1 / 5] * 5
        t = [laml[i] * ((0.9 + 0.02) if c == yl[i] else 0.02)
             + (1 - laml[i]) * ((0.9 + 0.02) if c == yl[il[i]] else 0.02) for c in range(5)]
        if threshold is not None:
            t = [1.0 if v > threshold else 0.0 for v in t]
        per = [ref_bce(zl[i][c], t[c]) for c in range(5)]
        want.append(sum(per) if sum_classes else sum(per) / 5)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("sum_classes", [False, True])
def test_mixed_bce_agrees_with_timm(sum_classes):
    timm_loss = pytest.importorskip("timm.loss")
    z, y, lam, index = batch(6, 7, seed=4, dtype=torch.float32)
    targets = mix_targets(y, MixResult(images=z, lam=lam, index=index), num_classes=7, label_smoothing=0.1)
    ref = timm_loss.BinaryCrossEntropy(smoothing=0.0, target_threshold=0.2, sum_classes=sum_classes)
    got = L.mixed_binary_cross_entropy(z, y, lam, index, label_smoothing=0.1, target_threshold=0.2,
                                       sum_classes=sum_classes)
    torch.testing.assert_close(got, ref(z, targets))


# ---------------------------------------------------------------------------- decoupled mixup
def test_decoupled_ce_matches_formula():
    z, _, _, _ = batch(6, 5, seed=7)
    y = torch.tensor([0, 1, 2, 2, 3, 4])
    index = torch.tensor([1, 0, 3, 2, 5, 4])  # pair (2, 3) mixes one class with itself
    lam = torch.tensor([0.3, 0.3, 0.6, 0.6, 1.0, 0.5])  # sample 4 is unmixed (lam = 1)
    got = L.decoupled_mixup_loss(z, y, lam, index, eta=0.7, reduction="none")
    want = ref_decoupled_ce(*lists(z, y, lam, index), eta=0.7)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    mce = L.mixed_cross_entropy(z, y, lam, index, reduction="none")
    # the regulariser acts on genuine two-class mixes only
    assert torch.equal(got[2:5], mce[2:5])
    assert (got[[0, 1, 5]] > mce[[0, 1, 5]]).all()


def test_decoupled_regulariser_does_not_see_the_competitor():
    """-log phi^{a,b} ignores z_b: on a mix of classes 0 and 1 the regulariser's gradient is
    that of a softmax over {0, 2, 3} (class 0) plus one over {1, 2, 3} (class 1)."""
    z = torch.tensor([[1.0, 3.0, -0.5, 0.2]], dtype=torch.float64)
    y, index = torch.tensor([0, 1]), torch.tensor([1, 0])
    reg = lambda x: (L.decoupled_mixup_loss(x, y, 0.5, index, eta=1.0, reduction="none")  # noqa: E731
                     - L.mixed_cross_entropy(x, y, 0.5, index, reduction="none"))[0]
    g = grad_of(reg, torch.cat([z, z]))[0]
    p0 = torch.softmax(z[0, [0, 2, 3]], 0)
    p1 = torch.softmax(z[0, [1, 2, 3]], 0)
    want = torch.stack([-(1 - p0[0]), -(1 - p1[0]), p0[1] + p1[1], p0[2] + p1[2]])
    torch.testing.assert_close(g, want)


def test_decoupled_reduces_to_mce():
    z, y, lam, index = batch()
    torch.testing.assert_close(L.decoupled_mixup_loss(z, y, lam, index, eta=0.0),
                               L.mixed_cross_entropy(z, y, lam, index))
    torch.testing.assert_close(L.decoupled_mixup_loss(z, y, 1.0, torch.arange(5), eta=2.0),
                               F.cross_entropy(z, y))


def test_decoupled_bce_matches_formula():
    z, _, _, _ = batch(4, 6, seed=2)
    y, index = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0, 3, 2])
    lam = torch.tensor([0.3, 0.3, 0.5, 0.5])
    base = L.mixed_binary_cross_entropy(z, y, lam, index, target_threshold=0.2, reduction="none")
    got = L.decoupled_mixup_loss(z, y, lam, index, eta=0.5, loss="bce", target_threshold=0.2, reduction="none")
    zl = z.tolist()
    reg = [-(ref_log_sigmoid(zl[0][0]) + ref_log_sigmoid(zl[0][1])) / 6,
           -(ref_log_sigmoid(zl[1][1]) + ref_log_sigmoid(zl[1][0])) / 6, 0.0, 0.0]
    torch.testing.assert_close(got, base + 0.5 * torch.tensor(reg, dtype=torch.float64))


def test_decoupled_rejects_probability_labels_and_bce_options_with_ce():
    z, y, lam, index = batch()
    with pytest.raises(TypeError, match="integer class labels"):
        L.decoupled_mixup_loss(z, torch.softmax(z, 1), lam, index)
    with pytest.raises(ValueError, match="loss='bce' only"):
        L.decoupled_mixup_loss(z, y, lam, index, target_threshold=0.2)
    with pytest.raises(ValueError, match="loss='bce' only"):
        L.build_loss("decoupled", sum_classes=True)


# ---------------------------------------------------------------------------- pBCE and eta-balanced
@pytest.mark.parametrize("variant,ref", [("softmax", ref_pbce_softmax), ("sigmoid", ref_pbce_sigmoid)])
def test_pbce_matches_formula(variant, ref):
    z, _, _, _ = batch(6, 5, seed=11)
    y = torch.tensor([0, 1, 2, 2, 3, 4])
    index = torch.tensor([1, 0, 3, 2, 5, 4])
    lam = torch.tensor([0.2, 0.2, 0.6, 0.6, 1.0, 0.5])
    got = L.pbce_loss(z, y, lam, index, variant=variant, reduction="none")
    torch.testing.assert_close(got, torch.tensor(ref(*lists(z, y, lam, index)), dtype=torch.float64))


@pytest.mark.parametrize("variant,ref", [("softmax", ref_pbce_softmax), ("sigmoid", ref_pbce_sigmoid)])
def test_pbce_label_smoothing_smooths_the_pair_target(variant, ref):
    """eps moves the pair target lam to (1 - eps) lam + eps / 2; a same-class pair keeps target 1."""
    z, _, _, _ = batch(4, 5, seed=13)
    y, index = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0, 3, 2])
    lam = torch.tensor([0.2, 0.8, 0.6, 0.4], dtype=torch.float64)
    got = L.pbce_loss(z, y, lam, index, variant=variant, label_smoothing=0.3, reduction="none")
    zl, yl, laml, il = lists(z, y, lam, index)
    smoothed = [0.7 * v + 0.15 for v in laml]
    torch.testing.assert_close(got, torch.tensor(ref(zl, yl, smoothed, il), dtype=torch.float64))


@pytest.mark.parametrize("variant", ["softmax", "sigmoid"])
def test_pbce_is_local_to_the_pair(variant):
    """Classes outside the mixed pair get no gradient."""
    z, y, lam, index = batch(6, 8, seed=5)
    g = grad_of(lambda x: L.pbce_loss(x, y, lam, index, variant=variant), z)
    pair = torch.zeros_like(g, dtype=torch.bool)
    pair[torch.arange(6), y] = True
    pair[torch.arange(6), y[index]] = True
    assert (g[~pair] == 0).all()
    assert g[pair].abs().sum() > 0


@SETTINGS
@given(lam=st.floats(0.05, 0.95), shift=st.floats(-5, 5), other=st.floats(-10, 10))
def test_pbce_softmax_optimum_is_lam_smoothness(lam, shift, other):
    """Minimised (zero gradient) where z_a - z_b = log(lam / (1 - lam)), whatever the
    common offset and the other classes' logits."""
    za = shift + math.log(lam / (1 - lam))
    z = torch.tensor([[za, shift, other], [za, shift, -other]], dtype=torch.float64)
    lam_t = torch.tensor([lam, 1 - lam], dtype=torch.float64)
    y, index = torch.tensor([0, 1]), torch.tensor([1, 0])  # row 1: class 1 with share 1 - lam
    g = grad_of(lambda x: L.pbce_loss(x, y, lam_t, index, reduction="sum"), z)
    torch.testing.assert_close(g, torch.zeros_like(g), atol=1e-9, rtol=0)
    moved = z.clone()
    moved[:, 0] += 0.5
    assert L.pbce_loss(moved, y, lam_t, index) > L.pbce_loss(z, y, lam_t, index)


def test_pbce_same_class_pair_has_no_local_term():
    z = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([2, 2, 1])
    g = grad_of(lambda x: L.pbce_loss(x, y, torch.tensor([0.3, 0.7, 1.0]), torch.tensor([1, 0, 2])), z)
    assert (g == 0).all()


@pytest.mark.parametrize("variant", ["softmax", "sigmoid"])
def test_eta_balanced_matches_formula(variant):
    z = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 1.7, -2.0, 1.0], [-0.4, 0.1, 3.0, 0.8]],
                     dtype=torch.float64)
    y, index = torch.tensor([0, 1, 3]), torch.tensor([1, 0, 2])
    lam = torch.tensor([0.25, 0.75, 0.6])
    got = L.eta_balanced_loss(z, y, lam, index, eta=0.5, variant=variant, reduction="none")
    args = lists(z, y, lam, index)
    ref = ref_pbce_softmax if variant == "softmax" else ref_pbce_sigmoid
    want = [p + 0.5 * c for p, c in zip(ref(*args), ref_mixed_ce(*args))]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    # label smoothing reaches both terms
    got = L.eta_balanced_loss(z, y, lam, index, eta=0.5, variant=variant, label_smoothing=0.2, reduction="none")
    zl, yl, laml, il = args
    smoothed = [0.8 * v + 0.1 for v in laml]
    want = [p + 0.5 * c for p, c in zip(ref(zl, yl, smoothed, il), ref_mixed_ce(*args, eps=0.2))]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_eta_zero_is_pbce():
    z, y, lam, index = batch()
    torch.testing.assert_close(L.eta_balanced_loss(z, y, lam, index, eta=0.0), L.pbce_loss(z, y, lam, index))


def test_eta_changes_the_gradient():
    """grad l_eta = grad pBCE + eta * grad MCE: eta is not a no-op (it was in the reference code)."""
    z, y, lam, index = batch(6, 5, seed=9)
    grads = {eta: grad_of(lambda x: L.eta_balanced_loss(x, y, lam, index, eta=eta), z) for eta in (0.0, 0.1, 0.5)}
    g_ce = grad_of(lambda x: L.mixed_cross_entropy(x, y, lam, index), z)
    assert not torch.allclose(grads[0.1], grads[0.5])
    for eta, g in grads.items():
        torch.testing.assert_close(g, grads[0.0] + eta * g_ce)
    # the negative (non-pair) classes in particular receive eta-dependent gradient
    neg = torch.ones_like(z, dtype=torch.bool)
    neg[torch.arange(6), y] = False
    neg[torch.arange(6), y[index]] = False
    assert (grads[0.0][neg] == 0).all() and (grads[0.5][neg] != 0).all()


# ---------------------------------------------------------------------------- instance-level losses
def test_mixup_infonce_matches_formula():
    g = torch.Generator().manual_seed(1)
    zm, keys, queue = (torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (4, 4, 3))
    index, lam = torch.tensor([2, 3, 0, 1]), torch.tensor([0.2, 0.5, 0.7, 1.0])
    t = 0.5
    got = L.mixup_infonce(zm, keys, index, lam, temperature=t, queue=queue, normalize=False, reduction="none")
    dic = keys.tolist() + queue.tolist()
    want = []
    for i, q in enumerate(zm.tolist()):
        s = [sum(a * b for a, b in zip(q, d)) / t for d in dic]
        log_den = math.log(sum(math.exp(v) for v in s))
        nce = lambda k: -(s[k] - log_den)  # noqa: E731
        want.append(lam[i].item() * nce(i) + (1 - lam[i].item()) * nce(index[i].item()))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_mixup_infonce_without_mixing_is_infonce_and_normalises():
    zm, keys = torch.randn(5, 8), torch.randn(5, 8)
    qn, kn = F.normalize(zm, dim=1), F.normalize(keys, dim=1)
    want = F.cross_entropy(qn @ kn.T / 0.1, torch.arange(5))
    torch.testing.assert_close(L.mixup_infonce(zm, keys, None, None, temperature=0.1), want)
    torch.testing.assert_close(L.mixup_infonce(zm, keys, None, None, temperature=0.1),
                               L.mixup_infonce(qn, kn, None, None, temperature=0.1, normalize=False))


def test_nonparametric_bce_matches_formula_and_is_symmetric():
    g = torch.Generator().manual_seed(2)
    zm, zi, zj = (torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(3))
    lam, t = torch.tensor([0.1, 0.4, 0.5, 0.9], dtype=torch.float64), 0.3
    got = L.nonparametric_bce(zm, zi, zj, lam, temperature=t, normalize=False, reduction="none")
    want = []
    for m, i, j, la in zip(zm.tolist(), zi.tolist(), zj.tolist(), lam.tolist()):
        ei = math.exp(sum(a * b for a, b in zip(m, i)) / t)
        ej = math.exp(sum(a * b for a, b in zip(m, j)) / t)
        want.append(-la * math.log(ei / (ei + ej)) - (1 - la) * math.log(ej / (ei + ej)))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    swapped = L.nonparametric_bce(zm, zj, zi, 1 - lam, temperature=t, normalize=False, reduction="none")
    torch.testing.assert_close(swapped, got)
    same = L.nonparametric_bce(zm, zi, zi, lam, reduction="none")
    torch.testing.assert_close(same, torch.full((4,), math.log(2), dtype=torch.float64))


# ---------------------------------------------------------------------------- numerics
def _all_losses(z, y, lam, index):
    out = {n: L.build_loss(n)(z, y, lam, index) for n in CLASSIFICATION}
    out["decoupled_bce"] = L.decoupled_mixup_loss(z, y, lam, index, loss="bce", target_threshold=0.2)
    out["pbce_sigmoid"] = L.pbce_loss(z, y, lam, index, variant="sigmoid")
    emb = z[:, :4]  # embeddings are L2-normalised (the default), as in MoCo
    out["infonce"] = L.mixup_infonce(emb, emb.flip(0), index, lam, queue=emb[:2])
    out["npbce"] = L.nonparametric_bce(emb, emb.flip(0), emb.roll(1, 0), lam)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_extreme_logits_give_finite_values_and_gradients(dtype):
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(6, 5, generator=g).sign() * 1e4).to(dtype)
    y, index = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 0, 3, 2, 5, 4])
    lam = torch.tensor([0.3, 0.3, 0.5, 0.5, 0.9, 0.9])
    for name in _all_losses(base, y, lam, index):
        z = base.clone().requires_grad_(True)
        value = _all_losses(z, y, lam, index)[name]
        value.backward()
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        assert z.grad.dtype == dtype and torch.isfinite(z.grad).all(), name


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_bfloat16_close_to_float32(name):
    z, y, lam, index = batch(6, 5, seed=8, dtype=torch.float32)
    zb = z.to(torch.bfloat16)
    fn = L.build_loss(name)
    torch.testing.assert_close(fn(zb, y, lam, index), fn(zb.float(), y, lam, index))


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_every_loss_works_without_mixing(name):
    z, y, _, _ = batch(dtype=torch.float32)
    fn = L.build_loss(name)
    a = fn(z, y, torch.ones(5), torch.arange(5))
    torch.testing.assert_close(a, fn(z, y))
    torch.testing.assert_close(a, fn(z, y, 1.0, torch.arange(5)))
    if name in ("ce", "soft_ce", "decoupled"):
        torch.testing.assert_close(a, F.cross_entropy(z, y))


def test_soft_ce_entry_takes_mixer_targets():
    z, y, lam, index = batch(dtype=torch.float32)
    targets = mix_targets(y, MixResult(images=z, lam=lam, index=index), num_classes=4)
    fn = L.build_loss("soft_ce")
    torch.testing.assert_close(fn(z, targets), fn(z, y, lam, index))
    torch.testing.assert_close(fn(z, targets), L.build_loss("ce")(z, y, lam, index))


# ---------------------------------------------------------------------------- registry and validation
@pytest.mark.parametrize("name", CLASSIFICATION)
def test_every_loss_takes_label_smoothing(name):
    """The trainer passes label_smoothing to every configured loss; eps = 0 changes nothing."""
    z, y, lam, index = batch()
    torch.testing.assert_close(L.build_loss(name, label_smoothing=0.0)(z, y, lam, index),
                               L.build_loss(name)(z, y, lam, index))
    assert not torch.allclose(L.build_loss(name, label_smoothing=0.3)(z, y, lam, index),
                              L.build_loss(name)(z, y, lam, index))


def test_registry():
    assert set(CLASSIFICATION) <= set(L.list_losses())
    with pytest.raises(ValueError, match="known losses.*eta_balanced"):
        L.build_loss("focal")
    with pytest.raises(TypeError, match="unexpected option 'eta'"):
        L.build_loss("ce", eta=0.5)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        L.build_loss("eta_balanced", eta=-1.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        L.build_loss("pbce", reduction="avg")
    loss = L.build_loss("eta_balanced", eta=0.1)
    assert "eta=0.1" in repr(loss)
    z, y, lam, index = batch()
    torch.testing.assert_close(loss(z, y, lam, index), L.eta_balanced_loss(z, y, lam, index, eta=0.1))


BAD = [
    (dict(logits=[[0.0, 1.0]]), TypeError, "logits must be a torch.Tensor"),
    (dict(logits=torch.zeros(5, 4, dtype=torch.long)), TypeError, "logits must be a floating-point"),
    (dict(logits=torch.zeros(5)), ValueError, r"logits must be 2-D"),
    (dict(labels=torch.zeros(5)), TypeError, "integer dtype"),
    (dict(labels=torch.zeros(4, dtype=torch.long)), ValueError, r"expected shape \(5,\)"),
    (dict(labels=torch.tensor([0, 1, 2, 3, 4])), ValueError, r"labels must lie in \[0, 4\)"),
    (dict(labels=torch.zeros(5, 3)), ValueError, "probability labels must have the shape"),
    (dict(lam=torch.full((5,), 1.5)), ValueError, r"lam must lie in \[0, 1\]"),
    (dict(lam=torch.ones(4)), ValueError, "lam must be a float, a 0-d tensor or a"),
    (dict(lam=torch.ones(5, dtype=torch.long)), TypeError, "lam must be a floating-point"),
    (dict(lam="0.5"), TypeError, "lam must be a number"),
    (dict(lam=-0.1), ValueError, "lam must be >= 0"),
    (dict(index=torch.arange(4)), ValueError, r"index must have shape \(5,\)"),
    (dict(index=torch.arange(5.0)), TypeError, "index must have an integer dtype"),
    (dict(index=torch.tensor([0, 1, 2, 3, 5])), ValueError, r"index must lie in \[0, 5\)"),
    (dict(index=[0, 1, 2, 3, 4]), TypeError, "index must be a torch.Tensor"),
]


@pytest.mark.parametrize("bad,exc,msg", BAD)
@pytest.mark.parametrize("name", CLASSIFICATION)
def test_bad_input_raises_clear_errors(name, bad, exc, msg):
    z, y, lam, index = batch()
    args = dict(logits=z, labels=y, lam=lam, index=index)
    args.update(bad)
    if name in ("decoupled", "pbce", "eta_balanced") and "probability labels" in msg:
        exc, msg = TypeError, "integer class labels"
    with pytest.raises(exc, match=msg):
        L.build_loss(name)(args["logits"], args["labels"], args["lam"], args["index"])


def test_bad_options_and_embeddings():
    z, y, lam, index = batch()
    with pytest.raises(ValueError, match="label_smoothing must be <= 1"):
        L.mixed_cross_entropy(z, y, lam, index, label_smoothing=1.5)
    with pytest.raises(ValueError, match="target_threshold must be < 1"):
        L.mixed_binary_cross_entropy(z, y, lam, index, target_threshold=1.0)
    with pytest.raises(ValueError, match="variant must be one of"):
        L.pbce_loss(z, y, lam, index, variant="literal")
    with pytest.raises(ValueError, match="at least 2 columns"):
        L.decoupled_mixup_loss(z[:, :1], torch.zeros(5, dtype=torch.long), lam, index)
    with pytest.raises(ValueError, match="targets must have the shape of logits"):
        L.soft_target_cross_entropy(z, torch.zeros(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        L.mixup_infonce(z, z, index, lam, temperature=0.0)
    with pytest.raises(ValueError, match="keys must have 5 rows"):
        L.mixup_infonce(z, z[:4], index, lam)
    with pytest.raises(ValueError, match="queue must have 4 columns"):
        L.mixup_infonce(z, z, index, lam, queue=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="z_j must have 4 columns"):
        L.nonparametric_bce(z, z, z[:, :2], lam)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_keeps_device():
    z, y, lam, index = batch(6, 5, seed=12, dtype=torch.float32)
    for name in CLASSIFICATION:
        fn = L.build_loss(name)
        cpu = fn(z, y, lam, index)
        # lam and index may stay on the CPU: they follow the logits
        gpu = fn(z.cuda().half(), y.cuda(), lam, index)
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
        torch.testing.assert_close(gpu.cpu(), fn(z.half(), y, lam, index), rtol=1e-5, atol=1e-5)
        assert torch.isfinite(cpu)


def test_register_loss_rejects_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        L.register_loss("ce", lambda logits, labels, lam=None, index=None: logits.sum())
    with pytest.raises(TypeError, match="non-empty str"):
        L.register_loss("")
