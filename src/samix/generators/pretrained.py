"""SAMix-P: a trained Mixer (or AutoMix Mix Block) and the encoder stages it reads, in one file.

samix.txt Sec. 3.2 ("Pre-trained pipeline v.s. Online pipeline", Fig. 5): the Mixer learned by an
online SAMix (or AutoMix) run is frozen and reused to mix samples for a new backbone, without the
momentum pipeline and without the generation loss. The frozen pipeline is::

    z = E(x~, l)                     # the run's momentum (teacher) encoder: stem + stages 1..l, eval mode
    s = Adjust_lam(M(z, lam, index))  # the generator in eval mode, lambda-adjusted: mean(s) == lam
    mixed = s * x + (1 - s) * x[index]

``x~`` is ``x`` re-normalised to the encoder's statistics when the new dataset's differ (see
:meth:`PretrainedMixer.bind_data`).

File format (``.safetensors``, written atomically by :func:`save_pretrained_mixer`):

* tensors ``generator.<key>`` (the generator's state dict, BatchNorm buffers included) and
  ``encoder.<key>`` (the entries of the backbone's state dict that belong to its stem and to
  stages ``1..l``, BatchNorm buffers included; keys as in the backbone's own state dict);
* string metadata: ``format`` = ``"samix.pretrained_mixer"``, ``format_version`` = ``"1"`` and
  ``samix_mixer`` = a JSON object (:class:`MixerMetadata`): generator name (a key of
  :data:`samix.generators.GENERATORS`) and constructor kwargs; backbone name, width, in_chans and
  model kwargs; stage, channels, input and feature-map sizes; normalisation mean/std; training
  dataset and its class count; samix version; where it came from (algorithm, run, epoch).

Loading (:func:`load_pretrained_mixer`) never executes code from the file: tensors come from
``safetensors``, the metadata is JSON, and the only classes built are the registered generators
and :func:`samix.models.build_model` backbones named in it. The encoder is rebuilt, pruned to
its stem and stages ``1..l`` (every other submodule becomes ``nn.Identity``), loaded, put in eval
mode and frozen (``requires_grad_(False)``); so is the generator. :class:`PretrainedMixer` stays
in eval mode whatever ``train()`` is called with. Every metadata field is checked against the
tensors and against the other fields; a mismatch raises ``ValueError`` naming the field.

Export from a finished run: :func:`export_mixer` (``samix export-mixer RUN_DIR OUT.safetensors``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .mixblock import GeneratorOutput, MixBlock
from .mixer import Mixer, lambda_adjust

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MixerMetadata",
    "PretrainedMixer",
    "encoder_state_dict",
    "export_mixer",
    "load_pretrained_mixer",
    "prune_encoder",
    "read_mixer_metadata",
    "save_pretrained_mixer",
    "write_mixer_metadata",
]

FORMAT = "samix.pretrained_mixer"
FORMAT_VERSION = 1
META_KEY = "samix_mixer"
#: Constructor arguments of each generator and the attribute each is stored in.
_GENERATOR_ATTRS = {
    "mixer": {"in_channels": "in_channels", "attn_channels": "attn_channels",
              "content_channels": "content_channels", "dropout": "dropout", "upsample": "upsample",
              "attention": "use_attention", "adaptive_lambda": "adaptive_lambda",
              "nonlinear_content": "nonlinear_content", "lam_adjust": "lam_adjust",
              "lam_adjust_prob": "lam_adjust_prob", "attn_norm": "attn_norm"},
    "mixblock": {"in_channels": "in_channels", "attn_channels": "attn_channels", "upsample": "upsample",
                 "attn_norm": "attn_norm"},
}
_GENERATOR_CLASSES = {"mixer": Mixer, "mixblock": MixBlock}

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
        if gen not in _GENERATOR_CLASSES:
            raise ValueError(f"{where}: field 'generator' must be one of {sorted(_GENERATOR_CLASSES)}, got {gen!r}")
        gkw = _json_plain("generator_kwargs", d["generator_kwargs"], where)
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


# ---------------------------------------------------------------------------------------- encoder
def _needed_modules(model: nn.Module, stage: int) -> List[nn.Module]:
    if not hasattr(model, "stem") or not hasattr(model, "stages"):
        raise TypeError(f"the encoder must be a samix Backbone (stem + stages), got {type(model).__name__}")
    stages = model.stages
    return [model.stem] + [stages[i] for i in range(stage)]


def encoder_state_dict(model: nn.Module, stage: int) -> Dict[str, Tensor]:
    """The entries of ``model.state_dict()`` that belong to its stem and stages ``1..stage``.

    Membership is by tensor identity, so it works for backbones whose ``stem``/``stages`` are views
    over another module tree (the timm adapters). Values are detached tensors (not copies).
    """
    keep = {id(t) for m in _needed_modules(model, stage) for t in [*m.parameters(), *m.buffers()]}
    return {k: v.detach() for k, v in model.state_dict(keep_vars=True).items() if id(v) in keep}


def prune_encoder(model: nn.Module, stage: int) -> nn.Module:
    """Replace, in place, every submodule that is not part of the stem or of stages ``1..stage``
    (and has no such descendant) by ``nn.Identity``; returns ``model``.

    ``model.features(x, stage)`` is unchanged; later stages and the head are gone.
    """
    needed = {id(m) for top in _needed_modules(model, stage) for m in top.modules()}

    def walk(module: nn.Module) -> bool:  # True if module or a descendant is needed
        if id(module) in needed:
            return True
        any_needed = False
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if walk(child):
                any_needed = True
            else:
                module._modules[name] = nn.Identity()
        return any_needed

    walk(model)
    return model


def _plain_state(state: Dict[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    # safetensors stores dense, unshared tensors
    return {prefix + k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _generator_spec(generator: nn.Module) -> Tuple[str, Dict[str, Any]]:
    for name, cls in _GENERATOR_CLASSES.items():
        if type(generator) is cls:
            kwargs = {arg: getattr(generator, attr) for arg, attr in _GENERATOR_ATTRS[name].items()}
            # the round trip must rebuild exactly this module
            rebuilt = cls(**kwargs)
            want = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
            got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
            if want != got:  # pragma: no cover - guards a change of the generator classes
                raise ValueError(f"cannot describe {type(generator).__name__} by its constructor arguments "
                                 f"{kwargs}: the rebuilt module has other tensors")
            return name, kwargs
    raise TypeError(f"generator must be a samix.generators.Mixer or MixBlock, got {type(generator).__name__}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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

    import samix

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
    _atomic_write_bytes(out, save(tensors, metadata=_header_dict(meta)))
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
    _atomic_write_bytes(Path(out_path) if out_path is not None else p, save(tensors, metadata=header))


# ---------------------------------------------------------------------------------------- export
def export_mixer(run_dir: PathLike, out_path: PathLike, checkpoint: Optional[PathLike] = None) -> MixerMetadata:
    """Export the trained Mixer / Mix Block of a samix or automix run directory (``samix export-mixer``).

    Rebuilds the run from ``RUN_DIR/config.yaml`` and ``checkpoints/last.pt`` (or ``checkpoint``)
    without reading the dataset (its files are not needed), then writes the generator and the
    momentum (teacher) encoder's stem + stages ``1..l`` with :func:`save_pretrained_mixer`. Without a
    momentum pipeline (``momentum_pipeline=false``) the online network is the encoder, as in training.
    """
    from samix.data import dataset_info
    from samix.engine.checkpoint import load_checkpoint
    from samix.engine.config import load_config
    from samix.engine.trainer import build_algorithm_from_config

    run = Path(os.fspath(run_dir)).expanduser()
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run} is not a run directory: {cfg_path} is missing")
    ck_path = Path(checkpoint) if checkpoint is not None else run / "checkpoints" / "last.pt"
    if not ck_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ck_path} (has the run finished an epoch?)")
    cfg = load_config(cfg_path)
    cfg.out_dir = str(run)
    cfg.model.pretrained = None  # the checkpoint holds the weights
    ck = load_checkpoint(ck_path, map_location="cpu")
    info = dataset_info(cfg.data.name)
    if info.num_classes is None:  # a generic image folder: the class count lives in the data
        from samix.engine.evaluate_run import load_run

        cfg, info, algo, _ = load_run(run, checkpoint=str(ck_path))
    else:
        algo = build_algorithm_from_config(cfg, info, torch.device("cpu"), torch.Generator().manual_seed(0))
        algo.load_state_dict(ck["algorithm"])
    algo.eval()
    generator = getattr(algo, "mix_block", None)
    if not isinstance(generator, (Mixer, MixBlock)):
        raise ValueError(f"run {run} (algorithm.name={cfg.algorithm.name!r}) has no learned Mixer or Mix Block; "
                         f"export-mixer needs a run of algorithm 'samix' or 'automix'")
    encoder = getattr(algo, "teacher", None)
    if encoder is None:
        encoder = algo.model
    in_chans = int(cfg.model.in_chans or info.in_chans)
    size = cfg.data.image_size or info.image_size
    from omegaconf import OmegaConf

    model_kwargs = OmegaConf.to_container(cfg.model.kwargs, resolve=True) or {}
    source = {"algorithm": str(cfg.algorithm.name), "run": run.name, "epoch": int(ck.get("epoch", 0)),
              "momentum_encoder": getattr(algo, "teacher", None) is not None,
              "model_num_classes": int(info.num_classes)}
    if cfg.data.train_subset:
        source["train_subset"] = int(cfg.data.train_subset)
    size = list(size) if not isinstance(size, int) else size
    return save_pretrained_mixer(out_path, generator, encoder, stage=int(algo.options["stage"]),
                                 backbone=str(cfg.model.name), width=float(cfg.model.width), in_chans=in_chans,
                                 model_kwargs=model_kwargs, input_size=size, mean=info.mean, std=info.std,
                                 dataset=str(cfg.data.name), num_classes=info.num_classes, source=source)


# ---------------------------------------------------------------------------------------- loading
class PretrainedMixer(nn.Module):
    """A frozen generator and the frozen encoder stages it reads (see the module docstring).

    Call ``pm(images, lam, index)`` -> :class:`~samix.generators.GeneratorOutput` (no gradient,
    ``mask`` lambda-adjusted so that ``mask.mean((1, 2, 3)) == lam``). Always in eval mode.

    Attributes:
        encoder: the pruned backbone (stem + stages ``1..stage``), frozen.
        generator: the :class:`~samix.generators.Mixer` or :class:`~samix.generators.MixBlock`, frozen.
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
        if isinstance(self.generator, Mixer):
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

    from samix.models import build_model

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
        generator = _GENERATOR_CLASSES[meta.generator](**meta.generator_kwargs)
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

