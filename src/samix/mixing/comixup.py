"""Co-Mixup (Kim et al., ICLR 2021): a batch-level assignment of the blocks of every output to the inputs, so
that each output mixes several inputs, keeps saliency, and the outputs stay diverse.

For a partition of ``m`` inputs (``part``, 20 by default) with block saliencies ``s_j`` (``requires =
("saliency",)``: :func:`samix.mixing.signals.input_saliency`, pooled to ``n x n`` blocks, each map
normalised to sum 1) and one-hot labelings ``z_i [n, n, m]`` of its ``m`` outputs::

    min_z  sum_i [ - sum_b s(z_ib) - eta/n^2 sum_j log a_j o_ij ]                   (saliency, Dirichlet prior)
         + beta/n^2 sum_i sum_(b~b') [z_ib != z_ib']                                (label smoothness, Potts)
         + gamma/n^2 sum_(i != i') o_i^T A o_i'                                     (diversity: supermodular)

with ``o_ij`` the number of blocks output ``i`` takes from input ``j``, ``a ~ Dirichlet(alpha 1)`` (alpha 2:
samix.txt A.3) and ``A = (1 - omega) I + omega D`` (``D``: the normalised L1 distance between the inputs'
most salient locations). As the official code, the supermodular term is minimised by iterated modular
approximation: each output in turn is re-labelled by a multi-label graph cut (gco-wrapper) with the other
outputs' usage as a linear, thresholded penalty (``thres``: only usage above ``thres n^2`` is penalised),
``niter`` sweeps over the outputs; before the last sweep, outputs that use the same set of inputs are
pushed apart (``set_resolve``). Output ``i`` is then ``sum_j up(z_ij) x_j`` and its target the block shares
``o_ij / n^2`` of the inputs' labels: :attr:`samix.mixing.MixResult.sources` (a ``[B, B]`` share matrix,
rows summing to 1, block-diagonal by partition), from which every loss takes soft targets.

Defaults are the official CIFAR-100 recipe: ``block_num 4``, ``part 20``, ``beta 0.32``, ``gamma 1.0``,
``thres 0.83`` (hard), ``eta 0.05``, ``omega 0.001``, ``niter 4``, ``set_resolve``, alpha 2.

Differences from the official code, and why:

- **The cut is alpha-expansion** (0.08 ms on a 4 x 4 grid with 20 labels here, against 0.38 ms for the
  official alpha-beta swap), which makes the 400 cuts of a 100-image batch about 5x cheaper; ``algorithm=
  "swap"`` restores the official one. The outputs are built by one ``gather`` (each block comes from one
  input) instead of the official sum over all inputs of a ``[B, B, H, W]`` mask, which halves the rest.
- **Hard labels only.** The official cut adds, from the second sweep on, one to three "half" labels that
  blend two of the inputs already in use. Every block here comes from one input, so the targets are the
  exact pixel shares (tested).
- ``clean_lam`` (the official recipe uses 1): the saliency pass runs in train mode and its CE, times
  ``clean_lam``, joins the step (``MixResult.extra_loss``); 0 (the default here) gives PuzzleMix's pass (eval
  mode, no parameter gradient). The official scales the clean term by ``2 / num_classes`` for its softmax
  BCE; here it is a plain CE beside the configured mixed loss. ``lam`` and ``index`` of the result are
  for display only (the share of input ``i`` in output ``i`` and the largest other source); the targets come
  from ``sources``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from samix._checks import check_bool, check_choice, check_int, check_number

from .base import MixResult, Mixer
from .registry import register_mixer


def _gco():
    try:
        import gco
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the comixup policy needs the gco-wrapper package for its graph cuts: "
                          "pip install gco-wrapper (or pip install 'samix[puzzlemix]')") from err
    return gco


def labeling_objective(cost: Tensor, onehot: Tensor, beta: float, gamma: float) -> Tensor:
    """The objective above (without the threshold) of one partition: ``cost [m, n, n]`` (negative saliency
    + prior), ``onehot [m_out, n, n, m]``; ``beta``, ``gamma`` already divided by ``n^2``."""
    usage = onehot.flatten(1, 2).sum(1)                                  # [m_out, m]
    loss = (cost.permute(1, 2, 0).unsqueeze(0) * onehot).sum()
    loss = loss + beta / 2 * (((onehot[:, :-1] - onehot[:, 1:]) ** 2).sum() + ((onehot[:, :, :-1] - onehot[:, :, 1:]) ** 2).sum())
    return loss + gamma * ((usage.sum(0) ** 2).sum() - (usage ** 2).sum())


@register_mixer("comixup")
class CoMixup(Mixer):
    """Co-Mixup (module docstring); takes ``saliency=[B, H, W]`` in :meth:`mix`."""

    name = "comixup"
    needs_model = True
    requires = ("saliency",)
    pixel_aligned = False

    def __init__(self, alpha: float = 2.0, *args, block_num: int = 4, part: int = 20, beta: float = 0.32,
                 gamma: float = 1.0, thres: float = 0.83, thres_type: str = "hard", eta: float = 0.05,
                 omega: float = 0.001, niter: int = 4, set_resolve: bool = True, algorithm: str = "expansion",
                 clean_lam: float = 0.0, **kwargs) -> None:
        super().__init__(alpha, *args, **kwargs)
        self.block_num = check_int("block_num", block_num, low=1, type_error=ValueError)
        self.part = check_int("part", part, low=2, type_error=ValueError)
        self.beta = check_number("beta", beta, low=0.0)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.thres = check_number("thres", thres, low=0.0)
        self.thres_type = check_choice("thres_type", thres_type, ("hard", "soft"))
        self.eta = check_number("eta", eta, low=0.0)
        self.omega = check_number("omega", omega, low=0.0, high=1.0)
        self.niter = check_int("niter", niter, low=1, type_error=ValueError)
        self.set_resolve = check_bool("set_resolve", set_resolve)
        self.algorithm = check_choice("algorithm", algorithm, ("expansion", "swap"))
        self.clean_lam = check_number("clean_lam", clean_lam, low=0.0)

    # ------------------------------------------------------------------ the assignment
    def compatibility(self, saliency: Tensor) -> Tensor:
        """``A = (1 - omega) I + omega D``, ``D`` the L1 distance of the most salient windows, normalised to
        sum ``m``."""
        m, h = saliency.shape[0], saliency.shape[-1]
        k = max(1, min(8, h // 4))
        z = F.avg_pool2d(saliency.unsqueeze(1), k, stride=1).flatten(1)
        gw = h - k + 1
        arg = z.argmax(1)
        loc = torch.stack([arg // gw, arg % gw], 1).float()
        d = (loc.unsqueeze(1) - loc.unsqueeze(0)).abs().sum(-1)
        d = d / d.sum().clamp_min(1e-12) * m
        return (1 - self.omega) * torch.eye(m) + self.omega * d

    def assign(self, sal_blocks: Tensor, A: Tensor, prior: np.ndarray, rng: np.random.Generator) -> Tensor:
        """One partition: ``[m, n, n, m]`` one-hot labelings of its ``m`` outputs (module docstring).

        The sweep runs in numpy, not torch: each of its ``niter x m`` cuts needs a dozen operations on
        vectors of ``m`` numbers, where torch's per-call overhead (microseconds each) outweighed the arithmetic
        (the policy: 45.8 -> 40.2 ms per 100-image batch at 1 thread); the arithmetic is the same, in float64."""
        gco = _gco()
        m, n = sal_blocks.shape[0], sal_blocks.shape[-1]
        nb = n * n
        beta, gamma, eta = self.beta / nb, self.gamma / nb, self.eta / nb
        thres = self.thres * nb
        sal = sal_blocks.double().numpy()
        norm = sal / np.maximum(sal.reshape(m, -1).sum(1), 1e-12).reshape(m, 1, 1)
        cost = -norm - eta * np.log(np.asarray(prior, dtype=np.float64) + 1e-8).reshape(m, 1, 1)   # [m, n, n]
        unary_base = np.ascontiguousarray(cost.transpose(1, 2, 0))                                 # [n, n, m]
        labels = rng.integers(0, m, (m, n, n)).reshape(m, nb)
        usage = np.stack([np.bincount(row, minlength=m) for row in labels]).astype(np.float64)   # [m_out, m]
        usage_total = usage.sum(0)                                        # [m]: blocks taken from each input
        A = A.double().numpy()
        pairwise = (1.0 - np.eye(m)).astype(np.float64)
        cost_v = np.full((n - 1, n), beta)
        cost_h = np.full((n, n - 1), beta)
        add_cost = np.zeros((m, m))
        hard = self.thres_type == "hard"
        cost_t = torch.from_numpy(cost)

        def objective() -> float:
            return float(labeling_objective(cost_t, F.one_hot(torch.from_numpy(labels).view(m, n, n), m).double(),
                                            beta, gamma))

        prev = objective()
        for it in range(self.niter):
            for i in range(m):
                others = A @ (usage_total - usage[i])
                pen = 2 * gamma * ((others > thres) * (others if hard else others - thres))
                unary = unary_base + (pen + gamma * add_cost[i])
                lab = np.asarray(gco.cut_grid_graph(unary, pairwise, cost_v, cost_h, algorithm=self.algorithm),
                                 dtype=np.int64)
                new = np.bincount(lab, minlength=m).astype(np.float64)
                usage_total += new - usage[i]
                usage[i] = new
                labels[i] = lab
            if self.set_resolve and it == self.niter - 2:
                add_cost = self._resolve(usage)
            cur = objective()
            if abs(prev - cur) <= 1e-6 * abs(cur):
                break
            prev = cur
        return F.one_hot(torch.from_numpy(labels).view(m, n, n), m).double()

    @staticmethod
    def _resolve(usage: np.ndarray) -> np.ndarray:
        """Outputs that use the same set of inputs (``usage [m_out, m]``, block counts): each of a coinciding
        pair is pushed off one of them (a ``[m_out, m]`` extra cost)."""
        used = (usage > 0).astype(np.float64)
        add = np.zeros_like(used)
        same = np.triu(np.abs(used[:, None, :] - used[None, :, :]).sum(-1) == 0, k=1)
        for i1, i2 in zip(*np.nonzero(same)):
            nz = np.flatnonzero(used[i1])
            if nz.size > 1:
                add[i1, nz[0]] = 1.0
                add[i2, nz[1]] = 1.0
        return add

    # ------------------------------------------------------------------ the policy
    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray, saliency: Tensor = None) -> MixResult:
        b, c, h, w = images.shape
        if not (torch.is_tensor(saliency) and tuple(saliency.shape) == (b, h, w)):
            raise ValueError(f"saliency must be a [B, H, W] = [{b}, {h}, {w}] tensor (samix.mixing.signals."
                             f"input_saliency), got {tuple(getattr(saliency, 'shape', ()))}")
        n = self.block_num
        if h != w or h % n:
            raise ValueError(f"comixup mixes square images on {n} x {n} blocks: block_num {n} must divide the "
                             f"side, got {h} x {w}")
        if b < 2:
            raise ValueError("comixup mixes a batch of at least 2 images, got 1")
        sal = F.avg_pool2d(saliency.detach().float().cpu().unsqueeze(1), h // n).squeeze(1)
        rng = self.numpy_rng()
        sources = torch.zeros(b, b, dtype=torch.float64)
        labels = torch.zeros(b, n, n, dtype=torch.long)  # the input (batch index) each block of each output takes
        # the batch in partitions of `part` images (the last one merged with its predecessor if it is 1 image)
        bounds = list(range(0, b, self.part)) + [b]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:
            bounds.pop(-2)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            m = hi - lo
            A = self.compatibility(saliency.detach().float().cpu()[lo:hi])
            prior = rng.dirichlet(np.full(m, float(self.alpha)))
            onehot = self.assign(sal[lo:hi], A, prior, rng)                 # [m, n, n, m]
            labels[lo:hi] = onehot.argmax(-1) + lo
            sources[lo:hi, lo:hi] = onehot.flatten(1, 2).sum(1) / (n * n)
        # every block comes from one input: a gather, not a sum over the batch
        p = h // n
        src = labels.repeat_interleave(p, 1).repeat_interleave(p, 2).to(images.device)       # [b, H, W]
        mixed = images.gather(0, src.unsqueeze(1).expand(b, c, h, w))
        sources = sources.float().to(images.device)
        own = sources.diagonal().clone()
        off = sources.clone()
        off.fill_diagonal_(-1.0)
        partner = off.argmax(1)
        return MixResult(mixed, own, partner, None, sources=sources)

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", block_num={self.block_num}, part={self.part}, beta={self.beta}, "
                f"gamma={self.gamma}, thres={self.thres}, eta={self.eta}, omega={self.omega}, niter={self.niter})")


__all__ = ["CoMixup", "labeling_objective"]
