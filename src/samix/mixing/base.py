"""The contract every batch mixing policy follows.

Convention (stated once, tested everywhere)::

    mixed = mask * x + (1 - mask) * x[index]
    lam   = mask.mean((1, 2, 3))          # share of the ORIGINAL sample x

``lam`` always weights the original sample ``x[i]``; ``1 - lam`` weights its
partner ``x[index[i]]``. Global policies (mixup) have ``mask=None`` and
``mixed = lam * x + (1 - lam) * x[index]``.

Randomness: every draw (lambda, pairing, box positions, ...) comes from the
``generator`` given to the mixer (a ``torch.Generator``) or, when it is
``None``, from torch's global RNG, so ``torch.manual_seed`` makes runs
reproducible. Beta draws go through a NumPy generator seeded from that torch
generator, because torch's Beta/Gamma samplers take no generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from samix._checks import check_choice, check_int, check_number

MODES = ("batch", "elem")


@dataclass
class MixResult:
    """The outcome of mixing one batch.

    Attributes:
        images: mixed images, same shape/dtype/device/memory format as the input.
        lam: float32 ``[B]``, share of the original sample in each mixed sample.
        index: long ``[B]``, the partner of each sample (``x[index[i]]``).
        mask: ``[B, 1, H, W]`` weight of the original sample, or ``None`` for
            global (pixel-independent) mixing. May be an expanded view.
        weight: float32 ``[B]`` per-sample loss weight, or ``None`` (1). For policies whose two label
            weights ``(w_a, w_b)`` need not sum to 1 (SnapMix): ``lam = w_a / (w_a + w_b)`` and
            ``weight = w_a + w_b``, so that ``weight * L(lam)`` is their loss for any mixed loss ``L``.
        sources: float32 ``[B, B]`` or ``None``: for policies whose outputs mix more than two inputs
            (Co-Mixup), row ``i`` holds the share of every input in output ``i`` (rows sum to 1). The
            targets are then ``sources @ p(y)``, and ``lam``/``index`` only describe the largest two shares.
        extra_loss: a scalar the step adds to its loss, or ``None``: the clean-image loss of a saliency
            pass run with ``clean_lam > 0`` (PuzzleMix, Co-Mixup), with its graph.
    """

    images: Tensor
    lam: Tensor
    index: Tensor
    mask: Optional[Tensor] = None
    weight: Optional[Tensor] = None
    sources: Optional[Tensor] = None
    extra_loss: Optional[Tensor] = None


#: Kept for the policies that import it from here (``from .base import _check_number``).
_check_number = check_number


class NullWatch:
    """The watch of a policy that re-weights nothing (see :meth:`Mixer.watch`)."""

    def __enter__(self) -> "NullWatch":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def relabel(self, result: "MixResult") -> "MixResult":
        return result


def check_images(images) -> None:
    """Raise a clear error unless ``images`` is a floating-point ``[B, C, H, W]`` tensor."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"images must be 4-D [B, C, H, W], got {images.dim()}-D tensor of shape {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise TypeError(
            f"images must be a floating-point tensor (float32/float16/bfloat16/float64), got {images.dtype}"
        )
    if images.shape[0] < 1:
        raise ValueError("images must hold at least one sample, got an empty batch")


class Mixer:
    """Base class of the stateless batch mixing policies.

    Args:
        alpha: concentration of the Beta(alpha, alpha) distribution lambda is drawn from (> 0).
        num_classes: number of classes; needed when labels are integers.
        prob: probability of mixing at all (per batch in ``mode="batch"``, per
            sample in ``mode="elem"``); an unmixed sample has ``lam = 1``.
        mode: ``"batch"`` (one lambda and one geometry per batch) or ``"elem"``
            (one per sample, fully vectorised).
        label_smoothing: epsilon of label smoothing applied to both one-hot targets.
        generator: ``torch.Generator`` for reproducible draws (``None``: global RNG).

    Subclasses implement :meth:`_mix` and set ``name``.
    """

    name: str = "base"
    #: True for policies that need the model (manifold mixing, the model-guided ones, TransMix); False:
    #: the images are enough (and ``mixer(images, labels)`` returns the targets).
    needs_model: bool = False
    #: True for policies that mix a hidden feature map inside the model (ManifoldMix): the algorithm runs
    #: the model's halves around the mix (``samix.algorithms.manifold``).
    mixes_features: bool = False
    #: True for policies that cannot be built without a file (``pretrained=PATH``, e.g. the
    #: frozen pre-trained Mixer of ``samix_p``); sweeps over "every policy with default
    #: arguments" (property tests, the mixing grid, throughput benchmarks) skip them.
    needs_pretrained: bool = False
    #: True when the partner's pixels are pasted where they are, so that
    #: ``images == mask * x + (1 - mask) * x[index]`` holds everywhere; False for
    #: policies that transform the partner first (e.g. resizemix), where the
    #: identity holds only where ``mask == 1``.
    pixel_aligned: bool = True
    #: What a policy reads from the online model besides the images (names of
    #: :data:`samix.mixing.signals.SIGNALS`, e.g. ``("saliency",)`` for PuzzleMix). Such a policy takes
    #: them as keyword arguments of :meth:`mix` (and of its ``_mix``); :meth:`mix_with_model` and
    #: ``mixer(images, labels, model=model)`` compute them. Empty: the images are enough.
    requires: Tuple[str, ...] = ()
    #: True for policies whose lambda is re-weighted by what the model does on the *mixed* images
    #: (TransMix: the class token's attention): their targets exist only after the forward pass, inside
    #: ``with mixer.watch(model) as w: logits = model(mixed)``, then ``result = w.relabel(result)``.
    relabels: bool = False

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: Optional[int] = None,
        prob: float = 1.0,
        mode: str = "batch",
        label_smoothing: float = 0.0,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        self.alpha = check_number("alpha", alpha, low=0.0, low_open=True)
        self.prob = check_number("prob", prob, low=0.0, high=1.0)
        self.mode = check_choice("mode", mode, MODES)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.num_classes = check_int("num_classes", num_classes, low=1, none_ok=True, type_error=ValueError)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator

    # ------------------------------------------------------------------ the run's data
    def bind_data(self, dataset: Optional[str] = None, image_size=None) -> None:
        """Hook: the engine tells the policy which data it will mix (``data.name`` and ``data.image_size``
        of the config; ``None``: the dataset's default size) before training. Most policies need nothing
        (this default does nothing); a policy built from a file (``samix_p``) checks the file against the
        data and sets up re-normalisation."""

    # ------------------------------------------------------------------ random draws
    @property
    def _gen_device(self) -> torch.device:
        return self.generator.device if self.generator is not None else torch.device("cpu")

    def _seed(self) -> int:
        """A 63-bit seed drawn from the torch generator (or the global RNG)."""
        return int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self._gen_device).item())

    def numpy_rng(self) -> np.random.Generator:
        """A NumPy generator seeded from the torch generator (for Beta draws and the like)."""
        return np.random.default_rng(self._seed())

    def sample_lam(self, batch_size: int, alpha: Optional[float] = None) -> np.ndarray:
        """Lambda draws from Beta(alpha, alpha): shape ``[1]`` in batch mode, ``[B]`` in elem mode."""
        a = self.alpha if alpha is None else alpha
        n = 1 if self.mode == "batch" else batch_size
        return self.numpy_rng().beta(a, a, size=n)

    def sample_apply(self, batch_size: int) -> np.ndarray:
        """Which draws mix at all (``prob``): bool ``[1]`` (batch) or ``[B]`` (elem)."""
        n = 1 if self.mode == "batch" else batch_size
        if self.prob >= 1.0:
            return np.ones(n, dtype=bool)
        return self.numpy_rng().random(n) < self.prob

    def sample_index(self, batch_size: int, device: torch.device) -> Tensor:
        """Pairing: a random permutation of the batch."""
        perm = torch.randperm(batch_size, generator=self.generator, device=self._gen_device)
        return perm.to(device, non_blocking=True)

    def uniform(self, *shape: int) -> Tensor:
        """Uniform [0, 1) float64 draws on the CPU from the mixer's generator."""
        return torch.rand(*shape, generator=self.generator, device=self._gen_device, dtype=torch.float64).cpu()

    # ------------------------------------------------------------------ public API
    def mix(self, images: Tensor, index: Optional[Tensor] = None, **signals: Tensor) -> MixResult:
        """Mix a batch of images. See the module docstring for the convention.

        ``index`` imposes the pairing (a long ``[B]`` tensor of partners, e.g. a derangement for
        self-supervised mixup, where a sample must never meet itself); by default the policy draws a
        random permutation. ``signals``: what the policy ``requires`` from the model (e.g.
        ``saliency=[B, H, W]``), nothing for the policies that read images only.
        """
        check_images(images)
        self._check_signals(signals)
        channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last) \
            and not images.is_contiguous()
        b = images.shape[0]
        if index is None:
            index = self.sample_index(b, images.device)
        elif not (torch.is_tensor(index) and index.dtype == torch.long and index.shape == (b,)):
            raise ValueError(f"index must be a long tensor of shape [{b}] (a partner for each image), got "
                             f"{getattr(index, 'dtype', type(index).__name__)} {tuple(getattr(index, 'shape', ()))}")
        lam = self.sample_lam(b)
        apply = self.sample_apply(b)
        if not apply.any():
            # Nothing mixes: the identity, reported honestly (lam = 1, partner = self).
            result = MixResult(
                images=images,
                lam=torch.ones(b, dtype=torch.float32, device=images.device),
                index=torch.arange(b, device=images.device),
                mask=None,
            )
            return result
        lam = np.where(apply, lam, 1.0)
        result = self._mix(images, index, lam, **signals) if self.requires else self._mix(images, index, lam)
        if channels_last and not result.images.is_contiguous(memory_format=torch.channels_last):
            result.images = result.images.contiguous(memory_format=torch.channels_last)
        return result

    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        """Subclass hook: ``lam`` is float64 ``[1]`` (batch mode) or ``[B]`` (elem mode);
        unmixed samples already carry ``lam = 1``. Return a :class:`MixResult` whose
        ``lam`` is the realised share of the original (e.g. after box clipping)."""
        raise NotImplementedError

    def _check_signals(self, signals) -> None:
        missing = [n for n in self.requires if n not in signals]
        extra = sorted(set(signals) - set(self.requires))
        if extra:
            raise TypeError(f"{self.name} reads no {', '.join(extra)} (it reads "
                            f"{', '.join(self.requires) or 'the images only'})")
        if missing:
            raise TypeError(
                f"{self.name} reads the model's {', '.join(missing)} besides the images: call "
                f"mixer(images, labels, model=model) or mixer.mix_with_model(model, images, labels) (one extra pass "
                f"of the model, see samix.mixing.signals), or pass "
                f"{', '.join(n + '=...' for n in missing)} to mixer.mix")

    def mix_with_model(self, model, images: Tensor, labels: Tensor, index: Optional[Tensor] = None) -> MixResult:
        """:meth:`mix`, with the signals the policy ``requires`` computed from ``model`` (a module mapping
        images to logits) and ``labels`` first; the same as :meth:`mix` for a policy that needs none."""
        if not self.requires:
            return self.mix(images, index)
        from .signals import compute_signals, saliency_and_clean_loss

        clean_lam = float(getattr(self, "clean_lam", 0.0) or 0.0)
        if clean_lam > 0 and self.requires == ("saliency",):
            saliency, clean = saliency_and_clean_loss(model, images, labels)
            result = self.mix(images, index, saliency=saliency)
            result.extra_loss = clean_lam * clean
            return result
        return self.mix(images, index, **compute_signals(self.requires, model, images, labels))

    def watch(self, model, labels: Optional[Tensor] = None) -> "NullWatch":
        """A context manager around the forward pass of the mixed images whose ``relabel(result)`` returns
        the result with the policy's final lambda (``labels``: the batch's, for a policy that reads the
        label's activations). The base (every policy but the ``relabels`` ones): nothing to watch,
        ``relabel`` returns the result unchanged."""
        return NullWatch()

    def __call__(self, images: Tensor, labels: Tensor, model=None):
        """Mix ``images`` and return ``(mixed_images, targets)``; targets float ``[B, K]``, rows sum to 1.

        ``model``: the online network, for a policy that reads it (``requires``, e.g. PuzzleMix)."""
        from samix.targets import check_labels, mix_targets

        check_images(images)
        check_labels(labels, images.shape[0], self.num_classes)
        if self.relabels:
            raise TypeError(f"{self.name}'s targets depend on the model's forward pass of the mixed images, so "
                            "mixer(images, labels) cannot return them: r = mixer.mix(images); with "
                            "mixer.watch(model, labels) as w: logits = model(r.images); r = w.relabel(r); then the "
                            "loss with r.lam and r.index (samix.targets.mix_targets(labels, r, num_classes))")
        if self.requires and model is None:
            self._check_signals({})
        result = self.mix_with_model(model, images, labels) if self.requires else self.mix(images)
        targets = mix_targets(labels, result, num_classes=self.num_classes,
                              label_smoothing=self.label_smoothing, dtype=torch.float32)
        return result.images, targets

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(alpha={self.alpha}, prob={self.prob}, mode={self.mode!r}, "
                f"num_classes={self.num_classes}, label_smoothing={self.label_smoothing})")


def lam_tensor(lam: np.ndarray, batch_size: int, device) -> Tensor:
    """float32 ``[B]`` tensor from a batch-mode ``[1]`` or elem-mode ``[B]`` array."""
    t = torch.as_tensor(np.asarray(lam, dtype=np.float32))
    if t.numel() == 1:
        t = t.expand(batch_size).clone()
    return t.to(device, non_blocking=True)


def broadcast_weight(lam: Tensor, images: Tensor) -> Tensor:
    """``[B]`` weights as ``[B, 1, 1, 1]`` in the images' dtype."""
    return lam.to(images.dtype).view(-1, 1, 1, 1)


def gather_batch(images: Tensor, index: Tensor) -> Tensor:
    """``images[index]`` along the batch dimension, as a new tensor in the input's memory format.

    ``index_select`` copies whole samples where advanced indexing goes element by
    element (measured on one CPU thread, batch 128: 3-6x faster at 3x32x32, about
    1.7x at 3x224x224). A channels_last input is gathered through its NHWC view so
    that the result stays channels_last (``index_select`` alone would not).
    """
    index = index.to(images.device)
    if images.dim() == 4 and not images.is_contiguous() \
            and images.is_contiguous(memory_format=torch.channels_last):
        return images.permute(0, 2, 3, 1).index_select(0, index).permute(0, 3, 1, 2)
    if images.is_contiguous():
        return images.index_select(0, index)
    return images[index]


def _tracks_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def mask_mix(images: Tensor, index: Tensor, mask: Tensor) -> Tensor:
    """``mask * x + (1 - mask) * x[index]`` with a ``[B or 1, 1, H, W]`` mask.

    Binary (bool) masks select with ``torch.where`` (exact, no arithmetic);
    soft masks blend with ``torch.lerp``. The result is written into the freshly
    gathered partner (one output allocation instead of two) unless autograd
    tracks ``images`` or ``mask``, where the out-of-place ops are used.
    """
    partner = gather_batch(images, index)
    inplace = not _tracks_grad(images, mask)
    if mask.dtype == torch.bool:
        if inplace:
            return torch.where(mask, images, partner, out=partner)
        return torch.where(mask, images, partner)
    weight = mask.to(images.dtype)
    if inplace:
        return partner.lerp_(images, weight)
    return torch.lerp(partner, images, weight)
