"""Training engine: config validation, schedules, atomic checkpoints, exact resume, DDP equivalence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_utils import make_fashion_mnist
from samix.engine import checkpoint as ckpt_mod
from samix.engine.config import ConfigError, load_config
from samix.engine.optim import Lamb, lr_factor

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.name=fashion_mnist", "model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=3",
    "optim.lr=0.05", "num_workers=0", "threads=1", "log_interval=1000",
]


@pytest.fixture()
def fm_root(tmp_path):
    return make_fashion_mnist(tmp_path / "data", n_train=120, n_test=60)


def _cfg(tmp_path, root, *extra):
    return load_config(None, TINY + [f"data.root={root}", f"out_dir={tmp_path / 'run'}", *extra])


# ------------------------------------------------------------------------------------------ config
def test_config_unknown_key_names_key_allowed_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("epochz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "epochz" in msg and str(p) in msg and "epochs" in msg


def test_config_nested_unknown_key_and_bad_choice(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  name: adam\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "optim.name" in str(e.value) and "sgd" in str(e.value) and "adam" in str(e.value)
    p.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(p)
    with pytest.raises(ConfigError, match="mixer.name"):
        load_config(None, ["mixer.name=mixupp"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["epochs"])


def test_config_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 7\noptim:\n  lr: 0.3\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nname: child\noptim:\n  weight_decay: 0.01\n")
    cfg = load_config(tmp_path / "child.yaml", ["epochs=9", "mixer.name=cutmix", "mixer.alpha=0.2"])
    assert cfg.epochs == 9 and cfg.optim.lr == 0.3 and cfg.optim.weight_decay == 0.01
    assert cfg.mixer.name == "cutmix" and cfg.mixer.alpha == 0.2 and cfg.out_dir == str(Path("runs/child"))


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(files) > 20
    for f in files:
        if f.name.startswith("_"):
            continue
        cfg = load_config(f)
        assert cfg.epochs >= 1, f


# ------------------------------------------------------------------------------------------ schedule
def test_cosine_schedule_endpoints_and_warmup():
    assert lr_factor(0, 100, 0) == pytest.approx(1.0)
    assert lr_factor(50, 100, 0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 0) == pytest.approx(0.0, abs=1e-12)
    # linear warmup from start_factor to 1, then cosine over the remaining iterations
    assert lr_factor(0, 110, 10, start_factor=0.1) == pytest.approx(0.1)
    assert lr_factor(5, 110, 10, start_factor=0.1) == pytest.approx(0.55)
    assert lr_factor(60, 110, 10) == pytest.approx(0.5)
    vals = [lr_factor(s, 100, 0) for s in range(101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_lamb_minimises_a_quadratic():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(10, 10))
    opt = Lamb([w], lr=0.05)
    target = torch.randn(10, 10)
    first = None
    for _ in range(200):
        loss = ((w - target) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


# ------------------------------------------------------------------------------------------ checkpoints
def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pt"
    ckpt_mod.atomic_torch_save({"a": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt_mod.atomic_torch_save({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt_mod.load_checkpoint(path)["a"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_rng_state_round_trip():
    g = torch.Generator().manual_seed(3)
    st = ckpt_mod.rng_state({"g": g})
    a = (torch.rand(3), torch.rand(2, generator=g))
    import numpy as np
    import random

    na, ra = np.random.rand(), random.random()
    ckpt_mod.set_rng_state(st, {"g": g})
    assert torch.equal(torch.rand(3), a[0]) and torch.equal(torch.rand(2, generator=g), a[1])
    assert np.random.rand() == na and random.random() == ra


# ------------------------------------------------------------------------------------------ runs
def _weights(run_dir: Path):
    return ckpt_mod.load_checkpoint(run_dir / "checkpoints" / "last.pt")["algorithm"]


def test_run_directory_contract_and_learning(tmp_path, fm_root):
    from samix.engine.trainer import train

    cfg = _cfg(tmp_path, fm_root, "epochs=4", "optim.lr=0.1", "data.preset=none")
    summary = train(cfg)
    run = Path(cfg.out_dir)
    for f in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "summary.json", "curves.png",
              "reliability.png"):
        assert (run / f).is_file(), f
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert {"epoch", "train_loss", "top1", "top5", "lr", "epoch_time_s"} <= set(r)
    s = json.loads((run / "summary.json").read_text())
    assert {"top1_last", "top1_best", "top1_median_last10", "ece", "epochs", "sec_per_iter"} <= set(s)
    assert s == summary and s["epochs"] == 4
    assert 0 <= s["top1_last"] <= 100 and 0 <= s["ece"] <= 100
    # the toy task is easy: the network must learn it (chance is 10%)
    assert s["top1_best"] > 50
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert any(p.name.startswith("events") for p in (run / "tb").iterdir())
    # a second start without resume must not overwrite the run
    with pytest.raises(FileExistsError, match="resume=true"):
        train(cfg)


@pytest.mark.parametrize("mixer", ["none", "mixup"])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, fm_root, monkeypatch, mixer):
    from samix.engine import trainer

    extra = (f"mixer.name={mixer}", "data.train_subset=100")
    full = trainer.train(_cfg(tmp_path / "full", fm_root, *extra))

    # Interrupt the second run in the middle of epoch 3 (after the epoch-2 checkpoint).
    calls = {"n": 0}
    orig = trainer.Progress.update

    def crash(self, i, loss_fn):
        if self.desc.startswith("epoch 3/") and i == 1:
            raise KeyboardInterrupt("simulated kill")
        return orig(self, i, loss_fn)

    monkeypatch.setattr(trainer.Progress, "update", crash)
    cfg = _cfg(tmp_path / "cut", fm_root, *extra)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(cfg)
    monkeypatch.setattr(trainer.Progress, "update", orig)
    assert ckpt_mod.load_checkpoint(Path(cfg.out_dir) / "checkpoints/last.pt")["epoch"] == 2
    resumed = trainer.train(_cfg(tmp_path / "cut", fm_root, *extra, "resume=true"))

    wa, wb = _weights(tmp_path / "full" / "run"), _weights(tmp_path / "cut" / "run")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["top1_last"] == full["top1_last"]
    rows = [json.loads(x) for x in (tmp_path / "cut" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path, fm_root):
    """2 CPU processes (torchrun, gloo) on the same global batch == 1 process, within tolerance.

    GroupNorm (not BatchNorm: its statistics are per process) and no random augmentation, so the only
    difference is how the gradient of the global batch is summed.
    """
    common = TINY + [f"data.root={fm_root}", "data.preset=none", "data.padding=null", "model.kwargs.norm=gn", "epochs=2",
                     "data.train_subset=80", "batch_size=20", "optim.lr=0.05", "eval.median_last=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cfg_file = str(REPO / "configs" / "fashion_mnist" / "vanilla.yaml")
    single = tmp_path / "single"
    r = subprocess.run([sys.executable, "-m", "samix.cli", "train", cfg_file, *common, f"out_dir={single}"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "samix.cli", "train", cfg_file, *common, f"out_dir={ddp}"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2
    wa, wb = _weights(single), _weights(ddp)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-4, rtol=1e-3), (k, (wa[k] - wb[k]).abs().max())
    # and training did happen: the loss went down in both runs
    for run in (single, ddp):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["train_loss"] < rows[0]["train_loss"]


# ------------------------------------------------------------------------------ fine-grained recipes
A3_ALPHA = {"mixup": 1.0, "cutmix": 1.0, "resizemix": 1.0, "saliencymix": 0.2, "fmix": 0.2, "manifoldmix": 0.5,
            "puzzlemix": 1.0}


@pytest.mark.parametrize("ds", ["cub200", "aircraft"])
def test_fine_grained_rows_follow_the_papers_protocol(ds):
    """samix.txt Table 3 / A.3 and automix.txt Sec. 5.2: 200 epochs, batch 16, lr 0.001, wd 5e-4,
    an ImageNet-pretrained local checkpoint, the alpha of A.3; AutoMix/SAMix alpha 2, Mix Block lr 0.01."""
    rows = sorted(p for p in (REPO / "configs" / ds).glob("*.yaml") if not p.name.startswith("_"))
    assert len(rows) == 20  # 9 methods + PuzzleMix (issue 19), R-18 and RX-50 each
    for p in rows:
        cfg = load_config(p)
        method = p.stem.rsplit("_", 1)[0]
        assert (cfg.epochs, cfg.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (200, 16, 0.001, 5e-4), p
        assert cfg.data.name == ds and cfg.data.image_size == 224 and cfg.model.pretrained, p
        if method in A3_ALPHA:
            assert cfg.mixer.name == method and cfg.mixer.alpha == A3_ALPHA[method], p
        elif method in ("automix", "samix"):
            assert cfg.algorithm.name == method and cfg.algorithm.alpha == 2.0 and cfg.mixer.name == "none", p
            assert cfg.algorithm.mix_block_lr == 0.01 and cfg.algorithm.stage == 3, p
        else:
            assert method == "vanilla" and cfg.mixer.name == "none" and cfg.algorithm.name == "supervised", p


def test_fine_grained_samix_row_starts_from_a_torchvision_checkpoint(tmp_path):
    """The shipped Aircraft SAMix row, end to end on a fake Aircraft folder (100 classes, real
    ImageFolder layout) at 32 px: a torchvision ResNet-18 state dict initialises the timm backbone
    (with lr 1e-9 its convolutions are still the checkpoint's after an epoch), the classifier
    is re-initialised for 100 classes."""
    torchvision = pytest.importorskip("torchvision")
    from fake_datasets import write_image_folder
    from samix.engine.trainer import train

    write_image_folder(tmp_path / "aircraft", classes=[f"c{i:03d}" for i in range(100)], n_per_class=1, size=8)
    torch.manual_seed(3)
    ref = torchvision.models.resnet18(weights=None).state_dict()
    weights = tmp_path / "resnet18-tv.pth"
    torch.save(ref, weights)
    cfg = load_config(REPO / "configs" / "aircraft" / "samix_r18.yaml", [
        f"data.root={tmp_path / 'aircraft'}", "data.image_size=32", f"model.pretrained={weights}", "epochs=1",
        "batch_size=25", "num_workers=0", "threads=1", "optim.lr=1e-9", "optim.weight_decay=0.0",
        "channels_last=false", "viz.every=0", "log_interval=1000", f"out_dir={tmp_path / 'run'}"])
    with pytest.warns(UserWarning, match="classifier"):
        summary = train(cfg)
    assert summary["epochs"] == 1
    sd = _weights(tmp_path / "run")
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight"):
        keys = [k for k in sd if k.endswith("net." + name)]
        assert keys, name
        for k in keys:  # the student and its EMA teacher
            assert torch.allclose(sd[k].float(), ref[name], atol=1e-6), k
    fc = [k for k in sd if k.endswith("net.fc.weight")]
    assert fc and all(sd[k].shape == (100, 512) for k in fc)


# ------------------------------------------------------------------------------ loss.decoupled_eta
@pytest.mark.parametrize("base", ["ce", "bce"])
def test_decoupled_eta_turns_the_configured_loss_into_decoupled_mixup(tmp_path, fm_root, base):
    from samix.data import dataset_info
    from samix.engine.trainer import build_algorithm_from_config
    from samix.losses import decoupled_mixup_loss

    cfg = _cfg(tmp_path, fm_root, "mixer.name=cutmix", "mixer.alpha=0.2", f"loss.name={base}",
               "loss.decoupled_eta=0.3", "loss.label_smoothing=0.1")
    algo = build_algorithm_from_config(cfg, dataset_info("fashion_mnist"), torch.device("cpu"),
                                       torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(8, 10, generator=g), torch.randint(0, 10, (8,), generator=g)
    index, lam = torch.randperm(8, generator=g), 0.37
    expected = decoupled_mixup_loss(logits, labels, lam, index, eta=0.3, loss=base, label_smoothing=0.1)
    plain = decoupled_mixup_loss(logits, labels, lam, index, eta=0.0, loss=base, label_smoothing=0.1)
    got = algo.loss_fn(logits, labels, lam, index)
    assert torch.allclose(got, expected) and not torch.allclose(got, plain)


def test_decoupled_eta_bad_values_name_the_key(tmp_path, fm_root):
    with pytest.raises(ConfigError, match=r"loss.decoupled_eta.*> 0.*-1"):
        _cfg(tmp_path, fm_root, "loss.decoupled_eta=-1")
    with pytest.raises(ConfigError, match=r"loss.decoupled_eta.*'ce'.*'bce'.*pbce"):
        _cfg(tmp_path, fm_root, "loss.name=pbce", "loss.decoupled_eta=0.1")
    with pytest.raises(ConfigError, match=r"loss.decoupled_eta.*> 0.*inf"):
        _cfg(tmp_path, fm_root, "loss.decoupled_eta=inf")
    for clash in ("eta=0.9", "loss=bce"):  # never silently overridden
        with pytest.raises(ConfigError, match=rf"loss.kwargs.{clash.split('=')[0]}.*conflicts"):
            _cfg(tmp_path, fm_root, "loss.decoupled_eta=0.3", f"loss.kwargs.{clash}")
    with pytest.raises(ConfigError, match=r"loss.kwargs.label_smoothing.*loss.label_smoothing"):
        _cfg(tmp_path, fm_root, "loss.kwargs.label_smoothing=0.1")


@pytest.mark.parametrize("base", ["ce", "bce"])
def test_decoupled_mixup_trains_the_automix_student_not_its_mix_block(tmp_path, fm_root, base):
    """With loss.decoupled_eta, AutoMix's student loss is DM; the Mix Block's objective stays the
    base mixed loss (DM's term ignores lambda)."""
    from samix.data import dataset_info
    from samix.engine.trainer import build_algorithm_from_config
    from samix.losses import build_loss, decoupled_mixup_loss

    cfg = _cfg(tmp_path, fm_root, "algorithm.name=automix", f"loss.name={base}", "loss.decoupled_eta=0.5",
               "loss.label_smoothing=0.1")
    algo = build_algorithm_from_config(cfg, dataset_info("fashion_mnist"), torch.device("cpu"),
                                       torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(8, 10, generator=g), torch.randint(0, 10, (8,), generator=g)
    index, lam = torch.randperm(8, generator=g), torch.full((8,), 0.3)
    dm = decoupled_mixup_loss(logits, labels, lam, index, eta=0.5, loss=base, label_smoothing=0.1)
    plain = build_loss(base, label_smoothing=0.1)(logits, labels, lam, index)
    assert torch.allclose(algo.loss_fn(logits, labels, lam, index), dm)
    assert torch.allclose(algo.generation_cls_loss(logits, labels, lam, index), plain)
    assert not torch.allclose(dm, plain)
