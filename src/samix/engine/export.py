"""``samix export-mixer RUN_DIR OUT.safetensors``: the trained Mixer / Mix Block of a run and the encoder
stages it reads, as a SAMix-P file (:mod:`samix.pretrained.format`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from samix.algorithms.base import algorithms_learning_masks
from samix.pretrained import MixerMetadata, PathLike, save_pretrained_mixer

from .evaluate_run import load_run_without_data


def export_mixer(run_dir: PathLike, out_path: PathLike, checkpoint: Optional[PathLike] = None) -> MixerMetadata:
    """Export the trained Mixer / Mix Block of a run directory (``samix export-mixer``).

    Rebuilds the run from ``RUN_DIR/config.yaml`` and ``checkpoints/last.pt`` (or ``checkpoint``)
    without reading the dataset (its files are not needed), then writes the generator and the
    momentum (teacher) encoder's stem + stages ``1..l`` with :func:`save_pretrained_mixer`. Without a
    momentum pipeline (``momentum_pipeline=false``) the online network is the encoder, as in training.
    """
    if Path(os.fspath(out_path)).expanduser().is_dir():
        raise ValueError(f"the output {out_path} is a directory: give a file name, e.g. {Path(out_path) / 'mixer.safetensors'}")
    run = Path(os.fspath(run_dir)).expanduser()
    cfg, info, algo, ck = load_run_without_data(run, checkpoint)
    found = algo.mask_generator()
    if found is None:
        raise ValueError(f"run {run} (algorithm.name={cfg.algorithm.name!r}) has no learned Mixer or Mix Block; "
                         f"export-mixer needs a run of an algorithm that learns one: "
                         f"{', '.join(algorithms_learning_masks())}")
    generator, encoder, stage = found
    in_chans = int(cfg.model.in_chans or info.in_chans)
    size = cfg.data.image_size or info.image_size
    model_kwargs = OmegaConf.to_container(cfg.model.kwargs, resolve=True) or {}
    source = {"algorithm": str(cfg.algorithm.name), "run": run.name, "epoch": int(ck.get("epoch", 0)),
              "momentum_encoder": encoder is not algo.model,
              "model_num_classes": int(info.num_classes)}
    if cfg.data.train_subset:
        source["train_subset"] = int(cfg.data.train_subset)
    size = list(size) if not isinstance(size, int) else size
    return save_pretrained_mixer(out_path, generator, encoder, stage=int(stage),
                                 backbone=str(cfg.model.name), width=float(cfg.model.width), in_chans=in_chans,
                                 model_kwargs=model_kwargs, input_size=size, mean=info.mean, std=info.std,
                                 dataset=str(cfg.data.name), num_classes=info.num_classes, source=source)

