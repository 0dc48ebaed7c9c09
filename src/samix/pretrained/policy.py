"""SAMix-P (samix.txt Sec. 3.2, Fig. 5): mixing with a pre-trained, frozen SAMix Mixer.

A static policy from the engine's point of view (algorithm ``supervised``): no momentum pipeline,
no generation loss. The Mixer and the encoder stages it reads come from a file written by
``samix export-mixer RUN_DIR OUT.safetensors`` (:mod:`samix.pretrained.format`). One call::

    lam ~ Beta(alpha, alpha), index = randperm(B)             # the base class's draws
    z   = E(renorm(x), l)                                     # frozen encoder, no grad, eval mode
    s   = Adjust_lam(M(z, lam, index))                        # frozen Mixer, eval mode: mean(s) == lam
    s   = lam (a constant mask)      where lam < m or lam > 1 - m   (m = mixup_fallback, 0.08)
    mixed = s * x + (1 - s) * x[index],   lam := mean(s)      # == the drawn lam

The constant-mask fallback near 0 and 1 is the one of the online pipeline's student
(AutoMix/SAMix ``mixup_fallback``), so SAMix-P trains on the samples an online run would; a batch
whose (batch-mode) lambda falls there skips the encoder altogether.

Config interface: ``mixer.name=samix_p mixer.pretrained=PATH`` in any supervised config (the
``mixer.pretrained`` option belongs to this policy only: with another ``mixer.name``,
:func:`samix.mixing.build_mixer` fails naming ``samix_p``). Set ``mixer.dataset: ${data.name}``
(and ``mixer.image_size: ${data.image_size}``) to have the file checked against the run's data
when the mixer is built, as the shipped ``samix_p`` configs do; otherwise ``samix train`` binds it to
the run's ``data.name`` through the policy hook :meth:`~samix.mixing.Mixer.bind_data`.

Where it lives: a policy (registered in :mod:`samix.mixing` as ``samix_p``) that sits one floor above
:mod:`samix.generators`, because it runs a generator; the mixing registry loads this module the
first time the name is used (a declared plugin, see :mod:`samix.mixing.registry`).

Compatibility with the data (errors name the metadata field, the file's and the data's value):

* ``in_chans``: the images' channels must equal the file's.
* ``input_size``: the images must give the encoder's stage-``l`` map at the scale the Mixer was
  trained at: ``(H * h_file / H_file, W * w_file / W_file)``, whole numbers, and the map the
  encoder really produces (e.g. any multiple of 4 pixels for the stage-3 map of a CIFAR ResNet,
  whose 32-pixel images give 8x8 maps). The training size always fits; checked when the mixer is
  built (given ``image_size`` or ``dataset``) and on every call.
* normalisation (``mean``/``std``): a different normalisation is **re-normalised**, not refused
  (``renormalize=True``, the default): the encoder sees ``(x * std_data + mean_data - mean_file) /
  std_file``, i.e. the pixels it was trained on, while the mask mixes the images as given.
  ``renormalize=False`` raises instead. The data's statistics come from ``dataset`` (a
  :mod:`samix.data` name) or ``mean``/``std``; without either the images are assumed to follow the
  file's normalisation (a ``UserWarning`` says so on the first call).

Devices: the frozen modules are held outside any ``nn.Module`` tree of the run (a mixer is a plain
object), so they are in neither the optimizer nor the run's checkpoint (their state lives in the
file only). They move lazily, on the first call and whenever the images change, to the images'
device, in float32 (float64 for float64 images; half-precision
images are up-cast for the encoder rather than the weights rounded down, and ``torch.autocast``
still runs the encoder in low precision). Masks are computed in float32 and applied in the images'
dtype; the reported ``lam`` is the mean of the mask actually applied. The encoder always runs in
channels_last (faster on CPUs and GPUs alike); the mixed images keep the input's memory format.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from samix.data import dataset_info
from samix.mixing.base import MixResult, Mixer, _check_number, lam_tensor, mask_mix
from samix.mixing.registry import register_mixer

from .runtime import load_pretrained_mixer


@register_mixer("samix_p")
class SAMixP(Mixer):
    """Mix with a frozen pre-trained Mixer (see the module docstring).

    Args:
        pretrained: path of a ``.safetensors`` file written by ``samix export-mixer``.
        alpha: Beta(alpha, alpha) concentration (2.0, SAMix's value).
        dataset: name of the run's dataset in :mod:`samix.data` (normalisation, channels and
            default image size are checked against the file).
        mean, std: the data's normalisation, overriding the dataset's.
        image_size: the run's image size (``None``: the dataset's).
        renormalize: re-normalise the encoder's input when the normalisation differs (else raise).
        mixup_fallback: constant mask (plain mixup) when lambda is within this margin of 0 or 1.
        num_classes, prob, mode, label_smoothing, generator: as for every mixer.
    """

    needs_pretrained = True

    def __init__(self, pretrained: Union[str, os.PathLike] = None, alpha: float = 2.0,
                 num_classes: Optional[int] = None, prob: float = 1.0, mode: str = "batch",
                 label_smoothing: float = 0.0, generator: Optional[torch.Generator] = None, *,
                 dataset: Optional[str] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, image_size=None, renormalize: bool = True,
                 mixup_fallback: float = 0.08) -> None:
        super().__init__(alpha=alpha, num_classes=num_classes, prob=prob, mode=mode,
                         label_smoothing=label_smoothing, generator=generator)
        if pretrained is None:
            raise ValueError("samix_p needs pretrained=PATH (config: mixer.pretrained=PATH), the .safetensors "
                             "file written by `samix export-mixer RUN_DIR PATH`")
        if not isinstance(renormalize, bool):
            raise TypeError(f"renormalize must be a bool, got {type(renormalize).__name__} ({renormalize!r})")
        self.mixup_fallback = _check_number("mixup_fallback", mixup_fallback, low=0.0, high=0.5)
        self.renormalize = renormalize
        self.pretrained = os.fspath(pretrained) if isinstance(pretrained, os.PathLike) else pretrained
        self.frozen = load_pretrained_mixer(pretrained, device="cpu")
        self._placement: Tuple = (torch.device("cpu"), torch.float32)
        self._bound = False
        self._warned = False
        self._explicit = dataset is not None or mean is not None or std is not None or image_size is not None
        if self._explicit:
            self._bind(dataset=dataset, mean=mean, std=std, image_size=image_size)

    # ------------------------------------------------------------------ data binding
    def bind_data(self, dataset: Optional[str] = None, image_size=None) -> None:
        """The engine's hook (:meth:`samix.mixing.Mixer.bind_data`): check the file against the run's data
        and set up re-normalisation, unless the policy was given its data explicitly when built."""
        if not self._explicit:
            self._bind(dataset=dataset, image_size=image_size)

    def _bind(self, dataset: Optional[str] = None, mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None, in_chans: Optional[int] = None, image_size=None) -> None:
        """Check the file against the data and set up re-normalisation (see the module docstring).

        ``dataset`` supplies defaults for ``mean``, ``std``, ``in_chans`` and ``image_size``; explicit
        values win. Raises ``ValueError`` naming the metadata field that does not fit.
        """
        where = "the config"
        if dataset is not None:
            info = dataset_info(dataset)
            where = f"the config (data.name={dataset})"
            mean = info.mean if mean is None else mean
            std = info.std if std is None else std
            in_chans = info.in_chans if in_chans is None else in_chans
            image_size = info.image_size if image_size is None else image_size
        if isinstance(image_size, Sequence) and not isinstance(image_size, (str, bytes)):
            image_size = tuple(image_size)
        self.frozen.bind_data(mean=mean, std=std, in_chans=in_chans, image_size=image_size,
                              renormalize=self.renormalize, where=where)
        self._bound = self._bound or mean is not None

    # ------------------------------------------------------------------ placement
    def _place(self, images: Tensor):
        # float32 parameters for float32/float16/bfloat16 images (never rounded down, so a half-precision
        # batch cannot degrade the weights; autocast still runs the encoder in low precision), float64 for
        # float64 images (a lossless round trip)
        dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        key = (images.device, dtype)
        if key != self._placement:
            self.frozen.to(device=images.device, dtype=dtype)  # keeps the encoder's channels_last layout
            self._placement = key
        return self.frozen

    # ------------------------------------------------------------------ mixing
    def _mix(self, images: Tensor, index: Tensor, lam: np.ndarray) -> MixResult:
        b, _, h, w = images.shape
        frozen = self.frozen
        frozen.check_images(images)
        if not self._bound and not self._warned:
            self._warned = True
            warnings.warn(f"samix_p: the data's normalisation is unknown (no dataset/mean/std given); the images are "
                          f"assumed to be normalised like the Mixer's training data ({frozen.meta.dataset}: "
                          f"mean={list(frozen.meta.mean)}, std={list(frozen.meta.std)}). Set mixer.dataset to check "
                          f"and re-normalise.", UserWarning, stacklevel=3)
        lam_t = lam_tensor(lam, b, images.device)
        fb = self.mixup_fallback
        flat = (lam < fb) | (lam > 1.0 - fb)  # numpy, on the host: no device synchronisation
        lam4 = lam_t.view(b, 1, 1, 1).to(images.dtype)
        if flat.all():
            mask = lam4.expand(b, 1, h, w)
        else:
            with torch.no_grad():
                mask = self._place(images)(images, lam_t, index).mask.to(images.dtype)
                if flat.any():
                    flat_t = torch.as_tensor(np.broadcast_to(flat, (b,)).copy()).to(images.device)
                    mask = torch.where(flat_t.view(b, 1, 1, 1), lam4, mask)
        mixed = mask_mix(images, index, mask)
        return MixResult(mixed, mask.float().mean((1, 2, 3)), index, mask)

    def __repr__(self) -> str:
        m = self.frozen.meta
        return (f"SAMixP(pretrained={self.pretrained!r}, generator={m.generator!r}, backbone={m.backbone!r}, "
                f"stage={m.stage}, alpha={self.alpha}, prob={self.prob}, mode={self.mode!r}, "
                f"mixup_fallback={self.mixup_fallback}, num_classes={self.num_classes}, "
                f"label_smoothing={self.label_smoothing})")
