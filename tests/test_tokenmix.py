"""TokenMix: a token-aligned mask of exactly round((1 - lam) N) partner tokens, lambda from the activation
maps' shares, the CAM signal on a ViT's patch map, and bad input gets a sentence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samix.mixing import build_mixer
from samix.mixing.tokenmix import block_token_mask
from samix.models import build_model


def _tm(**kw):
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    kw.setdefault("patch", 4)
    kw.setdefault("min_block", 4)
    kw.setdefault("label_maps", "sources")
    return build_mixer("tokenmix", num_classes=10, **kw)


@pytest.mark.parametrize("n", [0, 1, 5, 16, 30, 49])
def test_the_block_mask_holds_exactly_the_requested_tokens(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        assert int(block_token_mask(7, 7, n, rng, 4).sum()) == n


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mask_is_token_aligned_and_lambda_is_the_activation_share(mode):
    x = torch.randn(5, 1, 28, 28)
    uniform = torch.full((5, 28, 28), 1 / 784.0)
    for seed in range(4):
        r = _tm(mode=mode, generator=torch.Generator().manual_seed(seed)).mix(x, cam=uniform)
        if r.mask is None:
            continue
        m = r.mask[:, 0]
        tokens = m[:, ::4, ::4]
        assert torch.equal(m, tokens.repeat_interleave(4, 1).repeat_interleave(4, 2))   # whole tokens
        assert torch.equal(r.images, r.mask * x + (1 - r.mask) * x[r.index])
        # uniform maps: the activation share is the token share
        assert torch.allclose(r.lam, m.flatten(1).mean(1), atol=1e-6)
    # all of the original's activation on one kept token and the partner's on a pasted one: lam 1/2
    index = torch.roll(torch.arange(5), 1)
    r = _tm().mix(x, index=index, cam=uniform)
    m = r.mask[:, 0]
    cam = torch.zeros(5, 28, 28)
    kept = m.flatten(1).float().argmax(1)      # a pixel the original keeps
    pasted = (1 - m).flatten(1).float().argmax(1)
    for i in range(5):
        cam.view(5, -1)[i, kept[i]] = 1.0
    partner_cam = torch.zeros(5, 28, 28)
    for i in range(5):
        partner_cam.view(5, -1)[r.index[i], pasted[i]] = 1.0
    both = cam + partner_cam
    both = both / both.flatten(1).sum(1).view(-1, 1, 1)
    r2 = _tm().mix(x, index=r.index, cam=both)
    assert torch.equal(r2.mask, r.mask)   # the same draw: the same tokens
    w_a = (r2.mask[:, 0] * both).flatten(1).sum(1)
    w_b = ((1 - r2.mask[:, 0]) * both[r.index]).flatten(1).sum(1)
    assert torch.allclose(r2.lam, w_a / (w_a + w_b), atol=1e-6)


def test_on_a_small_vit_with_the_cam_signal():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = build_model("timm:vit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=28, patch_size=4, depth=4,
                      embed_dim=24, num_heads=3)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    r = _tm().mix_with_model(vit, x, y)
    assert bool(((r.lam >= 0) & (r.lam <= 1)).all())
    _, t = _tm()(x, y, model=vit)
    assert torch.allclose(t.sum(1), torch.ones(4))


def test_mixed_label_maps_read_the_same_forwards_tokens():
    """label_maps='mixed': lambda from the mixed image's own final patch tokens (a hook on the ViT's final
    norm), computed by hand here; no extra pass, and the drop-in call says how to use it."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = build_model("timm:vit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=28, patch_size=4, depth=4,
                      embed_dim=24, num_heads=3).eval()
    tm = _tm(label_maps="mixed")
    assert tm.requires == () and tm.relabels
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    r = tm.mix(x)
    with torch.no_grad():
        with tm.watch(vit, y) as w:
            vit(r.images)
        out = w.relabel(r)
        net = vit.net
        t = net.norm(net.blocks(net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(r.images))))))[:, 1:]
        fc = vit.get_classifier()
        act = lambda lbl: torch.relu(torch.einsum("bnc,bc->bn", t, fc.weight[lbl]) + fc.bias[lbl].view(-1, 1))  # noqa: E731
        m = r.mask[:, 0, ::4, ::4].flatten(1)
        w_a, w_b = (m * act(y)).sum(1), ((1 - m) * act(y[r.index])).sum(1)
    assert torch.allclose(out.lam, w_a / (w_a + w_b), atol=1e-5)
    with tm.watch(vit.train(), y) as w:   # in a training step: the label weight carries no gradient
        vit(r.images).sum()
    assert not w.relabel(r).lam.requires_grad
    with pytest.raises(TypeError, match="mixer.watch"):
        tm(x, y)
    with pytest.raises(TypeError, match="vision transformer"):
        tm.watch(build_model("convnet", num_classes=10, in_chans=1, width=0.25), y)


def test_bad_inputs_get_a_sentence():
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ValueError, match="patch 5 must divide"):
        _tm(patch=5).mix(x, cam=torch.rand(2, 28, 28))
    with pytest.raises(TypeError, match="cam"):
        _tm().mix(x)
    with pytest.raises(ValueError, match="patch"):
        _tm(patch=0)
    with pytest.raises(ValueError, match="label_maps"):
        _tm(label_maps="teacher")
