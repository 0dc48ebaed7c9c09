"""SAMix (supervised): the Mixer in the momentum pipeline, the eta-balanced generation loss, lambda
adjusting with each mask's own lambda, the Table 10 switches, options, and a tiny training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine_utils import make_fashion_mnist
from samix.algorithms import build_algorithm
from samix.engine.config import load_config
from samix.generators import SAMixGenerator, mask_l1_loss, mask_variance_loss
from samix.losses import build_loss, eta_balanced_loss, mixed_cross_entropy, pbce_loss
from samix.models import build_model


def _algo(seed=0, classes=4, loss_fn=None, **options):
    torch.manual_seed(seed)
    m = build_model("convnet", num_classes=classes, in_chans=1, width=0.25)
    return build_algorithm("samix", model=m, num_classes=classes, loss_fn=loss_fn,
                           generator=torch.Generator().manual_seed(seed + 1), **options)


def _batch(b=8, s=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, s, s, generator=g), torch.randint(0, classes, (b,), generator=g)


def _capture(algo):
    rec = {"gen": [], "teacher_out": []}
    gen_orig, teacher_fwd = algo.generate, algo.teacher.forward

    def gen(z, lam, index, out_size):
        out = gen_orig(z, lam, index, out_size)
        rec["gen"].append((lam, index, out))
        return out

    def teacher(x):
        y = teacher_fwd(x)
        rec["teacher_out"].append(y)
        return y

    algo.generate = gen
    algo.teacher.forward = teacher
    return rec


def test_defaults_are_the_published_recipe_and_gamma_starts_at_zero():
    algo = _algo()
    assert isinstance(algo.mix_block, SAMixGenerator)
    mb = algo.mix_block
    assert mb.upsample == "bilinear" and mb.use_attention and mb.adaptive_lambda and mb.nonlinear_content
    assert mb.lam_adjust and mb.lam_adjust_prob == 0.25 and algo.options["eta"] == 0.5
    assert algo.options["alpha"] == 2.0 and algo.options["stage"] == 3
    assert mb.gamma == 0.0
    x, y = _batch()
    out = algo((x, y))
    assert float(out["gamma"]) == 0.0
    out["loss"].backward()
    assert mb.gamma_raw.grad is not None  # gamma is trained by the generation loss


def test_generation_loss_is_pbce_plus_eta_ce_on_the_teacher_logits():
    for eta in (0.0, 0.5, 1.0):
        algo = _algo(eta=eta, mixup_fallback=0.0)
        rec = _capture(algo)
        x, y = _batch()
        b = x.shape[0]
        out = algo((x, y))
        lam, index, _ = rec["gen"][0]
        logits = rec["teacher_out"][0]
        lam_g, idx_g = lam[b:], index[b:] - b
        expected = pbce_loss(logits, y, lam_g, idx_g) + eta * mixed_cross_entropy(logits, y, lam_g, idx_g)
        torch.testing.assert_close(out["loss_gen_cls"], expected)


def test_eta_changes_the_mixers_gradient():
    """The pitfall of DESIGN.md: eta on zero targets is a no-op. Here the same step (same weights,
    same draws, same dropout) with eta = 0 and eta = 0.5 gives different Mixer gradients, and the
    difference is exactly 0.5 times the gradient of the mixed CE."""
    grads = {}
    for eta in (0.0, 0.5):
        algo = _algo(eta=eta, mixup_fallback=0.0)
        x, y = _batch()
        torch.manual_seed(123)  # Dropout in the content module
        out = algo((x, y))
        params = [p for p in algo.mix_block.parameters()]
        gs = torch.autograd.grad(out["loss_gen_cls"], params, allow_unused=True)
        grads[eta] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]
    diff = sum(float((a - b).abs().sum()) for a, b in zip(grads[0.0], grads[0.5]))
    scale = sum(float(a.abs().sum()) for a in grads[0.0])
    assert diff > 1e-3 * scale


def test_gen_loss_ce_restores_automix_objective_and_smoothing_reaches_the_eta_loss():
    algo = _algo(gen_loss="ce", mixup_fallback=0.0)
    rec = _capture(algo)
    x, y = _batch()
    b = x.shape[0]
    out = algo((x, y))
    lam, index, _ = rec["gen"][0]
    torch.testing.assert_close(out["loss_gen_cls"],
                               mixed_cross_entropy(rec["teacher_out"][0], y, lam[b:], index[b:] - b))
    algo = _algo(mixup_fallback=0.0, loss_fn=build_loss("ce", label_smoothing=0.2))
    rec = _capture(algo)
    out = algo((x, y))
    lam, index, _ = rec["gen"][0]
    expected = eta_balanced_loss(rec["teacher_out"][0], y, lam[b:], index[b:] - b, eta=0.5, label_smoothing=0.2)
    torch.testing.assert_close(out["loss_gen_cls"], expected)


def test_lambda_adjust_uses_each_masks_own_lambda():
    """Always adjusting (prob 1) both halves (``lam_adjust_on="both"``): the student's mask has mean
    lam_student and the generator's mask mean lam_generator - not the other's (the reference's pitfall).
    The mask loss reads the raw mask."""
    algo = _algo(lam_adjust_prob=1.0, mixup_fallback=0.0, lam_adjust_on="both", mask_loss_reduction="sample")
    rec = _capture(algo)
    x, y = _batch()
    b = x.shape[0]
    algo.set_progress(0, 10)
    out = algo((x, y))
    lam, _, g = rec["gen"][0]
    assert bool(g.adjusted.all())
    lam_s, lam_g = lam[:b], lam[b:]
    assert abs(float(lam_s[0] - lam_g[0])) > 1e-3
    mu = g.mask.detach().float().mean((1, 2, 3))
    torch.testing.assert_close(mu[:b], lam_s, atol=1e-5, rtol=0)
    torch.testing.assert_close(mu[b:], lam_g, atol=1e-5, rtol=0)
    raw = g.mask_raw[b:]
    assert float((raw.detach().float().mean((1, 2, 3)) - lam_g).abs().max()) > 1e-3  # adjusting did something
    expected = 0.1 * (mask_l1_loss(raw, lam_g, margin=0.1) + mask_variance_loss(raw))
    torch.testing.assert_close(out["loss_mask"], expected)


def test_lambda_adjust_draws_follow_the_runs_generator():
    outs = []
    for _ in range(2):
        algo = _algo(lam_adjust_prob=0.5)
        rec = _capture(algo)
        x, y = _batch(b=16)
        torch.manual_seed(7)
        algo((x, y))
        outs.append(rec["gen"][0][2].adjusted)
    assert torch.equal(outs[0], outs[1]) and 0 < int(outs[0].sum()) < outs[0].numel()
    algo = _algo(lam_adjust_prob=0.0)
    rec = _capture(algo)
    algo(_batch())
    g = rec["gen"][0][2]
    assert not bool(g.adjusted.any()) and torch.equal(g.mask, g.mask_raw)


def test_variance_term_switch_and_mask_loss_none():
    algo = _algo(variance_loss=False, mixup_fallback=0.0, lam_adjust=False)
    rec = _capture(algo)
    x, y = _batch()
    b = x.shape[0]
    algo.set_progress(0, 10)
    out = algo((x, y))
    lam, _, g = rec["gen"][0]
    torch.testing.assert_close(out["loss_mask"], 0.1 * mask_l1_loss(g.mask_raw[b:], lam[b:], margin=0.1))
    out = _algo(mask_loss="none")((x, y))
    assert "loss_mask" not in out


def test_mixer_learns_only_from_the_generation_loss():
    algo = _algo(mixup_fallback=0.0)
    x, y = _batch()
    out = algo((x, y))
    mb = list(algo.mix_block.parameters())
    cls = torch.autograd.grad(out["loss_cls"] + out["loss_clean"], mb, retain_graph=True, allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0 for g in cls)
    gen = torch.autograd.grad(out["loss_gen_cls"] + out["loss_mask"], list(algo.model.parameters()),
                              retain_graph=True, allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0 for g in gen)


@pytest.mark.parametrize("options", [
    {"attention": False}, {"adaptive_lambda": False}, {"nonlinear_content": False}, {"lam_adjust": False},
    {"variance_loss": False}, {"mask_loss": "none"}, {"gen_loss": "ce"}, {"eta": 0.1},
    {"momentum_pipeline": False}, {"clean_ce": False}, {"upsample": "nearest"}, {"stage": 2},
    {"mix_block_kwargs": {"dropout": 0.0, "attn_norm": "cosine"}},
])
def test_table10_switches_build_and_train_one_step(options):
    algo = _algo(**options)
    mb = algo.mix_block
    assert mb.use_attention == options.get("attention", True)
    assert mb.adaptive_lambda == options.get("adaptive_lambda", True)
    assert mb.nonlinear_content == options.get("nonlinear_content", True)
    assert mb.lam_adjust == options.get("lam_adjust", True)
    opt = torch.optim.SGD([p for g in algo.param_groups() for p in g["params"]], lr=0.1)
    x, y = _batch()
    out = algo((x, y))
    assert torch.isfinite(out["loss"])
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    algo.on_train_step_end()
    assert 0.0 <= mb.gamma <= 1.0


@pytest.mark.parametrize("options, words", [
    ({"etaa": 0.5}, ["etaa", "allowed", "eta", "lam_adjust_prob", "gen_loss"]),
    ({"gen_loss": "bce"}, ["gen_loss", "eta_balanced", "ce", "bce"]),
    ({"eta": -0.1}, ["eta"]),
    ({"lam_adjust_prob": 1.5}, ["lam_adjust_prob"]),
    ({"mix_block_kwargs": {"attention": False}}, ["mix_block_kwargs", "attention"]),
])
def test_bad_options_raise_naming_them(options, words):
    with pytest.raises(ValueError) as e:
        _algo(**options)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    with pytest.raises(TypeError, match="attention"):
        _algo(attention=1)


def test_tiny_training_run_writes_mask_figures(tmp_path):
    from samix.engine.trainer import train

    root = make_fashion_mnist(tmp_path / "data", n_train=60, n_test=20)
    cfg = load_config(None, [
        "data.name=fashion_mnist", f"data.root={root}", "model.name=convnet", "model.width=0.25",
        "batch_size=20", "epochs=2", "optim.lr=0.05", "threads=1", "log_interval=1000",
        "algorithm.name=samix", "algorithm.lam_adjust_prob=0.5", "viz.every=1", "viz.pairs=2",
        "eval.median_last=1", f"out_dir={tmp_path / 'run'}"])
    summary = train(cfg)
    run = Path(cfg.out_dir)
    assert sorted(p.name for p in (run / "masks").iterdir()) == ["masks_epoch0001.png", "masks_epoch0002.png"]
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["gamma"] <= 1.0 and r["loss_gen_cls"] > 0 for r in rows)
    assert summary["epochs"] == 2


def test_mask_comparison_of_two_runs_uses_the_same_pairs(tmp_path):
    """``samix show RUN_A RUN_B``: both runs' masks on the same test pairs, each equal to what that
    run's generator gives for those images; a run without a generator is refused by name."""
    import numpy as np
    from PIL import Image

    from samix.cli import main
    from samix.engine.evaluate_run import compare_masks, load_run
    from samix.engine.trainer import train

    root = make_fashion_mnist(tmp_path / "data", n_train=40, n_test=20)
    base = ["data.name=fashion_mnist", f"data.root={root}", "model.name=convnet", "model.width=0.25",
            "batch_size=20", "epochs=1", "optim.lr=0.05", "threads=1", "log_interval=1000", "eval.median_last=1"]
    runs = {}
    for algo in ("automix", "samix", "supervised"):
        runs[algo] = tmp_path / algo
        train(load_config(None, base + [f"algorithm.name={algo}", f"name=fm_{algo}", f"out_dir={runs[algo]}"]))
    out = tmp_path / "cmp.png"
    path, images, masks = compare_masks([runs["automix"], runs["samix"]], str(out), pairs=3)
    assert images.shape[0] == 6 and set(masks) == {"fm_automix", "fm_samix"}
    for name, d in (("fm_automix", runs["automix"]), ("fm_samix", runs["samix"])):
        _, _, algo, _ = load_run(d)
        assert masks[name].shape == (7, 3, 1, 28, 28)
        torch.testing.assert_close(masks[name], algo.masks_for(images, [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]))
    assert not torch.equal(masks["fm_automix"], masks["fm_samix"])  # two different generators
    png = np.asarray(Image.open(path))
    assert min(png.shape[:2]) > 200 and png.std() > 10  # a grid with content, not blank
    with pytest.raises(ValueError, match="supervised"):
        compare_masks([runs["automix"], runs["supervised"]], str(tmp_path / "x.png"))
    assert main(["show", str(runs["automix"]), str(runs["samix"]), "--out", str(tmp_path / "cli.png"),
                 "--pairs", "2"]) == 0
    assert (tmp_path / "cli.png").is_file()


def test_gamma_init_option_reaches_the_mixer_and_is_checked():
    assert _algo().mix_block.gamma == 0.0  # the paper's initialisation by default
    assert _algo(gamma_init=1.0).mix_block.gamma == 1.0  # the CPU recipe's (the reference's multiplier)
    with pytest.raises(ValueError, match="gamma_init"):
        _algo(gamma_init=1.5)


# ------------------------------------------------------------------------------ paper rows
REPO = Path(__file__).resolve().parents[1]
# every SAMix cell of samix.txt Tables 1-3: config -> (dataset, model, epochs, eta of A.3)
SAMIX_ROWS = {
    **{f"imagenet/samix_{m}{'_ep300' if ep == 300 else ''}.yaml": ("imagenet", model, ep, 0.1)
       for ep, models in ((100, ("r18", "r34", "r50", "r101", "rx101")), (300, ("r18", "r34", "r50", "r101")))
       for m in models
       for model in [{"r18": "timm_resnet18", "r34": "timm:resnet34", "r50": "timm_resnet50",
                      "r101": "timm:resnet101", "rx101": "timm:resnext101_32x4d"}[m]]},
    "inat2017/samix_r50.yaml": ("inat2017", "timm_resnet50", 100, 0.1),
    "inat2017/samix_rx101.yaml": ("inat2017", "timm:resnext101_32x4d", 100, 0.1),
    "inat2018/samix_r50.yaml": ("inat2018", "timm_resnet50", 100, 0.1),
    "inat2018/samix_rx101.yaml": ("inat2018", "timm:resnext101_32x4d", 100, 0.1),
    "places205/samix_r18.yaml": ("places205", "timm_resnet18", 100, 0.1),
    "places205/samix_r50.yaml": ("places205", "timm_resnet50", 100, 0.1),
    "cifar100/samix_r18.yaml": ("cifar100", "resnet18", 800, 0.5),
    "cifar100/samix_rx50.yaml": ("cifar100", "resnext50", 800, 0.5),
    "cifar100/samix_wrn28_8.yaml": ("cifar100", "wrn28_8", 800, 0.5),
    "tiny_imagenet/samix_r18.yaml": ("tiny_imagenet", "resnet18", 400, 0.5),
    "tiny_imagenet/samix_rx50.yaml": ("tiny_imagenet", "resnext50", 400, 0.5),
    "cub200/samix_r18.yaml": ("cub200", "timm_resnet18", 200, 0.5),
    "cub200/samix_rx50.yaml": ("cub200", "timm:resnext50_32x4d", 200, 0.5),
    "aircraft/samix_r18.yaml": ("aircraft", "timm_resnet18", 200, 0.5),
    "aircraft/samix_rx50.yaml": ("aircraft", "timm:resnext50_32x4d", 200, 0.5),
}


@pytest.mark.parametrize("rel", sorted(SAMIX_ROWS))
def test_every_samix_cell_of_tables_1_to_3_has_a_config_with_the_a3_settings(rel):
    """alpha 2, stage 3, bilinear, beta 0.1 -> 0 with the variance term, the eta-balanced loss with
    eta 0.5 on small data sets and 0.1 on large ones (A.3), the dataset/backbone/epochs of the cell."""
    dataset, model, epochs, eta = SAMIX_ROWS[rel]
    cfg = load_config(REPO / "configs" / rel)
    a = cfg.algorithm
    assert (cfg.data.name, cfg.model.name, cfg.epochs) == (dataset, model, epochs)
    assert a.name == "samix" and cfg.mixer.name == "none"
    assert (a.alpha, a.stage, a.upsample, a.eta) == (2.0, 3, "bilinear", eta)
    assert (a.mask_loss, a.mask_loss_weight, a.mask_loss_weight_end, a.mask_margin) == ("l1", 0.1, 0.0, 0.1)
    assert a.variance_loss is True and a.get("gen_loss", "eta_balanced") == "eta_balanced"


def test_samix_p_mixer_run_is_the_table_1_r18_row():
    """The run whose Mixer every SAMix-P row reuses is the online SAMix IN-1k R-18 row, name aside."""
    from omegaconf import OmegaConf

    a = OmegaConf.to_container(load_config(REPO / "configs" / "imagenet" / "samix_p_mixer_r18.yaml"), resolve=True)
    b = OmegaConf.to_container(load_config(REPO / "configs" / "imagenet" / "samix_r18.yaml"), resolve=True)
    diff = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert diff == {"name", "out_dir"}
