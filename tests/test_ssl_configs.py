"""The MoCo v2 paper rows of samix.txt Table 5 (STL-10) and Table 6 (Tiny, IN-1k): one config per cell, the
A.4 protocol in each, and an STL-10 row that builds and runs one step as ``samix train`` would build it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from samix.data import dataset_info
from samix.engine.assembly import build_algorithm_from_config
from samix.engine.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

T5_METHODS = ("vanilla", "mixup", "manifoldmix", "cutmix", "saliencymix", "fmix", "resizemix")
T6_METHODS = ("vanilla", "mixup", "cutmix", "saliencymix")


def _stem(method: str) -> str:
    return "mocov2" if method == "vanilla" else f"mocov2_{method}"


# folder/file -> (dataset, method, model, epochs)
EXPECTED = {}
for _m in T5_METHODS:
    for _bb, _model in (("r18", "timm_resnet18"), ("r50", "timm_resnet50")):
        for _ep in (400, 800):
            EXPECTED[f"stl10/{_stem(_m)}_{_bb}_ep{_ep}.yaml"] = ("stl10", _m, _model, _ep)
for _m in T6_METHODS:
    for _bb, _model in (("r18", "resnet18"), ("r50", "resnet50")):
        EXPECTED[f"ssl_tiny_imagenet/{_stem(_m)}_{_bb}.yaml"] = ("tiny_imagenet", _m, _model, 400)
    for _bb, _model, _ep in (("r18", "timm_resnet18", 100), ("r50", "timm_resnet50", 200)):
        EXPECTED[f"ssl_imagenet/{_stem(_m)}_{_bb}.yaml"] = ("imagenet", _m, _model, _ep)

# SAMix-I and SAMix-C rows (issue 17): the same protocol with algorithm samix_i / samix_c
for _s in ("samix_i", "samix_c"):
    for _bb, _model in (("r18", "timm_resnet18"), ("r50", "timm_resnet50")):
        for _ep in (400, 800):
            EXPECTED[f"stl10/{_s}_{_bb}_ep{_ep}.yaml"] = ("stl10", _s, _model, _ep)
    for _bb, _model in (("r18", "resnet18"), ("r50", "resnet50")):
        EXPECTED[f"ssl_tiny_imagenet/{_s}_{_bb}.yaml"] = ("tiny_imagenet", _s, _model, 400)
    for _bb, _model, _ep in (("r18", "timm_resnet18", 100), ("r50", "timm_resnet50", 200)):
        EXPECTED[f"ssl_imagenet/{_s}_{_bb}.yaml"] = ("imagenet", _s, _model, _ep)

# SAMix-IP: Table 6 only (Tiny and IN-1k), MoCo v2 driven by the frozen Mixer of the folder's R-18 SAMix-I row
for _bb, _model in (("r18", "resnet18"), ("r50", "resnet50")):
    EXPECTED[f"ssl_tiny_imagenet/samix_ip_{_bb}.yaml"] = ("tiny_imagenet", "samix_ip", _model, 400)
for _bb, _model, _ep in (("r18", "timm_resnet18", 100), ("r50", "timm_resnet50", 200)):
    EXPECTED[f"ssl_imagenet/samix_ip_{_bb}.yaml"] = ("imagenet", "samix_ip", _model, _ep)

# the pseudo-label PuzzleMix rows "MoCo.V2(C) PuzzleMix" of Tables 5 and 6 (algorithm moco_c)
for _bb, _model in (("r18", "timm_resnet18"), ("r50", "timm_resnet50")):
    for _ep in (400, 800):
        EXPECTED[f"stl10/mocov2_puzzlemix_c_{_bb}_ep{_ep}.yaml"] = ("stl10", "puzzlemix_c", _model, _ep)
for _bb, _model in (("r18", "resnet18"), ("r50", "resnet50")):
    EXPECTED[f"ssl_tiny_imagenet/mocov2_puzzlemix_c_{_bb}.yaml"] = ("tiny_imagenet", "puzzlemix_c", _model, 400)
for _bb, _model, _ep in (("r18", "timm_resnet18", 100), ("r50", "timm_resnet50", 200)):
    EXPECTED[f"ssl_imagenet/mocov2_puzzlemix_c_{_bb}.yaml"] = ("imagenet", "puzzlemix_c", _model, _ep)

# the cluster-based baseline of Table 5 (samix.txt A.5.2 (a)), STL-10 only
for _bb, _model in (("r18", "timm_resnet18"), ("r50", "timm_resnet50")):
    for _ep in (400, 800):
        EXPECTED[f"stl10/interintra_{_bb}_ep{_ep}.yaml"] = ("stl10", "interintra", _model, _ep)

QUEUE = {"stl10": 16384, "tiny_imagenet": 16384, "imagenet": 65536}
SIZE = {"stl10": 96, "tiny_imagenet": 96, "imagenet": 224}
FOLDERS = ("stl10", "ssl_tiny_imagenet", "ssl_imagenet")


def test_the_rows_are_exactly_the_cells_of_tables_5_and_6():
    found = {f"{d}/{p.name}" for d in FOLDERS for p in (CONFIGS / d).glob("*.yaml") if not p.name.startswith("_")}
    assert found == set(EXPECTED), (sorted(found - set(EXPECTED)), sorted(set(EXPECTED) - found))
    assert len(EXPECTED) == 28 + 16 + 8 + 8 + 4 + 4 + 8
    for d in FOLDERS:
        assert (CONFIGS / d / "_base.yaml").is_file()


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_every_row_has_the_a4_moco_v2_protocol_and_its_cell(rel):
    dataset, method, model, epochs = EXPECTED[rel]
    cfg = load_config(CONFIGS / rel)
    a, o = cfg.algorithm, cfg.optim
    assert (cfg.data.name, cfg.model.name, cfg.epochs) == (dataset, model, epochs)
    assert a.name == {"samix_i": "samix_i", "samix_c": "samix_c", "interintra": "interintra",
                      "puzzlemix_c": "moco_c"}.get(method, "moco") and a.queue_size == QUEUE[dataset]
    assert (a.temperature, a.momentum, a.dim, a.hidden_dim, a.mlp, a.cross_view) == (0.2, 0.999, 128, 2048, True, True)
    assert a.get("momentum_end") is None and a.get("knn_k", 200) == 200 and a.get("knn_t", 0.1) == 0.1
    assert (o.name, o.lr, o.momentum, o.weight_decay, cfg.batch_size) == ("sgd", 0.03, 0.9, 1e-4, 256)
    assert (cfg.sched.name, cfg.sched.min_lr, cfg.sched.warmup_epochs) == ("cosine", 0.0, 0)
    assert a.queue_size % cfg.batch_size == 0
    assert cfg.data.preset == "moco" and cfg.data.image_size == SIZE[dataset]
    assert cfg.data.probe_split == "train" and not cfg.data.probe_subset and not cfg.data.train_subset
    if dataset == "stl10":
        assert cfg.data.train_split == "train+unlabeled"
        assert dataset_info("stl10").test_split == "test"
    else:
        assert cfg.data.train_split is None
    if method in ("samix_c", "interintra", "puzzlemix_c"):
        assert a.num_clusters == 200  # samix.txt Sec. 4.3 (iv): C = 200
    if method in ("samix_i", "samix_c"):
        assert cfg.mixer.name == "none" and (a.alpha, a.stage) == (2.0, 3)
        assert a.eta == (0.1 if dataset == "imagenet" else 0.5)
    elif method == "interintra":  # A.5.2 (a): CutMix alpha >= 2 between clusters, Mixup alpha 0.2 within
        assert cfg.mixer.name == "none" and (a.inter, a.intra, a.intra_alpha) == ("cutmix", "mixup", 0.2)
        assert a.inter_alpha >= 2
    elif method == "puzzlemix_c":  # A.3's PuzzleMix alpha and the official block settings; the data's stats
        assert (cfg.mixer.name, cfg.mixer.alpha, cfg.mixer.neigh_size, cfg.mixer.t_size) == ("puzzlemix", 1.0, 4, 4)
        info = dataset_info(dataset)
        assert [round(v, 3) for v in cfg.mixer.mean] == [round(v, 3) for v in info.mean]
        assert [round(v, 3) for v in cfg.mixer.std] == [round(v, 3) for v in info.std]
    elif method == "samix_ip":  # the pre-trained pipeline: plain MoCo v2, masks from the frozen SAMix-I Mixer
        prefix = {"tiny_imagenet": "ssl_tiny", "imagenet": "ssl_in1k"}[dataset]
        assert (cfg.mixer.name, cfg.mixer.alpha) == ("samix_p", 2.0)
        assert cfg.mixer.pretrained == f"runs/{prefix}_samix_i_r18/mixer.safetensors"
        assert load_config(CONFIGS / Path(rel).parent / "samix_i_r18.yaml").name == f"{prefix}_samix_i_r18"
        assert (cfg.mixer.dataset, cfg.mixer.image_size) == (dataset, SIZE[dataset])
    elif method == "vanilla":
        assert cfg.mixer.name == "none"
    else:
        assert (cfg.mixer.name, cfg.mixer.alpha, cfg.mixer.prob) == (method, 1.0, 1.0)
    assert cfg.eval_interval >= 1 and cfg.epochs % cfg.eval_interval == 0
    # the header names the table, the cell and the published number
    head = (CONFIGS / rel).read_text().splitlines()[0]
    assert ("Table 5" if dataset == "stl10" else "Table 6") in head and "published linear top-1" in head
    assert bool(re.search(r"SAMix-I\b", head)) == (method == "samix_i") and ("SAMix-C" in head) == (method == "samix_c")
    assert ("SAMix-IP" in head) == (method == "samix_ip")
    assert ("Inter-Intra" in head) == (method == "interintra")
    assert ("MoCo.V2(C) PuzzleMix" in head) == (method == "puzzlemix_c")
    assert cfg.name == {"stl10": "stl10", "tiny_imagenet": "ssl_tiny", "imagenet": "ssl_in1k"}[dataset] + "_" + \
        Path(rel).stem


def test_an_stl10_r18_row_builds_and_gives_a_finite_loss():
    """Built as ``samix train`` builds it (no data), queue shrunk to 8 (two batches of 4), one forward."""
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "stl10/mocov2_mixup_r18_ep400.yaml", ["algorithm.queue_size=8", "channels_last=false"])
    g = torch.Generator().manual_seed(0)
    algo = build_algorithm_from_config(cfg, dataset_info("stl10"), torch.device("cpu"), g)
    assert algo.projector.net[0].out_features == 2048 and algo.projector.net[2].out_features == 128
    assert algo.mixer is not None and algo.mixer.alpha == 1.0
    x = torch.randn(4, 3, 96, 96)
    batch = ((x, x + 0.1 * torch.randn_like(x)), torch.zeros(4, dtype=torch.long))
    out = algo(batch)
    assert torch.isfinite(out["loss"]) and "loss_mix" in out


def test_an_stl10_samix_i_row_builds_and_gives_a_finite_loss():
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "stl10/samix_i_r18_ep400.yaml", ["algorithm.queue_size=8", "channels_last=false"])
    algo = build_algorithm_from_config(cfg, dataset_info("stl10"), torch.device("cpu"), torch.Generator().manual_seed(0))
    x = torch.randn(4, 3, 96, 96)
    out = algo(((x, x + 0.1 * torch.randn_like(x)), torch.zeros(4, dtype=torch.long)))
    assert torch.isfinite(out["loss"]) and algo.mask_generator() is not None


def test_an_stl10_puzzlemix_c_row_builds_and_mixes_on_its_cluster_saliency():
    """The MoCo.V2(C) PuzzleMix row as ``samix train`` builds it: one step (before any clustering, so the
    saliency is taken against uniform rows) gives a finite loss and a mixed term."""
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / "stl10/mocov2_puzzlemix_c_r18_ep400.yaml", ["algorithm.queue_size=8", "channels_last=false"])
    algo = build_algorithm_from_config(cfg, dataset_info("stl10"), torch.device("cpu"), torch.Generator().manual_seed(0))
    assert type(algo).__name__ == "MoCoC" and algo.cluster_head.out_features == 200
    x = torch.randn(4, 3, 96, 96)
    out = algo(((x, x + 0.1 * torch.randn_like(x)), torch.zeros(4, dtype=torch.long), torch.arange(4)))
    assert torch.isfinite(out["loss"]) and float(out["loss_mix"]) > 0


# The seed-2 ablations of SAMix-I (docs/results.md, issue 17): each changes exactly what its name says.
SAMIX_I_ABLATIONS = {
    "samix_i_adjust_all.yaml": {"lam_adjust_prob": 1.0},
    "samix_i_mask_w1.yaml": {"mask_loss_weight": 1.0},
    "samix_i_bce.yaml": {"instance_loss": "bce"},
    "samix_i_no_attention.yaml": {"attention": False},
    "samix_i_no_adaptive_lambda.yaml": {"adaptive_lambda": False},
    "samix_i_linear_content.yaml": {"nonlinear_content": False},
}


@pytest.mark.parametrize("name", sorted(SAMIX_I_ABLATIONS))
def test_each_samix_i_ablation_changes_only_its_switch(name):
    from omegaconf import OmegaConf

    from samix.engine.config import _flatten  # the flattening resume_drift compares configs with

    base = _flatten(OmegaConf.to_container(load_config(CONFIGS / "fashion_mnist/samix_i.yaml"), resolve=True))
    abl = _flatten(OmegaConf.to_container(load_config(CONFIGS / "fashion_mnist" / name), resolve=True))
    diff = {k for k in set(base) | set(abl) if base.get(k, "<absent>") != abl.get(k, "<absent>")}
    expected = {f"algorithm.{k}" for k in SAMIX_I_ABLATIONS[name]} | {"name", "out_dir"}  # out_dir follows name
    assert diff == expected, f"{name} changes {sorted(diff)}, expected {sorted(expected)}"
    for k, v in SAMIX_I_ABLATIONS[name].items():
        assert abl[f"algorithm.{k}"] == v
    assert abl["name"] == "fm_" + name.removesuffix(".yaml")


@pytest.mark.parametrize("name,attr", [("samix_i_no_attention.yaml", "use_attention"),
                                       ("samix_i_no_adaptive_lambda.yaml", "adaptive_lambda"),
                                       ("samix_i_linear_content.yaml", "nonlinear_content")])
def test_a_module_ablation_builds_a_mixer_without_that_module(name, attr):
    cfg = load_config(CONFIGS / "fashion_mnist" / name, ["algorithm.queue_size=8"])
    algo = build_algorithm_from_config(cfg, dataset_info("fashion_mnist"), torch.device("cpu"),
                                       torch.Generator().manual_seed(0))
    assert getattr(algo.mix_block, attr) is False
    base = build_algorithm_from_config(load_config(CONFIGS / "fashion_mnist/samix_i.yaml", ["algorithm.queue_size=8"]),
                                       dataset_info("fashion_mnist"), torch.device("cpu"),
                                       torch.Generator().manual_seed(0))
    assert getattr(base.mix_block, attr) is True
