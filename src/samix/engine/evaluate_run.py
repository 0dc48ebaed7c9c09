"""``samix eval RUN_DIR`` and ``samix show RUN_DIR``: rebuild a run from its config and checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from samix._io import atomic_write_text
from samix.data import build_dataset, stratified_subset
from samix.evaluate import corruption_accuracy, evaluate_classifier, reliability_diagram

from .assembly import build_algorithm_from_config, build_data
from .checkpoint import load_checkpoint
from .config import load_config
from .rundir import MASK_LAMS, RunDir


def load_run(run_dir: str | Path, checkpoint: Optional[str] = None, device: str = "cpu"):
    """(cfg, info, algorithm with the checkpoint's weights, test loader) of a run directory."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {cfg_path} is missing")
    cfg = load_config(cfg_path)
    cfg.out_dir = str(run_dir)
    data = build_data(cfg, 0, 1)
    info, test_loader = data.info, data.test_loader
    dev = torch.device(device)
    algo = build_algorithm_from_config(cfg, info, dev, torch.Generator().manual_seed(0))
    ck = load_checkpoint(Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.pt", map_location=dev)
    algo.load_state_dict(ck["algorithm"])
    algo.eval()
    return cfg, info, algo, test_loader


def evaluate_run(run_dir: str | Path, corruptions: bool = False, corruption_subset: Optional[int] = None,
                 checkpoint: Optional[str] = None) -> Dict[str, Any]:
    run_dir = Path(run_dir)
    cfg, info, algo, test_loader = load_run(run_dir, checkpoint)
    model = algo.eval_model()
    ev = evaluate_classifier(model, test_loader, torch.device("cpu"), num_classes=info.num_classes,
                             return_logits=True, n_bins=int(cfg.eval.ece_bins))
    res: Dict[str, Any] = {"top1": ev["top1"], "top5": ev["top5"], "loss": ev.get("loss"), "ece": ev["ece"]}
    res["reliability_png"] = str(reliability_diagram(run_dir / "reliability.png", ev["logits"], ev["labels"],
                                                     n_bins=int(cfg.eval.ece_bins), title=f"{cfg.name}"))
    if corruptions:
        from torchvision.transforms import v2

        # corruptions apply to un-normalised [0, 1] images; normalisation follows inside
        raw = build_dataset(cfg.data.name, cfg.data.root, train=False,
                            transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
        subset = corruption_subset or int(cfg.eval.corruption_subset)
        if subset and subset < len(raw):
            raw = stratified_subset(raw, subset, seed=0)
        rep = corruption_accuracy(model, raw, mean=info.mean, std=info.std, batch_size=200)
        res["corruption"] = {"mean_top1": rep.mean_top1, "mean_error": rep.mean_error(),
                             "clean_top1": rep.clean_top1, "n": rep.n,
                             "per_corruption": rep.per_corruption(),
                             "table": {k: {str(sv): v for sv, v in row.items()} for k, row in rep.table.items()}}
    atomic_write_text(run_dir / "eval.json", json.dumps(res, indent=2) + "\n")
    return res


def show_run(run_dir: str | Path, out: Optional[str] = None) -> str:
    """Learned masks and mixed samples of a run (algorithms that learn masks) on a fixed test batch; the
    mixing grid of the static policies otherwise."""
    cfg, info, algo, test_loader = load_run(run_dir)
    images = algo.images_of(next(iter(test_loader)))[: int(cfg.viz.pairs) * 2]
    rd = RunDir(Path(out).parent if out else Path(run_dir))
    path = rd.save_masks(algo, images, int(cfg.epochs), title=f"{cfg.algorithm.name}: learned masks, "
                                                             f"epoch {int(cfg.epochs)}")
    if path is None:
        from samix.viz import mixing_grid

        path = mixing_grid(out or str(Path(run_dir) / "mixing_grid.png"))
    return str(path)


def compare_masks(run_dirs, out: str, pairs: int = 4, lams=MASK_LAMS):
    """One PNG with the learned masks of several runs (AutoMix, SAMix, ...) on the same test pairs.

    Every run must be of an algorithm that learns masks (:meth:`~samix.algorithms.Algorithm.masks_for`)
    and all runs must use the same dataset (the first ``2 * pairs`` test images of the first run are
    used for every run). Returns ``(path, images, {run name: masks [L, P, 1, H, W]})``.
    """
    from samix.viz import save_mask_comparison

    if len(run_dirs) < 1:
        raise ValueError("compare_masks needs at least one run directory")
    images = None
    masks, dataset = {}, None
    for d in run_dirs:
        cfg, _, algo, test_loader = load_run(d)
        if dataset is None:
            dataset = cfg.data.name
            images = algo.images_of(next(iter(test_loader)))[: 2 * pairs]
        elif cfg.data.name != dataset:
            raise ValueError(f"{d}: data.name={cfg.data.name!r}, but the first run used {dataset!r}: "
                             "masks can be compared only on the same pairs")
        m = algo.masks_for(images, list(lams))
        if m is None:
            raise ValueError(f"{d}: algorithm {cfg.algorithm.name!r} learns no masks (only runs of algorithms "
                             f"with a mask generator, e.g. automix/samix, can be compared)")
        name = str(cfg.name or Path(d).name)
        if name in masks:
            name = f"{name} ({Path(d).name})"
        masks[name] = m
    path = save_mask_comparison(out, images, masks, list(lams),
                                title=f"learned masks on the same {images.shape[0] // 2} test pairs")
    return path, images, masks
