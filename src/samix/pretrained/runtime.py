"""The frozen SAMix-P runtime: a pre-trained generator and the frozen encoder stages it reads.

The frozen pipeline is::

    z = E(x~, l)                     # the run's momentum (teacher) encoder: stem + stages 1..l, eval mode
    s = Adjust_lam(M(z, lam, index))  # the generator in eval mode, lambda-adjusted: mean(s) == lam
    mixed = s * x + (1 - s) * x[index]

``x~`` is ``x`` re-normalised to the encoder's statistics when the new dataset's differ (see
:meth:`PretrainedMixer.bind_data`).

Loading (:func:`load_pretrained_mixer`) never executes code from the file (:mod:`samix.pretrained.format`):
the only classes built are the registered generators and :func:`samix.models.build_model` backbones
named in it. The encoder is rebuilt, pruned to its stem and stages ``1..l`` (every other submodule
becomes ``nn.Identity``), loaded, put in eval mode and frozen (``requires_grad_(False)``); so is the
generator. :class:`PretrainedMixer` stays in eval mode whatever ``train()`` is called with.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from samix.generators import GENERATORS, GeneratorOutput, SAMixGenerator, lambda_adjust
from samix.models import build_model
from samix.models.pruning import encoder_state_dict, prune_encoder

from .format import MixerMetadata, PathLike, Size, _check_path, _pair, read_mixer_metadata

__all__ = ["PretrainedMixer", "load_pretrained_mixer"]


class PretrainedMixer(nn.Module):
    """A frozen generator and the frozen encoder stages it reads (see the module docstring).

    Call ``pm(images, lam, index)`` -> :class:`~samix.generators.GeneratorOutput` (no gradient,
    ``mask`` lambda-adjusted so that ``mask.mean((1, 2, 3)) == lam``). Always in eval mode.

    Attributes:
        encoder: the pruned backbone (stem + stages ``1..stage``), frozen.
        generator: the :class:`~samix.generators.SAMixGenerator` or :class:`~samix.generators.MixBlock`, frozen.
        meta: the file's :class:`MixerMetadata`; ``path``: the file.
    """

    def __init__(self, encoder: nn.Module, generator: nn.Module, meta: MixerMetadata, path: str = "") -> None:
        super().__init__()
        self.encoder = encoder
        self.generator = generator
        self.meta = meta
        self.stage = meta.stage
        self.path = path
        self.requires_grad_(False)
        # The frozen encoder always runs in channels_last: measured on one CPU thread, batch 100, the
        # stem..stage-3 forward of CIFAR ResNet-18 / PreAct-18 at width 16 took 25 % less time,
        # converting NCHW images included (and on GPUs it is the layout convolutions prefer).
        self.encoder.to(memory_format=torch.channels_last)
        # per-channel affine from the new data's normalisation to the encoder's (None: identical)
        self.register_buffer("in_scale", None, persistent=False)
        self.register_buffer("in_shift", None, persistent=False)
        super().train(False)

    def train(self, mode: bool = True) -> "PretrainedMixer":
        """A frozen Mixer stays in eval mode (Dropout off, BatchNorm running statistics)."""
        return super().train(False)

    def extra_repr(self) -> str:
        m = self.meta
        return (f"path={self.path!r}, generator={m.generator!r}, backbone={m.backbone!r}, width={m.width}, "
                f"stage={m.stage}, channels={m.channels}, input_size={m.input_size}, dataset={m.dataset!r}")

    # -- compatibility ---------------------------------------------------------------------
    def _where(self) -> str:
        return f"pre-trained Mixer {self.path or '<memory>'}"

    def feature_size_for(self, size: Size) -> Tuple[int, int]:
        """The stage-``l`` map size that images of ``size`` must give to be at the scale the Mixer was
        trained at: ``(H * h_file / H_file, W * w_file / W_file)``. ``ValueError`` (field
        ``input_size``) when that is not a whole number of cells on both sides."""
        h, w = _pair("image size", size, self._where())
        (h0, w0), (fh, fw) = self.meta.input_size, self.meta.feature_size
        if (h * fh) % h0 or (w * fw) % w0:
            raise ValueError(
                f"{self._where()}: images of size {(h, w)} are incompatible with the Mixer's stage-{self.stage} "
                f"feature map: the file's field 'input_size' is {self.meta.input_size} with a "
                f"{self.meta.feature_size} map ({h0 / fh:g}x{w0 / fw:g} pixels a cell), so height and width must "
                f"be whole multiples of a cell (e.g. {self.meta.input_size}); got {(h, w)}")
        return h * fh // h0, w * fw // w0

    def _check_map(self, size: Tuple[int, int], got: Tuple[int, int]) -> None:
        want = self.feature_size_for(size)
        if tuple(got) != want:
            raise ValueError(
                f"{self._where()}: images of size {tuple(size)} are incompatible with the Mixer's stage-{self.stage} "
                f"feature map: the file's field 'input_size' is {self.meta.input_size} with a "
                f"{self.meta.feature_size} map, so at the same scale they should give a {want} map, but the "
                f"encoder gives {tuple(got)} (use images of size {self.meta.input_size})")

    def probe(self, size: Size) -> Tuple[int, int]:
        """Run the encoder on zeros of ``size`` and check the map is at the Mixer's scale
        (``ValueError`` naming ``input_size`` otherwise); returns the map size."""
        h, w = _pair("image size", size, self._where())
        self.feature_size_for((h, w))
        ref = next(self.parameters())
        try:
            z = self.features(torch.zeros(1, self.meta.in_chans, h, w, device=ref.device, dtype=ref.dtype))
        except RuntimeError as err:
            raise ValueError(f"{self._where()}: the encoder (field 'input_size' {self.meta.input_size}) cannot run "
                             f"on images of size {(h, w)}: {err}") from None
        self._check_map((h, w), tuple(z.shape[-2:]))
        return int(z.shape[-2]), int(z.shape[-1])

    def check_images(self, images: Tensor) -> None:
        """``ValueError`` naming ``in_chans`` / ``input_size`` when the images do not fit the file
        (the map size itself is checked when the encoder runs)."""
        c = images.shape[1]
        if c != self.meta.in_chans:
            raise ValueError(f"{self._where()}: field 'in_chans' is {self.meta.in_chans} in the file, but the images "
                             f"have {c} channel(s) (shape {tuple(images.shape)})")
        self.feature_size_for(tuple(images.shape[-2:]))

    def bind_data(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                  in_chans: Optional[int] = None, image_size: Optional[Size] = None,
                  renormalize: bool = True, where: str = "the config") -> None:
        """Check the new run's data against the file and set up re-normalisation.

        ``in_chans`` must equal the file's (``ValueError`` naming ``in_chans``); ``image_size``
        must give a feature map at the Mixer's scale (:meth:`probe`). When ``mean``/``std``
        differ from the file's (by more than 1e-6), the encoder's input is re-normalised::

            x_enc = (x * std_data + mean_data - mean_file) / std_file

        i.e. back to [0, 1] pixels with the data's statistics and forward with the file's, so the
        frozen encoder sees what it saw in training (the mask still mixes the original ``x``).
        With ``renormalize=False`` a difference raises ``ValueError`` naming ``mean``/``std``.
        """
        m = self.meta
        if in_chans is not None and int(in_chans) != m.in_chans:
            raise ValueError(f"{self._where()}: field 'in_chans' is {m.in_chans} in the file, but {where} has "
                             f"in_chans={in_chans}")
        if image_size is not None:
            self.probe(image_size)
        if mean is None and std is None:
            return
        if mean is None or std is None:
            raise ValueError("bind_data needs both mean and std (or neither)")
        mean_d, std_d = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        for name, d_val, f_val in (("mean", mean_d, m.mean), ("std", std_d, m.std)):
            if len(d_val) != m.in_chans:
                raise ValueError(f"{self._where()}: field 'in_chans' is {m.in_chans} in the file, but {where}'s "
                                 f"normalisation {name} has {len(d_val)} value(s) ({list(d_val)})")
        same = all(abs(a - b) <= 1e-6 for a, b in zip(mean_d + std_d, m.mean + m.std))
        if same:
            self.in_scale = self.in_shift = None
            return
        if not renormalize:
            field_name = "mean" if any(abs(a - b) > 1e-6 for a, b in zip(mean_d, m.mean)) else "std"
            raise ValueError(f"{self._where()}: field {field_name!r} differs: the file (dataset {m.dataset!r}) has "
                             f"mean={list(m.mean)}, std={list(m.std)}, {where} has mean={list(mean_d)}, "
                             f"std={list(std_d)} (set renormalize=true to re-normalise the encoder's input)")
        md, sd = torch.tensor(mean_d), torch.tensor(std_d)
        mf, sf = torch.tensor(m.mean), torch.tensor(m.std)
        ref = next(self.parameters())
        self.in_scale = (sd / sf).view(1, -1, 1, 1).to(device=ref.device)
        self.in_shift = ((md - mf) / sf).view(1, -1, 1, 1).to(device=ref.device)

    # -- the frozen pipeline -----------------------------------------------------------------
    def encoder_input(self, images: Tensor) -> Tensor:
        """``images`` in the encoder's parameter dtype and in channels_last, re-normalised to its
        statistics. Under ``torch.autocast`` the encoder still runs in low precision."""
        dt = next(self.encoder.parameters()).dtype
        x = images.to(dtype=dt, memory_format=torch.channels_last)  # no copy when both already hold
        if self.in_scale is None:
            return x
        return torch.addcmul(self.in_shift.to(dt), x, self.in_scale.to(dt))

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """The frozen encoder's stage-``l`` map of (re-normalised) ``images``."""
        return self.encoder.features(self.encoder_input(images), self.stage)

    @torch.no_grad()
    def forward(self, images: Tensor, lam, index: Tensor, out_size: Optional[Size] = None) -> GeneratorOutput:
        """Masks for ``images`` (``[B, C, H, W]``) with shares ``lam`` (``[B]`` or a number) of the
        original samples and partners ``index``; ``mask`` is lambda-adjusted (mean == ``lam``),
        float32 unless the images are float64; ``mask_raw`` is the generator's own mask."""
        self.check_images(images)
        z = self.features(images)
        self._check_map(tuple(images.shape[-2:]), tuple(z.shape[-2:]))
        if z.dtype in (torch.float16, torch.bfloat16):
            z = z.float()  # lambda adjusting in full precision: mean(mask) == lam to float32 rounding
        size = tuple(images.shape[-2:]) if out_size is None else out_size
        if isinstance(self.generator, SAMixGenerator):
            return self.generator(z, lam, index, out_size=size, adjust=True)
        out = self.generator(z, lam, index, out_size=size)
        return dataclasses.replace(out, mask=lambda_adjust(out.mask_raw, out.lam),
                                   adjusted=torch.ones_like(out.adjusted))


def load_pretrained_mixer(path: PathLike, device: Union[str, torch.device, None] = "cpu") -> PretrainedMixer:
    """Load a file written by :func:`save_pretrained_mixer` / ``samix export-mixer``.

    Rebuilds the encoder with :func:`samix.models.build_model` from the metadata, prunes it to the
    stem + stages ``1..stage``, loads the tensors (every expected key must be there with its
    shape, and nothing else), and freezes encoder and generator. Metadata that does not fit the
    tensors raises ``ValueError`` naming the field. Never executes code from the file.
    """
    from safetensors.torch import load_file


    p = _check_path(path)
    meta = read_mixer_metadata(p)
    where = str(p)
    tensors = load_file(str(p), device="cpu")
    gen_state = {k[len("generator."):]: v for k, v in tensors.items() if k.startswith("generator.")}
    enc_state = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    stray = sorted(k for k in tensors if not k.startswith(("generator.", "encoder.")))
    if stray:
        raise ValueError(f"{where}: unexpected tensor(s) {stray[:5]} (only 'generator.*' and 'encoder.*' belong here)")

    # -- generator
    try:
        generator = GENERATORS.build(meta.generator, **meta.generator_kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: field 'generator_kwargs' {meta.generator_kwargs} does not build a "
                         f"{meta.generator!r}: {err}") from None
    _load_strict(generator, gen_state, where, "generator",
                 "field 'channels' / 'generator_kwargs'")

    # -- encoder
    try:
        encoder = build_model(meta.backbone, num_classes=0, in_chans=meta.in_chans, width=meta.width,
                              **meta.model_kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: fields 'backbone'={meta.backbone!r}, 'width'={meta.width}, "
                         f"'in_chans'={meta.in_chans}, 'model_kwargs'={meta.model_kwargs} do not build a "
                         f"model: {err}") from None
    stage_channels = int(encoder.stage_channels[meta.stage - 1])
    if stage_channels != meta.channels:
        raise ValueError(f"{where}: field 'channels' is {meta.channels}, but stage {meta.stage} (field 'stage') of "
                         f"field 'backbone'={meta.backbone!r} (width {meta.width}) has {stage_channels} channels")
    expected = encoder_state_dict(encoder, meta.stage)
    _compare_state(expected, enc_state, where, "encoder",
                   f"fields 'backbone'={meta.backbone!r}, 'width'={meta.width}, 'in_chans'={meta.in_chans}, "
                   f"'model_kwargs', 'stage'={meta.stage}")
    prune_encoder(encoder, meta.stage)
    result = encoder.load_state_dict(enc_state, strict=False)
    not_loaded = set(expected) & set(result.missing_keys)
    if not_loaded or result.unexpected_keys:  # pragma: no cover - _compare_state guarantees both
        raise ValueError(f"{where}: encoder tensors did not load: missing {sorted(not_loaded)[:5]}, "
                         f"unexpected {sorted(result.unexpected_keys)[:5]}")

    pm = PretrainedMixer(encoder, generator, meta, path=str(p))
    # the file's input/feature sizes must agree with the rebuilt encoder
    h, w = meta.input_size
    with torch.no_grad():
        fmap = pm.encoder.features(torch.zeros(1, meta.in_chans, h, w), meta.stage)
    if tuple(fmap.shape[-2:]) != tuple(meta.feature_size):
        raise ValueError(f"{where}: field 'input_size' is {meta.input_size}, but the encoder turns such images "
                         f"into a {tuple(fmap.shape[-2:])} stage-{meta.stage} map where field 'feature_size' "
                         f"says {meta.feature_size}")
    if device is not None:
        pm.to(device)
    return pm


def _compare_state(expected: Dict[str, Tensor], got: Dict[str, Tensor], where: str, what: str, fields: str) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: file {tuple(got[k].shape)} vs expected {tuple(v.shape)}"
              for k, v in expected.items() if k in got and tuple(got[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:5]}{' ...' if len(shapes) > 5 else ''}")
        raise ValueError(f"{where}: the {what} tensors do not fit the metadata ({fields}): {'; '.join(parts)}")


def _load_strict(module: nn.Module, state: Dict[str, Tensor], where: str, what: str, fields: str) -> None:
    _compare_state(module.state_dict(), state, where, what, fields)
    module.load_state_dict(state, strict=True)

