"""PuzzleMix (Kim, Choo & Song, ICML 2020): a saliency-optimal block mask by graph cut, then an optimal
transport of each image's blocks towards the region it keeps.

For a pair ``(x, x_j)`` with saliencies ``s, s_j`` (``requires = ("saliency",)``: the input gradient of
the loss, :func:`samix.mixing.signals.input_saliency`; one extra forward + backward of the model) and a
grid of ``n x n`` blocks, ``n`` drawn per batch from ``block_nums``::

    u, u_j  = avgpool(s, H/n) / sum,  avgpool(s_j, H/n) / sum       # unary: block saliency, sums to 1
    z       = argmin_z  sum_b [ (1 - z_b) u_b + z_b u_j,b ]                     # saliency the mix loses
                      + beta' sum_(b~b') (z_b - z_b')^2 (1 + gamma * d_bb'(z))  # label + data smoothness
                      + eta / n^2 * sum_b -log p_lam(z_b)                       # prior: mean z near lam
            over z_b in {0, 1/(L-1), ..., 1} (L = n_labels),  p_lam = Binomial(L - 1, lam) of the level
    x~      = T(x)   with T = argmin_P  sum_i,j P_ij (eps C_ij - u~_i z~_j)      # transport (optional)
    mixed   = up(z) * x~ + (1 - up(z)) * x~_j,     lam_real = mean(up(z))

``z = 1`` keeps the original sample (the library's convention: ``lam`` is its share). ``beta' = beta / n
/ 16`` as the official code normalises it; ``d(z)`` are the mean absolute differences of the two images'
pixels across each block border, per pair of labels (``neigh_size``-pooled; ``mean``/``std`` undo the
input normalisation for that term, as the official code does). The graph cut is the alpha-beta swap of
``gco-wrapper`` (``pip install gco-wrapper``; a sentence names it when it is missing), on integer costs
scaled by ``1000 n^2`` as the official code.

Defaults are the official CIFAR-100 recipe: ``alpha 1`` (samix.txt A.3), ``n_labels 3``, ``beta 1.2``,
``gamma 0.5``, ``eta 0.2``, ``neigh_size 4``, ``transport`` on, ``t_eps 0.8``, ``t_size 4``.

Where this code differs from the official one, and why:

- **Block counts.** The official code draws ``n`` from {2, 4, 8, 16} (32-px images). Here ``block_nums``
  defaults to the divisors ``n`` of the side with ``2 <= n <= 16`` (32 px: {2, 4, 8, 16}, as official;
  28 px: {2, 4, 7, 14}), so that every block has a whole number of pixels. The neighbourhood pooling size
  is the largest divisor of the block side not above ``neigh_size`` (a whole number of pools per block).
- **Transport is an exact assignment** (a permutation of blocks, ``scipy.optimize.linear_sum_assignment``
  per image): every block of the image is kept exactly once (tested). The official plan is an iterative
  greedy approximation that can leave a destination empty (a black block) or drop a source. The plan is
  computed on a grid of ``g = H / t`` blocks, ``t = min(t_size, block side)``, at most ``t_max_grid``
  (8) per side (the largest divisor of the side below that): 32 px gives the official 8 x 8 grid except
  for ``n = 16`` (official 16 x 16, 256 x 256 costs); 28 px gives 7 x 7. Where the mask grid and the
  transport grid do not align, ``z~`` is the share of each transport block the mask keeps (``z > 0``, as
  the official ``mask > 0``).
- **Any number of channels** (the official transport hard-codes 3), and non-negative edge costs (a
  negative smoothness edge, possible when the data term outweighs ``beta'``, is clipped at 0, which the
  swap move requires).
- **Adversarial noise** (``adv_p``, ``adv_eps``: the official ``--adv_p 0.1 --adv_eps 10``): with
  probability ``adv_p`` per side (the original, the partner; one draw each per batch), that side of the mix
  carries the official perturbation, in pixel space (``mean``/``std`` required): a uniform random start in
  ``[-eps, eps]`` (``eps = adv_eps / 255``), the input gradient taken *there* (the saliency then comes from
  that gradient, as the official code), one step ``(adv_eps + 2) / 255 * sign(grad)``, clipped to ``eps``,
  scaled by one ``U(0, 1)`` draw, the image clipped to ``[0, 1]``. It needs the model, so it runs in
  :meth:`PuzzleMix.mix_with_model` (a plain ``mix(x, saliency=S)`` has no gradient to follow and says so).
- ``clean_lam`` (official, 0 by default for CIFAR, 1 for Tiny-ImageNet): the saliency pass runs in train mode
  and its loss, times ``clean_lam``, joins the step (``MixResult.extra_loss``, logged as ``loss_clean``);
  the official scales it by ``2 / num_classes`` because its mixed loss is a BCE on the softmax, here the
  mixed loss is the configured one and the clean term a plain CE. Not combined with ``adv_p``.
- ``mode="batch"``: one ``lam`` for the batch (official), each image its own cut; ``mode="elem"``: one per
  sample.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from samix._checks import check_bool, check_int, check_number

from .base import MixResult, Mixer, lam_tensor
from .registry import register_mixer


def _gco():
    try:
        import gco
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the puzzlemix policy needs the gco-wrapper package for its graph cut: "
                          "pip install gco-wrapper (or pip install 'samix[puzzlemix]')") from err
    return gco


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, max(1, at_most) + 1) if n % d == 0)


def level_prior(lam: float, n_labels: int, eps: float = 1e-8) -> np.ndarray:
    """``-log`` of the Binomial(L - 1, lam) probability of each label level; label 0 keeps the original."""
    k = np.arange(n_labels)
    from math import comb

    p = np.array([comb(n_labels - 1, int(i)) * lam ** (n_labels - 1 - i) * (1 - lam) ** i for i in k])
    return -np.log(p + eps)


def border_penalty(a: Tensor, c: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Mean absolute pixel difference across each block border of the ``k``-pooled maps ``a`` (the block
    above / left) and ``c`` (below / right): ``([B, n-1, n], [B, n, n-1])``."""
    dx = (a[:, :, :-1, :] - c[:, :, 1:, :])[:, :, k - 1::k, :]
    dy = (a[:, :, :, :-1] - c[:, :, :, 1:])[:, :, :, k - 1::k]
    dx = F.avg_pool2d(dx.abs().mean(1), kernel_size=(1, k))
    dy = F.avg_pool2d(dy.abs().mean(1), kernel_size=(k, 1))
    return dx, dy


def grid_cost(g: int) -> np.ndarray:
    """Squared grid distance between blocks ``i`` and ``j`` of a ``g x g`` grid, over ``(g - 1)^2``."""
    r, c = np.divmod(np.arange(g * g), g)
    d = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
    return d.astype(np.float64) / max(1, (g - 1)) ** 2


def transport_blocks(images: Tensor, source_of: Tensor, g: int) -> Tensor:
    """Move blocks: block ``j`` of the output is block ``source_of[b, j]`` of ``images[b]`` (``g x g``
    blocks; ``source_of`` a permutation per image keeps every block once)."""
    b, c, h, w = images.shape
    th, tw = h // g, w // g
    blocks = images.reshape(b, c, g, th, g, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c, th, tw)
    moved = blocks.gather(1, source_of.view(b, g * g, 1, 1, 1).expand(-1, -1, c, th, tw))
    return moved.reshape(b, g, g, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@register_mixer("puzzlemix")
class PuzzleMix(Mixer):
    """PuzzleMix (module docstring); takes ``saliency=[B, H, W]`` in :meth:`mix`."""

    name = "puzzlemix"
    needs_model = True
    requires = ("saliency",)
    pixel_aligned = False  # the transport moves both images' blocks

    def __init__(self, *args, n_labels: int = 3, beta: float = 1.2, gamma: float = 0.5, eta: float = 0.2,
                 neigh_size: int = 4, transport: bool = True, t_eps: float = 0.8, t_size: int = 4,
                 t_max_grid: int = 8, block_nums: Optional[Sequence[int]] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 adv_p: float = 0.0, adv_eps: float = 10.0, clean_lam: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.n_labels = check_int("n_labels", n_labels, low=2, type_error=ValueError)
        self.beta = check_number("beta", beta, low=0.0)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.eta = check_number("eta", eta, low=0.0)
        self.neigh_size = check_int("neigh_size", neigh_size, low=1, type_error=ValueError)
        self.transport = check_bool("transport", transport)
        self.t_eps = check_number("t_eps", t_eps, low=0.0)
        self.t_size = check_int("t_size", t_size, low=1, type_error=ValueError)
        self.t_max_grid = check_int("t_max_grid", t_max_grid, low=2, type_error=ValueError)
        if block_nums is not None:
            block_nums = tuple(int(check_int("block_nums", n, low=1, type_error=ValueError)) for n in block_nums)
            if not block_nums:
                raise ValueError("block_nums must list at least one block count, got an empty list")
        self.block_nums = block_nums
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.adv_p = check_number("adv_p", adv_p, low=0.0, high=1.0)
        self.adv_eps = check_number("adv_eps", adv_eps, low=0.0)
        if self.adv_p > 0 and (self.mean is None or self.std is None):
            raise ValueError("puzzlemix adv_p > 0 perturbs images in pixel space: set mean and std (the data's "
                             "normalisation, e.g. mean=[0.2860] std=[0.3530] for Fashion-MNIST)")
        self.clean_lam = check_number("clean_lam", clean_lam, low=0.0)
        if self.adv_p > 0 and self.clean_lam > 0:
            raise ValueError("puzzlemix: adv_p and clean_lam together are not built; set one of them to 0")
        self._adv = None  # (noise [B, C, H, W] in pixel units, on the original?, on the partner?) of this mix

    # ------------------------------------------------------------------ geometry
    def candidate_block_nums(self, side: int) -> Tuple[int, ...]:
        if self.block_nums is None:
            return tuple(n for n in range(2, 17) if side % n == 0 and side // n >= 1)
        bad = [n for n in self.block_nums if side % n]
        if bad:
            raise ValueError(f"block_nums {bad} do not divide the image side {side}: every block must have a whole "
                             "number of pixels")
        return self.block_nums

    def transport_grid(self, side: int, block: int) -> int:
        t = min(self.t_size, block)
        return _largest_divisor(side, min(side // t, self.t_max_grid))

    # ------------------------------------------------------------------ the mask
    def _pairwise(self, images: Tensor, index: Tensor, n: int, block: int):
        x = images.float()
        if self.std is not None or self.mean is not None:
            c = x.shape[1]
            std = torch.tensor(self.std or (1.0,) * c, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            mean = torch.tensor(self.mean or (0.0,) * c, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            if std.shape[1] != c or mean.shape[1] != c:
                raise ValueError(f"mean/std must have one value per channel ({c}), got {self.mean} / {self.std}")
            x = x * std + mean
        ns = _largest_divisor(block, self.neigh_size)
        own = F.avg_pool2d(x, ns) if ns > 1 else x
        other = own[index]
        k = block // ns
        # [B, own label a, other label c, ...]: 0 = the partner, 1 = the original (official order)
        srcs = (other, own)
        px = torch.stack([torch.stack([border_penalty(srcs[a], srcs[c], k)[0] for c in (0, 1)], 1) for a in (0, 1)], 1)
        py = torch.stack([torch.stack([border_penalty(srcs[a], srcs[c], k)[1] for c in (0, 1)], 1) for a in (0, 1)], 1)
        return px, py

    def optimal_masks(self, images: Tensor, index: Tensor, saliency: Tensor, lam: np.ndarray, n: int) -> Tensor:
        """``[B, n, n]`` float masks (levels ``0, 1/(L-1), ..., 1``; 1 keeps the original) by graph cut."""
        gco = _gco()
        b, _, h, _ = images.shape
        block = h // n
        beta = self.beta / n / 16.0
        pool = F.avg_pool2d(saliency.float().unsqueeze(1), block).squeeze(1)
        u_own = pool / pool.flatten(1).sum(1).clamp_min(1e-12).view(b, 1, 1)
        u_other = u_own[index]
        px, py = self._pairwise(images, index, n, block)
        px, py = beta * self.gamma * px, beta * self.gamma * py
        # the general 2-label edge as unaries + a symmetric edge (the official decomposition)
        u_other, u_own = u_other.clone(), u_own.clone()
        u_other[:, :-1, :] += (px[:, 1, 0] + px[:, 1, 1]) / 2
        u_own[:, :-1, :] += (px[:, 0, 1] + px[:, 0, 0]) / 2
        u_other[:, 1:, :] += (px[:, 0, 1] + px[:, 1, 1]) / 2
        u_own[:, 1:, :] += (px[:, 1, 0] + px[:, 0, 0]) / 2
        u_other[:, :, :-1] += (py[:, 1, 0] + py[:, 1, 1]) / 2
        u_own[:, :, :-1] += (py[:, 0, 1] + py[:, 0, 0]) / 2
        u_other[:, :, 1:] += (py[:, 0, 1] + py[:, 1, 1]) / 2
        u_own[:, :, 1:] += (py[:, 1, 0] + py[:, 0, 0]) / 2
        ex = ((px[:, 1, 0] + px[:, 0, 1] - px[:, 1, 1] - px[:, 0, 0]) / 2).double().cpu().numpy()
        ey = ((py[:, 1, 0] + py[:, 0, 1] - py[:, 1, 1] - py[:, 0, 0]) / 2).double().cpu().numpy()
        u_other, u_own = u_other.double().cpu().numpy(), u_own.double().cpu().numpy()
        lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), (b,))
        big = 1000.0 * n * n
        levels = np.linspace(0.0, 1.0, self.n_labels)  # label l shows the original with weight 1 - levels[l]
        li = np.arange(self.n_labels)
        pairwise = ((li[:, None] - li[None, :]) ** 2 / (self.n_labels - 1) ** 2).astype(np.float32)
        masks = np.ones((b, n, n), dtype=np.float32)
        for i in range(b):
            if lam[i] >= 1.0:  # not mixed (prob < 1 in elem mode): the original, exactly
                continue
            prior = self.eta * level_prior(float(lam[i]), self.n_labels) / (n * n)
            unary = np.stack([(1 - lv) * u_other[i] + lv * u_own[i] + prior[l] for l, lv in enumerate(levels)], -1)
            cost_v = np.clip(big * (ex[i] + beta), 0, None).astype(np.int32)
            cost_h = np.clip(big * (ey[i] + beta), 0, None).astype(np.int32)
            labels = gco.cut_grid_graph(np.ascontiguousarray((big * unary).astype(np.int32)), pairwise,
                                        np.ascontiguousarray(cost_v), np.ascontiguousarray(cost_h),
                                        algorithm="swap")
            masks[i] = 1.0 - np.asarray(labels, dtype=np.float32).reshape(n, n) / (self.n_labels - 1)
        return torch.from_numpy(masks).to(images.device)

    # ------------------------------------------------------------------ the transport
    def transport_plan(self, saliency: Tensor, keep: Tensor, g: int) -> Tensor:
        """``[B, g*g]`` long: for each destination block the source block (an exact assignment of
        ``eps C_ij - u_i z_j``; ``keep [B, 1, H, W]`` is where the image stays in the mix). An image kept
        everywhere or nowhere is not moved."""
        from scipy.optimize import linear_sum_assignment

        b, h = saliency.shape[0], saliency.shape[-2]
        t = h // g
        u = F.avg_pool2d(saliency.float().unsqueeze(1), t).flatten(1)
        u = (u / u.sum(1, keepdim=True).clamp_min(1e-12)).double().cpu().numpy()
        z = F.avg_pool2d((keep > 0).float(), t).flatten(1).double().cpu().numpy()
        c = self.t_eps * grid_cost(g)
        source_of = np.empty((b, g * g), dtype=np.int64)
        for i in range(b):
            if z[i].min() >= 1.0 or z[i].max() <= 0.0:
                source_of[i] = np.arange(g * g)
                continue
            rows, cols = linear_sum_assignment(c - u[i][:, None] * z[i][None, :])
            source_of[i, cols] = rows
        return torch.from_numpy(source_of).to(saliency.device)

    # ------------------------------------------------------------------ adversarial noise
    def _stats(self, x: Tensor):
        c = x.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean/std must have one value per channel ({c}), got {self.mean} / {self.std}")
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return mean, std

    def perturb(self, images: Tensor, noise: Tensor) -> Tensor:
        """``images`` (normalised) with ``noise`` added in pixel space, clipped to ``[0, 1]`` there."""
        mean, std = self._stats(images)
        raw = (images * std + mean + noise.to(images.dtype)).clamp(0.0, 1.0)
        return (raw - mean) / std

    def mix_with_model(self, model, images: Tensor, labels: Tensor, index: Optional[Tensor] = None) -> MixResult:
        """The saliency pass, then :meth:`mix`; with ``adv_p > 0`` the pass runs at a randomly perturbed
        input and its gradient also gives the adversarial noise (module docstring)."""
        if self.adv_p <= 0:
            return super().mix_with_model(model, images, labels, index)
        from .signals import input_gradient

        sides = self.numpy_rng().random(2) < self.adv_p
        if not sides.any():
            return super().mix_with_model(model, images, labels, index)
        eps = self.adv_eps / 255.0
        mean, std = self._stats(images)
        g = torch.Generator().manual_seed(self._seed())
        start = (torch.rand(images.shape, generator=g, dtype=torch.float32) * 2 - 1).to(images.device) * eps
        raw = images.detach() * std + mean
        start = (raw + start).clamp(0.0, 1.0) - raw           # the random start, inside [0, 1]
        grad = input_gradient(model, (raw + start - mean) / std, labels)
        noise = (start + (self.adv_eps + 2) / 255.0 * grad.sign()).clamp(-eps, eps)
        noise = noise * float(self.numpy_rng().random())
        self._adv = (noise, bool(sides[0]), bool(sides[1]))
        try:
            return self.mix(images, index, saliency=grad.float().pow(2).mean(1).sqrt())
        finally:
            self._adv = None

    # ------------------------------------------------------------------ the policy
    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray, saliency: Tensor = None) -> MixResult:
        b, _, h, w = images.shape
        if h != w:
            raise ValueError(f"puzzlemix mixes square images (a grid of n x n blocks), got {h} x {w}")
        if not (torch.is_tensor(saliency) and tuple(saliency.shape) == (b, h, w)):
            raise ValueError(f"saliency must be a [B, H, W] = [{b}, {h}, {w}] tensor (samix.mixing.signals."
                             f"input_saliency), got {tuple(getattr(saliency, 'shape', ()))}")
        candidates = self.candidate_block_nums(h)
        n = int(candidates[int(self.numpy_rng().integers(len(candidates)))])
        saliency = saliency.detach().to(images.device)
        grid = self.optimal_masks(images, index, saliency, lam, n)
        mask = F.interpolate(grid.unsqueeze(1), size=(h, w), mode="nearest")
        own, other = images, images[index]
        if self._adv is not None:  # adversarial sides (mix_with_model with adv_p > 0)
            noise, on_own, on_other = self._adv
            if on_own:
                own = self.perturb(own, noise)
            if on_other:
                other = self.perturb(other, noise[index])
        if self.transport:
            g = self.transport_grid(h, h // n)
            own = transport_blocks(own, self.transport_plan(saliency, mask, g), g)
            other = transport_blocks(other, self.transport_plan(saliency[index], 1 - mask, g), g)
        m = mask.to(images.dtype)
        mixed = m * own + (1 - m) * other
        ratio = mask.flatten(1).mean(1)
        return MixResult(mixed, ratio.float(), index, m)

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", n_labels={self.n_labels}, beta={self.beta}, gamma={self.gamma}, "
                f"eta={self.eta}, neigh_size={self.neigh_size}, transport={self.transport}, t_eps={self.t_eps}, "
                f"t_size={self.t_size})")


__all__ = ["PuzzleMix", "border_penalty", "grid_cost", "level_prior", "transport_blocks"]
