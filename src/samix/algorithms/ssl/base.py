"""What every self-supervised algorithm shares: two augmented views of each image, no labels in any loss,
a kNN monitor as its evaluation, and the pairing of instance mixup.

* Data: :meth:`SSLAlgorithm.wrap_dataset` makes the training set yield ``((view_q, view_k), label)``
  (:class:`samix.data.TwoViewDataset`, the run's training transform drawn twice). The label rides along
  (the loader needs a tensor) and is never read by a loss.
* Evaluation: a weighted kNN classifier (:func:`samix.evaluate.knn.knn_evaluate`) on the L2-normalised
  pooled backbone features of the labeled training images (the engine's ``memory_loader``, with the test
  transform), scored on the test set: ``knn_top1``/``knn_top5`` (percent). ``k = 200, T = 0.1`` by
  default, as lightly and VISSL; ``knn_k=20, knn_t=0.07`` is the solo-learn / OpenMixup STL-10 setting.
* Pairing (:func:`derangement`): a uniformly random single cycle over the batch, so that no sample is
  ever mixed with itself (a self-pair would make the "mixed" sample a plain view and leak the identity
  of the partner into the loss); a batch of one cannot be mixed and is refused.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from samix.data import TwoViewDataset
from samix.evaluate.knn import knn_evaluate, pooled_features

from ..base import Algorithm, EvalContext


def derangement(b: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """A random permutation of ``range(b)`` without a fixed point: ``index[order[t]] = order[t + 1]`` for a
    random ``order`` (one cycle through the whole batch). ``b >= 2``."""
    if b < 2:
        raise ValueError(f"instance mixup needs at least 2 images per process to pair, got a batch of {b}; "
                         f"increase batch_size")
    order = torch.randperm(b, generator=generator)
    index = torch.empty(b, dtype=torch.long)
    index[order] = order.roll(-1)
    return index.to(device) if device is not None else index


def two_views(batch) -> tuple:
    """``(view_q, view_k)`` of a two-view batch ``((view_q, view_k), label, ...)`` or a dict with ``views``."""
    views = batch["views"] if isinstance(batch, dict) and "views" in batch else (
        batch[0] if isinstance(batch, (tuple, list)) and batch else None)
    if not (isinstance(views, (tuple, list)) and len(views) == 2 and all(torch.is_tensor(v) for v in views)):
        raise TypeError("a self-supervised algorithm expects batches of ((view_q, view_k), label) as "
                        "samix.data.TwoViewDataset yields them; got "
                        f"{type(batch).__name__}: check that the dataset is wrapped by the algorithm")
    return views[0], views[1]


def features_from(backbone: nn.Module, h: Tensor, stage: int) -> Tensor:
    """Pooled features ``[B, D]`` of a samix Backbone from its feature map after ``stage`` (0 = the stem's
    output; the input image is ``stage=-1``, i.e. the whole network)."""
    if stage < 0:
        return pooled_features(backbone, h)
    for s in range(stage + 1, backbone.num_stages + 1):
        h = backbone.forward_stage(h, s)
    return backbone.forward_head(h, pre_logits=True).flatten(1)


class SSLAlgorithm(Algorithm):
    """Base of the self-supervised algorithms (see the module docstring). Options every one takes:
    ``knn_k`` (200) and ``knn_t`` (0.1) of the kNN monitor."""

    DEFAULTS: Dict[str, Any] = {"knn_k": 200, "knn_t": 0.1}
    EVAL_KEYS = ("knn_top1", "knn_top5", "test_loss")

    @classmethod
    def wrap_dataset(cls, dataset, transform, options):
        return TwoViewDataset(dataset, transform)

    @staticmethod
    def images_of(batch) -> Tensor:
        return two_views(batch)[0]

    def evaluate(self, ctx: EvalContext) -> Dict[str, Any]:
        if ctx.memory_loader is None:
            raise ValueError("the kNN monitor needs the labeled training images (EvalContext.memory_loader)")
        res = knn_evaluate(self.eval_model(), ctx.memory_loader(), ctx.test_loader, ctx.device, ctx.num_classes,
                           k=int(self.options["knn_k"]), temperature=float(self.options["knn_t"]),
                           channels_last=ctx.channels_last, amp_dtype=ctx.amp_dtype)
        return {"knn_top1": res["top1"], "knn_top5": res["top5"]}
