"""BatchNorm recalibration of the encoder written by ``samix export-mixer`` (issue 15): the teacher's
statistics were accumulated over clean *and* mixed batches, the Mixer reads clean images only."""

from __future__ import annotations

import copy

import pytest
import torch

from engine_utils import make_fashion_mnist
from samix.algorithms.base import TransformedDataset
from samix.cli import main
from samix.engine.assembly import _transforms, labeled_train_set
from samix.engine.config import load_config
from samix.engine.evaluate_run import load_run_without_data
from samix.engine.export import export_mixer, recalibrate_batchnorm
from samix.engine.trainer import train
from samix.pretrained import load_pretrained_mixer, read_mixer_metadata

TINY = ["data.name=fashion_mnist", "model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=1",
        "optim.lr=0.05", "num_workers=0", "threads=1", "log_interval=1000", "algorithm.name=samix",
        "algorithm.momentum=0.9"]


@pytest.fixture(scope="module")
def samix_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("bn_run")
    root = make_fashion_mnist(base / "data", n_train=60, n_test=20)
    run = base / "run"
    train(load_config(None, TINY + [f"data.root={root}", f"out_dir={run}"]))
    return root, run


def _bn_stats(module):
    return {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in module.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def _stats_by_hand(encoder, images, batch_size):
    """Per BN layer: the mean over batches of each batch's channel mean and unbiased variance, the inputs
    taken in a train-mode forward (what a BN layer with momentum=None accumulates), computed with hooks."""
    enc = copy.deepcopy(encoder).train()
    sums, hooks = {}, []
    for name, m in enc.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            def hook(mod, inp, name=name):
                x = inp[0].double()
                mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)
                s = sums.setdefault(name, [0, 0, 0])
                s[0], s[1], s[2] = s[0] + mean, s[1] + var, s[2] + 1
            hooks.append(m.register_forward_pre_hook(hook))
    xs = torch.stack([images[i][0] for i in range(len(images))])
    with torch.no_grad():
        for x in xs.split(batch_size):
            enc(x)
    return {n: (s[0] / s[2], s[1] / s[2]) for n, s in sums.items()}


def test_exported_encoder_bn_statistics_equal_those_recomputed_on_clean_training_images(samix_run, tmp_path):
    _, run = samix_run
    out = tmp_path / "mixer.safetensors"
    assert main(["export-mixer", str(run), str(out)]) == 0
    cfg, info, algo, _ = load_run_without_data(run)
    _, encoder, stage = algo.mask_generator()
    trained = _bn_stats(encoder)
    images = TransformedDataset(labeled_train_set(cfg), _transforms(cfg, info)[1])
    want = _stats_by_hand(encoder, images, int(cfg.batch_size))
    got = _bn_stats(load_pretrained_mixer(out).encoder)
    assert got, "the exported encoder has BatchNorm layers"
    moved = 0
    for name, (mean, var) in got.items():
        torch.testing.assert_close(mean.double(), want[name][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var.double(), want[name][1], rtol=1e-4, atol=1e-5)
        moved += int(not torch.allclose(mean, trained[name][0], atol=1e-4))
    assert moved > 0, "recalibration left every BN layer's statistics as trained"
    meta = read_mixer_metadata(out)
    assert meta.source["bn_recalibration"] == {"images": 60, "batches": 3}


def test_no_bn_recalibrate_keeps_the_training_statistics(samix_run, tmp_path):
    _, run = samix_run
    out = tmp_path / "mixer.safetensors"
    assert main(["export-mixer", str(run), str(out), "--no-bn-recalibrate"]) == 0
    _, _, algo, _ = load_run_without_data(run)
    trained = _bn_stats(algo.mask_generator()[1])
    pm = load_pretrained_mixer(out)
    for name, (mean, var) in _bn_stats(pm.encoder).items():
        torch.testing.assert_close(mean, trained[name][0], rtol=0, atol=0)
        torch.testing.assert_close(var, trained[name][1], rtol=0, atol=0)
    assert read_mixer_metadata(out).source["bn_recalibration"] == "off"


def test_missing_training_images_warn_and_export_the_training_statistics(samix_run, tmp_path, monkeypatch):
    """An export on a machine without the dataset still writes the file, with a warning naming data.root."""
    import samix.engine.export as export

    _, run = samix_run

    def missing(cfg):
        raise FileNotFoundError(f"Fashion-MNIST not found under {cfg.data.root}")

    monkeypatch.setattr(export, "labeled_train_set", missing)
    with pytest.warns(UserWarning, match="not recalibrated.*data.root"):
        meta = export_mixer(run, tmp_path / "m.safetensors")
    assert meta.source["bn_recalibration"].startswith("skipped")
    _, _, algo, _ = load_run_without_data(run)
    trained = _bn_stats(algo.mask_generator()[1])
    for name, (mean, _) in _bn_stats(load_pretrained_mixer(tmp_path / "m.safetensors").encoder).items():
        torch.testing.assert_close(mean, trained[name][0], rtol=0, atol=0)


def test_recalibration_uses_at_most_bn_batches_and_names_a_bad_count(samix_run, tmp_path):
    _, run = samix_run
    meta = export_mixer(run, tmp_path / "m.safetensors", bn_batches=1)
    assert meta.source["bn_recalibration"] == {"images": 20, "batches": 1}
    with pytest.raises(ValueError, match="bn_batches"):
        export_mixer(run, tmp_path / "m2.safetensors", bn_batches=0)


def test_recalibrate_batchnorm_restores_the_mode_and_keeps_weights():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    w = copy.deepcopy(net.state_dict())
    data = [(torch.randn(1, 8, 8) * 3 + 2, 0) for _ in range(10)]
    info = recalibrate_batchnorm(net, data, batch_size=4, max_batches=5)
    assert info == {"images": 10, "batches": 3} and not net.training and net[1].momentum == 0.1
    assert torch.equal(net[0].weight, w["0.weight"]) and not torch.equal(net[1].running_mean, w["1.running_mean"])
