"""SnapMix: label weights are the semantic shares of the two boxes, the loss is w_a L(y) + w_b L(y_j) through
the library's (lam, weight) convention, the CAM signal is a normalised class activation map, bad input gets a
sentence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from samix.losses import build_loss
from samix.mixing import build_mixer
from samix.mixing.signals import semantic_percent_map
from samix.models import build_model


def _sm(**kw):
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return build_mixer("snapmix", num_classes=10, **kw)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_weights_are_the_semantic_shares_and_the_original_is_kept_outside_the_box(mode):
    b, h, w = 6, 16, 16
    x = torch.randn(b, 1, h, w)
    uniform = torch.full((b, h, w), 1.0 / (h * w))
    for seed in range(5):
        r = _sm(mode=mode, generator=torch.Generator().manual_seed(seed)).mix(x, cam=uniform)
        if r.weight is None:  # nothing mixed
            continue
        w_a, w_b = r.lam * r.weight, (1 - r.lam) * r.weight
        # a uniform map: the original's share is the area outside its box, the mask's mean
        assert torch.allclose(w_a, r.mask.flatten(1).mean(1), atol=1e-6)
        assert bool(((w_b >= 0) & (w_b <= 1)).all())
        keep = r.mask.bool().expand_as(x)
        assert torch.equal(r.images[keep], x[keep])
    # all of each map's semantics in one pixel: the pasted share w_b is 1 if the partner's box holds that pixel,
    # 0 otherwise, and w_a likewise 0 or 1
    dot = torch.zeros(b, h, w)
    dot[:, 5, 5] = 1.0
    seen = set()
    for seed in range(20):
        r = _sm(mode=mode, generator=torch.Generator().manual_seed(seed)).mix(x, cam=dot)
        if r.weight is None:
            continue
        area = r.mask.flatten(1).mean(1)
        # both shares 0 (the dot pasted over and the partner's box missing its dot): the area fallback
        fallback = torch.isclose(r.weight, torch.ones_like(r.weight)) & torch.isclose(r.lam, area)
        w_a, w_b = r.lam * r.weight, (1 - r.lam) * r.weight
        for v in w_b[~fallback].tolist() + w_a[~fallback].tolist():
            assert min(abs(v), abs(v - 1)) < 1e-6
            seen.add(round(v))
    assert seen == {0, 1}


def test_the_loss_and_the_targets_are_wa_y_plus_wb_yj():
    torch.manual_seed(0)
    model = build_model("convnet", num_classes=10, in_chans=1, width=0.25)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    sm = _sm()
    r = sm.mix_with_model(model, x, y)
    w_a, w_b = r.lam * r.weight, (1 - r.lam) * r.weight
    logits = torch.randn(8, 10)
    want = (w_a * F.cross_entropy(logits, y, reduction="none") +
            w_b * F.cross_entropy(logits, y[r.index], reduction="none")).mean()
    got = build_loss("ce")(logits, y, r.lam, r.index, weight=r.weight)
    assert torch.allclose(got, want, atol=1e-6)
    _, targets = _sm()(x, y, model=model)
    r2 = _sm().mix_with_model(model, x, y)
    oh = F.one_hot(y, 10).float()
    want_t = (r2.lam * r2.weight).unsqueeze(1) * oh + ((1 - r2.lam) * r2.weight).unsqueeze(1) * oh[r2.index]
    assert torch.allclose(targets, want_t, atol=1e-6)


def test_the_cam_signal_is_the_normalised_class_activation_map():
    torch.manual_seed(0)
    model = build_model("preact_resnet18", num_classes=10, in_chans=1, width=0.25).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    s = semantic_percent_map(model, x, y)
    assert s.shape == (4, 28, 28) and float(s.min()) >= 0 and torch.allclose(s.flatten(1).sum(1), torch.ones(4))
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        h = F.relu(model.features(x, 4))
        fc = model.get_classifier()
        cam = torch.einsum("bchw,bc->bhw", h, fc.weight[y]) + fc.bias[y].view(-1, 1, 1)
        # the map is exact for a pool-then-linear head: its mean is the label's logit
        assert torch.allclose(cam.flatten(1).mean(1), model(x).gather(1, y.view(-1, 1)).squeeze(1), atol=1e-4)
        up = F.interpolate(cam.unsqueeze(1), size=(28, 28), mode="bilinear", align_corners=False).squeeze(1)
        up = up - up.flatten(1).min(1).values.view(-1, 1, 1)
        assert torch.allclose(s, up / up.flatten(1).sum(1).view(-1, 1, 1), atol=1e-6)


def test_bad_inputs_get_a_sentence():
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(TypeError, match="cam"):
        _sm().mix(x)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        _sm().mix(x, cam=torch.rand(2, 8, 8))
    with pytest.raises(TypeError, match="linear classifier"):
        semantic_percent_map(torch.nn.Conv2d(1, 1, 1), x, torch.tensor([0, 1]))
