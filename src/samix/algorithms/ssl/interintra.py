"""Inter-Intra (samix.txt A.5.2 (a), Table 5/6 rows "MoCo.V2(C) Inter-Intra"): MoCo v2 with cross-view
instance mixup whose policy depends on the pair's pseudo labels, the cluster-based baseline of SAMix-C.

One step on a batch ``((x_q, x_k), _, i)`` (the label is never read; ``i`` the item index)::

    PL       = ODC pseudo labels of the batch's images      (samix.algorithms.ssl.odc, read before the update)
    index    = derangement(B)                               # as MoCo: no sample meets itself
    same_i   = PL_i == PL_index[i]
    x_m,i    = Mixup(alpha 0.2) of (i, index[i])   if same_i      # intra-cluster: smooth, low intensity
               CutMix(alpha 2) of (i, index[i])    otherwise      # inter-cluster: discriminative, strong
    L        = NCE(q, k) + lam_i NCE(z_m,i, k_i) + (1 - lam_i) NCE(z_m,i, k_index[i])    (MoCo's objective)
    memory  <- update(i, k);  after each epoch: re-cluster

Both policies mix the same pairs (the same ``index``), each with its own lambda draw; a sample's lambda is
the one of the policy that made it. The policies, their alphas and the cluster count are options
(``inter``/``inter_alpha``, ``intra``/``intra_alpha``, ``num_clusters``); samix.txt A.5.2 gives CutMix with
alpha >= 2 between clusters and Mixup with alpha 0.2 within one.

Documented choices (the paper is silent):

- Before the first clustering (epoch 1, while the memory fills) every pair counts as inter-cluster: with
  C clusters a random partner lies in another cluster with probability 1 - 1/C (0.995 for C = 200).
- The clustering is SAMix-C's (ODC on the momentum encoder's L2-normalised 128-d keys), so that the two
  cluster-based rows of Table 5 differ only in what they do with the pseudo labels.
- The pair's policy is chosen per sample from the pseudo labels only; which policy made a sample is never
  an input of the network.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import Tensor, nn

from samix import _checks

from ..base import register_algorithm
from .moco import MoCo
from .odc import ODCPseudoLabels

_WHAT = "algorithm option"


@register_algorithm("interintra")
class InterIntra(ODCPseudoLabels, MoCo):
    """MoCo v2 + cluster-conditioned cross-view mixup (module docstring).

    Options: those of :class:`~samix.algorithms.ssl.moco.MoCo`, the ODC options of
    :class:`~samix.algorithms.ssl.odc.ODCPseudoLabels`, plus ``inter`` (``"cutmix"``), ``inter_alpha`` (2.0),
    ``intra`` (``"mixup"``), ``intra_alpha`` (0.2): any two input-space policies of
    :func:`samix.mixing.list_mixers`.
    """

    DEFAULTS: Dict[str, Any] = {
        **MoCo.DEFAULTS,
        **ODCPseudoLabels.ODC_DEFAULTS,
        "inter": "cutmix",
        "inter_alpha": 2.0,
        "intra": "mixup",
        "intra_alpha": 0.2,
    }

    def __init__(self, model: nn.Module, num_classes: int, mixer=None, **kwargs) -> None:
        if mixer is not None:
            raise ValueError("algorithm interintra builds its own two policies (algorithm.inter and "
                             "algorithm.intra, with inter_alpha and intra_alpha); remove mixer.name="
                             f"{getattr(mixer, 'name', type(mixer).__name__)} from the config")
        super().__init__(model, num_classes, None, **kwargs)
        from samix.mixing import build_mixer, list_mixers

        o = self.options
        policies = {}
        for role in ("inter", "intra"):
            name = o[role]
            _checks.check_choice(role, name, tuple(list_mixers()), what=_WHAT)
            alpha = _checks.check_number(f"{role}_alpha", o[f"{role}_alpha"], low=0.0, low_open=True, what=_WHAT,
                                         type_error=ValueError)
            policy = build_mixer(name, alpha=float(alpha), generator=self.generator)
            if getattr(policy, "needs_model", False):
                raise ValueError(f"algorithm option {role}={name!r}: Inter-Intra mixes images with a static "
                                 "input-space policy (mixup, cutmix, fmix, resizemix, ...); "
                                 f"{name!r} needs the model")
            policies[role] = policy
        self.inter_policy, self.intra_policy = policies["inter"], policies["intra"]
        # MoCo mixes when it has a mixer: the inter-cluster policy stands for the pair (and names it in logs)
        self.mixer = self.inter_policy
        self.init_pseudo_labels(int(o["dim"]))
        self._pseudo_labels = None

    def mix_pairs(self, x: Tensor, index: Tensor, pseudo_labels) -> Tuple[Tensor, Tensor, Tensor]:
        """``(x_m, lam, same)``: each sample mixed with ``index`` by the intra-cluster policy where its
        pseudo label equals its partner's, by the inter-cluster policy elsewhere (all of them before the
        first clustering, ``pseudo_labels=None``)."""
        b = x.shape[0]
        if pseudo_labels is None:
            same = torch.zeros(b, dtype=torch.bool, device=x.device)
        else:
            same = pseudo_labels == pseudo_labels[index]
        inter = self.inter_policy.mix(x, index=index)
        lam_inter = inter.lam.to(device=x.device, dtype=torch.float32).expand(b)
        if not bool(same.any()):
            return inter.images, lam_inter, same
        intra = self.intra_policy.mix(x, index=index)
        lam_intra = intra.lam.to(device=x.device, dtype=torch.float32).expand(b)
        sel = same.view(b, *([1] * (x.dim() - 1)))
        return torch.where(sel, intra.images, inter.images), torch.where(same, lam_intra, lam_inter), same

    def mixed_embeddings(self, x: Tensor, index: Tensor) -> Tuple[Tensor, Tensor]:
        x_m, lam, same = self.mix_pairs(x, index, self._pseudo_labels)
        self._intra_share = same.float().mean()
        return self.encoder(x_m), lam

    def extra_terms(self, batch, keys: Tensor) -> Dict[str, Tensor]:
        self.update_memory(batch, keys)
        return {"intra_share": self._intra_share.detach()}

    def forward(self, batch) -> Dict[str, Tensor]:
        self._pseudo_labels = self.pseudo_labels(batch)
        try:
            return super().forward(batch)
        finally:
            self._pseudo_labels = None
