"""samix.models backbones (CIFAR ResNets, PreAct, WRN, convnet, timm adapters), local weights, ManifoldMix."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from samix.algorithms.manifold import manifold_forward
from samix.mixing import build_mixer, list_mixers
from samix.models import Backbone, build_model, list_models
from samix.models.weights import classifier_keys, load_pretrained, read_state_dict, save_weights

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

torch.set_num_threads(1)

NUM_CLASSES = 5
# every registered model at a small width; transformers at a small image size
SMALL = {
    "deit_small": dict(width=0.25, img_size=32, patch_size=8),
    "vit_small": dict(width=0.25, img_size=32, patch_size=8),
    "swin_tiny": dict(width=0.25, img_size=32),
}
EXPECTED_MODELS = {"resnet18", "resnet34", "resnet50", "resnet101", "resnext50", "wrn28_8", "preact_resnet18",
                   "convnet", "timm_resnet18", "timm_resnet50", "deit_small", "vit_small", "swin_tiny"}
ALL_MODELS = sorted(set(list_models()) | {"timm:convnext_atto"})
_CACHE: dict = {}


def small_kwargs(name: str) -> dict:
    return dict(SMALL.get(name, {"width": 0.25}))


def small_model(name: str, in_chans: int = 1) -> Backbone:
    """One small instance per (name, in_chans), built once (eval mode)."""
    key = (name, in_chans)
    if key not in _CACHE:
        torch.manual_seed(0)
        _CACHE[key] = build_model(name, num_classes=NUM_CLASSES, in_chans=in_chans, **small_kwargs(name)).eval()
    return _CACHE[key]


def soft_ce(logits, targets):
    return -(targets * F.log_softmax(logits, 1)).sum(1).mean()


# ------------------------------------------------------------------------------ interface, all models
def test_registry_has_every_backbone():
    assert EXPECTED_MODELS <= set(list_models())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_interface(name):
    model = small_model(name, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
        assert len(model.stage_channels) == 4
        sizes = []
        for stage in range(0, 5):
            h = model.features(x, stage)
            assert h.dim() == 4 and h.shape[0] == 2
            if stage:
                assert h.shape[1] == model.stage_channels[stage - 1], (stage, h.shape)
            sizes.append(h.shape[-1])
            torch.testing.assert_close(model.forward_from(h, stage), logits, rtol=1e-5, atol=1e-5)
    assert sizes == sorted(sizes, reverse=True)  # resolution never grows with depth


@pytest.mark.parametrize("name", ALL_MODELS)
def test_width_scales_channels(name):
    small = small_model(name)
    kw = small_kwargs(name)
    kw["width"] = 2 * kw["width"]
    wide = build_model(name, num_classes=NUM_CLASSES, in_chans=1, **kw)
    assert all(w > s for w, s in zip(wide.stage_channels, small.stage_channels))
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in small.parameters())


# torchvision ResNets are the same networks with a 7x7 stem: parameter counts must agree once the stem
# conv is swapped for the 3x3 CIFAR stem (an independent check of block layout, widths and groups).
@pytest.mark.parametrize("ours, theirs", [("resnet18", "resnet18"), ("resnet34", "resnet34"),
                                          ("resnet50", "resnet50"), ("resnet101", "resnet101"),
                                          ("resnext50", "resnext50_32x4d")])
def test_cifar_resnets_match_torchvision_counts(ours, theirs):
    with torch.device("meta"):
        a = build_model(ours, num_classes=100)
        b = getattr(torchvision.models, theirs)(num_classes=100)
    count_b = sum(p.numel() for p in b.parameters()) - b.conv1.weight.numel() + 64 * 3 * 3 * 3
    assert sum(p.numel() for p in a.parameters()) == count_b
    last = [getattr(b, f"layer{i}")[-1] for i in range(1, 5)]
    assert a.stage_channels == tuple((blk.bn3 if hasattr(blk, "bn3") else blk.bn2).num_features for blk in last)


def test_cifar_stem_resolution_and_widths():
    x = torch.randn(1, 3, 32, 32)
    model = build_model("resnet18", num_classes=3, width=0.25).eval()
    assert model.stage_channels == (16, 32, 64, 128)  # width 0.25 = base width 16
    assert [model.features(x, s).shape[-1] for s in range(5)] == [32, 32, 16, 8, 4]  # no max-pool
    assert build_model("preact_resnet18", num_classes=3, width=0.25).stage_channels == (16, 32, 64, 128)


def test_wrn_layout():
    with torch.device("meta"):
        wrn = build_model("wrn28_8", num_classes=10)
        wrn10 = build_model("wrn28_8", num_classes=10, widen=10)
    assert wrn.stage_channels == (128, 256, 512, 512)  # stage 4 = final BN-ReLU
    assert sum(len(s) for s in wrn.stages[:3]) == 12  # (28 - 4) / 6 = 4 blocks per group
    # WRN-28-10 on CIFAR-10 has 36.5M parameters (Zagoruyko & Komodakis, Table 1 / reference code: 36,479,194)
    assert sum(p.numel() for p in wrn10.parameters()) == 36_479_194
    model = build_model("wrn28_8", num_classes=3, width=0.125).eval()
    x = torch.randn(2, 3, 16, 16)
    h3, h4 = model.features(x, 3), model.features(x, 4)
    assert h3.shape == h4.shape
    torch.testing.assert_close(h4, torch.relu(model.stages[3][0](h3)))


def test_zero_init_residual_makes_blocks_identities():
    for name in ("resnet18", "resnet50"):
        model = build_model(name, num_classes=3, width=0.125, zero_init_residual=True).eval()
        block = model.stages[0][1]  # identity shortcut
        h = model.features(torch.randn(2, 3, 8, 8), 1)  # post-ReLU, so relu(h + 0) == h
        torch.testing.assert_close(block(h), h)
        plain = build_model(name, num_classes=3, width=0.125).eval()
        assert not torch.allclose(plain.stages[0][1](h), h)


def test_in_chans_and_num_classes_zero():
    model = build_model("preact_resnet18", num_classes=0, in_chans=1, width=0.25).eval()
    feats = model(torch.randn(3, 1, 28, 28))  # the CPU recipe: 1 channel, 28x28
    assert feats.shape == (3, model.stage_channels[-1])
    model.reset_classifier(4)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)


@pytest.mark.parametrize("kwargs, err", [
    (dict(num_classes=-1), ValueError), (dict(num_classes=3, width=0.0), ValueError),
    (dict(num_classes=3, width="wide"), TypeError), (dict(num_classes=3, in_chans=0), ValueError),
    (dict(num_classes=3, norm="ln"), ValueError), (dict(num_classes=3, drop_rate=1.5), ValueError),
])
def test_bad_arguments(kwargs, err):
    with pytest.raises(err, match="num_classes|width|in_chans|norm|drop_rate"):
        build_model("convnet", **kwargs)


def test_unknown_names_and_stages():
    with pytest.raises(ValueError, match="known models: .*resnet18.*timm:<name>"):
        build_model("resnet19", num_classes=3)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model("timm:not_a_model", num_classes=3)
    with pytest.raises(ValueError, match="EfficientNet.*supported families"):
        build_model("timm:efficientnet_b0", num_classes=3)
    from samix.models.timm_backbones import timm_resnet18

    with pytest.raises(TypeError, match="never download"):
        timm_resnet18(num_classes=3, pretrained=True)
    model = small_model("convnet")
    for stage in (5, -1, 1.0):
        with pytest.raises(ValueError, match="stage"):
            model.features(torch.randn(1, 1, 8, 8), stage)


@pytest.mark.parametrize("norm", ["gn", "none", "bn"])
def test_convnet_norm_batch_independence(norm):
    """In train mode a GroupNorm/no-norm convnet treats samples independently (the DDP test relies on
    it); BatchNorm does not."""
    torch.manual_seed(0)
    model = build_model("convnet", num_classes=3, norm=norm, width=0.25).train()
    x = torch.randn(4, 3, 16, 16)
    full, half = model(x)[:2], model(x[:2])
    assert torch.allclose(full, half, atol=1e-5) == (norm != "bn")


@pytest.mark.parametrize("name", ["convnet", "resnet18", "swin_tiny"])
def test_channels_last_kept(name):
    model = small_model(name, in_chans=3)  # (a 1-channel NCHW tensor is also channels_last)
    x = torch.randn(2, 3, 32, 32)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        h = model.features(xc, 2)
        assert h.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model.forward_from(h, 2), model(x), rtol=1e-4, atol=1e-5)


def test_timm_namespace_and_views():
    a = build_model("timm:resnet18", num_classes=3, width=0.25)
    b = build_model("timm_resnet18", num_classes=3, width=0.25)
    assert a.state_dict().keys() == b.state_dict().keys() and a.stage_channels == b.stage_channels
    # views share the parameters of net and split them without overlap
    stem_ids = {id(p) for p in a.stem.parameters()}
    stage_ids = [{id(p) for p in s.parameters()} for s in a.stages]
    head_ids = {id(p) for p in a.get_classifier().parameters()}
    groups = [stem_ids, *stage_ids, head_ids]
    assert sum(len(g) for g in groups) == len({id(p) for p in a.parameters()})
    assert set().union(*groups) == {id(p) for p in a.parameters()}
    # ViT: stem (patch embed, cls token, pos embed) + 4 block groups + final norm + head = everything
    vit = small_model("vit_small")
    parts = [vit.stem, *vit.stages, vit.net.norm, vit.net.fc_norm, vit.net.head]
    ids = [{id(p) for p in m.parameters()} for m in parts]
    assert sum(map(len, ids)) == len(set().union(*ids)) == len(list(vit.parameters()))
    assert id(vit.net.cls_token) in ids[0] and id(vit.net.pos_embed) in ids[0]
    with torch.no_grad():
        x = torch.randn(1, 1, 32, 32)
        tokens = vit.stem(x)
        for stage in vit.stages:
            tokens = stage(tokens)
        torch.testing.assert_close(vit.forward_head_tokens(tokens), vit(x))


@pytest.mark.parametrize("name, indices", [("vit_small", [2, 5, 8, 11]), ("swin_tiny", [0, 1, 2, 3])])
def test_transformer_features_match_timm_intermediates(name, indices):
    """Stage maps equal timm's own ``forward_intermediates`` (ViT: after blocks 3, 6, 9, 12)."""
    model = small_model(name, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = model.net.forward_intermediates(x, indices=indices, intermediates_only=True, norm=False)
        for stage, r in enumerate(ref, start=1):
            torch.testing.assert_close(model.features(x, stage), r)


def test_vit_prefix_tokens_cache():
    model = small_model("vit_small", in_chans=1)
    assert model.block_groups == [(0, 3), (3, 6), (6, 9), (9, 12)]
    x, y = torch.randn(2, 1, 32, 32), torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        h, prefix = model.features_with_prefix(x, 2)
        assert h.shape == (2, model.stage_channels[1], 4, 4) and prefix.shape == (2, 1, h.shape[1])
        torch.testing.assert_close(model.forward_from(h, 2, prefix_tokens=prefix), model(x))
        model.features(y, 2)  # cache now holds a batch of 3
        with pytest.raises(ValueError, match="class/register tokens"):
            model.forward_from(h, 2)
        with pytest.raises(ValueError, match="class/register tokens"):
            model.forward_from(model.features(y, 1)[:2], 1)
    # a cache holding an autograd graph does not break deepcopy (EMA teachers are deep copies)
    model.features(x.requires_grad_(), 3)
    clone = copy.deepcopy(model)
    assert clone._token_cache is None and model._token_cache is not None
    model.clear_cache()


# ------------------------------------------------------------------------------------- local weights
def test_weights_round_trip_safetensors(tmp_path):
    src = build_model("resnet18", num_classes=4, width=0.125).eval()
    with torch.no_grad():  # make BN statistics non-trivial so they must be loaded too
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    path = save_weights(src, tmp_path / "r18.safetensors")
    dst = build_model("resnet18", num_classes=4, width=0.125, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_weights_head_mismatch_skipped_with_warning(tmp_path):
    src = build_model("convnet", num_classes=10, width=0.25).eval()
    path = save_weights(src, tmp_path / "c.safetensors")
    with pytest.warns(UserWarning, match="classifier"):
        dst = build_model("convnet", num_classes=3, width=0.25, pretrained=path).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(dst.features(x, 4), src.features(x, 4))
    assert dst(x).shape == (2, 3)
    assert set(classifier_keys(dst)) == {"head.fc.weight", "head.fc.bias"}


def test_weights_errors(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_model("convnet", num_classes=3, pretrained=missing)
    path = save_weights(build_model("convnet", num_classes=3, width=0.25), tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="another shape"):  # same keys, other width
        build_model("convnet", num_classes=3, width=0.5, pretrained=path)
    with pytest.raises(ValueError, match="do not fit CifarResNet.*missing"):  # another architecture
        build_model("resnet18", num_classes=3, width=0.25, pretrained=path)
    torch.save({"epoch": 1}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="no state dict"):
        build_model("convnet", num_classes=3, pretrained=tmp_path / "meta.pt")
    with pytest.raises(TypeError, match="pretrained"):
        build_model("convnet", num_classes=3, pretrained=True)
    bad = tmp_path / "w.npz"
    bad.write_bytes(b"0")
    with pytest.raises(ValueError, match="safetensors"):
        read_state_dict(bad)
    sd = build_model("convnet", num_classes=3, width=0.25).state_dict()
    sd.pop("stem.0.weight")
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="missing.*stem.0.weight"):
        build_model("convnet", num_classes=3, width=0.25, pretrained=tmp_path / "partial.pt")


def test_weights_from_training_checkpoint_and_plain_timm(tmp_path):
    # a samix training checkpoint: {"algorithm": {"model.<key>": ..., "ema.<key>": ...}, "epoch": ...}
    src = build_model("convnet", num_classes=3, width=0.25).eval()
    algo = {f"model.{k}": v for k, v in src.state_dict().items()}
    algo.update({f"ema.{k}": torch.zeros_like(v) for k, v in src.state_dict().items()})
    torch.save({"algorithm": algo, "epoch": 3}, tmp_path / "last.pt")
    dst = build_model("convnet", num_classes=3, width=0.25)
    result = load_pretrained(dst, tmp_path / "last.pt")
    assert result.prefix_rule == "dropped 'model.'" and len(result.ignored) == len(src.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(dst.eval()(x), src(x))
    # a plain timm state dict (no "net." prefix) loads into the timm adapter
    net = timm.create_model("resnet18", num_classes=3, channels=(16, 32, 64, 128)).eval()
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "timm.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, nothing to warn about
        ours = build_model("timm_resnet18", num_classes=3, width=0.25, pretrained=tmp_path / "timm.safetensors")
    torch.testing.assert_close(ours.eval()(x), net(x))


# ----------------------------------------------------------------------------------------- ManifoldMix
def make_mm(seed=0, **kw):
    kw.setdefault("num_classes", NUM_CLASSES)
    return build_mixer("manifoldmix", generator=torch.Generator().manual_seed(seed), **kw)


def test_manifoldmix_registered():
    assert "manifoldmix" in list_mixers()
    mm = make_mm()
    assert mm.needs_model and mm.stages == (0, 1, 2)


def test_manifoldmix_call_is_input_mixup():
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, targets = make_mm(3, stages=(1, 2))(x, y)
    ref_mixed, ref_targets = build_mixer("mixup", num_classes=NUM_CLASSES,
                                         generator=torch.Generator().manual_seed(3))(x, y)
    torch.testing.assert_close(mixed, ref_mixed)
    torch.testing.assert_close(targets, ref_targets)


@pytest.mark.parametrize("name", ["convnet", "resnet18", "vit_small"])
def test_manifoldmix_identity_when_lam_is_one(name):
    model = small_model(name, in_chans=1)
    x, y = torch.randn(3, 1, 32, 32), torch.tensor([0, 4, 2])

    class LamOne(type(make_mm())):
        def sample_lam(self, batch_size, alpha=None):
            return super().sample_lam(batch_size, alpha) * 0 + 1.0

    mm = LamOne(stages=(0, 1, 2, 3, 4), num_classes=NUM_CLASSES, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = model(x)
        for stage in range(5):
            logits, targets, res = manifold_forward(mm, model, x, y, stage=stage)
            assert res.stage == stage and torch.equal(res.lam, torch.ones(3))
            torch.testing.assert_close(logits, clean, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(targets, F.one_hot(y, NUM_CLASSES).float())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(["batch", "elem"]), stage=st.integers(0, 4))
def test_manifoldmix_mixes_the_hidden_map(seed, mode, stage):
    """``result.images == lam * h + (1 - lam) * h[index]`` with ``h = features(x, k)`` (the input at
    k = 0), the logits continue from that map, and targets mix with the same (lam, index)."""
    model = small_model("convnet", in_chans=1)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, 1, 16, 16, generator=g), torch.randint(0, NUM_CLASSES, (4,), generator=g)
    mm = make_mm(seed, stages=(0, 1, 2, 3, 4), mode=mode, alpha=2.0)
    with torch.no_grad():
        logits, targets, res = manifold_forward(mm, model, x, y, stage=stage)
        h = x if stage == 0 else model.features(x, stage)
        lam = res.lam.view(-1, 1, 1, 1)
        expected = lam * h + (1 - lam) * h[res.index]
        torch.testing.assert_close(res.images, expected)
        ref = model(expected) if stage == 0 else model.forward_from(expected, stage)
        torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    onehot = F.one_hot(y, NUM_CLASSES).float()
    torch.testing.assert_close(targets, res.lam[:, None] * onehot + (1 - res.lam[:, None]) * onehot[res.index])
    assert sorted(res.index.tolist()) == [0, 1, 2, 3]
    if mode == "batch":
        assert torch.unique(res.lam).numel() == 1


def test_manifoldmix_vit_mixes_class_token_too():
    model = small_model("vit_small", in_chans=1)
    x, y = torch.randn(3, 1, 32, 32), torch.tensor([1, 2, 3])
    mm = make_mm(5, mode="elem")
    with torch.no_grad():
        logits, _, res = manifold_forward(mm, model, x, y, stage=2)
        h, prefix = model.features_with_prefix(x, 2)
        w = res.lam.view(-1, 1, 1, 1)
        torch.testing.assert_close(res.images, torch.lerp(h[res.index], h, w))
        ref = model.forward_from(res.images, 2, prefix_tokens=torch.lerp(prefix[res.index], prefix, w[..., 0]))
        torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
        unmixed_cls = model.forward_from(res.images, 2, prefix_tokens=prefix)
    assert not torch.allclose(logits, unmixed_cls, atol=1e-4)


@pytest.mark.parametrize("name, stage", [("convnet", 2), ("resnet18", 1), ("vit_small", 3), ("resnet18", 0)])
def test_manifoldmix_gradients_reach_every_parameter(name, stage):
    model = small_model(name, in_chans=1)
    model.zero_grad(set_to_none=True)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    logits, targets, _ = manifold_forward(make_mm(2), model, x, y, stage=stage)
    soft_ce(logits, targets).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    first = next(p for p in model.parameters())
    assert first.grad.abs().sum() > 0  # reaches the stem through the mixed map
    model.zero_grad(set_to_none=True)


def test_manifoldmix_stage_draws():
    mm = make_mm(11, stages=(0, 2, 3))
    draws = [mm.sample_stage() for _ in range(300)]
    assert set(draws) == {0, 2, 3}
    assert all(60 < draws.count(s) < 140 for s in (0, 2, 3))  # uniform: 100 +- 8.2 expected, a ~5 sigma band
    again = make_mm(11, stages=(0, 2, 3))
    assert [again.sample_stage() for _ in range(300)] == draws
    model = small_model("convnet")
    x, y = torch.randn(2, 1, 16, 16), torch.tensor([0, 1])
    with torch.no_grad():
        run1 = manifold_forward(make_mm(4, stages=(1, 2, 3)), model, x, y)
        run2 = manifold_forward(make_mm(4, stages=(1, 2, 3)), model, x, y)
    assert run1[2].stage == run2[2].stage and torch.equal(run1[0], run2[0])


def test_manifoldmix_errors():
    for bad, err in [((), ValueError), ((-1,), ValueError), ((1, 1), ValueError), ("12", TypeError),
                     ((0.5,), ValueError)]:
        with pytest.raises(err, match="stages"):
            make_mm(stages=bad)
    x, y = torch.randn(2, 1, 16, 16), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="beyond"):
        manifold_forward(make_mm(stages=(5,)), small_model("convnet"), x, y)
    with pytest.raises(TypeError, match="Backbone"):
        manifold_forward(make_mm(stages=(1,)), torch.nn.Conv2d(1, 1, 1), x, y)
    with pytest.raises(ValueError, match="labels"):
        manifold_forward(make_mm(), small_model("convnet"), x, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("name", ["convnet", "vit_small"])
def test_float64_kept_through_features_and_manifoldmix(name):
    model = copy.deepcopy(small_model(name, in_chans=1)).double()
    x, y = torch.randn(2, 1, 32, 32, dtype=torch.float64), torch.tensor([0, 1])
    with torch.no_grad():
        h = model.features(x, 2)
        assert h.dtype == torch.float64
        torch.testing.assert_close(model.forward_from(h, 2), model(x))
        logits, targets, res = manifold_forward(make_mm(0), model, x, y, stage=2)
    assert logits.dtype == res.images.dtype == torch.float64 and targets.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "wrn28_8", "timm_resnet18", "vit_small",
                                  "swin_tiny"])
def test_cuda_channels_last_bf16(name):
    model = build_model(name, num_classes=NUM_CLASSES, **small_kwargs(name)).cuda().eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 3], device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = model(x)
        for stage in range(5):
            h = model.features(x, stage)
            assert h.device.type == "cuda" and (h.shape[1] == 1 or h.is_contiguous(memory_format=torch.channels_last))
            torch.testing.assert_close(model.forward_from(h, stage).float(), ref.float(), rtol=2e-2, atol=2e-2)
        mm = build_mixer("manifoldmix", num_classes=NUM_CLASSES, generator=torch.Generator("cuda").manual_seed(0))
        logits, targets, res = manifold_forward(mm, model, x, y, stage=2)
    assert logits.device.type == targets.device.type == res.index.device.type == "cuda"
    assert res.images.is_contiguous(memory_format=torch.channels_last)
