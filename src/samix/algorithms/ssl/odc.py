"""Online deep clustering (ODC; Zhan et al., CVPR 2020), the pseudo-label source of SAMix-C (samix.txt
Sec. 3.1, A.4): a memory of one L2-normalised feature and one cluster label per training image, and ``C``
centroids.

* Every step, :meth:`ODCMemory.update` writes the batch's features into the memory (a new entry is copied,
  a seen one moves as ``normalize(m * old + (1 - m) * new)``, ``m = 0.5`` as ODC) and re-assigns the batch's
  labels to their nearest centroid (cosine). Under DDP the indices and features of every process are
  all-gathered first, so that every process holds the same memory.
* After every epoch, :meth:`ODCMemory.recluster` runs spherical k-means on the memory (warm-started from the
  current centroids; at the first call from ``C`` memory entries drawn with a seeded generator), then
  handles small clusters: one with fewer than ``min_cluster_size`` members takes half of the largest cluster
  (its centroid becomes a slightly perturbed copy of the largest one and both are re-fit on the largest
  cluster's members), as ODC's split of the largest cluster. The labels are the final assignment.

Written with torch (matrix products over the memory, no loop over samples) rather than faiss: the memory
lives in the checkpoint as buffers, the k-means is a deterministic function of them and of a seed that
does not depend on the process (every process computes the same clusters), and a resumed run re-clusters
exactly as an uninterrupted one. The memory is sized by the largest image index seen; a checkpoint's
memory is restored at its own size.

:class:`ODCPseudoLabels` gives an algorithm of the MoCo family the whole plumbing (options, the indexed
dataset, the memory update from this step's keys, the re-clustering after each epoch, the batch's labels),
so that SAMix-C and the Inter-Intra baseline differ only in what they do with the pseudo labels.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samix import _checks

from .queue import all_gather_rows

_WHAT = "algorithm option"


class ODCMemory(nn.Module):
    """Features ``[N, dim]``, labels ``[N]`` (``-1``: not yet clustered) and centroids ``[C, dim]``."""

    def __init__(self, num_clusters: int, dim: int, momentum: float = 0.5, kmeans_iters: int = 10,
                 min_cluster_size: int = 2, seed: int = 0) -> None:
        super().__init__()
        if int(num_clusters) < 2:
            raise ValueError(f"algorithm option num_clusters must be >= 2, got {num_clusters}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"algorithm option odc_momentum must be in [0, 1), got {momentum}")
        self.num_clusters, self.dim = int(num_clusters), int(dim)
        self.momentum, self.kmeans_iters = float(momentum), int(kmeans_iters)
        self.min_cluster_size, self.seed = int(min_cluster_size), int(seed)
        self.register_buffer("features", torch.zeros(0, self.dim))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("centroids", torch.zeros(self.num_clusters, self.dim))
        self.register_buffer("clustered", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ state
    def _grow(self, n: int) -> None:
        old = self.features.shape[0]
        if n <= old:
            return
        dev = self.features.device
        self.features = torch.cat([self.features, torch.zeros(n - old, self.dim, device=dev)])
        self.labels = torch.cat([self.labels, torch.full((n - old,), -1, dtype=torch.long, device=dev)])
        self.seen = torch.cat([self.seen, torch.zeros(n - old, dtype=torch.bool, device=dev)])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the memory's size is the data's: take the checkpoint's before copying into it
        key = prefix + "features"
        if key in state_dict and state_dict[key].shape[0] != self.features.shape[0]:
            n = state_dict[key].shape[0]
            dev = self.features.device
            self.features = torch.zeros(n, self.dim, device=dev)
            self.labels = torch.full((n,), -1, dtype=torch.long, device=dev)
            self.seen = torch.zeros(n, dtype=torch.bool, device=dev)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def is_clustered(self) -> bool:
        return bool(self.clustered)

    def labels_of(self, index: Tensor) -> Tensor:
        """The current pseudo labels of images ``index`` (``-1`` before the first clustering)."""
        index = index.to(self.labels.device).long()
        if index.numel() and int(index.max()) >= self.labels.shape[0]:
            return torch.full_like(index, -1)
        return self.labels.index_select(0, index)

    # ------------------------------------------------------------------ each step
    def assign(self, feats: Tensor) -> Tensor:
        """Nearest centroid (cosine) of each row of ``feats``."""
        return (F.normalize(feats.float(), dim=1) @ self.centroids.t()).argmax(dim=1)

    @torch.no_grad()
    def update(self, index: Tensor, feats: Tensor) -> None:
        """Write this step's features of images ``index`` (every process's under DDP) and re-assign their
        labels once the memory has been clustered."""
        index = all_gather_rows(index.to(self.features.device).long().contiguous())
        feats = F.normalize(all_gather_rows(feats.detach().float().to(self.features.device)), dim=1)
        if index.numel() == 0:
            return
        if int(index.min()) < 0:
            raise ValueError("ODC memory: image indices must be >= 0 (the dataset must yield its item index)")
        self._grow(int(index.max()) + 1)
        old = self.features.index_select(0, index)
        was = self.seen.index_select(0, index).unsqueeze(1)
        new = torch.where(was, F.normalize(self.momentum * old + (1 - self.momentum) * feats, dim=1), feats)
        self.features.index_copy_(0, index, new)
        self.seen.index_fill_(0, index, True)
        if self.is_clustered:
            self.labels.index_copy_(0, index, self.assign(new))

    # ------------------------------------------------------------------ each epoch
    def _kmeans(self, x: Tensor, centroids: Tensor, iters: int) -> tuple:
        labels = (x @ centroids.t()).argmax(dim=1)
        for _ in range(iters):
            sums = torch.zeros_like(centroids).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=centroids.shape[0])
            # an empty cluster keeps its centroid (the split below gives it members)
            centroids = torch.where(counts.unsqueeze(1) > 0, F.normalize(sums, dim=1), centroids)
            labels = (x @ centroids.t()).argmax(dim=1)
        return centroids, labels

    @torch.no_grad()
    def recluster(self, epoch: int) -> Dict[str, float]:
        """Spherical k-means on the seen memory, small clusters split off the largest; returns logs
        (``odc_changed``: fraction of labels changed, ``odc_min_size``/``odc_max_size``: cluster sizes)."""
        idx = torch.nonzero(self.seen, as_tuple=False).flatten()
        c = self.num_clusters
        if idx.numel() < c:
            return {}
        x = self.features.index_select(0, idx)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        if self.is_clustered:
            cent = self.centroids.clone()
        else:  # first clustering: C distinct memory entries, drawn with a seed every process shares
            cent = x[torch.randperm(x.shape[0], generator=g)[:c].to(x.device)].clone()
        cent, labels = self._kmeans(x, cent, self.kmeans_iters)
        for _ in range(c):  # at most one split per cluster
            counts = torch.bincount(labels, minlength=c)
            small = int(counts.argmin())
            if int(counts[small]) >= min(self.min_cluster_size, max(1, x.shape[0] // c)):
                break
            big = int(counts.argmax())
            members = torch.nonzero(labels == big, as_tuple=False).flatten()
            noise = torch.randn(2, self.dim, generator=g).to(x.device) * 1e-2
            pair = F.normalize(cent[big].unsqueeze(0) + noise, dim=1)
            pair, sub = self._kmeans(x[members], pair, self.kmeans_iters)
            cent[big], cent[small] = pair[0], pair[1]
            labels[members[sub == 1]] = small
        old = self.labels.index_select(0, idx)
        changed = float((old != labels).float().mean()) if self.is_clustered else 1.0
        self.centroids.copy_(cent)
        self.labels.index_copy_(0, idx, labels)
        self.clustered.fill_(True)
        counts = torch.bincount(labels, minlength=c)
        return {"odc_changed": changed, "odc_min_size": float(counts.min()), "odc_max_size": float(counts.max())}

    def extra_repr(self) -> str:
        return (f"num_clusters={self.num_clusters}, dim={self.dim}, momentum={self.momentum}, "
                f"entries={self.features.shape[0]}")


def image_indices(batch) -> Tensor:
    """The dataset indices of a ``((x_q, x_k), label, index)`` batch; a sentence when they are missing."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 3 and torch.is_tensor(batch[2]):
        return batch[2]
    raise TypeError("this algorithm keeps a memory per training image and needs batches of ((view_q, view_k), "
                    "label, index) (samix.data.TwoViewDataset(..., with_index=True), which the algorithm's "
                    "wrap_dataset builds)")


class ODCPseudoLabels:
    """Mixin (put it before the MoCo-family base class) for online pseudo labels from :class:`ODCMemory`.

    Options (in ``ODC_DEFAULTS``): ``num_clusters`` (C, 200: samix.txt Sec. 4.3 (iv)), ``odc_momentum``
    (0.5), ``kmeans_iters`` (10), ``min_cluster_size`` (2), ``cluster_seed`` (0: the k-means draws, the same
    on every process). The host calls :meth:`init_pseudo_labels` with the embedding width, reads
    :meth:`pseudo_labels` at the start of a step (``None`` until the first clustering, and for a batch with
    an image first seen after it) and calls :meth:`update_memory` with this step's keys; the re-clustering
    runs in :meth:`on_epoch_end`. No dataset label is read: the item index addresses the memory.
    """

    ODC_DEFAULTS: Dict[str, Any] = {
        "num_clusters": 200,
        "odc_momentum": 0.5,
        "kmeans_iters": 10,
        "min_cluster_size": 2,
        "cluster_seed": 0,
    }

    @classmethod
    def wrap_dataset(cls, dataset, transform, options):
        from samix.data import TwoViewDataset

        return TwoViewDataset(dataset, transform, with_index=True)

    def init_pseudo_labels(self, dim: int) -> None:
        o = self.options
        _checks.check_int("num_clusters", o["num_clusters"], low=2, what=_WHAT, type_error=ValueError)
        _checks.check_int("kmeans_iters", o["kmeans_iters"], low=1, what=_WHAT, type_error=ValueError)
        _checks.check_int("min_cluster_size", o["min_cluster_size"], low=1, what=_WHAT, type_error=ValueError)
        _checks.check_int("cluster_seed", o["cluster_seed"], low=0, what=_WHAT, type_error=ValueError)
        self.memory = ODCMemory(int(o["num_clusters"]), int(dim), momentum=float(o["odc_momentum"]),
                                kmeans_iters=int(o["kmeans_iters"]), min_cluster_size=int(o["min_cluster_size"]),
                                seed=int(o["cluster_seed"]))

    def pseudo_labels(self, batch) -> Optional[Tensor]:
        """The batch's current pseudo labels ``[B]``, or ``None`` before the first clustering (or when an
        image of the batch was first seen after it)."""
        idx = image_indices(batch)
        if not self.memory.is_clustered:
            return None
        pl = self.memory.labels_of(idx)
        return pl.to(idx.device) if bool((pl >= 0).all()) else None

    def update_memory(self, batch, keys: Tensor) -> None:
        """Write this step's keys into the memory (training steps only; evaluation leaves it alone)."""
        if torch.is_grad_enabled():
            self.memory.update(image_indices(batch), keys)

    def on_epoch_end(self, epoch: int) -> Dict[str, float]:
        logs = dict(super().on_epoch_end(epoch))
        logs.update(self.memory.recluster(epoch))
        return logs
