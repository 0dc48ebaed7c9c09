"""AugMix + JSD: identical views give zero JSD, the loss equals its formula, the three views share one crop,
bad input gets a sentence, and the CPU recipe trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("timm")

from samix.algorithms import build_algorithm  # noqa: E402
from samix.data import AugMixDataset, build_transform  # noqa: E402
from samix.mixing import build_mixer  # noqa: E402
from samix.models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _algo(**kw):
    torch.manual_seed(0)
    return build_algorithm("augmix", model=build_model("convnet", num_classes=10, in_chans=1, width=0.25),
                           num_classes=10, **kw)


def test_identical_views_give_zero_jsd_and_the_clean_cross_entropy():
    algo = _algo().eval()   # eval: BatchNorm treats the three copies alike
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    out = algo(((x, x, x), y))
    assert torch.allclose(out["loss"], out["ce_clean"], atol=1e-6)
    assert torch.allclose(out["ce_clean"], F.cross_entropy(algo.model(x), y), atol=1e-6)


def test_the_loss_is_ce_plus_twelve_times_the_jensen_shannon_divergence():
    algo = _algo().eval()
    x, y = torch.randn(5, 1, 28, 28), torch.randint(0, 10, (5,))
    v1, v2 = x + 0.5 * torch.randn_like(x), x.flip(-1)
    out = algo(((x, v1, v2), y))
    with torch.no_grad():
        ps = [F.softmax(algo.model(v), 1) for v in (x, v1, v2)]
        m = torch.stack(ps).mean(0).clamp(1e-7, 1).log()
        jsd = sum(F.kl_div(m, p, reduction="batchmean") for p in ps) / 3
        want = F.cross_entropy(algo.model(x), y) + 12.0 * jsd
    assert jsd > 0 and torch.allclose(out["loss"], want, atol=1e-5)


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=4):
        g = np.random.default_rng(0)
        self.items = [(Image.fromarray(g.integers(0, 255, (28, 28), dtype=np.uint8)), i % 10) for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_the_three_views_share_one_crop_and_the_augmix_views_differ():
    t = build_transform("grayscale", True, "fashion_mnist")
    ds = AugMixDataset(_Images(), t)
    torch.manual_seed(3)
    (clean, a1, a2), label = ds[1]
    torch.manual_seed(3)
    assert torch.equal(clean, t(ds.dataset[1][0]))   # the clean view is the recipe's own transform
    assert clean.shape == a1.shape == a2.shape == (1, 28, 28) and a1.dtype == torch.float32
    assert not torch.equal(a1, clean) and not torch.equal(a1, a2) and label == 1
    assert list(ds.targets) == [i % 10 for i in range(4)]


def test_bad_inputs_get_a_sentence():
    with pytest.raises(ValueError, match="remove mixer.name=mixup"):
        _algo(mixer=build_mixer("mixup"))
    x, y = torch.randn(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)
    with pytest.raises(TypeError, match="clean, augmix_1, augmix_2"):
        _algo()(((x, x), y))
    with pytest.raises(TypeError, match="preset transform"):
        AugMixDataset(_Images(), lambda im: im)
    with pytest.raises(ValueError, match="severity"):
        AugMixDataset(_Images(), build_transform("grayscale", True, "fashion_mnist"), severity=0)
    with pytest.raises(ValueError, match="jsd_weight"):
        _algo(jsd_weight=-1)


def test_cpu_recipe_trains_an_epoch(tmp_path):
    from engine_utils import make_fashion_mnist
    from samix.engine import trainer
    from samix.engine.config import load_config

    root = make_fashion_mnist(tmp_path / "data", n_train=60, n_test=20)
    cfg = load_config(REPO / "configs/fashion_mnist/augmix.yaml", [
        "model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=1", "num_workers=0", "threads=1",
        "data.train_subset=null", f"data.root={root}", f"out_dir={tmp_path / 'run'}", "log_interval=1000"])
    s = trainer.train(cfg)
    assert 0 <= s["top1_last"] <= 100
