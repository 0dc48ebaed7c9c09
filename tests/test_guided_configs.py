"""The paper rows of the issue-19 methods shipped so far: PuzzleMix in samix.txt Table 3 (CIFAR-100, Tiny,
CUB-200, Aircraft), AugMix in automix.txt Table 2; each header names its table and published number, each
builds with samix.txt A.3's alpha (PuzzleMix 1, AugMix 1) and the official settings, and the smoothness
term's mean/std are the dataset's normalisation. Also the Fashion-MNIST CPU recipes of the new methods."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from samix.data import dataset_info
from samix.engine.assembly import build_algorithm_from_config, build_mixer_from_config
from samix.engine.config import load_config

REPO = Path(__file__).resolve().parents[1]
PUZZLEMIX = {"cifar100": ("r18", "rx50", "wrn28_8"), "tiny_imagenet": ("r18", "rx50"), "cub200": ("r18", "rx50"),
             "aircraft": ("r18", "rx50")}
ROWS = [f"{ds}/puzzlemix_{a}.yaml" for ds, archs in PUZZLEMIX.items() for a in archs]
# samix.txt Table 4 (IN-1k, the ViT columns, MCE): (policy, backbone row) -> (model, published top-1). TransMix
# and TokenMix read a class token, which Swin has not: their Swin-T cells are not shipped (a sentence at build).
TABLE4 = {("attentivemix", "deit_s"): ("deit_small", "80.32"), ("puzzlemix", "deit_s"): ("deit_small", "79.84"),
          ("transmix", "deit_s"): ("deit_small", "80.70"), ("tokenmix", "deit_s"): ("deit_small", "80.80"),
          ("attentivemix", "swin_t"): ("swin_tiny", "81.29"), ("puzzlemix", "swin_t"): ("swin_tiny", "81.47")}
T4_ROWS = [f"imagenet/{m}_{bb}.yaml" for m, bb in TABLE4]


def test_the_shipped_puzzlemix_rows_are_exactly_table_3s():
    found = sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").glob("*/puzzlemix_*.yaml")
                   if p.parent.name != "fashion_mnist")
    assert found == sorted(ROWS + [r for r in T4_ROWS if "/puzzlemix_" in r])


def test_table_4s_vit_rows_follow_the_deit_recipe_and_name_their_cell():
    found = sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs/imagenet").glob("*_*[st].yaml")
                   if p.stem.endswith(("_deit_s", "_swin_t")))
    assert found == sorted(T4_ROWS)
    for (method, bb), (model, pub) in TABLE4.items():
        rel = f"imagenet/{method}_{bb}.yaml"
        cfg = load_config(REPO / "configs" / rel)
        head = (REPO / "configs" / rel).read_text().splitlines()[0]
        assert "Table 4" in head and pub in head and ("DeiT-S" if bb == "deit_s" else "Swin-T") in head, rel
        assert (cfg.model.name, cfg.mixer.name, cfg.mixer.alpha, cfg.mixer.label_smoothing) == (model, method, 1.0, 0.1)
        assert (cfg.epochs, cfg.batch_size, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == \
            (300, 1024, "adamw", 1e-3, 0.05), rel
        assert (cfg.data.preset, cfg.data.image_size, cfg.sched.min_lr, cfg.eval.median_last) == ("deit", 224, 1e-5, 10)
        swin = bb == "swin_t"
        assert (cfg.model.kwargs.drop_path_rate, cfg.sched.warmup_epochs, cfg.optim.grad_clip) == \
            ((0.2, 20, 5.0) if swin else (0.1, 5, None)), rel


@pytest.mark.parametrize("method", ["transmix", "tokenmix", "attentivemix"])
def test_a_deit_s_row_builds_and_steps_at_a_small_size(method):
    """The DeiT-S row as ``samix train`` builds it, shrunk to 32 px (patch 16: a 2 x 2 token grid) for the CPU."""
    pytest.importorskip("timm")
    cfg = load_config(REPO / f"configs/imagenet/{method}_deit_s.yaml",
                      ["data.image_size=32", "model.kwargs.img_size=32", "channels_last=false"])
    algo = build_algorithm_from_config(cfg, dataset_info("imagenet"), torch.device("cpu"),
                                       torch.Generator().manual_seed(0))
    out = algo((torch.randn(4, 3, 32, 32), torch.randint(0, 1000, (4,))))
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("rel", ROWS)
def test_a_puzzlemix_row_has_the_official_settings_and_its_published_number(rel):
    pytest.importorskip("gco")
    cfg = load_config(REPO / "configs" / rel)
    head = (REPO / "configs" / rel).read_text().splitlines()[0]
    assert "Table 3" in head and "PuzzleMix" in head and "published top-1" in head
    m = cfg.mixer
    assert (m.name, m.alpha, m.n_labels, m.beta, m.gamma, m.eta, m.neigh_size, m.transport, m.t_eps, m.t_size) == \
        ("puzzlemix", 1.0, 3, 1.2, 0.5, 0.2, 4, True, 0.8, 4)
    info = dataset_info(cfg.data.name)
    assert list(m.mean) == pytest.approx(info.mean, abs=1e-4) and list(m.std) == pytest.approx(info.std, abs=1e-4)
    mixer = build_mixer_from_config(cfg, info, torch.Generator().manual_seed(0))
    assert mixer.requires == ("saliency",)


def test_the_augmix_row_and_the_cpu_recipes_build():
    pytest.importorskip("timm")
    cfg = load_config(REPO / "configs/cifar100/augmix_rx50.yaml")
    head = (REPO / "configs/cifar100/augmix_rx50.yaml").read_text().splitlines()[0]
    assert "automix.txt Table 2" in head and "81.18" in head and "66.54" in head
    assert (cfg.algorithm.name, cfg.algorithm.augmix_alpha, cfg.algorithm.jsd_weight) == ("augmix", 1.0, 12.0)
    pytest.importorskip("gco")
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    for name in ("puzzlemix", "comixup", "attentivemix", "snapmix", "augmix", "vit_vanilla", "vit_mixup", "vit_cutmix",
                 "vit_transmix", "vit_tokenmix", "vit_smmix", "mocov2_interintra"):
        c = load_config(REPO / "configs/fashion_mnist" / f"{name}.yaml")
        algo = build_algorithm_from_config(c, dataset_info("fashion_mnist"), torch.device("cpu"),
                                           torch.Generator().manual_seed(0))
        batch = ((x, x, x), y) if name == "augmix" else (((x, x.flip(-1)), y, torch.arange(4))
                                                        if name == "mocov2_interintra" else (x, y))
        if name == "mocov2_interintra":
            algo.queue.queue.normal_()  # the CPU recipe's queue of 1,000 holds 10 batches of 100; one step of 4
        out = algo(batch)
        assert torch.isfinite(out["loss"]), name
