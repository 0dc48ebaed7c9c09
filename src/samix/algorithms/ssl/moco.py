"""MoCo v2 (and v1) with cross-view instance mixup for every mixing policy (samix.txt Sec. 4.2, A.4, A.5.1).

One step on a batch ``((x_q, x_k), _)`` (two augmented views; the label is never read), ``f_q`` the query
encoder (backbone + projector), ``f_k`` its momentum copy, ``Q`` the queue of negatives::

    q   = f_q(x_q),  k = f_k(x_k)                            # k: no gradient, L2-normalised
    L   = NCE(q, k)                                          # one positive, the queue's negatives
    with a mixing policy (mixer.name=...):
        index = derangement(B)                               # no sample meets itself
        x_m, lam = mix(x_q, index)                           # any policy of samix.mixing, same pairing
        z_m = f_q(x_m)
        L  += lam * NCE(z_m, k) + (1 - lam) * NCE(z_m, k[index])     cross_view=true (Fig. 8a)
              with k' = f_k(x_q) in place of k                        cross_view=false (Fig. 8b)
    Q  <- enqueue(k)      (after the loss; under DDP every process's keys, in rank order)
    after the optimizer step:  theta_k <- m theta_k + (1 - m) theta_q

The same ``index`` selects the images, the key features and the targets. ``manifoldmix`` mixes the
backbone's map at its drawn stage (0 = the image) with the same pairing.

Documented choices:

- MoCo v2 (default): projector Linear(D, H) - ReLU - Linear(H, dim), ``dim = 128``, ``H = 2048`` for
  backbones of width >= 512 (ResNets) and ``4 D`` for narrower CPU nets (``hidden_dim`` sets it); ``T =
  0.2``; momentum 0.999 (``momentum_end`` > momentum: cosine schedule to it). MoCo v1 is ``mlp=false``
  (a linear head), ``temperature=0.07`` and the weaker augmentation of its config.
- BatchNorm under DDP: **shuffle-BN** for the key encoder (the keys' batch is shuffled across processes
  before the key encoder and unshuffled after, so that the key and query of one image never share BN
  statistics -- MoCo's remedy for the BN "cheating" signal). SyncBN (``dist.sync_bn=true``) would bring
  back a global batch statistic shared by queries and keys, so it is not the default. On one process
  there is nothing to shuffle across; the key encoder runs on the whole local batch.
- The queue must hold a whole number of global batches (checked at the first step, with the fix named).
- The query's own loss and the mixed loss have weight 1 each (``mix_weight`` scales the mixed term).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from samix import _checks
from samix.losses import cross_view_mixup_infonce, moco_infonce

from ..base import register_algorithm
from ..momentum import MomentumUpdater
from .base import SSLAlgorithm, derangement, features_from, two_views
from .queue import NegativeQueue, all_gather_rows

_WHAT = "algorithm option"


class Projector(nn.Module):
    """MoCo v2's MLP head (``Linear - ReLU - Linear``) or MoCo v1's linear head."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, mlp: bool = True) -> None:
        super().__init__()
        self.net = (nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
                    if mlp else nn.Linear(in_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """Backbone + projector: images (or a map after ``stage``) -> embeddings."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x: Tensor, stage: int = -1) -> Tensor:
        return self.projector(features_from(self.backbone, x, stage))


@register_algorithm("moco")
class MoCo(SSLAlgorithm):
    """MoCo v2 / v1 with optional cross-view instance mixup (see the module docstring).

    Options (``algorithm.<name>``): ``dim`` (128), ``hidden_dim`` (None: sized from the backbone), ``mlp``
    (True: v2), ``temperature`` (0.2), ``queue_size`` (16384), ``momentum`` (0.999), ``momentum_end``
    (None: constant), ``cross_view`` (True), ``mix_weight`` (1.0), ``shuffle_bn`` (True, DDP only),
    ``knn_k`` (200), ``knn_t`` (0.1).
    """

    DEFAULTS: Dict[str, Any] = {
        **SSLAlgorithm.DEFAULTS,
        "dim": 128,
        "hidden_dim": None,
        "mlp": True,
        "temperature": 0.2,
        "queue_size": 16384,
        "momentum": 0.999,
        "momentum_end": None,
        "cross_view": True,
        "mix_weight": 1.0,
        "shuffle_bn": True,
    }

    #: the model signals (``Mixer.requires``) this algorithm can give a model-guided policy: none for MoCo,
    #: which has no classifier; a subclass that has one (``moco_c``) names what it computes
    GUIDE_SIGNALS: Tuple[str, ...] = ()

    def __init__(self, model: nn.Module, num_classes: int, mixer=None, **kwargs) -> None:
        super().__init__(model, num_classes, mixer, **kwargs)
        o = self.options
        _checks.check_int("dim", o["dim"], low=1, what=_WHAT)
        if o["hidden_dim"] is not None:
            _checks.check_int("hidden_dim", o["hidden_dim"], low=1, what=_WHAT)
        for name in ("mlp", "cross_view", "shuffle_bn"):
            _checks.check_bool(name, o[name], what=_WHAT)
        _checks.check_number("temperature", o["temperature"], low=0.0, low_open=True, what=_WHAT)
        _checks.check_int("queue_size", o["queue_size"], low=1, what=_WHAT)
        _checks.check_number("mix_weight", o["mix_weight"], low=0.0, what=_WHAT)
        _checks.check_int("knn_k", o["knn_k"], low=1, what=_WHAT)
        _checks.check_number("knn_t", o["knn_t"], low=0.0, low_open=True, what=_WHAT)
        feat = int(getattr(model, "num_features", 0) or 0)
        if feat < 1:
            raise TypeError(f"model must be a samix Backbone with num_features, got {type(model).__name__}")
        # the backbone's classifier is never used (no labels; the probe trains its own head): frozen, so it
        # is neither optimised nor an unused parameter for DDP
        model.get_classifier().requires_grad_(False)
        needs = tuple(getattr(mixer, "requires", ())) if mixer is not None else ()
        missing = [r for r in needs if r not in self.GUIDE_SIGNALS]
        if missing and self.GUIDE_SIGNALS:
            raise ValueError(f"mixer.name={mixer.name} reads the model's {', '.join(missing)}; algorithm "
                             f"{type(self).__name__} gives a guided policy {', '.join(self.GUIDE_SIGNALS)} only: "
                             "use puzzlemix or attentivemix, or an input-space policy (mixup, cutmix, fmix, ...)")
        if missing:
            raise ValueError(f"mixer.name={mixer.name} reads the model's {', '.join(missing)}, and "
                             "self-supervised training has no labels for it (plain MoCo has no classifier); use "
                             "algorithm.name=moco_c (a cluster classifier on ODC pseudo labels, samix.txt's "
                             "'MoCo.V2(C) PuzzleMix') for saliency or activation policies, or an input-space policy "
                             "(mixup, cutmix, fmix, ...)")
        if mixer is not None and getattr(mixer, "relabels", False):
            raise ValueError(f"mixer.name={mixer.name} re-weights a classification label from the model's "
                             "attention; MoCo's mixed loss has no class label to re-weight: use cutmix")
        hidden = o["hidden_dim"] or (2048 if feat >= 512 else 4 * feat)
        self.projector = Projector(feat, int(hidden), int(o["dim"]), mlp=o["mlp"])
        self.encoder = Encoder(self.model, self.projector)
        self.ema = MomentumUpdater(o["momentum"], o["momentum_end"], what=f"{_WHAT} momentum")
        self.key_encoder = self.ema.make_teacher(self.encoder)
        seed_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
                                                 if self.generator is not None else 0)
        self.queue = NegativeQueue(int(o["queue_size"]), int(o["dim"]), generator=seed_gen)

    # ------------------------------------------------------------------ keys
    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        """L2-normalised key embeddings of ``x`` by the momentum encoder (shuffle-BN under DDP)."""
        if not (self.options["shuffle_bn"] and self._distributed()):
            return nn.functional.normalize(self.key_encoder(x), dim=1)
        x_all = all_gather_rows(x)
        n, world, rank = x_all.shape[0], dist.get_world_size(), dist.get_rank()
        perm = torch.randperm(n, device=x.device) if rank == 0 else torch.empty(n, dtype=torch.long, device=x.device)
        dist.broadcast(perm, src=0)
        local = perm.view(world, -1)[rank]
        k = nn.functional.normalize(self.key_encoder(x_all[local]), dim=1)
        k_all = all_gather_rows(k)  # rows in perm order
        inv = torch.argsort(perm)
        return k_all[inv].view(world, -1, k.shape[1])[rank]

    # ------------------------------------------------------------------ the step
    def extra_terms(self, batch, keys: Tensor) -> Dict[str, Tensor]:
        """Losses and logs a subclass adds to the step, given the batch and this step's keys (after the
        mixed terms, before the queue update; e.g. a memory update, a cluster head's loss). MoCo: none."""
        return {}

    def mixed_embeddings(self, x: Tensor, index: Tensor) -> Tuple[Tensor, Tensor]:
        """``(z_m, lam)``: the query encoder's embeddings of the policy's mix of ``x`` with partners
        ``index`` (a hidden map for policies that mix inside the model)."""
        mixer = self.mixer
        if mixer.mixes_features:
            k = mixer.sample_stage()
            if k == 0:
                r = mixer.mix(x, index=index)
                return self.encoder(r.images), r.lam
            r = mixer.mix(self.model.features(x, k), index=index)
            return self.encoder(r.images, stage=k), r.lam
        r = mixer.mix(x, index=index)
        return self.encoder(r.images), r.lam

    def forward(self, batch) -> Dict[str, Tensor]:
        x_q, x_k = two_views(batch)
        o = self.options
        t = float(o["temperature"])
        neg = self.queue.queue.clone().detach()
        q = self.encoder(x_q)
        k = self.keys(x_k)
        out: Dict[str, Tensor] = {"loss_nce": moco_infonce(q, k, neg, temperature=t)}
        if self.mixer is not None:
            index = derangement(x_q.shape[0], self.generator, device=x_q.device)
            z_m, lam = self.mixed_embeddings(x_q, index)
            targets = k if o["cross_view"] else self.keys(x_q)
            out["loss_mix"] = float(o["mix_weight"]) * cross_view_mixup_infonce(
                z_m, targets, index, lam, neg, temperature=t)
        out.update(self.extra_terms(batch, k))
        out["loss"] = sum(v for name, v in out.items() if name.startswith("loss_"))
        if torch.is_grad_enabled():
            self.queue.enqueue(k)
        return out

    def on_train_step_end(self) -> None:
        self.ema.update(self.key_encoder, self.encoder, self.progress)

    def param_groups(self) -> List[Dict[str, Any]]:
        return [{"params": [p for p in self.encoder.parameters() if p.requires_grad], "name": "encoder"}]
