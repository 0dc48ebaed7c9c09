"""Export a trained encoder as safetensors (``samix export-backbone``), in the key names of its twin.

Only the encoder is written: the classifier (``model.get_classifier()``'s tensors, e.g.
``head.fc.*`` / timm's ``fc.*``, ``head.*``) is dropped; a final norm that belongs to the
feature path (ViT ``norm``, ConvNeXt ``head.norm``) is kept. Key formats (``key_format`` in the
metadata):

* ``"torchvision"`` -- samix's CIFAR ResNets with basic/bottleneck blocks (``resnet18/34/50/101``,
  ``resnext50``): ``stem.0``/``stem.1`` -> ``conv1``/``bn1``, ``stages.i`` -> ``layer{i+1}``,
  ``shortcut`` -> ``downsample``; every other name already equals torchvision's. At ``width=1``
  every tensor has torchvision's shape except ``conv1.weight`` (the CIFAR stem is a 3x3 stride-1
  conv without max-pool, torchvision's a 7x7 stride-2 conv + max-pool), so detection toolkits
  load the file with that one key mismatched (and ``fc.*`` absent).
* ``"timm"`` -- the timm adapters (``timm_resnet18``, ``deit_small``, ``timm:<name>``, ...): timm's
  own names (samix's ``net.`` prefix removed). timm's ResNets use torchvision's names too.
* ``"samix"`` -- no torchvision/timm twin (``preact_resnet18``, ``wrn28_8``, ``convnet``): samix's
  own state-dict names.

The file header holds the metadata as JSON-encoded strings (``"model"``, ``"architecture"``,
``"in_chans"``, ``"width"``, ``"feature_dim"``, ``"stage_channels"``, ``"key_format"``,
``"samix_version"``, ``"timm_name"`` for timm models, plus the caller's entries) and the plain
``"format": "pt"`` safetensors convention. ``model`` and ``width`` are not recorded on a model
instance: pass them (``metadata={"model": "resnet18", "width": 0.25}``) or they are ``null``.
:func:`load_exported_backbone` reads the file back and, given a model of the same config, maps the
names back and loads them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Dict, Optional, Tuple

from torch import Tensor, nn

from .. import __version__
from .resnet_cifar import BasicBlock, Bottleneck, CifarResNet
from .timm_backbones import TimmBackbone
from .weights import classifier_keys

__all__ = ["backbone_state_for_export", "export_backbone", "export_key_map", "load_exported_backbone"]

_RESERVED = ("key_format", "samix_version", "format")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _torchvision_name(key: str) -> str:
    key = re.sub(r"^stem\.0\.", "conv1.", key)
    key = re.sub(r"^stem\.1\.", "bn1.", key)
    key = re.sub(r"^stages\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", key)
    return key.replace(".shortcut.", ".downsample.")


def export_key_map(model: nn.Module) -> Tuple[Dict[str, str], str]:
    """``({samix state-dict key: exported key}, key_format)`` for the encoder tensors of ``model``
    (classifier excluded). See the module docstring for the formats."""
    model = _unwrap(model)
    head = set(classifier_keys(model))
    keys = [k for k in model.state_dict() if k not in head]
    if isinstance(model, CifarResNet) and all(isinstance(b, (BasicBlock, Bottleneck)) for s in model.stages
                                              for b in s):
        return {k: _torchvision_name(k) for k in keys}, "torchvision"
    if isinstance(model, TimmBackbone):
        return {k: k[len("net."):] for k in keys}, "timm"
    return {k: k for k in keys}, "samix"


def _in_chans(model: nn.Module) -> Optional[int]:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else int(conv.in_channels)


def backbone_state_for_export(model: nn.Module, metadata: Optional[Dict] = None) -> Tuple[Dict[str, Tensor], Dict]:
    """``(state_dict, metadata)`` of the encoder: contiguous CPU copies under the exported names,
    and the metadata as a plain dict (see the module docstring). ``metadata`` adds/overrides entries
    (``key_format`` and ``samix_version`` are computed and cannot be overridden)."""
    model = _unwrap(model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names, key_format = export_key_map(model)
    own = model.state_dict()
    state = {new: own[old].detach().to("cpu", copy=True).contiguous() for old, new in names.items()}
    stages = getattr(model, "stage_channels", ())
    meta = {
        "model": None,
        "architecture": type(model).__name__,
        "in_chans": _in_chans(model),
        "width": None,
        "feature_dim": int(getattr(model, "num_features", stages[-1] if stages else 0)) or None,
        "stage_channels": [int(c) for c in stages],
    }
    if getattr(model, "timm_name", None):
        meta["timm_name"] = model.timm_name
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or k in _RESERVED:
            raise ValueError(f"metadata keys must be strings other than {list(_RESERVED)}, got {k!r}")
        meta[k] = v
    meta["key_format"] = key_format
    meta["samix_version"] = __version__
    return state, meta


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then ``os.replace`` (mode 0o666 & ~umask)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_backbone(model: nn.Module, path, metadata: Optional[Dict] = None) -> Path:
    """Write the encoder of ``model`` to ``path`` (``.safetensors``) atomically. Returns the path.

    ``metadata`` values must be JSON-serialisable; they are stored JSON-encoded in the header.
    """
    from safetensors.torch import save

    p = Path(os.fspath(path)).expanduser()
    if p.suffix.lower() != ".safetensors":
        raise ValueError(f"path must end with .safetensors, got '{p}'")
    state, meta = backbone_state_for_export(model, metadata)
    try:
        header = {k: json.dumps(v) for k, v in meta.items()}
    except TypeError as err:
        raise TypeError(f"metadata values must be JSON-serialisable: {err}") from None
    header["format"] = "pt"
    p.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(p, save(state, metadata=header))
    return p


def load_exported_backbone(path, model: Optional[nn.Module] = None) -> Tuple[Dict[str, Tensor], Dict]:
    """Read an exported encoder: ``(state_dict under the exported names, metadata)``; header values
    are JSON-decoded (a value that is not JSON, e.g. ``"format": "pt"``, stays a string).

    With ``model`` (built with the same config), the tensors are also loaded into it under its own
    names; every encoder tensor must be present with its shape and no other may be in the file
    (``ValueError`` listing the differences). The classifier keeps its current weights.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"exported backbone not found: '{p}'")
    with safe_open(str(p), framework="pt") as f:
        raw = f.metadata() or {}
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    state = load_file(str(p), device="cpu")
    if model is not None:
        target = _unwrap(model)
        names, key_format = export_key_map(target)
        back = {new: old for old, new in names.items()}
        own = target.state_dict()
        missing = sorted(set(back) - set(state))
        unexpected = sorted(set(state) - set(back))
        shapes = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[back[k]].shape)})"
                  for k in sorted(set(back) & set(state)) if state[k].shape != own[back[k]].shape]
        if missing or unexpected or shapes:
            raise ValueError(
                f"'{p}' (key_format {meta.get('key_format')!r}) does not fit {type(target).__name__} "
                f"(key_format {key_format!r}): missing {missing[:8]}, unexpected {unexpected[:8]}, "
                f"other shape {shapes[:8]}")
        target.load_state_dict({back[k]: v for k, v in state.items()}, strict=False)
    return state, meta
