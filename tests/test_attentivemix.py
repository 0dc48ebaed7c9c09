"""AttentiveMix: the partner's k most active cells are pasted where they are, lambda is the kept share,
the activation pass leaves the model alone, and bad input gets a sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from samix.mixing import build_mixer
from samix.mixing.signals import last_activation
from samix.models import build_model

REPO = Path(__file__).resolve().parents[1]


def _am(**kw):
    return build_mixer("attentivemix", num_classes=10, generator=torch.Generator().manual_seed(0), **kw)


def test_the_partners_top_cells_are_pasted_in_place_and_lambda_is_the_kept_share():
    x = torch.randn(3, 1, 8, 8)
    act = torch.zeros(3, 4, 4)
    act[1, 0, 3], act[1, 2, 1] = 5.0, 4.0     # partner of sample 0 (index 1): its two most active cells
    act[2, 3, 3], act[2, 1, 0] = 3.0, 2.0
    act[0, 0, 0], act[0, 0, 1] = 9.0, 8.0
    index = torch.tensor([1, 2, 0])
    r = _am(top_k=2).mix(x, index=index, activation=act)
    want0 = torch.ones(4, 4)
    want0[0, 3] = want0[2, 1] = 0.0
    cell = r.mask[0, 0, ::2, ::2]                # one pixel per 2 x 2 cell
    assert torch.equal(cell, want0)
    assert torch.allclose(r.lam, torch.full((3,), 1 - 2 / 16))
    assert torch.allclose(r.lam, r.mask.flatten(1).mean(1))
    m = r.mask
    assert torch.equal(r.images, m * x + (1 - m) * x[index])


def test_the_default_share_is_the_papers_and_lam_mode_follows_the_draw():
    am = _am()
    assert am.cells_to_paste([0.5], 49, 2).tolist() == [6, 6]       # 6 of 7 x 7, the paper's N
    assert am.cells_to_paste([0.5], 16, 1).tolist() == [2]          # round(6/49 * 16)
    assert _am(top_k="lam").cells_to_paste([0.25], 16, 1).tolist() == [12]
    assert _am(top_k="lam").cells_to_paste([1.0], 16, 1).tolist() == [0]   # unmixed: nothing pasted


def test_the_activation_pass_is_eval_mode_without_gradient_and_changes_nothing():
    torch.manual_seed(0)
    model = build_model("preact_resnet18", num_classes=10, in_chans=1, width=0.25).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 28, 28)
    a = last_activation(model, x)
    assert a.shape == (4, 4, 4) and not a.requires_grad and model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    with torch.no_grad():
        assert torch.allclose(a, model.features(x, 4).mean(1))
    mixed, targets = _am()(x, torch.randint(0, 10, (4,)), model=model.train())
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_bad_inputs_get_a_sentence():
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(TypeError, match="activation"):
        _am().mix(x)
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        _am().mix(x, activation=torch.rand(2, 16))
    with pytest.raises(ValueError, match="top_k"):
        _am(top_k=0)
    with pytest.raises(TypeError, match="samix Backbone"):
        last_activation(torch.nn.Linear(3, 3), x)


def test_cpu_recipe_trains_an_epoch(tmp_path):
    from engine_utils import make_fashion_mnist
    from samix.engine import trainer
    from samix.engine.config import load_config

    root = make_fashion_mnist(tmp_path / "data", n_train=60, n_test=20)
    cfg = load_config(REPO / "configs/fashion_mnist/attentivemix.yaml", [
        "model.width=0.25", "batch_size=20", "epochs=1", "num_workers=0", "threads=1",
        "data.train_subset=null", f"data.root={root}", f"out_dir={tmp_path / 'run'}", "log_interval=1000"])
    s = trainer.train(cfg)
    assert 0 <= s["top1_last"] <= 100
