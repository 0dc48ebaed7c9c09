"""``samix export-mixer RUN_DIR OUT.safetensors``: the trained Mixer / Mix Block of a run and the encoder
stages it reads, as a SAMix-P file (:mod:`samix.pretrained.format`)."""

from __future__ import annotations

import itertools
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.optim.swa_utils import update_bn

from samix.algorithms.base import algorithms_learning_masks
from samix.pretrained import MixerMetadata, PathLike, save_pretrained_mixer

from .assembly import _transforms, labeled_train_set
from .evaluate_run import load_run_without_data

#: Batches of clean training images that re-estimate the exported encoder's BatchNorm statistics.
BN_RECALIBRATION_BATCHES = 100


def recalibrate_batchnorm(encoder: nn.Module, images, batch_size: int, max_batches: int = BN_RECALIBRATION_BATCHES,
                          num_workers: int = 0) -> Dict[str, Any]:
    """Replace every BatchNorm's running statistics of ``encoder`` by their cumulative average over the
    clean images of the map-style dataset ``images`` (``(image, label)`` items, in order, at most
    ``max_batches`` batches of ``batch_size``); the weights are left as they are.

    Why: the teacher's statistics were accumulated over alternating clean and mixed batches (AutoMix /
    SAMix train the student on both, and the EMA teacher inherits its buffers), while the Mixer reads the
    encoder's features of *clean* images only. Uses :func:`torch.optim.swa_utils.update_bn` (reset,
    ``momentum=None``, train-mode forward without gradients). Returns ``{"images", "batches"}`` used."""
    loader = torch.utils.data.DataLoader(images, batch_size=int(batch_size), shuffle=False,
                                         num_workers=int(num_workers))
    n_batches = min(len(loader), int(max_batches))
    seen = {"images": 0}

    def batches():
        for x, *_ in itertools.islice(loader, n_batches):
            seen["images"] += int(x.shape[0])
            yield x

    was_training = encoder.training
    update_bn(batches(), encoder)
    encoder.train(was_training)
    return {"images": seen["images"], "batches": n_batches}


def _clean_training_images(cfg, info):
    """The run's labeled training images with its evaluation (deterministic, unaugmented) transform."""
    from samix.algorithms.base import TransformedDataset

    _, test_tf = _transforms(cfg, info)
    return TransformedDataset(labeled_train_set(cfg), test_tf)


def export_mixer(run_dir: PathLike, out_path: PathLike, checkpoint: Optional[PathLike] = None,
                 bn_recalibrate: bool = True, bn_batches: int = BN_RECALIBRATION_BATCHES) -> MixerMetadata:
    """Export the trained Mixer / Mix Block of a run directory (``samix export-mixer``).

    Rebuilds the run from ``RUN_DIR/config.yaml`` and ``checkpoints/last.pt`` (or ``checkpoint``), then
    writes the generator and the momentum (teacher) encoder's stem + stages ``1..l`` with
    :func:`save_pretrained_mixer`. Without a momentum pipeline (``momentum_pipeline=false``) the online
    network is the encoder, as in training.

    ``bn_recalibrate`` (default): the encoder's BatchNorm statistics are first re-estimated on the run's
    clean training images (:func:`recalibrate_batchnorm`, at most ``bn_batches`` batches of the run's batch
    size, evaluation transform); when the images cannot be read the file is written with the training
    statistics and a warning says so. The file's ``source.bn_recalibration`` records which happened.
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
    source["bn_recalibration"] = _recalibrate(cfg, info, encoder, bn_batches) if bn_recalibrate else "off"
    size = list(size) if not isinstance(size, int) else size
    return save_pretrained_mixer(out_path, generator, encoder, stage=int(stage),
                                 backbone=str(cfg.model.name), width=float(cfg.model.width), in_chans=in_chans,
                                 model_kwargs=model_kwargs, input_size=size, mean=info.mean, std=info.std,
                                 dataset=str(cfg.data.name), num_classes=info.num_classes, source=source)



def _recalibrate(cfg, info, encoder: nn.Module, bn_batches: int) -> Any:
    if int(bn_batches) < 1:
        raise ValueError(f"bn_batches must be a positive number of batches, got {bn_batches}; "
                         f"use bn_recalibrate=False (--no-bn-recalibrate) to keep the training statistics")
    try:
        images = _clean_training_images(cfg, info)
    except (OSError, RuntimeError, ValueError) as e:  # the dataset's files are not on this machine
        warnings.warn(f"BatchNorm statistics not recalibrated: the training images of {cfg.data.name!r} "
                      f"(data.root={cfg.data.root!r}) could not be read ({e}); the exported encoder keeps the "
                      f"statistics of training on clean and mixed batches. Point data.root at the data and "
                      f"export again, or pass --no-bn-recalibrate to silence this.", stacklevel=3)
        return "skipped: training images not readable"
    return recalibrate_batchnorm(encoder, images, int(cfg.batch_size), int(bn_batches))
