"""Linear evaluation of a frozen backbone (the SSL papers' linear-probe protocol).

Protocol (samix.txt A.4, MoCo's ``main_lincls``): a plain ``nn.Linear(feat_dim, num_classes)``
on the backbone's pooled pre-classifier features (:func:`samix.evaluate.knn.pooled_features`,
not normalised), initialised ``N(0, 0.01)`` weights and zero bias; SGD (momentum 0.9, weight
decay 0), batch 256, lr 0.1 for 100 epochs, multiplied by 0.1 after epochs 60 and 80 (A.4;
samix.txt section 4.2 says 30/60 -- set ``milestones=(30, 60)`` for that). No BatchNorm before
the head (MAE's non-affine BN is a ViT fine point; the papers probe ResNets with a plain linear).

The backbone is frozen: ``requires_grad`` off and **eval mode**, so BatchNorm uses and keeps its
running statistics (the reference implementation leaves BN in train mode for ResNets, which
changes the "frozen" features while probing). Both are restored afterwards; the backbone's
tensors are bitwise unchanged.

Modes:

* ``"features"`` (fast): train and test features are computed once, without augmentation; the
  head trains on shuffled mini-batches of the cached train features. Not the papers' exact
  protocol (no random-resized-crop / flip): label results as such.
* ``"end_to_end"``: the frozen backbone runs on every training batch of ``train_loader`` as the
  caller built it (the protocol's random-resized-crop + flip is the caller's transform, the batch
  size is the loader's); test features are still computed once (a frozen eval-mode backbone on
  deterministic test images gives the same features every epoch). Under DDP the head's
  gradients are averaged over ranks.

The test set is evaluated after every epoch; rows use 1-based epochs and the lr of that epoch.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .knn import _images_labels, extract_features, pooled_features
from .metrics import _dist_ready, median_last, topk_correct

__all__ = ["LinearProbeConfig", "train_linear_probe"]

MODES = ("features", "end_to_end")


@dataclass
class LinearProbeConfig:
    """Hyper-parameters of the probe (defaults: samix.txt A.4 for STL-10 / Tiny-ImageNet).

    ``milestones``: epochs after which the lr is multiplied by ``gamma`` (A.4: 60, 80; section 4.2
    of samix.txt says 30, 60). ``batch_size``: head batch in ``"features"`` mode (in
    ``"end_to_end"`` the loader's batch size is used). ``seed``: head init and feature shuffling.
    """

    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256
    milestones: Sequence[int] = (60, 80)
    gamma: float = 0.1
    mode: str = "features"
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name, want):
            raise ValueError(f"LinearProbeConfig.{name} must be {want}, got {getattr(self, name)!r}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.epochs) or self.epochs < 1:
            bad("epochs", "an int >= 1")
        if not is_num(self.lr) or self.lr <= 0:
            bad("lr", "a number > 0")
        if not is_num(self.momentum) or not 0 <= self.momentum < 1:
            bad("momentum", "a number in [0, 1)")
        if not is_num(self.weight_decay) or self.weight_decay < 0:
            bad("weight_decay", "a number >= 0")
        if not is_int(self.batch_size) or self.batch_size < 1:
            bad("batch_size", "an int >= 1")
        if not is_num(self.gamma) or not 0 < self.gamma <= 1:
            bad("gamma", "a number in (0, 1]")
        if self.mode not in MODES:
            bad("mode", f"one of {list(MODES)}")
        if not is_int(self.seed):
            bad("seed", "an int")
        try:
            ms = tuple(self.milestones)
        except TypeError:
            ms = None
        if ms is None or not all(is_int(m) and m >= 1 for m in ms) or list(ms) != sorted(set(ms)):
            bad("milestones", "increasing positive ints")
        self.milestones = ms


def _check_labels(split: str, labels: Tensor, num_classes: int) -> None:
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"num_classes must be > every {split} label (labels in [{lo}, {hi}]), got {num_classes}")


def _head_accuracy(head: nn.Linear, feats: Tensor, labels: Tensor, chunk: int = 4096) -> Dict[str, float]:
    hits = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, feats.shape[0], chunk):
            logits = head(feats[s : s + chunk])
            hits += topk_correct(logits, labels[s : s + chunk], (1, 5)).double().cpu()
    n = feats.shape[0]
    return {"top1": 100.0 * float(hits[0]) / n, "top5": 100.0 * float(hits[1]) / n}


def _average_grads(head: nn.Module) -> None:
    if _dist_ready() and torch.distributed.get_world_size() > 1:
        world = torch.distributed.get_world_size()
        for p in head.parameters():
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


def train_linear_probe(backbone: nn.Module, train_loader, test_loader, num_classes: int, device,
                       config: Optional[LinearProbeConfig] = None, progress: bool = True,
                       on_epoch: Optional[Callable[[Dict], None]] = None, *, channels_last: bool = False,
                       amp_dtype: Optional[torch.dtype] = None) -> Dict[str, object]:
    """Train a linear head on the frozen ``backbone`` and evaluate it on ``test_loader`` every epoch.

    Returns ``rows`` (one dict per epoch: ``epoch`` (1-based), ``train_loss``, ``top1``, ``top5``,
    ``lr``), ``top1_last``, ``top1_median_last10``, ``top1_best`` (percent), ``mode``,
    ``feature_dim`` and ``head`` (the trained ``nn.Linear``, on CPU). ``on_epoch(row)`` is called
    after each epoch; ``progress`` shows a tqdm bar. Loaders yield ``(images, labels, ...)`` or
    dicts with ``"images"``/``"labels"``; under DDP they are this rank's shards.
    """
    from tqdm.auto import tqdm

    cfg = LinearProbeConfig() if config is None else config
    if not isinstance(cfg, LinearProbeConfig):
        raise TypeError(f"config must be a LinearProbeConfig, got {type(cfg).__name__}")
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    device = torch.device(device)
    fx = dict(channels_last=channels_last, amp_dtype=amp_dtype)

    was_training = backbone.training
    grad_flags = [(p, p.requires_grad) for p in backbone.parameters()]
    try:
        backbone.eval()
        for p, _ in grad_flags:
            p.requires_grad_(False)
        test_x, test_y = extract_features(backbone, test_loader, device, normalize=False, progress=progress, **fx)
        _check_labels("test", test_y, num_classes)
        test_x, test_y = test_x.to(device), test_y.to(device)
        if cfg.mode == "features":
            train_x, train_y = extract_features(backbone, train_loader, device, normalize=False, progress=progress, **fx)
            _check_labels("train", train_y, num_classes)
            train_x, train_y = train_x.to(device), train_y.to(device)
        dim = test_x.shape[1]

        g = torch.Generator().manual_seed(cfg.seed)
        head = nn.Linear(dim, num_classes)
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.01)
            head.bias.zero_()
        head.to(device)
        opt = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
        autocast = torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

        def batches():
            if cfg.mode == "features":
                perm = torch.randperm(train_x.shape[0], generator=g).to(device)
                for s in range(0, len(perm), cfg.batch_size):
                    idx = perm[s : s + cfg.batch_size]
                    yield train_x[idx], train_y[idx]
                return
            for batch in train_loader:
                images, y = _images_labels(batch)
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.no_grad(), autocast:
                    f = pooled_features(backbone, images)
                yield f.float(), torch.as_tensor(y).to(device).long()

        rows = []
        bar = tqdm(range(cfg.epochs), desc=f"linear probe ({cfg.mode})", disable=not progress)
        for epoch in bar:
            lr = opt.param_groups[0]["lr"]
            head.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            count = 0
            for f, y in batches():
                loss = F.cross_entropy(head(f), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.mode == "end_to_end":
                    _average_grads(head)
                opt.step()
                loss_sum += loss.detach().double() * y.shape[0]
                count += y.shape[0]
            sched.step()
            if count == 0:
                raise ValueError("train_loader yielded no samples")
            head.eval()
            row = {"epoch": epoch + 1, "train_loss": float(loss_sum) / count, **_head_accuracy(head, test_x, test_y),
                   "lr": lr}
            rows.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", top1=f"{row['top1']:.2f}")
            if on_epoch is not None:
                on_epoch(row)
    finally:
        backbone.train(was_training)
        for p, flag in grad_flags:
            p.requires_grad_(flag)
    top1 = [r["top1"] for r in rows]
    return {"rows": rows, "top1_last": top1[-1], "top1_median_last10": median_last(top1, 10),
            "top1_best": max(top1), "mode": cfg.mode, "feature_dim": dim, "head": head.cpu()}
