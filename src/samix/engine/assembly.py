"""Assembly: data, model, mixer, loss and algorithm from a config (nothing runs here).

``build_data`` asks the algorithm's class what its training set must yield
(:meth:`~samix.algorithms.Algorithm.wrap_dataset`: one view and a label, two views, ...);
``build_algorithm_from_config`` builds the model, the mixing policy (and gives it the run's data facts
through the policy hook :meth:`~samix.mixing.Mixer.bind_data`), the loss and the algorithm.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler

from samix.algorithms import Algorithm, build_algorithm, get_algorithm_class
from samix.algorithms.base import TransformedDataset
from samix.data import build_dataset, build_transform, dataset_info, stratified_subset
from samix.losses import build_loss
from samix.mixing import build_mixer, list_mixers
from samix.mixing.registry import mixer_options
from samix.models import build_model

from .config import ConfigError, section_options

#: the value of ``mixer.name`` that means "no mixing policy" (a config word, not a policy)
NO_MIXER = "none"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ShardSampler(Sampler):
    """Evaluation sharding without padding: rank r takes indices r, r+W, r+2W, ... (exact totals)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


@dataclass
class RunData:
    """What ``build_data`` returns: the dataset facts, the loaders, the training sampler, and a factory
    for the evaluation-transformed labeled training set (kNN monitors, linear probes)."""

    info: Any
    train_loader: DataLoader
    test_loader: DataLoader
    sampler: torch.utils.data.DistributedSampler
    memory_loader: Callable[[], DataLoader]


def _transforms(cfg: DictConfig, info):
    preset = cfg.data.preset or info.default_preset
    size = cfg.data.image_size or info.image_size
    tkw = {}
    if cfg.data.padding is not None:
        tkw["padding"] = int(cfg.data.padding)
    train_tf = build_transform(preset, True, info, size, **tkw)
    test_tf = build_transform(preset, False, info, size)  # a preset's test variant is deterministic
    return train_tf, test_tf


def _subset(dataset, key: str, n: int, seed: int):
    """A stratified, seeded subset; a size the data cannot give is a sentence naming the config key."""
    if n > len(dataset):
        raise ConfigError(f"{key}={n} is larger than the data ({len(dataset)} images): choose at most {len(dataset)}")
    try:
        return stratified_subset(dataset, n, seed=seed)
    except ValueError as e:
        raise ConfigError(f"{key}={n}: {e}") from None


#: the seed of the validation images (``data.val_subset``): fixed, so that every seed and every method of a
#: search is scored on the same images
VAL_SEED = 20_261_207


def split_validation(cfg: DictConfig, raw_train):
    """``(training pool, validation images or None)``: with ``data.val_subset = N``, N stratified images of the
    training split (seeded by :data:`VAL_SEED`, the same for every run) are held out for validation and the
    rest is the pool that ``data.train_subset`` draws from; without it, the whole split and ``None``."""
    n_val = cfg.data.get("val_subset")
    if not n_val:
        return raw_train, None
    n_val = int(n_val)
    if n_val >= len(raw_train):
        raise ConfigError(f"data.val_subset={n_val} leaves no training images: the training split of "
                          f"{cfg.data.name!r} has {len(raw_train)}; choose fewer")
    val = _subset(raw_train, "data.val_subset", n_val, VAL_SEED)
    held = np.zeros(len(raw_train), dtype=bool)
    held[np.asarray(val.indices)] = True
    return torch.utils.data.Subset(raw_train, np.flatnonzero(~held).tolist()), val


def _training_images(cfg: DictConfig, raw_train):
    """``(training images, validation images or None)`` of a run: :func:`split_validation`, then the stratified
    ``data.train_subset`` (seeded by ``seed``) of the pool."""
    pool, val = split_validation(cfg, raw_train)
    if cfg.data.train_subset:
        pool = _subset(pool, "data.train_subset", int(cfg.data.train_subset), int(cfg.seed))
    return pool, val


def build_data(cfg: DictConfig, rank: int, world: int) -> RunData:
    info = dataset_info(cfg.data.name)
    train_tf, test_tf = _transforms(cfg, info)
    raw_train = build_dataset(cfg.data.name, cfg.data.root, train=True, transform=None,
                                           split=cfg.data.get("train_split"))
    raw_train, val_set = _training_images(cfg, raw_train)
    if val_set is not None:  # a validation run: evaluated on held-out training images, the test set unread
        test_set = TransformedDataset(val_set, test_tf)
    else:
        test_set = build_dataset(cfg.data.name, cfg.data.root, train=False, transform=test_tf)
    if cfg.data.test_subset:
        if val_set is not None:
            raise ConfigError("data.test_subset and data.val_subset are both set: a validation run evaluates "
                              "on the data.val_subset images and never reads the test set; drop data.test_subset")
        test_set = _subset(test_set, "data.test_subset", int(cfg.data.test_subset), 0)
    algo_cls = get_algorithm_class(cfg.algorithm.name)
    train_set = algo_cls.wrap_dataset(raw_train, train_tf, section_options(cfg.algorithm))
    if cfg.batch_size % world != 0:
        raise ConfigError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world})")
    local_bs = cfg.batch_size // world
    if len(train_set) < cfg.batch_size:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the training set ({len(train_set)} images)")
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=int(cfg.seed), drop_last=True)
    common = dict(num_workers=int(cfg.num_workers), pin_memory=torch.cuda.is_available(),
                  persistent_workers=int(cfg.num_workers) > 0)
    # Training workers are started afresh each epoch from a generator the engine seeds with (seed, epoch,
    # rank) (:func:`seed_train_workers`): their augmentation draws are a function of the epoch, so a resumed
    # run draws what the uninterrupted one drew (persistent workers would carry an RNG state that no
    # checkpoint holds).
    train_loader = DataLoader(train_set, batch_size=local_bs, sampler=sampler, drop_last=True,
                              num_workers=int(cfg.num_workers), pin_memory=torch.cuda.is_available(),
                              persistent_workers=False, generator=torch.Generator())
    eval_bs = max(local_bs, 100)
    # evaluation loaders carry their own generator: their workers' seeds never come from the global RNG
    # (a resumed process would otherwise draw once more from it at its first evaluation)
    test_loader = DataLoader(test_set, batch_size=eval_bs, shuffle=False, generator=torch.Generator(),
                             sampler=ShardSampler(len(test_set), rank, world), **common)
    cache: dict = {}

    def memory_loader() -> DataLoader:
        """The labeled training images (``data.probe_subset``, else the training images) with the evaluation
        transform."""
        if "loader" not in cache:
            ds = TransformedDataset(labeled_train_set(cfg), test_tf)
            cache["loader"] = DataLoader(ds, batch_size=eval_bs, shuffle=False, generator=torch.Generator(),
                                         sampler=ShardSampler(len(ds), rank, world),
                                         num_workers=int(cfg.num_workers))
        return cache["loader"]

    if cfg.data.get("probe_split") or cfg.data.get("probe_subset"):
        labeled_train_set(cfg)  # a wrong split name or size fails now, not at the first evaluation
    return RunData(info, train_loader, test_loader, sampler, memory_loader)


def labeled_train_set(cfg: DictConfig, subset: Optional[int] = None):
    """The labeled training images of a run, untransformed: ``data.probe_split`` (default: the training
    split, ``data.train_split``, less the ``data.val_subset`` images), restricted to ``subset`` images, else ``data.probe_subset``, else (on the
    training split) ``data.train_subset`` -- stratified and seeded by ``seed``, so that it is the same set
    the kNN monitor used during training and the linear probe uses after it."""
    split = cfg.data.get("probe_split")
    full = build_dataset(cfg.data.name, cfg.data.root, transform=None,
                         split=split if split else cfg.data.get("train_split"))
    if not split:  # the validation images (data.val_subset) are never labeled training images
        full = split_validation(cfg, full)[0]
    n = subset or cfg.data.get("probe_subset") or (None if split else cfg.data.train_subset)
    if subset is not None and not 1 <= int(subset) <= len(full):
        raise ConfigError(f"train_subset must be in [1, {len(full)}] (the labeled training images of "
                          f"{cfg.data.name!r} number {len(full)}), got {subset}")
    if n and int(n) != len(full):
        return _subset(full, "data.probe_subset" if not subset else "train_subset", int(n), int(cfg.seed))
    return full


def seed_train_workers(loader: DataLoader, seed: int, epoch: int, rank: int) -> None:
    """Seed the generator from which ``loader``'s workers of this epoch take their seeds."""
    loader.generator.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + int(rank) * 104_729) % 2**63)


def build_mixer_from_config(cfg: DictConfig, info, generator: torch.Generator):
    """The configured mixing policy (``None`` for ``mixer.name=none``), bound to the run's data."""
    options = section_options(cfg.mixer)
    if cfg.mixer.name == NO_MIXER:
        stray = sorted(set(options) - {"alpha", "prob", "mode"})
        if stray:
            owners = [n for n in list_mixers() if stray[0] in mixer_options(n)]
            hint = f" (mixer.{stray[0]} is an option of {', '.join(owners)})" if owners else ""
            raise ConfigError(f"mixer.{stray[0]} is set but mixer.name is 'none' (no mixing): set mixer.name"
                              f"{hint} or drop {', '.join('mixer.' + k for k in stray)}")
        return None
    mixer = build_mixer(cfg.mixer.name, num_classes=info.num_classes, generator=generator, **options)
    mixer.bind_data(dataset=cfg.data.name, image_size=cfg.data.get("image_size"))
    return mixer


def build_algorithm_from_config(cfg: DictConfig, info, device: torch.device,
                                generator: torch.Generator) -> Algorithm:
    in_chans = cfg.model.in_chans or info.in_chans
    model_kwargs = OmegaConf.to_container(cfg.model.kwargs, resolve=True) or {}
    if cfg.model.pretrained:
        model_kwargs["pretrained"] = cfg.model.pretrained
    model = build_model(cfg.model.name, num_classes=info.num_classes, in_chans=in_chans,
                        width=float(cfg.model.width), **model_kwargs)
    mixer = build_mixer_from_config(cfg, info, generator)
    loss_options = OmegaConf.to_container(cfg.loss.kwargs, resolve=True) or {}
    loss_fn = build_loss(cfg.loss.name, label_smoothing=float(cfg.loss.label_smoothing),
                         decoupled_eta=cfg.loss.get("decoupled_eta"), **loss_options)
    algo = build_algorithm(cfg.algorithm.name, model=model, num_classes=info.num_classes, mixer=mixer,
                           loss_fn=loss_fn, generator=generator, **section_options(cfg.algorithm))
    algo.to(device)
    if cfg.channels_last:
        algo.to(memory_format=torch.channels_last)
    return algo


def run_generator(seed: int, rank: int) -> torch.Generator:
    """The ``torch.Generator`` of one process for the method's and the policy's draws."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(rank))


def build_for_benchmark(overrides, num_classes: int, in_chans: int, device: torch.device, seed: int = 0,
                        info: Optional[Any] = None):
    """``(cfg, algo)`` built exactly as ``samix train`` builds them, without data (for ``benchmarks/``)."""
    from types import SimpleNamespace

    from .config import load_config

    cfg = load_config(None, list(overrides))
    info = info or SimpleNamespace(num_classes=int(num_classes), in_chans=int(in_chans))
    seed_everything(seed)
    algo = build_algorithm_from_config(cfg, info, device, run_generator(seed, 0))
    algo.train()
    return cfg, algo
