"""SMMix: the partner's most attended window replaces the original's least attended one, token by token;
lambda is the kept token share (or the mixed image's attention share), and bad input gets a sentence."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")

from samix.mixing import build_mixer  # noqa: E402
from samix.mixing.signals import class_token_attention  # noqa: E402
from samix.mixing.smmix import window_argextremes  # noqa: E402
from samix.mixing.transmix import AttentionWatch  # noqa: E402
from samix.models import build_model  # noqa: E402


def _sm(**kw):
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return build_mixer("smmix", num_classes=10, **kw)


def _vit():
    torch.manual_seed(0)
    return build_model("timm:vit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=28, patch_size=4, depth=4,
                       embed_dim=24, num_heads=3)


def test_window_extremes_on_a_hand_built_map():
    a = torch.full((1, 5, 5), 0.5)
    a[0, 3, 3] = 9.0     # the hot spot
    a[0, 0:2, 0:2] = 0.0  # the cold corner
    kmin, kmax = window_argextremes(a, 2)
    span = 4
    assert divmod(int(kmin[0]), span) == (0, 0)
    y, x = divmod(int(kmax[0]), span)
    assert y <= 3 <= y + 1 and x <= 3 <= x + 1


def test_the_partners_hottest_window_replaces_the_originals_coldest():
    b, g, p = 3, 7, 4
    x = torch.randn(b, 1, g * p, g * p)
    att = torch.rand(b, g, g) * 0.1
    att[:, 0:3, 0:3] = 0.0           # every image's cold window at the top left (for r <= 3)
    att[:, 4:7, 4:7] += 5.0          # and its hot one at the bottom right
    index = torch.tensor([1, 2, 0])
    for seed in range(6):
        r = _sm(generator=torch.Generator().manual_seed(seed), max_side_ratio=0.43).mix(x, index=index,
                                                                                      attention=att)
        side = int(round(((1 - float(r.lam[0])) * g * g) ** 0.5))
        assert 1 <= side <= 3
        assert torch.allclose(r.lam, r.mask.flatten(1).mean(1))
        keep = r.mask.bool().expand_as(x)
        assert torch.equal(r.images[keep], x[keep])
        for i in range(b):
            got = r.images[i, :, : side * p, : side * p]   # the cold top-left window, replaced
            # by the partner's most attended window, which lies in its hot bottom-right block
            assert any(torch.equal(got, x[index[i], :, y * p:(y + side) * p, xx * p:(xx + side) * p])
                       for y in range(4, 8 - side) for xx in range(4, 8 - side))


def test_the_attention_signal_and_the_attention_label_on_a_small_vit():
    vit = _vit().train()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    a = class_token_attention(vit, x, y)
    assert a.shape == (4, 7, 7) and vit.training and not a.requires_grad
    assert float(a.min()) >= 0 and bool((a.flatten(1).sum(1) <= 1 + 1e-5).all())
    r = _sm().mix_with_model(vit, x, y)
    assert r.images.shape == x.shape
    sm = _sm(label="attention")
    assert sm.relabels and isinstance(sm.watch(vit), AttentionWatch)
    with pytest.raises(TypeError, match="mixer.watch"):
        sm(x, y, model=vit)


def test_bad_inputs_get_a_sentence():
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(TypeError, match="attention"):
        _sm().mix(x)
    with pytest.raises(ValueError, match="square token grid"):
        _sm().mix(x, attention=torch.rand(2, 7, 4))
    with pytest.raises(TypeError, match="vision transformer"):
        class_token_attention(build_model("convnet", num_classes=10, in_chans=1, width=0.25), x)
    with pytest.raises(ValueError, match="label"):
        _sm(label="teacher")
