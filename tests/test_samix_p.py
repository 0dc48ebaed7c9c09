"""SAMix-P: export of a trained Mixer + encoder stages, the frozen ``samix_p`` policy, and Decoupled
Mixup wired through the engine's loss config."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_utils import make_fashion_mnist
from samix.generators import MixBlock, SAMixGenerator, lambda_adjust
from samix.pretrained import (
    encoder_state_dict,
    load_pretrained_mixer,
    prune_encoder,
    read_mixer_metadata,
    save_pretrained_mixer,
    write_mixer_metadata,
)
from samix.mixing import build_mixer
from samix.models import build_model

REPO = Path(__file__).resolve().parents[1]
HYP = settings(max_examples=25, deadline=None)
C10_MEAN, C10_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.2435, 0.2616)  # samix.data cifar10 statistics
TINY = ["data.name=fashion_mnist", "model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=1",
        "optim.lr=0.05", "num_workers=0", "threads=1", "log_interval=1000"]


# ------------------------------------------------------------------------------------ fixtures
def _tiny_parts(kind: str, seed: int = 0):
    """A convnet encoder (16x16 RGB) whose BN running statistics are not the defaults, and a generator."""
    torch.manual_seed(seed)
    enc = build_model("convnet", num_classes=10, in_chans=3, width=0.25)
    enc.train()
    with torch.no_grad():
        for _ in range(3):
            enc(torch.randn(8, 3, 16, 16) * 2 + 0.5)  # moves the running statistics away from (0, 1)
    enc.eval()
    c = int(enc.stage_channels[2])
    gen = SAMixGenerator(c) if kind == "mixer" else MixBlock(c, upsample="bilinear")
    gen.train()
    with torch.no_grad():
        if kind == "mixer":  # a non-zero gamma and BN statistics in the content module
            gen.gamma_raw.fill_(0.7)
            gen(enc.features(torch.randn(8, 3, 16, 16), 3), torch.rand(8), torch.randperm(8))
    gen.eval()
    return enc, gen


def _save(path, enc, gen, **kw):
    args = dict(stage=3, backbone="convnet", width=0.25, in_chans=3, input_size=16, mean=C10_MEAN, std=C10_STD,
                dataset="cifar10", num_classes=10)
    args.update(kw)
    return save_pretrained_mixer(path, gen, enc, **args)


@pytest.fixture(scope="module")
def mixer_file(tmp_path_factory):
    enc, gen = _tiny_parts("mixer")
    path = tmp_path_factory.mktemp("pm") / "mixer.safetensors"
    _save(path, enc, gen)
    return path, enc, gen


@pytest.fixture(scope="module")
def samix_run(tmp_path_factory):
    """A tiny SAMix run (convnet, toy Fashion-MNIST, 1 epoch) and its exported Mixer (through the CLI)."""
    from samix.cli import main
    from samix.engine.config import load_config
    from samix.engine.trainer import train

    base = tmp_path_factory.mktemp("samix_run")
    root = make_fashion_mnist(base / "data", n_train=60, n_test=20)
    run = base / "run"
    train(load_config(None, TINY + [f"data.root={root}", f"out_dir={run}", "algorithm.name=samix",
                                    "algorithm.momentum=0.9"]))
    out = base / "exported" / "mixer.safetensors"
    assert main(["export-mixer", str(run), str(out)]) == 0
    return root, run, out


# ------------------------------------------------------------------------------------ export / import
@pytest.mark.parametrize("kind", ["mixer", "mixblock"])
def test_export_then_import_gives_identical_masks(tmp_path, kind):
    enc, gen = _tiny_parts(kind, seed=1)
    path = tmp_path / "m.safetensors"
    meta = _save(path, enc, gen)
    assert meta.generator == kind and meta.feature_size == (2, 2) and meta.channels == enc.stage_channels[2]
    pm = load_pretrained_mixer(path)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 16, 16, generator=g)
    lam = torch.rand(6, generator=g)
    index = torch.randperm(6, generator=g)
    with torch.no_grad():
        z = enc.features(x, 3)
        if kind == "mixer":
            want = gen(z, lam, index, out_size=(16, 16), adjust=True).mask
        else:
            want = lambda_adjust(gen(z, lam, index, out_size=(16, 16)).mask_raw, lam)
    got = pm(x, lam, index).mask
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the encoder's BN running statistics travelled too (they are not the defaults)
    bn_mean = [v for k, v in encoder_state_dict(pm.encoder, 3).items() if k.endswith("running_mean")]
    assert bn_mean and all(v.abs().sum() > 0 for v in bn_mean)


def test_loaded_encoder_is_pruned_to_stem_and_stages_up_to_l(mixer_file):
    path, enc, _ = mixer_file
    pm = load_pretrained_mixer(path)
    keys = set(pm.encoder.state_dict())
    assert keys == set(encoder_state_dict(enc, 3))
    assert all(k.startswith(("stem.", "stages.0.", "stages.1.", "stages.2.")) for k in keys)
    assert isinstance(pm.encoder.stages[3], torch.nn.Identity) and isinstance(pm.encoder.head, torch.nn.Identity)
    x = torch.randn(2, 3, 16, 16)
    # the frozen encoder runs in channels_last: compare with the same layout, bit for bit (contiguous
    # and channels_last convolutions may round differently, by ~1e-7, on some CPUs)
    enc_cl = copy.deepcopy(enc).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(pm.features(x), enc_cl.features(x.contiguous(memory_format=torch.channels_last), 3),
                                   rtol=0, atol=0)


def test_prune_keeps_features_of_a_view_based_timm_backbone():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build_model("timm_resnet18", num_classes=5, in_chans=3, width=0.125).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model.features(x, 2)
    keep = set(encoder_state_dict(model, 2))
    assert keep and not any(k.startswith(("net.layer3", "net.layer4", "net.fc")) for k in keep)
    prune_encoder(model, 2)
    assert set(model.state_dict()) == keep
    with torch.no_grad():
        torch.testing.assert_close(model.features(x, 2), want, rtol=0, atol=0)


def test_cli_export_writes_the_momentum_encoder_and_the_mixer(samix_run, tmp_path):
    from samix.cli import main
    from samix.engine.evaluate_run import load_run

    root, run, out = samix_run
    meta = read_mixer_metadata(out)
    _, info, algo, _ = load_run(run)
    assert (meta.generator, meta.backbone, meta.stage, meta.dataset) == ("mixer", "convnet", 3, "fashion_mnist")
    assert meta.channels == algo.model.stage_channels[2] and meta.in_chans == 1
    assert meta.input_size == (28, 28) and meta.mean == tuple(info.mean) and meta.std == tuple(info.std)
    assert meta.source["algorithm"] == "samix" and meta.source["epoch"] == 1 and meta.source["momentum_encoder"]
    assert meta.source["bn_recalibration"] == {"images": 60, "batches": 3}
    # without BN recalibration (tests/test_export_bn.py tests it) the file is the run's teacher as it is
    out = tmp_path / "as_trained.safetensors"
    assert main(["export-mixer", str(run), str(out), "--no-bn-recalibrate"]) == 0
    pm = load_pretrained_mixer(out)
    # the file holds the teacher (EMA) weights, which differ from the student's after training
    w_file = pm.encoder.stem[0].weight
    torch.testing.assert_close(w_file, algo.teacher.stem[0].weight.detach(), rtol=0, atol=0)
    assert not torch.equal(w_file, algo.model.stem[0].weight.detach())
    # same masks as the run's own (eval-mode) teacher + Mixer
    x = torch.randn(4, 1, 28, 28)
    lam, index = torch.tensor([0.2, 0.5, 0.7, 0.9]), torch.tensor([1, 0, 3, 2])
    with torch.no_grad():
        want = algo.mix_block(algo.teacher.features(x, 3), lam, index, out_size=(28, 28), adjust=True).mask
    torch.testing.assert_close(pm(x, lam, index).mask, want, rtol=0, atol=1e-6)


def test_cli_export_errors(tmp_path, capsys):
    from samix.cli import main

    assert main(["export-mixer", str(tmp_path / "nope"), str(tmp_path / "m.safetensors")]) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


# ------------------------------------------------------------------------------------ bad metadata
BAD_FIELDS = [
    ({"channels": 99}, "channels"),
    ({"channels": 99, "generator_kwargs": None}, "generator_kwargs"),
    ({"input_size": [32, 32]}, "input_size"),  # a 4x4 map, not the file's 2x2
    ({"input_size": [16]}, "input_size"),
    ({"in_chans": 1}, "in_chans"),
    ({"in_chans": 1, "mean": [0.5], "std": [0.25]}, "in_chans"),  # consistent stats: the tensors disagree
    ({"backbone": "preact_resnet18"}, "backbone"),
    ({"stage": 2}, "stage"),
    ({"generator": "os.system"}, "generator"),
    ({"std": [0.2, 0.0, 0.3]}, "std"),
    ({"model_kwargs": {"pretrained": "w.pt"}}, "model_kwargs"),
    ({"extra_field": 1}, "extra_field"),
]


@pytest.mark.parametrize("fields,word", BAD_FIELDS, ids=[w + str(i) for i, (_, w) in enumerate(BAD_FIELDS)])
def test_bad_metadata_raises_naming_the_field(mixer_file, tmp_path, fields, word):
    path, _, _ = mixer_file
    if fields.get("generator_kwargs", 0) is None:  # keep generator_kwargs consistent with channels
        meta = json.loads(json.dumps(read_mixer_metadata(path).generator_kwargs))
        fields = {**fields, "generator_kwargs": {**meta, "in_channels": 99}}
    bad = tmp_path / "bad.safetensors"
    write_mixer_metadata(path, fields, out_path=bad)
    with pytest.raises(ValueError, match=word):
        load_pretrained_mixer(bad)
    with pytest.raises(ValueError, match=word):
        build_mixer("samix_p", pretrained=str(bad))


def test_not_a_mixer_file(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="format"):
        load_pretrained_mixer(p)
    with pytest.raises(FileNotFoundError, match="export-mixer"):
        load_pretrained_mixer(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------ the policy
def test_images_that_do_not_fit_the_file_raise(mixer_file):
    path, _, _ = mixer_file
    m = build_mixer("samix_p", pretrained=str(path), mean=C10_MEAN, std=C10_STD)
    with pytest.raises(ValueError, match=r"in_chans.*3.*1 channel"):
        m.mix(torch.randn(4, 1, 16, 16))
    with pytest.raises(ValueError, match=r"input_size.*\(16, 16\).*\(12, 12\)"):
        m.mix(torch.randn(4, 3, 12, 12))  # half a cell of the 2x2 map
    m.mix(torch.randn(4, 3, 32, 32))  # 2x the training size: a 4x4 map, the same scale
    with pytest.raises(ValueError, match=r"in_chans.*fashion_mnist"):
        build_mixer("samix_p", pretrained=str(path), dataset="fashion_mnist")
    with pytest.raises(ValueError, match="input_size"):
        build_mixer("samix_p", pretrained=str(path), dataset="cifar10", image_size=20)


def test_normalisation_is_renormalised_or_refused(mixer_file):
    path, _, _ = mixer_file
    with pytest.raises(ValueError, match=r"'mean'.*cifar10.*cifar100"):
        build_mixer("samix_p", pretrained=str(path), dataset="cifar100", renormalize=False)
    from samix.data import dataset_info

    c100 = dataset_info("cifar100")
    m = build_mixer("samix_p", pretrained=str(path), dataset="cifar100")
    pixels = torch.rand(4, 3, 16, 16)
    md, sd = torch.tensor(c100.mean).view(1, 3, 1, 1), torch.tensor(c100.std).view(1, 3, 1, 1)
    mf, sf = torch.tensor(C10_MEAN).view(1, 3, 1, 1), torch.tensor(C10_STD).view(1, 3, 1, 1)
    x_data, x_file = (pixels - md) / sd, (pixels - mf) / sf
    torch.testing.assert_close(m.frozen.encoder_input(x_data), x_file, rtol=1e-5, atol=1e-5)
    same = build_mixer("samix_p", pretrained=str(path), dataset="cifar10")
    assert same.frozen.in_scale is None  # identical statistics: the images go in as they are
    lam, index = torch.full((4,), 0.3), torch.tensor([1, 2, 3, 0])
    torch.testing.assert_close(m.frozen(x_data, lam, index).mask, same.frozen(x_file, lam, index).mask,
                               rtol=1e-4, atol=1e-4)


def test_unknown_normalisation_warns_once(mixer_file):
    path, _, _ = mixer_file
    m = build_mixer("samix_p", pretrained=str(path))
    x = torch.randn(4, 3, 16, 16)
    with pytest.warns(UserWarning, match="normalisation is unknown"):
        m.mix(x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.mix(x)


@pytest.mark.parametrize("kind", ["mixer", "mixblock"])
@HYP
@given(lams=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6), seed=st.integers(0, 2**16))
def test_mask_mean_equals_lam(tmp_path_factory, kind, lams, seed):
    path = tmp_path_factory.getbasetemp() / f"hyp_{kind}.safetensors"
    if not path.exists():
        enc, gen = _tiny_parts(kind, seed=2)
        _save(path, enc, gen)
    m = build_mixer("samix_p", pretrained=str(path), mode="elem", mean=C10_MEAN, std=C10_STD,
                    generator=torch.Generator().manual_seed(seed))
    b = len(lams)
    x = torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    index = torch.randperm(b, generator=torch.Generator().manual_seed(seed + 1))
    lam = np.array(lams)
    r = m._mix(x, index, lam)  # forced lambdas, as samix.viz does
    mean = r.mask.float().mean((1, 2, 3))
    torch.testing.assert_close(mean, torch.tensor(lam, dtype=torch.float32), rtol=0, atol=2e-6)
    torch.testing.assert_close(r.lam, mean)
    assert float(r.mask.min()) >= 0 and float(r.mask.max()) <= 1
    torch.testing.assert_close(r.images, r.mask * x + (1 - r.mask) * x[index], rtol=1e-5, atol=1e-5)
    flat = (lam < 0.08) | (lam > 0.92)  # plain-mixup fallback: a constant mask
    if flat.any():
        f = torch.as_tensor(flat)
        assert torch.all(r.mask[f] == torch.tensor(lam, dtype=torch.float32)[f].view(-1, 1, 1, 1))


def test_mixer_call_gives_targets_and_keeps_dtype_and_memory_format(mixer_file):
    path, _, _ = mixer_file
    m = build_mixer("samix_p", pretrained=str(path), num_classes=5, mean=C10_MEAN, std=C10_STD,
                    generator=torch.Generator().manual_seed(3))
    x = torch.randn(6, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    for _ in range(3):
        mixed, targets = m(x, y)
        assert mixed.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(targets.sum(1), torch.ones(6))
    r = m.mix(x.double())
    assert r.images.dtype == torch.float64 and next(m.frozen.parameters()).dtype == torch.float64
    # half-precision images: float32 weights (never rounded down), masks back in the images' dtype
    lam, index = np.array([0.3, 0.6, 0.45, 0.5, 0.7, 0.2]), torch.tensor([1, 2, 3, 4, 5, 0])
    before = m._mix(x.float(), index, lam).mask
    half = m._mix(x.bfloat16(), index, lam)
    assert half.images.dtype == torch.bfloat16 and next(m.frozen.parameters()).dtype == torch.float32
    torch.testing.assert_close(half.lam, torch.tensor(lam, dtype=torch.float32), rtol=0, atol=1e-2)
    torch.testing.assert_close(m._mix(x.float(), index, lam).mask, before, rtol=0, atol=0)
    assert repr(m).startswith(f"SAMixP(pretrained={str(path)!r}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_moves_to_the_images_device(mixer_file):  # pragma: no cover - GPU only
    path, _, _ = mixer_file
    m = build_mixer("samix_p", pretrained=str(path), mean=C10_MEAN, std=C10_STD)
    x = torch.randn(4, 3, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        r = m.mix(x)
    assert r.images.device.type == "cuda" and next(m.frozen.parameters()).device.type == "cuda"
    torch.testing.assert_close(r.mask.float().mean((1, 2, 3)), r.lam)


def test_pretrained_with_another_mixer_name_fails_clearly(tmp_path):
    from samix.engine.config import load_config
    from samix.engine.trainer import build_algorithm_from_config
    from samix.data import dataset_info

    cfg = load_config(None, TINY + ["mixer.name=mixup", f"mixer.pretrained={tmp_path / 'm.safetensors'}"])
    with pytest.raises(TypeError, match=r"pretrained.*samix_p"):
        build_algorithm_from_config(cfg, dataset_info("fashion_mnist"), torch.device("cpu"), torch.Generator())
    cfg = load_config(None, TINY + ["mixer.name=samix_p"])
    with pytest.raises(ValueError, match="mixer.pretrained"):
        build_algorithm_from_config(cfg, dataset_info("fashion_mnist"), torch.device("cpu"), torch.Generator())


# ------------------------------------------------------------------------------------ frozen in training
def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_mixer_gets_no_gradient_no_update_and_no_optimizer_slot(samix_run):
    from samix.engine.config import load_config
    from samix.engine.optim import build_optimizer
    from samix.engine.trainer import build_algorithm_from_config
    from samix.data import dataset_info

    _, _, out = samix_run
    cfg = load_config(None, TINY + ["model.name=preact_resnet18", "model.width=0.125", "mixer.name=samix_p",
                                    f"mixer.pretrained={out}", "mixer.dataset=fashion_mnist"])
    info = dataset_info("fashion_mnist")
    algo = build_algorithm_from_config(cfg, info, torch.device("cpu"), torch.Generator().manual_seed(0))
    frozen = algo.mixer.frozen
    params = list(frozen.parameters())
    assert params and not any(p.requires_grad for p in params)
    opt = build_optimizer(algo.param_groups(), cfg.optim, cfg.sched)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in params}
    assert not any(k.startswith("mixer") for k in algo.state_dict())
    before = _snapshot(frozen)
    student_before = _snapshot(algo.model)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        algo.train()
        x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
        loss = algo((x, y))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is None for p in params)
        opt.step()
        algo.on_train_step_end()
        assert not frozen.training  # algo.train() does not reach it, and it refuses train mode anyway
    after = _snapshot(frozen)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN buffers included: no EMA, no stats
    assert any(not torch.equal(student_before[k], v) for k, v in _snapshot(algo.model).items())
    frozen.train(True)
    assert not frozen.training


def test_train_samix_p_on_another_backbone(samix_run, tmp_path):
    from samix.engine.config import load_config
    from samix.engine.trainer import train

    root, _, out = samix_run
    run = tmp_path / "sp"
    summary = train(load_config(None, TINY + [
        f"data.root={root}", f"out_dir={run}", "model.name=preact_resnet18", "model.width=0.125",
        "mixer.name=samix_p", f"mixer.pretrained={out}", "mixer.dataset=${data.name}"]))
    assert np.isfinite(summary["top1_last"])
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    keys = set(ck["algorithm"])
    assert keys and all(k.startswith("model.") for k in keys)
    model = build_model("preact_resnet18", num_classes=10, in_chans=1, width=0.125)
    assert keys == {f"model.{k}" for k in model.state_dict()}
    saved = [p for g in ck["optimizer"]["param_groups"] for p in g["params"]]
    assert len(saved) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------ Decoupled Mixup
def test_decoupled_loss_from_config_adds_eta_times_the_regulariser():
    """loss.name=decoupled with loss.kwargs.eta reaches the training step: the step's loss minus the
    mixed-CE step's loss is eta * mean_i m_i (-log phi^{a,b} - log phi^{b,a}), by hand."""
    from samix.data import dataset_info
    from samix.engine.config import load_config
    from samix.engine.trainer import build_algorithm_from_config
    from samix.losses import mixed_cross_entropy

    info = dataset_info("fashion_mnist")
    eta = 0.1
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    losses = {}
    for name in ("ce", "decoupled"):
        extra = ["loss.kwargs.eta=0.1"] if name == "decoupled" else []
        cfg = load_config(None, TINY + ["mixer.name=mixup", f"loss.name={name}"] + extra)
        torch.manual_seed(0)
        algo = build_algorithm_from_config(cfg, info, torch.device("cpu"), torch.Generator().manual_seed(5))
        algo.eval()  # BN running statistics: the same logits in both builds
        state = algo.mixer.generator.get_state()
        r = algo.mixer.mix(x)
        algo.mixer.generator.set_state(state)
        losses[name] = algo((x, y))["loss"]
    z = algo.model(r.images).detach().double()
    a, b = y, y[r.index]
    lam = r.lam.double()
    mce = mixed_cross_entropy(z, y, lam, r.index)
    torch.testing.assert_close(losses["ce"].double(), mce, rtol=1e-5, atol=1e-6)

    def log_phi(keep, drop):  # log exp(z_keep) / sum_{c != drop} exp(z_c)
        masked = z.scatter(1, drop.view(-1, 1), float("-inf"))
        return z.gather(1, keep.view(-1, 1)).squeeze(1) - torch.logsumexp(masked, 1)

    active = (a != b) & (lam > 0) & (lam < 1)
    reg = torch.where(active, -(log_phi(a, b) + log_phi(b, a)), torch.zeros_like(lam))
    assert active.any()
    torch.testing.assert_close(losses["decoupled"].double() - losses["ce"].double(), eta * reg.mean(),
                               rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------ configs
MY_CONFIGS = sorted((REPO / "configs").rglob("*samix_p*.yaml")) + sorted((REPO / "configs").rglob("*_dm_*.yaml")) \
    + [REPO / "configs" / "fashion_mnist" / "decoupled_mixup.yaml"]


def test_shipped_samix_p_and_dm_configs_load():
    from samix.engine.config import load_config

    names = {p.name for p in MY_CONFIGS}
    assert {"samix_p.yaml", "decoupled_mixup.yaml", "mixup_dm_r18.yaml", "cutmix_dm_r18.yaml",
            "samix_p_r18.yaml", "samix_p_mixer_r18.yaml"} <= names
    for path in MY_CONFIGS:
        if path.name.startswith("_"):
            continue
        cfg = load_config(path)
        if path.name == "samix_p_mixer_r18.yaml":  # the online run whose Mixer the SAMix-P rows reuse
            assert cfg.algorithm.name == "samix" and cfg.model.name == "timm_resnet18", path
        elif "samix_p" in path.name:
            assert cfg.algorithm.name == "supervised" and cfg.mixer.name == "samix_p", path
            assert str(cfg.mixer.pretrained).endswith("mixer.safetensors"), path
            assert cfg.mixer.dataset == cfg.data.name and cfg.mixer.alpha == 2.0, path
        else:
            assert cfg.loss.name == "decoupled" and cfg.loss.kwargs.eta > 0 and cfg.mixer.name != "none", path


def test_decoupled_mixup_cpu_recipe_runs(tmp_path):
    from samix.engine.config import load_config
    from samix.engine.trainer import train

    root = make_fashion_mnist(tmp_path / "data", n_train=40, n_test=20)
    cfg = load_config(REPO / "configs" / "fashion_mnist" / "decoupled_mixup.yaml", [
        f"data.root={root}", f"out_dir={tmp_path / 'run'}", "data.train_subset=null", "model.name=convnet",
        "epochs=1", "batch_size=20", "threads=1", "eval.median_last=1"])
    summary = train(cfg)
    assert np.isfinite(summary["top1_last"])
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["train_loss"] > 0


# ------------------------------------------------------------------------------------ benchmark smoke test
def test_overhead_benchmark_script_runs(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("samix_p_overhead", REPO / "benchmarks" / "samix_p_overhead.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        assert mod.main(["--model", "convnet", "--width", "0.25", "--size", "16", "--in-chans", "3", "--batch", "4",
                         "--repeats", "2", "--steps", "1", "--warmup", "0", "--threads", "1",
                         "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads(out.read_text())["rows"]
    steps = {r["name"]: r for r in rows if r["kind"] == "train_step"}
    assert set(steps) == {"vanilla", "mixup", "samix_p"} and steps["vanilla"]["ratio_to_vanilla"] == 1.0
    assert {r["name"] for r in rows if r["kind"] == "mix_only"} == {"mixup", "samix_p"}
    assert all(r["median_s"] > 0 and r["q1_s"] <= r["median_s"] <= r["q3_s"] for r in rows)


def test_config_binds_the_pretrained_mixer_to_the_data_and_refuses_stray_options(samix_run, tmp_path):
    from samix.data import dataset_info
    from samix.engine.config import ConfigError, load_config
    from samix.engine.trainer import build_algorithm_from_config

    _, _, out = samix_run
    build = lambda cfg, name: build_algorithm_from_config(  # noqa: E731
        cfg, dataset_info(name), torch.device("cpu"), torch.Generator().manual_seed(0))
    # no mixer.dataset in the config: the engine binds the file to data.name itself
    algo = build(load_config(None, TINY + ["mixer.name=samix_p", f"mixer.pretrained={out}"]), "fashion_mnist")
    assert algo.mixer._bound
    # ... so a file trained on 1-channel Fashion-MNIST is refused for 3-channel CIFAR-10 at build time
    with pytest.raises(ValueError, match="in_chans"):
        build(load_config(None, TINY + ["data.name=cifar10", "mixer.name=samix_p", f"mixer.pretrained={out}"]),
              "cifar10")
    # a mixer option without a mixer is a config error, not silently ignored
    with pytest.raises(ConfigError, match=r"mixer\.pretrained.*mixer\.name"):
        build(load_config(None, TINY + [f"mixer.pretrained={out}"]), "fashion_mnist")


def test_a_mixer_exported_from_a_supervised_run_drives_the_ssl_recipe_frozen(samix_run, tmp_path):
    """SAMix-IP with a supervised Mixer (issue 17 item 3): the metadata fit (one channel, 28 px), so
    ``configs/fashion_mnist/samix_ip.yaml`` trains MoCo v2 on its masks, with the Mixer frozen (no gradient, in no parameter group)."""
    from safetensors.torch import load_file

    from samix.engine.config import load_config
    from samix.engine.trainer import train

    root, _, out = samix_run
    ssl = ["model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=1", "num_workers=0", "threads=1",
           "log_interval=1000", "data.train_subset=null", "data.probe_subset=null", "algorithm.queue_size=40",
           "eval_interval=1", "viz.every=0"]
    s = train(load_config(REPO / "configs/fashion_mnist/samix_ip.yaml", ssl + [
        f"data.root={root}", f"out_dir={tmp_path / 'ip'}", f"mixer.pretrained={out}"]))
    assert 0 <= s["knn_top1"] <= 100
    rows = [json.loads(x) for x in (tmp_path / "ip" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["loss_mix"] > 0 for r in rows)
    from samix.data import dataset_info
    from samix.engine.assembly import build_algorithm_from_config

    algo = build_algorithm_from_config(load_config(tmp_path / "ip" / "config.yaml"), dataset_info("fashion_mnist"),
                                       torch.device("cpu"), torch.Generator().manual_seed(0))
    frozen = algo.mixer.frozen
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not {id(p) for g in algo.param_groups() for p in g["params"]} & {id(p) for p in frozen.parameters()}
    gen = {k[len("generator."):]: v for k, v in load_file(str(out)).items() if k.startswith("generator.")}
    for k, v in frozen.generator.state_dict().items():
        assert torch.equal(v, gen[k]), k
