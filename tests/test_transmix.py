"""TransMix: lambda is the class token's attention share of the original's patches (hand-built maps), the
watch reads the last block's real attention without changing the forward pass, and bad use gets a sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

from samix.mixing import build_mixer  # noqa: E402
from samix.mixing.transmix import attention_share  # noqa: E402
from samix.models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VIT = dict(img_size=28, patch_size=4, depth=4, embed_dim=24, num_heads=3)


def _vit():
    torch.manual_seed(0)
    return build_model("timm:vit_tiny_patch16_224", num_classes=10, in_chans=1, **VIT)


def test_lambda_is_the_attention_share_of_the_kept_patches():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :, :2] = 1.0                        # the original keeps the left half: patches 0 and 2
    attn = torch.tensor([[0.4, 0.1, 0.3, 0.2]])    # 2 x 2 patches, raster order
    assert torch.allclose(attention_share(mask, attn, (2, 2)), torch.tensor([0.7]))
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2, :1] = 1.0                        # half of patch 0
    assert torch.allclose(attention_share(half, attn, (2, 2)), torch.tensor([0.2]))
    # unnormalised rows are renormalised over the patches
    assert torch.allclose(attention_share(mask, 2 * attn, (2, 2)), torch.tensor([0.7]))


def test_the_watch_reads_the_last_blocks_class_token_attention_and_changes_nothing():
    model = _vit().eval()
    tm = build_mixer("transmix", num_classes=10)
    x = torch.randn(3, 1, 28, 28)
    attn = model.net.blocks[-1].attn
    with torch.no_grad():
        plain = model(x)
        with tm.watch(model) as w:
            watched = model(x)
        # by hand: the last block's input tokens, its norm, q and k, softmax, class row, head mean
        net = model.net
        t = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))
        for blk in net.blocks[:-1]:
            t = blk(t)
        h = net.blocks[-1].norm1(t)
        b, n, c = h.shape
        qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)[:, :, 0, 1:].mean(1)
    assert torch.allclose(watched, plain, atol=1e-5)
    assert torch.allclose(w.row, a, atol=1e-6) and w.row.shape == (3, 49)
    assert attn.fused_attn is True and not attn.attn_drop._forward_pre_hooks   # restored, hook removed


def test_a_supervised_step_uses_the_attention_lambda():
    from samix.algorithms import build_algorithm

    model = _vit()
    tm = build_mixer("transmix", num_classes=10, generator=torch.Generator().manual_seed(0))
    algo = build_algorithm("supervised", model=model, num_classes=10, mixer=tm)
    seen = {}
    orig = type(tm).watch

    def spy(self, m, labels=None):
        w = orig(self, m, labels)
        relabel = w.relabel

        def keep(r):
            seen["area"] = r.mask.flatten(1).mean(1)
            out = relabel(r)
            seen["lam"] = out.lam
            return out

        w.relabel = keep
        return w

    type(tm).watch = spy
    try:
        x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
        out = algo((x, y))
    finally:
        type(tm).watch = orig
    assert torch.isfinite(out["loss"])
    lam = seen["lam"]
    assert bool(((lam >= 0) & (lam <= 1)).all()) and not torch.allclose(lam, seen["area"])


def test_bad_use_gets_a_sentence():
    tm = build_mixer("transmix", num_classes=10)
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="mixer.watch"):
        tm(x, y)
    with pytest.raises(TypeError, match="vision transformer"):
        tm.watch(build_model("convnet", num_classes=10, in_chans=1, width=0.25))
    from samix.algorithms import build_algorithm

    with pytest.raises(ValueError, match="use cutmix"):
        build_algorithm("moco", model=build_model("convnet", num_classes=10, in_chans=1, width=0.25),
                        num_classes=10, mixer=tm, queue_size=40)


def test_cpu_recipe_trains_an_epoch(tmp_path):
    from engine_utils import make_fashion_mnist
    from samix.engine import trainer
    from samix.engine.config import load_config

    root = make_fashion_mnist(tmp_path / "data", n_train=40, n_test=20)
    cfg = load_config(REPO / "configs/fashion_mnist/vit_transmix.yaml", [
        "model.kwargs.depth=4", "model.kwargs.embed_dim=24", "batch_size=20", "epochs=1", "num_workers=0",
        "threads=1", "data.train_subset=null", f"data.root={root}", f"out_dir={tmp_path / 'run'}",
        "log_interval=1000", "sched.warmup_epochs=0"])
    s = trainer.train(cfg)
    assert 0 <= s["top1_last"] <= 100
