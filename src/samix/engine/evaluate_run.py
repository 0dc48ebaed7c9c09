"""``samix eval RUN_DIR`` and ``samix show RUN_DIR``: rebuild a run from its config and checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from samix._io import atomic_write_text
from samix.algorithms.base import EvalContext, TransformedDataset, algorithms_learning_masks, split_batch
from samix.data import build_dataset, build_transform, dataset_info, stratified_subset
from samix.evaluate import corruption_accuracy, reliability_diagram
from samix.evaluate.knn import knn_evaluate
from samix.evaluate.linear_probe import MODES, LinearProbeConfig, train_linear_probe
from samix.models.base import Backbone
from samix.models.export import export_backbone, export_key_map

from .assembly import _transforms, build_algorithm_from_config, build_data, labeled_train_set, seed_everything
from .checkpoint import load_training_checkpoint
from .config import load_config
from .rundir import MASK_LAMS, RunDir


def run_paths(run_dir: Path, checkpoint: Optional[str] = None):
    """``(config.yaml, checkpoint)`` of a run directory; a sentence naming what is missing otherwise."""
    run_dir = Path(run_dir).expanduser()
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: {cfg_path} is missing")
    ck_path = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.pt"
    if not ck_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ck_path} (has the run finished an epoch?)")
    return cfg_path, ck_path


def load_run_without_data(run_dir: str | Path, checkpoint: Optional[str] = None):
    """``(cfg, info, algo, checkpoint)`` of a run, rebuilt from its config and checkpoint without reading the
    dataset's files (exports), except for a generic image folder, whose class count lives in the data."""
    run_dir = Path(run_dir).expanduser()
    cfg_path, ck_path = run_paths(run_dir, checkpoint)
    cfg = load_config(cfg_path)
    cfg.out_dir = str(run_dir)
    cfg.model.pretrained = None  # the checkpoint holds the weights
    ck = load_training_checkpoint(ck_path, map_location="cpu")
    info = dataset_info(cfg.data.name)
    if info.num_classes is None:
        cfg, data, algo, _ = _load_run_full(run_dir, str(ck_path))
        return cfg, data.info, algo, ck
    algo = build_algorithm_from_config(cfg, info, torch.device("cpu"), torch.Generator().manual_seed(0))
    algo.load_state_dict(ck["algorithm"])
    algo.eval()
    return cfg, info, algo, ck


def _load_run_full(run_dir: str | Path, checkpoint: Optional[str] = None, device: str = "cpu"):
    """``(cfg, data, algo, epoch)``: :func:`load_run` plus the whole :class:`RunData` and the checkpoint's epoch."""
    run_dir = Path(run_dir)
    cfg_path, ck_path = run_paths(run_dir, checkpoint)
    cfg = load_config(cfg_path)
    cfg.out_dir = str(run_dir)
    data = build_data(cfg, 0, 1)
    dev = torch.device(device)
    algo = build_algorithm_from_config(cfg, data.info, dev, torch.Generator().manual_seed(0))
    ck = load_training_checkpoint(ck_path, map_location=dev)
    algo.load_state_dict(ck["algorithm"])
    algo.eval()
    return cfg, data, algo, int(ck.get("epoch", 0))


def load_run(run_dir: str | Path, checkpoint: Optional[str] = None, device: str = "cpu"):
    """(cfg, info, algorithm with the checkpoint's weights, test loader) of a run directory."""
    cfg, data, algo, _ = _load_run_full(run_dir, checkpoint, device)
    return cfg, data.info, algo, data.test_loader


def evaluate_run(run_dir: str | Path, corruptions: bool = False, corruption_subset: Optional[int] = None,
                 checkpoint: Optional[str] = None) -> Dict[str, Any]:
    """The run's own evaluation (:meth:`~samix.algorithms.Algorithm.evaluate`: top-1/top-5/ECE and the
    reliability diagram for classifiers, kNN for self-supervised runs), and corruption robustness for
    classifiers; writes ``RUN/eval.json``."""
    run_dir = Path(run_dir)
    cfg, data, algo, _ = _load_run_full(run_dir, checkpoint)
    info = data.info
    model = algo.eval_model()
    ev = algo.evaluate(EvalContext(data.test_loader, torch.device("cpu"), info.num_classes,
                                   n_bins=int(cfg.eval.ece_bins), return_logits=True,
                                   memory_loader=data.memory_loader))
    res: Dict[str, Any] = {k: v for k, v in ev.items() if k not in ("logits", "labels", "n")}
    if "logits" in ev:
        res["reliability_png"] = str(reliability_diagram(run_dir / "reliability.png", ev["logits"], ev["labels"],
                                                         n_bins=int(cfg.eval.ece_bins), title=f"{cfg.name}"))
    if corruptions and "top1" not in ev:
        raise ValueError(f"{run_dir}: corruption robustness measures a classifier's top-1, and algorithm "
                         f"{cfg.algorithm.name!r} trains none; use samix eval RUN --linear or --knn")
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


def show_run_diagnostics(run_dir: str | Path, out_dir: Optional[str | Path] = None) -> Optional[str]:
    """``curves_masks.png`` (in ``out_dir``, default the run directory) from the run's ``metrics.jsonl``:
    the learned-mask diagnostics over the epochs; ``None`` when the run logged none (no learned masks)."""
    rows = RunDir(Path(run_dir)).read_metrics()
    path = RunDir(Path(out_dir) if out_dir else Path(run_dir)).plot_mask_diagnostics(rows)
    return str(path) if path else None


def show_run(run_dir: str | Path, out: Optional[str] = None) -> str:
    """Learned masks and mixed samples of a run (algorithms that learn masks) on a fixed test batch; the
    mixing grid of the static policies otherwise. (:func:`show_run_diagnostics` draws the mask numbers.)"""
    cfg, info, algo, test_loader = load_run(run_dir)
    images = split_batch(next(iter(test_loader)))[0][: int(cfg.viz.pairs) * 2]  # test batches: one view
    rd = RunDir(Path(out).parent if out else Path(run_dir))
    path = rd.save_masks(algo, images, int(cfg.epochs), title=f"{cfg.algorithm.name}: learned masks, "
                                                             f"epoch {int(cfg.epochs)}")
    if path is None:
        from samix.viz import mixing_grid

        path = mixing_grid(out or str(Path(run_dir) / "mixing_grid.png"))
    return str(path)


def compare_masks(run_dirs, out: str, pairs: int = 4, lams=MASK_LAMS):
    """One PNG with the learned masks of several runs on the same test pairs.

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
            images = split_batch(next(iter(test_loader)))[0][: 2 * pairs]
        elif cfg.data.name != dataset:
            raise ValueError(f"{d}: data.name={cfg.data.name!r}, but the first run used {dataset!r}: "
                             "masks can be compared only on the same pairs")
        m = algo.masks_for(images, list(lams))
        if m is None:
            raise ValueError(f"{d}: algorithm {cfg.algorithm.name!r} learns no masks (only runs of algorithms "
                             f"with a mask generator, {', '.join(algorithms_learning_masks())}, can be compared)")
        name = str(cfg.name or Path(d).name)
        if name in masks:
            name = f"{name} ({Path(d).name})"
        masks[name] = m
    path = save_mask_comparison(out, images, masks, list(lams),
                                title=f"learned masks on the same {images.shape[0] // 2} test pairs")
    return path, images, masks


# ------------------------------------------------------------------ self-supervised evaluation
#: ``mode`` as written to ``RUN/linear/summary.json`` and ``RUN/summary.json`` (``linear_mode``)
LINEAR_MODE_LABELS = {
    "features": "features (precomputed, no augmentation)",
    "end_to_end": "end_to_end (random-resized-crop + flip)",
}


def _auto_device(device: Optional[str]) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _backbone_of(run_dir: Path, cfg, algo, what: str):
    """``algo.eval_model()``, checked to be a samix Backbone with ``num_features`` (ValueError otherwise)."""

    model = algo.eval_model()
    if not isinstance(model, Backbone) or int(getattr(model, "num_features", 0) or 0) < 1:
        raise ValueError(f"run {run_dir} (algorithm.name={cfg.algorithm.name!r}, model.name={cfg.model.name!r}): "
                         f"{what} needs a samix Backbone with num_features as the run's evaluation model, got "
                         f"{type(model).__name__}")
    return model


def _update_summary(run_dir: Path, entries: Dict[str, Any]) -> Path:
    """Read ``RUN/summary.json`` (absent: ``{}``), add ``entries``, write it back atomically."""
    path = run_dir / "summary.json"
    summary: Dict[str, Any] = {}
    if path.is_file():
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError(f"{path} does not hold a JSON object")
    summary.update(entries)
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    return path


def _labeled_train_set(cfg, train_subset: Optional[int]):
    """The labeled training images of a run (raw): :func:`~samix.engine.assembly.labeled_train_set`, the set
    the kNN monitor used during training (``train_subset`` images instead when given)."""
    return labeled_train_set(cfg, train_subset)


def _default_milestones(epochs: int):
    """The papers' x0.1 at 60 % and 80 % of the schedule (60 and 80 of 100 epochs, samix.txt A.4)."""
    return tuple(sorted({max(1, round(0.6 * epochs)), max(1, round(0.8 * epochs))}))


def linear_probe_train_transform(info, size):
    """The probe's training augmentation in mode ``end_to_end``: random-resized-crop + horizontal flip + the
    dataset's normalisation (the ``imagenet`` preset: crop scale (0.08, 1) as MoCo's ``main_lincls`` for
    images of 64 px or more; (0.2, 1) for small images such as 28 px Fashion-MNIST or 32 px CIFAR, where
    8 % of the image is a few pixels)."""

    side = size if isinstance(size, int) else min(size)
    scale = (0.08, 1.0) if side >= 64 else (0.2, 1.0)
    return build_transform("imagenet", True, info, size, scale=scale)


def linear_eval_run(run_dir: str | Path, epochs: Optional[int] = None, lr: Optional[float] = None,
                    batch_size: Optional[int] = None, mode: str = "features", train_subset: Optional[int] = None,
                    milestones=None, progress: bool = True, checkpoint: Optional[str] = None,
                    device: Optional[str] = None) -> Dict[str, Any]:
    """Linear probe on the frozen backbone of a run (``samix eval RUN --linear``).

    Protocol (samix.txt A.4, MoCo's linear classification): a linear head on the pooled features of the frozen,
    eval-mode backbone (``algo.eval_model()``; its BatchNorm statistics are not updated), SGD momentum 0.9,
    weight decay 0, batch 256, lr 0.1, 100 epochs, lr x0.1 at 60 % and 80 % of the epochs (60 and 80 of 100;
    samix.txt section 4.2 says 30/60: ``milestones=(30, 60)``, CLI ``--milestones 30 60``). Trained on the
    labeled training images (``train_subset`` images, stratified and seeded by ``cfg.seed``, when given; else
    ``data.probe_subset``; else the run's training set), tested on the run's test set after each epoch.

    ``mode="features"``: features are computed once with the test transform (no augmentation; fast on CPUs);
    ``mode="end_to_end"``: the backbone runs on every batch with random-resized-crop + flip
    (:func:`linear_probe_train_transform`). See :mod:`samix.evaluate.linear_probe`.

    Writes ``RUN/linear/metrics.jsonl`` (one row per epoch), ``RUN/linear/summary.json`` and adds
    ``linear_top1`` (= ``top1_last``) and ``linear_mode`` to ``RUN/summary.json``. Returns the summary plus
    ``rows`` and the written paths.
    """
    from torch.utils.data import DataLoader



    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    run_dir = Path(run_dir)
    dev = _auto_device(device)
    cfg, data, algo, ck_epoch = _load_run_full(run_dir, checkpoint, dev)
    backbone = _backbone_of(run_dir, cfg, algo, "linear evaluation")
    info = data.info
    epochs = 100 if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    milestones = _default_milestones(epochs) if milestones is None else tuple(int(m) for m in milestones)
    probe_cfg = LinearProbeConfig(epochs=epochs, lr=0.1 if lr is None else float(lr),
                                  batch_size=256 if batch_size is None else int(batch_size),
                                  milestones=milestones, mode=mode, seed=int(cfg.seed))
    seed_everything(int(cfg.seed))
    labeled = _labeled_train_set(cfg, train_subset)
    _, test_tf = _transforms(cfg, info)
    if mode == "end_to_end":
        size = cfg.data.image_size or info.image_size
        train_ds = TransformedDataset(labeled, linear_probe_train_transform(info, size))
        loader = DataLoader(train_ds, batch_size=probe_cfg.batch_size, shuffle=True, drop_last=False,
                            generator=torch.Generator().manual_seed(int(cfg.seed)),
                            num_workers=int(cfg.num_workers))
    else:
        loader = DataLoader(TransformedDataset(labeled, test_tf), batch_size=max(probe_cfg.batch_size, 100),
                            shuffle=False, num_workers=int(cfg.num_workers))

    out = run_dir / "linear"
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    rows_so_far = []

    def on_epoch(row):
        rows_so_far.append(row)
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in rows_so_far))

    res = train_linear_probe(backbone, loader, data.test_loader, int(info.num_classes), dev, probe_cfg,
                             progress=progress, on_epoch=on_epoch, channels_last=bool(cfg.channels_last))
    summary = {
        "top1_last": res["top1_last"], "top1_median_last10": res["top1_median_last10"],
        "top1_best": res["top1_best"], "top5_last": res["rows"][-1]["top5"],
        "mode": LINEAR_MODE_LABELS[mode], "epochs": epochs, "lr": probe_cfg.lr,
        "milestones": list(probe_cfg.milestones), "batch_size": probe_cfg.batch_size,
        "n_train": len(labeled), "n_test": len(data.test_loader.dataset), "feature_dim": res["feature_dim"],
        "checkpoint_epoch": ck_epoch,
    }
    summary_path = atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    run_summary = _update_summary(run_dir, {"linear_top1": res["top1_last"], "linear_mode": LINEAR_MODE_LABELS[mode]})
    return {**summary, "rows": res["rows"], "metrics_path": str(metrics_path), "summary_path": str(summary_path),
            "run_summary_path": str(run_summary)}


def knn_eval_run(run_dir: str | Path, k: int = 200, temperature: float = 0.1, checkpoint: Optional[str] = None,
                 device: Optional[str] = None) -> Dict[str, Any]:
    """Weighted kNN top-1/top-5 of any run's backbone (``samix eval RUN --knn``), supervised runs included.

    Memory bank: the labeled training images (``data.probe_subset``, else the run's training set) with the test
    transform; queries: the run's test set (:func:`samix.evaluate.knn.knn_evaluate`, L2-normalised pooled
    features). Writes ``RUN/knn.json`` and ``knn_eval = {top1, top5, k, t}`` into ``RUN/summary.json`` (the
    training-time ``knn_top1`` of self-supervised runs is left as it is).
    """

    run_dir = Path(run_dir)
    dev = _auto_device(device)
    cfg, data, algo, ck_epoch = _load_run_full(run_dir, checkpoint, dev)
    backbone = _backbone_of(run_dir, cfg, algo, "kNN evaluation")
    res = knn_evaluate(backbone, data.memory_loader(), data.test_loader, dev, int(data.info.num_classes),
                       k=int(k), temperature=float(temperature), channels_last=bool(cfg.channels_last))
    out = {"top1": res["top1"], "top5": res["top5"], "k": int(k), "t": float(temperature),
           "n_train": res["n_train"], "n_test": res["n_test"], "checkpoint_epoch": ck_epoch}
    path = atomic_write_text(run_dir / "knn.json", json.dumps(out, indent=2) + "\n")
    run_summary = _update_summary(run_dir, {"knn_eval": {"top1": out["top1"], "top5": out["top5"], "k": out["k"],
                                                         "t": out["t"]}})
    return {**out, "path": str(path), "run_summary_path": str(run_summary)}


def export_backbone_run(run_dir: str | Path, out_path: str | Path, checkpoint: Optional[str] = None) -> Dict[str, Any]:
    """Write the encoder of a run (``algo.eval_model()`` without its classifier) as safetensors
    (``samix export-backbone RUN FILE.safetensors``, :func:`samix.models.export.export_backbone`); the header
    records ``model``, ``width``, ``in_chans``, ``run``, ``algorithm``, ``epoch``, ``dataset``. The dataset files
    are not read (except for a generic image folder, whose class count lives in the data)."""

    run_dir = Path(run_dir)
    out = Path(out_path).expanduser()
    if out.is_dir():
        raise ValueError(f"output path {out} is an existing directory; give a file name such as "
                         f"{out / 'backbone.safetensors'}")
    cfg, info, algo, ck = load_run_without_data(run_dir, checkpoint)
    epoch = int(ck.get("epoch", 0))
    model = _backbone_of(run_dir, cfg, algo, "export-backbone")
    meta = {"model": str(cfg.model.name), "width": float(cfg.model.width),
            "in_chans": int(cfg.model.in_chans or info.in_chans), "run": run_dir.resolve().name,
            "algorithm": str(cfg.algorithm.name), "epoch": epoch, "dataset": str(cfg.data.name)}
    path = export_backbone(model, out, metadata=meta)
    names, key_format = export_key_map(model)
    return {"path": str(path), "tensors": len(names), "key_format": key_format,
            "feature_dim": int(model.num_features), **meta}
