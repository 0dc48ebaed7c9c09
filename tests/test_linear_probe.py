"""samix.evaluate.linear_probe: frozen backbone (eval-mode BN, no grad), schedule, modes, config checks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from samix.evaluate.linear_probe import LinearProbeConfig, train_linear_probe
from samix.models import build_model

torch.set_num_threads(1)
NUM_CLASSES = 4


def separable(n, seed):
    """Each class is a fixed random 16x16 pattern plus noise (the patterns are shared across seeds)."""
    patterns = torch.randn(NUM_CLASSES, 3, 16, 16, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % NUM_CLASSES
    return patterns[y] + 0.5 * torch.randn(n, 3, 16, 16, generator=g), y


def loaders(shuffle=True):
    xtr, ytr = separable(128, 0)
    xte, yte = separable(64, 1)
    g = torch.Generator().manual_seed(0)
    return (DataLoader(TensorDataset(xtr, ytr), batch_size=32, shuffle=shuffle, generator=g),
            DataLoader(TensorDataset(xte, yte), batch_size=50))


def backbone():
    torch.manual_seed(0)
    model = build_model("convnet", num_classes=NUM_CLASSES, width=0.25)
    with torch.no_grad():  # non-default running statistics
        model.train()
        model(torch.randn(16, 3, 16, 16) * 2 + 0.5)
    return model


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["features", "end_to_end"])
def test_probe_learns_and_leaves_the_backbone_untouched(mode):
    model = backbone()
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)  # a mixed set of flags must come back as it was
    flags = [p.requires_grad for p in model.parameters()]
    before = snapshot(model)
    train, test = loaders()
    seen = []
    cfg = LinearProbeConfig(epochs=15, lr=0.1, batch_size=32, milestones=(10,), mode=mode)
    out = train_linear_probe(model, train, test, NUM_CLASSES, "cpu", cfg, progress=False, on_epoch=seen.append)
    assert out["mode"] == mode and len(out["rows"]) == 15 and seen == out["rows"]
    assert out["top1_last"] > 90.0, out["rows"]
    assert out["top1_best"] >= out["top1_median_last10"] >= min(r["top1"] for r in out["rows"][-10:])
    assert set(out["rows"][0]) == {"epoch", "train_loss", "top1", "top5", "lr"}
    assert out["feature_dim"] == model.num_features
    # the backbone: every tensor bitwise unchanged (BN running stats included), flags and mode restored
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training and all(m.training for m in model.modules())


def test_features_and_end_to_end_agree_with_an_identity_transform():
    cfg = dict(epochs=30, lr=0.1, batch_size=32, milestones=(20,))
    res = {}
    for mode in ("features", "end_to_end"):
        train, test = loaders()
        res[mode] = train_linear_probe(backbone(), train, test, NUM_CLASSES, "cpu",
                                       LinearProbeConfig(mode=mode, **cfg), progress=False)
    f, e = res["features"], res["end_to_end"]
    assert abs(f["top1_last"] - e["top1_last"]) <= 5.0
    assert f["top1_last"] > 90.0
    for rf, re in zip(f["rows"][::5], e["rows"][::5]):  # the loss curves track each other
        assert re["train_loss"] == pytest.approx(rf["train_loss"], rel=0.05)
    # same features, same init: the two heads point the same way
    wf, we = f["head"].weight.flatten(), e["head"].weight.flatten()
    assert torch.nn.functional.cosine_similarity(wf, we, dim=0) > 0.9


def test_milestones_multiply_the_lr_by_gamma():
    train, test = loaders()
    cfg = LinearProbeConfig(epochs=6, lr=0.2, milestones=(2, 4), gamma=0.5, batch_size=64)
    out = train_linear_probe(backbone(), train, test, NUM_CLASSES, "cpu", cfg, progress=False)
    assert [r["epoch"] for r in out["rows"]] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in out["rows"]] == pytest.approx([0.2, 0.2, 0.1, 0.1, 0.05, 0.05])


def test_defaults_follow_samix_a4():
    cfg = LinearProbeConfig()
    assert (cfg.epochs, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.milestones, cfg.gamma,
            cfg.mode) == (100, 0.1, 0.9, 0.0, 256, (60, 80), 0.1, "features")


def test_seed_makes_the_probe_reproducible():
    runs = []
    for _ in range(2):
        train, test = loaders()
        runs.append(train_linear_probe(backbone(), train, test, NUM_CLASSES, "cpu",
                                       LinearProbeConfig(epochs=2, seed=7, batch_size=16), progress=False))
    assert runs[0]["rows"] == runs[1]["rows"]
    assert torch.equal(runs[0]["head"].weight, runs[1]["head"].weight)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(epochs=0), "epochs"),
        (dict(epochs=2.5), "epochs"),
        (dict(lr=0.0), "lr"),
        (dict(lr=-0.1), "lr"),
        (dict(mode="finetune"), "mode"),
        (dict(momentum=1.0), "momentum"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(batch_size=0), "batch_size"),
        (dict(milestones=(80, 60)), "milestones"),
        (dict(milestones=5), "milestones"),
        (dict(gamma=0.0), "gamma"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"LinearProbeConfig\.{field} must") as err:
        LinearProbeConfig(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(err.value)


def test_num_classes_below_the_labels_raises():
    train, test = loaders()
    with pytest.raises(ValueError, match="num_classes"):
        train_linear_probe(backbone(), train, test, 3, "cpu", LinearProbeConfig(epochs=1), progress=False)
