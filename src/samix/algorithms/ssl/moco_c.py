"""MoCo v2 (C): cross-view instance mixup with a model-guided policy whose signal comes from a cluster
classifier on pseudo labels (samix.txt A.5.2 (b), Table 5/6 rows "MoCo.V2(C) PuzzleMix").

A policy such as PuzzleMix reads the saliency of a classification loss (``Mixer.requires``); contrastive
learning has no labels, so this algorithm gives it ODC pseudo labels (:mod:`.odc`, as SAMix-C and
Inter-Intra) and a classifier to differentiate::

    PL       = ODC pseudo labels of the batch's images     (read before this step's memory update)
    g_C      = Linear(dim, C)                               # the cluster head, on momentum-encoder embeddings
    f_C(x)   = g_C(normalize(f_k(x)))                       # the cluster classifier the policy reads
    index    = derangement(B)
    x_m, lam = policy.mix_with_model(f_C, x_q, PL, index)   # PuzzleMix: saliency = |d CE(f_C(x_q), PL) / d x_q|
    L        = NCE(q, k) + lam NCE(f_q(x_m), k) + (1 - lam) NCE(f_q(x_m), k[index])     (MoCo's objective)
             + w_c CE(g_C(k), PL)                           # trains the head only (k has no gradient)
    memory  <- update(i, k);  after each epoch: re-cluster

Documented choices (the paper names the row, not its mechanics):

- **The classifier reads the momentum encoder**, as SAMix-C's cluster head does (the same head, on the same
  L2-normalised 128-d keys), so the two pseudo-label rows of Table 5 share the clustering and the head. The
  saliency is the gradient with respect to the input only (``samix.mixing.signals``): the momentum encoder
  has no trainable parameter, nothing reaches the online network's ``.grad``, and in eval mode no BatchNorm
  statistic moves.
- **Before the first clustering** (epoch 1, while the memory fills) the policy reads the gradient of the
  cross-entropy against uniform rows ``1/C``: a label-free saliency of the (then untrained) head's logits.
  From the first re-clustering on, it reads the pseudo labels.
- Policies whose signals this algorithm computes: ``saliency`` (PuzzleMix) and ``activation`` (AttentiveMix:
  the momentum backbone's last map). A policy that mixes more than two inputs (Co-Mixup: ``sources``) or
  re-weights its loss (SnapMix: ``weight``) is refused: MoCo's mixed loss scores a sample against the keys
  of exactly two images with weights ``lam, 1 - lam``. A policy with ``clean_lam > 0`` is refused too: its
  clean loss would train the head a second time. An input-space policy runs as in plain MoCo.
- No dataset label is read; the item index addresses the memory.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samix import _checks

from ..base import register_algorithm
from .moco import MoCo
from .odc import ODCPseudoLabels

_WHAT = "algorithm option"


class ClusterClassifier:
    """``x -> g_C(normalize(f_k(x)))`` as the model a policy's signal reads (``samix.mixing.signals``).

    Not an ``nn.Module`` on purpose: it holds references to the algorithm's key encoder and cluster head,
    which the algorithm already owns, so it must not enter the state dict or the parameter groups a second
    time. ``train``/``eval`` switch the key encoder's mode (the signals run in eval mode and restore it)."""

    def __init__(self, key_encoder: nn.Module, head: nn.Module) -> None:
        self.key_encoder, self.head = key_encoder, head

    @property
    def training(self) -> bool:
        return self.key_encoder.training

    def train(self, mode: bool = True) -> "ClusterClassifier":
        self.key_encoder.train(mode)
        return self

    def eval(self) -> "ClusterClassifier":
        return self.train(False)

    def __call__(self, x: Tensor) -> Tensor:
        return self.head(F.normalize(self.key_encoder(x), dim=1))

    # the activation signal (AttentiveMix) reads the momentum backbone's last feature map
    @property
    def num_stages(self) -> int:
        return int(self.key_encoder.backbone.num_stages)

    def features(self, x: Tensor, stage: int) -> Tensor:
        return self.key_encoder.backbone.features(x, stage)


@register_algorithm("moco_c")
class MoCoC(ODCPseudoLabels, MoCo):
    """MoCo v2 + a model-guided policy on pseudo labels (module docstring).

    Options: those of :class:`~samix.algorithms.ssl.moco.MoCo`, the ODC options of
    :class:`~samix.algorithms.ssl.odc.ODCPseudoLabels` (``num_clusters`` 200, ...), plus ``cluster_weight``
    (1.0, the head's CE). The policy is ``mixer.name`` (e.g. ``puzzlemix``).
    """

    GUIDE_SIGNALS = ("saliency", "activation")
    DEFAULTS: Dict[str, Any] = {**MoCo.DEFAULTS, **ODCPseudoLabels.ODC_DEFAULTS, "cluster_weight": 1.0}

    def __init__(self, model: nn.Module, num_classes: int, mixer=None, **kwargs) -> None:
        super().__init__(model, num_classes, mixer, **kwargs)
        if mixer is None:
            raise ValueError("algorithm moco_c mixes with a model-guided policy: set mixer.name (e.g. puzzlemix, "
                             "attentivemix); without one it is plain MoCo (algorithm.name=moco)")
        if float(getattr(mixer, "clean_lam", 0.0) or 0.0) > 0:
            raise ValueError(f"mixer.clean_lam={mixer.clean_lam}: algorithm moco_c trains its cluster head with "
                             "its own CE on the pseudo labels; set mixer.clean_lam=0")
        o = self.options
        _checks.check_number("cluster_weight", o["cluster_weight"], low=0.0, what=_WHAT, type_error=ValueError)
        self.init_pseudo_labels(int(o["dim"]))
        self.cluster_head = nn.Linear(int(o["dim"]), int(o["num_clusters"]))
        self._pseudo_labels = None

    def cluster_classifier(self) -> ClusterClassifier:
        return ClusterClassifier(self.key_encoder, self.cluster_head)

    def guide_labels(self, batch_size: int, device) -> Tensor:
        """The labels the policy's signal is taken against: the pseudo labels, or uniform rows before the
        first clustering."""
        if self._pseudo_labels is not None:
            return self._pseudo_labels
        c = int(self.options["num_clusters"])
        return torch.full((batch_size, c), 1.0 / c, device=device)

    def mixed_embeddings(self, x: Tensor, index: Tensor) -> Tuple[Tensor, Tensor]:
        mixer = self.mixer
        if not mixer.requires:
            return super().mixed_embeddings(x, index)
        r = mixer.mix_with_model(self.cluster_classifier(), x, self.guide_labels(x.shape[0], x.device), index)
        if r.sources is not None or r.weight is not None:
            what = "mixes more than two inputs" if r.sources is not None else "re-weights its loss per sample"
            raise ValueError(f"mixer.name={mixer.name} {what}; MoCo's mixed loss scores a sample against the keys "
                             "of its two images with weights lam and 1 - lam: use a pairwise policy (puzzlemix, "
                             "attentivemix, or an input-space one)")
        return self.encoder(r.images), r.lam

    def extra_terms(self, batch, keys: Tensor) -> Dict[str, Tensor]:
        """The cluster head's CE on the pseudo labels (weight 0 before the first clustering: DDP expects every
        parameter in the graph), then this step's memory update."""
        logits = self.cluster_head(keys.detach())
        if self._pseudo_labels is not None:
            loss = float(self.options["cluster_weight"]) * F.cross_entropy(logits, self._pseudo_labels)
        else:
            loss = 0.0 * logits.sum()
        self.update_memory(batch, keys)
        return {"loss_cluster": loss}

    def forward(self, batch) -> Dict[str, Tensor]:
        self._pseudo_labels = self.pseudo_labels(batch)
        try:
            return super().forward(batch)
        finally:
            self._pseudo_labels = None

    def param_groups(self) -> List[Dict[str, Any]]:
        return super().param_groups() + [{"params": list(self.cluster_head.parameters()), "name": "cluster_head"}]
