"""AugMix with the Jensen-Shannon consistency loss (Hendrycks et al., ICLR 2020; automix.txt's robustness
baseline, samix.txt A.3: alpha 1).

One step on a batch ``((x, x_aug1, x_aug2), y)`` (:class:`samix.data.AugMixDataset`: the clean image and two
AugMix chains of the same crop)::

    logits = model(cat(x, x_aug1, x_aug2))                       # one forward: BatchNorm sees all three
    p, p1, p2 = softmax(split(logits, 3)),   M = (p + p1 + p2) / 3
    loss   = L(logits_clean, y) + lambda * (KL(p || M) + KL(p1 || M) + KL(p2 || M)) / 3      (lambda 12)

timm's ``JsdCrossEntropy`` computes it (its ``smoothing`` is the config's ``loss.label_smoothing``, 0 in the
papers' recipes; the official AugMix code has none). Options: ``jsd_weight`` (lambda, 12, official),
``severity`` (3), ``mixture_width`` (3), ``chain_depth`` (-1: 1 to 3), ``augmix_alpha`` (1.0), ``all_ops``
(False) -- the last five go to torchvision's ``v2.AugMix``. A batch mixing policy on top is refused (the
papers compare AugMix alone).
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor

from samix import _checks

from .base import Algorithm, register_algorithm

_WHAT = "algorithm option"


def _jsd(num_splits: int, alpha: float, smoothing: float):
    try:
        from timm.loss import JsdCrossEntropy
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("algorithm augmix uses timm's JsdCrossEntropy: pip install timm "
                          "(or pip install 'samix[timm]')") from err
    return JsdCrossEntropy(num_splits=num_splits, alpha=alpha, smoothing=smoothing)


@register_algorithm("augmix")
class AugMixJSD(Algorithm):
    DEFAULTS: Dict[str, Any] = {
        "jsd_weight": 12.0,
        "severity": 3,
        "mixture_width": 3,
        "chain_depth": -1,
        "augmix_alpha": 1.0,
        "all_ops": False,
    }

    @classmethod
    def wrap_dataset(cls, dataset, transform, options):
        from samix.data import AugMixDataset

        o = {**cls.DEFAULTS, **options}
        return AugMixDataset(dataset, transform, severity=o["severity"], mixture_width=o["mixture_width"],
                             chain_depth=o["chain_depth"], alpha=o["augmix_alpha"], all_ops=o["all_ops"])

    def __init__(self, model, num_classes: int, mixer=None, loss_fn=None, **kwargs) -> None:
        if mixer is not None:
            raise ValueError(f"algorithm augmix trains on its own three views; remove mixer.name={mixer.name} "
                             "(AugMix + a batch mixing policy is not a method of the papers)")
        super().__init__(model, num_classes, None, loss_fn, **kwargs)
        w = _checks.check_number("jsd_weight", self.options["jsd_weight"], low=0.0, what=_WHAT,
                                 type_error=ValueError)
        smoothing = float(getattr(self.loss_fn, "options", {}).get("label_smoothing", 0.0) or 0.0)
        self.jsd = _jsd(3, w, smoothing)

    def forward(self, batch) -> Dict[str, Tensor]:
        views = batch[0] if isinstance(batch, (tuple, list)) and len(batch) >= 2 else None
        labels = batch[1] if views is not None else None
        if not (isinstance(views, (tuple, list)) and len(views) == 3 and all(torch.is_tensor(v) for v in views)):
            raise TypeError("algorithm augmix expects batches of ((clean, augmix_1, augmix_2), label) as "
                            "samix.data.AugMixDataset yields them")
        logits = self.model(torch.cat(list(views)))
        loss = self.jsd(logits.float(), labels)
        with torch.no_grad():
            ce = torch.nn.functional.cross_entropy(logits[: labels.shape[0]].float(), labels)
        return {"loss": loss, "ce_clean": ce}
