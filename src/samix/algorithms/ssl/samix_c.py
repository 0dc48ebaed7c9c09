"""SAMix-C (samix.txt Sec. 3.1, Sec. 4.2, A.4): SAMix-I's pipeline with a class-level generation objective
on pseudo labels from online deep clustering (:mod:`samix.algorithms.ssl.odc`).

The online network's objective is SAMix-I's (MoCo's cross-view objective on its own mixed sample, the mask
detached). What changes is the Mixer's objective and one more head::

    k        = normalize(f_k(x_k))                         # this step's keys (SAMix-I)
    PL       = ODC labels of the batch's images            # read before this step updates the memory
    g_C      = Linear(dim, C)                              # the cluster head, on momentum-encoder embeddings
    L_head   = w_c * CE(g_C(k), PL)                        # trains g_C only (k has no gradient)
    x_g      = s_g * x_q + (1 - s_g) * x_q[idx_g]          # the Mixer's sample, as SAMix-I
    logits_g = g_C'(normalize(f_k(x_g)))                   # g_C' = g_C with detached weights: the Mixer's
                                                           #   loss never trains the head
    L_gen    = pBCE(logits_g, PL, lam_g, idx_g) + eta * CE(logits_g, PL, lam_g, idx_g)   (Eq. 8, eta 0.5)
    memory   <- update(image index, k);  after each epoch: re-cluster (spherical k-means, small clusters split)

During the first epoch the memory fills and nothing has been clustered yet: the Mixer trains on SAMix-I's
instance objective and the head on nothing (a documented warm-up); from the first re-clustering on, on the
pseudo labels. A pair of one cluster (``PL_i = PL_j``) has no pBCE term (:func:`samix.losses.pbce_loss`).

Choices: the clustering runs on the momentum encoder's L2-normalised 128-d key embeddings (a memory of
``N x 128`` floats, 54 MB for STL-10's 105k images; pooled ResNet-50 features would take 16x that), the same
embeddings the cluster head reads. No label is read anywhere: the dataset's item index (``((x_q, x_k),
label, i)``, :class:`samix.data.TwoViewDataset` with ``with_index``) addresses the memory.

Generation objectives of Table 9 as ``gen_loss``: ``pl_eta`` (pBCE(PL) + eta CE(PL), the default), ``pl_ce``
(CE(PL)), ``pl_ce_nce`` (CE(PL) + the mixup infoNCE), ``instance`` (SAMix-I's objective: pseudo labels unused
by the Mixer).
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samix import _checks
from samix.losses import cross_view_mixup_infonce, eta_balanced_loss, mixed_cross_entropy

from ..base import register_algorithm
from .odc import ODCPseudoLabels, image_indices  # noqa: F401  (image_indices: re-exported)
from .samix_i import SAMixI

_WHAT = "algorithm option"
GEN_LOSSES = ("pl_eta", "pl_ce", "pl_ce_nce", "instance")


@register_algorithm("samix_c")
class SAMixC(ODCPseudoLabels, SAMixI):
    """SAMix-C: SAMix-I with the Mixer trained on ODC pseudo labels (module docstring).

    Options: those of :class:`~samix.algorithms.ssl.samix_i.SAMixI`, the ODC options of
    :class:`~samix.algorithms.ssl.odc.ODCPseudoLabels` (``num_clusters`` 200, ``odc_momentum`` 0.5,
    ``kmeans_iters`` 10, ``min_cluster_size`` 2, ``cluster_seed`` 0) plus ``gen_loss`` (``"pl_eta"``) and
    ``cluster_weight`` (1.0, the head's CE).
    """

    DEFAULTS: Dict[str, Any] = {
        **SAMixI.DEFAULTS,
        **ODCPseudoLabels.ODC_DEFAULTS,
        "gen_loss": "pl_eta",
        "cluster_weight": 1.0,
    }

    def __init__(self, model: nn.Module, num_classes: int, mixer=None, **kwargs) -> None:
        super().__init__(model, num_classes, mixer, **kwargs)
        o = self.options
        _checks.check_choice("gen_loss", o["gen_loss"], GEN_LOSSES, what=_WHAT)
        _checks.check_number("cluster_weight", o["cluster_weight"], low=0.0, what=_WHAT, type_error=ValueError)
        dim = int(o["dim"])
        self.init_pseudo_labels(dim)
        self.cluster_head = nn.Linear(dim, int(o["num_clusters"]))
        self._pseudo_labels = None

    # ------------------------------------------------------------------ the Mixer's objective
    def generation_loss(self, z_g: Tensor, targets: Tensor, index: Tensor, lam: Tensor,
                        neg: Tensor) -> Dict[str, Tensor]:
        pl = self._pseudo_labels
        o = self.options
        if pl is None or o["gen_loss"] == "instance":
            return super().generation_loss(z_g, targets, index, lam, neg)
        w, b = self.cluster_head.weight.detach(), self.cluster_head.bias.detach()
        logits = F.linear(F.normalize(z_g, dim=1), w, b)
        if o["gen_loss"] == "pl_eta":
            return {"loss": eta_balanced_loss(logits, pl, lam, index, eta=float(o["eta"]))}
        ce = mixed_cross_entropy(logits, pl, lam, index)
        if o["gen_loss"] == "pl_ce":
            return {"loss": ce}
        nce = cross_view_mixup_infonce(z_g, targets, index, lam, neg, temperature=float(o["temperature"]))
        return {"loss": ce + nce, "ce": ce, "nce": nce}

    def extra_terms(self, batch, keys: Tensor) -> Dict[str, Tensor]:
        """The cluster head's CE on the pseudo labels, then this step's memory update."""
        out: Dict[str, Tensor] = {}
        logits = self.cluster_head(keys.detach())
        if self._pseudo_labels is not None:
            out["loss_cluster"] = float(self.options["cluster_weight"]) * F.cross_entropy(logits, self._pseudo_labels)
        else:  # warm-up: the head takes part in the graph with weight 0 (DDP expects every parameter)
            out["loss_cluster"] = 0.0 * logits.sum()
        self.update_memory(batch, keys)
        return out

    def forward(self, batch) -> Dict[str, Tensor]:
        # before the first clustering, or with an image first seen after it: a warm-up step
        self._pseudo_labels = self.pseudo_labels(batch)
        try:
            return super().forward(batch)
        finally:
            self._pseudo_labels = None

    def param_groups(self) -> List[Dict[str, Any]]:
        """SAMix-I's groups (encoder, Mixer) plus the cluster head (the engine's lr)."""
        return super().param_groups() + [{"params": list(self.cluster_head.parameters()), "name": "cluster_head"}]
