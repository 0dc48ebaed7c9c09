"""What one training step does, behind one interface the engine drives without knowing the method.

The engine builds the training set through :meth:`Algorithm.wrap_dataset` (the algorithm says what its
data must yield: one augmented view and a label, two views, indices, ...), wraps the algorithm in
DistributedDataParallel when distributed and, every iteration::

    algo.set_progress(step, total_steps)      # schedules inside the method (mask-loss weight, momentum)
    out = ddp_algo(batch)                     # Algorithm.forward: the loader's batch, unchanged (on the
                                              # device); returns {"loss": scalar, **scalar logs}
    out["loss"].backward(); optimizer.step()
    algo.on_train_step_end()                  # e.g. EMA teacher update

then, once an epoch, ``algo.on_epoch_end(epoch)`` (clustering, memory banks; returns scalar logs) and,
every ``eval_interval`` epochs, ``algo.evaluate(ctx)`` (top-1 for classifiers, kNN for self-supervised
methods). Learned masks for a figure come from :meth:`Algorithm.masks_for` as tensors; the engine
draws them. No method is named, no attribute probed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from samix._registry import Registry
from samix.evaluate import evaluate_classifier
from samix.losses import build_loss


class TransformedDataset(Dataset):
    """``(transform(image), label, ...)`` for each item of a map-style dataset of ``(image, label, ...)``."""

    def __init__(self, dataset, transform: Optional[Callable]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if self.transform is None:
            return item
        return (self.transform(item[0]), *item[1:])


@dataclass
class EvalContext:
    """What an algorithm's :meth:`~Algorithm.evaluate` may use; built by the engine.

    ``memory_loader()`` builds (once, on first call) a loader over the labeled training images with
    the evaluation transform, for kNN monitors; ``return_logits`` asks a classifier for its logits
    (final evaluation: calibration figure).
    """

    test_loader: Any
    device: torch.device
    num_classes: int
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    n_bins: int = 15
    return_logits: bool = False
    memory_loader: Optional[Callable[[], Any]] = None

    def input_transform(self) -> Optional[Callable[[Tensor], Tensor]]:
        if not self.channels_last:
            return None
        return lambda x: x.contiguous(memory_format=torch.channels_last)


def split_batch(batch) -> tuple:
    """``(images, labels)`` of a supervised batch: a tuple/list ``(images, labels, ...)`` or a dict with
    ``images`` and ``labels``; a clear error otherwise."""
    if isinstance(batch, dict) and "images" in batch and "labels" in batch:
        return batch["images"], batch["labels"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and torch.is_tensor(batch[0]):
        return batch[0], batch[1]
    kind = type(batch).__name__
    raise TypeError(f"this algorithm expects batches of (images, labels) (a tuple, or a dict with 'images' "
                    f"and 'labels'), got a {kind}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list))
                                                      else "") + "; check the dataset and the algorithm")


class Algorithm(nn.Module):
    """Base class of training algorithms (supervised, mixup, AutoMix, SAMix, MoCo, ...).

    Args:
        model: the online network, a :class:`samix.models.Backbone`.
        num_classes: number of classes of the task (of the labels, which self-supervised methods
            use only for evaluation).
        mixer: an optional batch mixing policy from :mod:`samix.mixing`.
        loss_fn: the classification loss ``loss_fn(logits, labels, lam, index)``
            (:func:`samix.losses.build_loss`); mixed CE when ``None``.
        generator: the ``torch.Generator`` of this process for the method's own draws.
        **options: method-specific options from the config's ``algorithm`` section,
            checked against :attr:`DEFAULTS`.
    """

    #: option name -> default; subclasses list every option they accept here.
    DEFAULTS: Dict[str, Any] = {}
    #: the registry name (set by :func:`register_algorithm`).
    algorithm_name: str = "algorithm"
    #: the per-epoch metrics :meth:`evaluate` reports (``loss`` is logged as ``test_loss``); epochs without
    #: evaluation log them as null
    EVAL_KEYS: tuple = ("top1", "top5", "test_loss")

    def __init__(self, model: nn.Module, num_classes: int, mixer=None, loss_fn=None,
                 generator: Optional[torch.Generator] = None, **options: Any) -> None:
        super().__init__()
        self.check_option_names(options)
        self.model = model
        self.num_classes = num_classes
        self.mixer = mixer
        if loss_fn is None:
            loss_fn = build_loss("ce")
        self.loss_fn = loss_fn
        self.generator = generator
        self.options = {**self.DEFAULTS, **options}
        self.step = 0
        self.total_steps = 1

    @classmethod
    def check_option_names(cls, options: Dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(cls.DEFAULTS))
        if unknown:
            allowed = ", ".join(sorted(cls.DEFAULTS)) or "none"
            raise ValueError(f"unknown option(s) {unknown} for algorithm {cls.algorithm_name!r}; "
                             f"allowed options: {allowed}")

    # -- data ------------------------------------------------------------------------
    @classmethod
    def wrap_dataset(cls, dataset, transform: Callable, options: Dict[str, Any]):
        """The training set this algorithm's :meth:`forward` expects, from a dataset of untransformed
        ``(image, label)`` items and the run's training transform. Default: ``(transform(image), label)``."""
        return TransformedDataset(dataset, transform)

    @staticmethod
    def images_of(batch) -> Tensor:
        """The images of a batch (the first view for several views, ``((view_1, view_2, ...), label)``), for
        figures."""
        first = batch[0] if isinstance(batch, (tuple, list)) and batch else None
        if isinstance(first, (tuple, list)) and first and all(torch.is_tensor(v) for v in first):
            return first[0]
        images = split_batch(batch)[0]
        return images[0] if isinstance(images, (tuple, list)) else images

    # -- schedules -------------------------------------------------------------------
    def set_progress(self, step: int, total_steps: int) -> None:
        self.step = int(step)
        self.total_steps = max(int(total_steps), 1)

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(self.step / self.total_steps, 1.0)

    # -- the step --------------------------------------------------------------------
    def forward(self, batch) -> Dict[str, Tensor]:
        """One training step's losses from the loader's batch: ``{"loss": scalar, **scalar logs}``."""
        raise NotImplementedError

    def on_train_step_end(self) -> None:
        """Called after each optimizer step (EMA updates and the like)."""

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        """Called by the engine after each training epoch (1-based ``epoch``) on every process, before
        evaluation and checkpointing; returns scalar logs for ``metrics.jsonl``."""
        return {}

    # -- evaluation ------------------------------------------------------------------
    def evaluate(self, ctx: EvalContext) -> Dict[str, Any]:
        """Metrics of the current model. Default (classifiers): ``top1``, ``top5``, ``loss``, ``ece``
        of :meth:`eval_model` on the test set (with ``logits``/``labels`` when ``ctx.return_logits``)."""
        return evaluate_classifier(self.eval_model(), ctx.test_loader, ctx.device, amp_dtype=ctx.amp_dtype,
                                   num_classes=ctx.num_classes, return_logits=ctx.return_logits,
                                   n_bins=ctx.n_bins, input_transform=ctx.input_transform())

    def eval_model(self) -> nn.Module:
        """The network whose accuracy is reported."""
        return self.model

    def masks_for(self, images: Tensor, lams: Sequence[float]) -> Optional[Tensor]:
        """Learned masks ``[L, P, 1, H, W]`` for the pairs ``(images[2p], images[2p + 1])`` at each λ,
        or ``None`` for an algorithm that learns no masks (the default)."""
        return None

    def mask_generator(self) -> Optional[tuple]:
        """``(generator, encoder, stage)`` of an algorithm that learns a mask generator reading the
        encoder's stage-``stage`` features (what ``samix export-mixer`` writes), or ``None`` (the default)."""
        return None

    # -- optimisation ----------------------------------------------------------------
    def param_groups(self) -> List[Dict[str, Any]]:
        """Parameter groups for the optimizer. A group may carry ``lr`` and ``min_lr`` of its own
        (e.g. a learnable mixer's), otherwise the engine's values apply."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "name": "model"}]


ALGORITHMS = Registry("algorithm", name_attr="algorithm_name")


def register_algorithm(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register_algorithm("name")`` makes ``algorithm.name=name`` valid in configs."""
    return ALGORITHMS.register(name)


def list_algorithms() -> list[str]:
    return ALGORITHMS.list()


def get_algorithm_class(name: str) -> type:
    return ALGORITHMS.get(name)


def build_algorithm(name: str, **kwargs) -> Algorithm:
    return ALGORITHMS.build(name, **kwargs)


def algorithms_learning_masks() -> list[str]:
    """Names of the registered algorithms that learn a mask generator (they override ``mask_generator``)."""
    return [n for n, c in ALGORITHMS.items() if c.mask_generator is not Algorithm.mask_generator]
