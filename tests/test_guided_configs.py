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


def test_the_shipped_puzzlemix_rows_are_exactly_table_3s():
    found = sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").glob("*/puzzlemix_*.yaml")
                   if p.parent.name != "fashion_mnist")
    assert found == sorted(ROWS)


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
