"""SAMix-P file format: a trained Mixer (or AutoMix Mix Block) and the encoder stages it reads, in one file.

samix.txt Sec. 3.2 ("Pre-trained pipeline v.s. Online pipeline", Fig. 5): the Mixer learned by an
online SAMix (or AutoMix) run is frozen and reused to mix samples for a new backbone, without the
momentum pipeline and without the generation loss (the frozen runtime: :mod:`samix.pretrained.runtime`;
the policy: :mod:`samix.pretrained.policy`; export from a run: :mod:`samix.engine.export`).

File format (``.safetensors``, written atomically by :func:`save_pretrained_mixer`):

* tensors ``generator.<key>`` (the generator's state dict, BatchNorm buffers included) and
  ``encoder.<key>`` (the entries of the backbone's state dict that belong to its stem and to
  stages ``1..l``, BatchNorm buffers included; keys as in the backbone's own state dict);
* string metadata: ``format`` = ``"samix.pretrained_mixer"``, ``format_version`` = ``"1"`` and
  ``samix_mixer`` = a JSON object (:class:`MixerMetadata`): generator name (a key of
  :data:`samix.generators.GENERATORS`) and constructor kwargs; backbone name, width, in_chans and
  model kwargs; stage, channels, input and feature-map sizes; normalisation mean/std; training
  dataset and its class count; samix version; where it came from (algorithm, run, epoch).

Reading never executes code from the file: tensors come from ``safetensors``, the metadata is JSON.
Every metadata field is checked against the other fields; a mismatch raises ``ValueError`` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

import samix
from samix._io import atomic_write_bytes
from samix.generators import GENERATORS, generator_name
from samix.models.pruning import encoder_state_dict

__all__ = ["FORMAT", "FORMAT_VERSION", "META_KEY", "MixerMetadata", "read_mixer_metadata", "save_pretrained_mixer",
           "write_mixer_metadata"]

FORMAT = "samix.pretrained_mixer"
FORMAT_VERSION = 1
META_KEY = "samix_mixer"
#: Constructor arguments of each generator and the attribute each is stored in.
_GENERATOR_ATTRS = {
    "mixer": {"in_channels": "in_channels", "attn_channels": "attn_channels",
              "content_channels": "content_channels", "dropout": "dropout", "upsample": "upsample",
              "attention": "use_attention", "adaptive_lambda": "adaptive_lambda",
              "nonlinear_content": "nonlinear_content", "lam_adjust": "lam_adjust",
              "lam_adjust_prob": "lam_adjust_prob", "attn_norm": "attn_norm", "qk": "qk"},
    "mixblock": {"in_channels": "in_channels", "attn_channels": "attn_channels", "upsample": "upsample",
                 "attn_norm": "attn_norm", "lam_concat": "lam_concat"},
}
#: Constructor arguments added after files were first written, with the value every older file had: a
#: file that does not record one was made by that architecture (its tensors say so too).
_GENERATOR_LEGACY = {"mixer": {"qk": "shared"}, "mixblock": {"lam_concat": True}}

PathLike = Union[str, os.PathLike]
Size = Union[int, Sequence[int]]


# ---------------------------------------------------------------------------------------- metadata
def _pair(name: str, value, where: str) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{where}: field {name!r} must be a positive int or a pair [H, W] of positive ints, "
                         f"got {value!r}")
    return int(value[0]), int(value[1])


def _floats(name: str, value, where: str) -> Tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ValueError(f"{where}: field {name!r} must be a non-empty list of finite numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _json_plain(name: str, value, where: str) -> Dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where}: field {name!r} must be a JSON object with string keys, got {value!r}")

    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return True
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        return False

    if not plain(value):
        raise ValueError(f"{where}: field {name!r} must hold only JSON numbers, strings, lists and objects, "
                         f"got {value!r}")
    return dict(value)


@dataclass(frozen=True)
class MixerMetadata:
    """What a pre-trained Mixer file says about itself (the JSON under the ``samix_mixer`` key).

    Attributes:
        generator: ``"mixer"`` (SAMix) or ``"mixblock"`` (AutoMix), a key of ``samix.generators.GENERATORS``.
        generator_kwargs: the generator's constructor keyword arguments.
        backbone, width, in_chans, model_kwargs: how to rebuild the encoder with
            :func:`samix.models.build_model` (``pretrained`` is never stored).
        stage: the feature stage ``l`` the generator reads (1..4).
        channels: ``C_l``, channels of that feature map (== ``generator_kwargs["in_channels"]``).
        input_size: ``(H, W)`` of the training images.
        feature_size: ``(h, w)`` of the stage-``l`` map for ``input_size`` images.
        mean, std: per-channel normalisation of the training images (``len == in_chans``).
        dataset: name of the training dataset; ``num_classes``: its class count (or ``None``).
        samix_version: version of samix that wrote the file.
        source: free-form provenance (algorithm, run directory name, epoch, ...).
    """

    generator: str
    generator_kwargs: Dict[str, Any]
    backbone: str
    width: float
    in_chans: int
    model_kwargs: Dict[str, Any]
    stage: int
    channels: int
    input_size: Tuple[int, int]
    feature_size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    dataset: str
    num_classes: Optional[int] = None
    samix_version: str = ""
    source: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        for k in ("input_size", "feature_size", "mean", "std"):
            d[k] = list(d[k])
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "metadata") -> "MixerMetadata":
        """Validate a decoded JSON object field by field (``ValueError`` naming the field)."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: the {META_KEY!r} metadata must be a JSON object, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"{where}: metadata field(s) {missing} missing")
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"{where}: unknown metadata field(s) {unknown}; known fields: {names}")
        gen = d["generator"]
        if gen not in GENERATORS:
            raise ValueError(f"{where}: field 'generator' must be one of {GENERATORS.list()}, got {gen!r}")
        gkw = _json_plain("generator_kwargs", d["generator_kwargs"], where)
        gkw = {**_GENERATOR_LEGACY.get(gen, {}), **gkw}
        allowed = set(_GENERATOR_ATTRS[gen])
        if set(gkw) - allowed:
            raise ValueError(f"{where}: field 'generator_kwargs' has argument(s) {sorted(set(gkw) - allowed)} that "
                             f"generator {gen!r} does not take; it takes {sorted(allowed)}")
        if not isinstance(d["backbone"], str) or not d["backbone"]:
            raise ValueError(f"{where}: field 'backbone' must be a model name, got {d['backbone']!r}")
        width = d["width"]
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
            raise ValueError(f"{where}: field 'width' must be a number > 0, got {width!r}")
        in_chans = d["in_chans"]
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"{where}: field 'in_chans' must be a positive int, got {in_chans!r}")
        mkw = _json_plain("model_kwargs", d["model_kwargs"], where)
        if "pretrained" in mkw:
            raise ValueError(f"{where}: field 'model_kwargs' must not name 'pretrained' (the weights are in the file)")
        stage = d["stage"]
        if isinstance(stage, bool) or not isinstance(stage, int) or not 1 <= stage <= 4:
            raise ValueError(f"{where}: field 'stage' must be an int in [1, 4], got {stage!r}")
        channels = d["channels"]
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"{where}: field 'channels' must be a positive int, got {channels!r}")
        if gkw.get("in_channels") != channels:
            raise ValueError(f"{where}: field 'channels' is {channels} but the generator's in_channels "
                             f"(field 'generator_kwargs') is {gkw.get('in_channels')!r}")
        input_size = _pair("input_size", d["input_size"], where)
        feature_size = _pair("feature_size", d["feature_size"], where)
        mean = _floats("mean", d["mean"], where)
        std = _floats("std", d["std"], where)
        if any(s <= 0 for s in std):
            raise ValueError(f"{where}: field 'std' must be > 0 per channel, got {list(std)}")
        for name, stats in (("mean", mean), ("std", std)):
            if len(stats) != in_chans:
                raise ValueError(f"{where}: field 'in_chans' is {in_chans} but field {name!r} has {len(stats)} "
                                 f"value(s) ({list(stats)}): one per input channel is expected")
        if not isinstance(d["dataset"], str):
            raise ValueError(f"{where}: field 'dataset' must be a string, got {d['dataset']!r}")
        nc = d.get("num_classes")
        if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
            raise ValueError(f"{where}: field 'num_classes' must be a positive int or null, got {nc!r}")
        version = d.get("samix_version", "")
        if not isinstance(version, str):
            raise ValueError(f"{where}: field 'samix_version' must be a string, got {version!r}")
        source = _json_plain("source", d.get("source", {}), where)
        return cls(generator=gen, generator_kwargs=gkw, backbone=d["backbone"], width=float(width),
                   in_chans=in_chans, model_kwargs=mkw, stage=stage, channels=channels, input_size=input_size,
                   feature_size=feature_size, mean=mean, std=std, dataset=d["dataset"], num_classes=nc,
                   samix_version=version, source=source)


def _read_header(path: Path) -> Dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None


def _check_path(path) -> Path:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a path to a .safetensors file, got {type(path).__name__} ({path!r})")
    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"pre-trained Mixer file not found: {p} (export one with "
                                f"`samix export-mixer RUN_DIR {p.name}` from a finished samix/automix run)")
    return p


def read_mixer_metadata(path: PathLike) -> MixerMetadata:
    """The validated :class:`MixerMetadata` of a pre-trained Mixer file (reads the header only)."""
    p = _check_path(path)
    header = _read_header(p)
    if header.get("format") != FORMAT:
        raise ValueError(f"{p}: metadata field 'format' must be {FORMAT!r} (a file written by "
                         f"`samix export-mixer`), got {header.get('format')!r}")
    if header.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"{p}: metadata field 'format_version' {header.get('format_version')!r} is not supported "
                         f"by samix (reads version {FORMAT_VERSION})")
    if META_KEY not in header:
        raise ValueError(f"{p}: metadata field {META_KEY!r} is missing")
    try:
        d = json.loads(header[META_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{p}: metadata field {META_KEY!r} is not valid JSON: {err}") from None
    return MixerMetadata.from_dict(d, where=str(p))



def _plain_state(state: Dict[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    # safetensors stores dense, unshared tensors
    return {prefix + k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _generator_spec(generator: nn.Module) -> Tuple[str, Dict[str, Any]]:
    name = generator_name(generator)  # TypeError for anything but a registered generator
    kwargs = {arg: getattr(generator, attr) for arg, attr in _GENERATOR_ATTRS[name].items()}
    # the round trip must rebuild exactly this module
    rebuilt = GENERATORS.build(name, **kwargs)
    want = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if want != got:  # pragma: no cover - guards a change of the generator classes
        raise ValueError(f"cannot describe {type(generator).__name__} by its constructor arguments "
                         f"{kwargs}: the rebuilt module has other tensors")
    return name, kwargs


def _header_dict(meta: MixerMetadata) -> Dict[str, str]:
    return {"format": FORMAT, "format_version": str(FORMAT_VERSION), META_KEY: meta.to_json()}


def save_pretrained_mixer(path: PathLike, generator: nn.Module, encoder: nn.Module, *, stage: int,
                          backbone: str, in_chans: int, input_size: Size, mean: Sequence[float],
                          std: Sequence[float], dataset: str, width: float = 1.0,
                          model_kwargs: Optional[Dict[str, Any]] = None, num_classes: Optional[int] = None,
                          source: Optional[Dict[str, Any]] = None) -> MixerMetadata:
    """Write ``generator`` and the stem + stages ``1..stage`` of ``encoder`` to ``path`` (atomically).

    ``encoder`` must be the backbone ``build_model(backbone, in_chans=in_chans, width=width,
    **model_kwargs)`` builds (its weights: the run's momentum encoder). ``input_size``, ``mean`` and
    ``std`` describe the images the generator was trained on. Returns the metadata written.
    """
    from safetensors.torch import save

    if not isinstance(stage, int) or isinstance(stage, bool) or not 1 <= stage <= 4:
        raise ValueError(f"stage must be an int in [1, 4], got {stage!r}")
    gen_name, gen_kwargs = _generator_spec(generator)
    channels = int(encoder.stage_channels[stage - 1])
    h, w = _pair("input_size", input_size, "save_pretrained_mixer")
    was = encoder.training
    encoder.eval()
    try:
        p = next(encoder.parameters())
        with torch.no_grad():
            probe = encoder.features(torch.zeros(1, in_chans, h, w, device=p.device, dtype=p.dtype), stage)
    finally:
        encoder.train(was)
    model_kwargs = {k: v for k, v in dict(model_kwargs or {}).items() if k != "pretrained"}
    meta = MixerMetadata.from_dict({
        "generator": gen_name, "generator_kwargs": gen_kwargs, "backbone": backbone, "width": float(width),
        "in_chans": int(in_chans), "model_kwargs": model_kwargs, "stage": stage, "channels": channels,
        "input_size": [h, w], "feature_size": [int(probe.shape[-2]), int(probe.shape[-1])],
        "mean": [float(v) for v in mean], "std": [float(v) for v in std], "dataset": str(dataset),
        "num_classes": num_classes, "samix_version": samix.__version__, "source": dict(source or {}),
    }, where="save_pretrained_mixer")
    tensors = {**_plain_state(generator.state_dict(), "generator."),
               **_plain_state(encoder_state_dict(encoder, stage), "encoder.")}
    out = Path(os.fspath(path)).expanduser()
    atomic_write_bytes(out, save(tensors, metadata=_header_dict(meta)))
    return meta


def write_mixer_metadata(path: PathLike, fields: Dict[str, Any], out_path: Optional[PathLike] = None) -> None:
    """Rewrite fields of a file's JSON metadata WITHOUT validating them (tests, repairs); the
    tensors are copied unchanged. Writes ``out_path`` (default: in place, atomically)."""
    from safetensors.torch import load_file, save

    p = _check_path(path)
    header = _read_header(p)
    d = json.loads(header[META_KEY])
    d.update(fields)
    header[META_KEY] = json.dumps(d, sort_keys=True)
    tensors = load_file(str(p))
    atomic_write_bytes(Path(out_path) if out_path is not None else p, save(tensors, metadata=header))


