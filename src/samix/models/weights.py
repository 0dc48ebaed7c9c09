"""Local pretrained weights for samix backbones (never downloaded, never unpickled as code).

``build_model(name, ..., pretrained="w.safetensors")`` calls :func:`load_pretrained`:

1. :func:`read_state_dict` reads ``.safetensors`` (``safetensors.torch.load_file``) or
   ``.pt/.pth/.bin/.ckpt`` (``torch.load(weights_only=True)``); a checkpoint dict holding the
   state dict under ``"state_dict"``, ``"model"``, ``"algorithm"``, ``"module"`` or ``"net"``
   is unwrapped, and a DDP ``module.`` prefix is stripped.
2. The key prefix is aligned with the model: of "as is", "drop the first dotted component"
   (e.g. ``model.`` of a samix training checkpoint, ``backbone.``) and "add the model's common
   prefix" (``net.`` of the timm adapters, so plain timm/torchvision files load), the choice
   matching most keys wins (ties: as is, then dropping ``model.``, ``backbone.``, ``module.``,
   ``encoder.``, ``net.``, then alphabetical); with a dropped component the other entries are
   ignored (the EMA copy or the mixer of a training checkpoint; to load an EMA copy, extract
   it yourself).
3. Classifier entries (the parameters of ``model.get_classifier()``) whose shape differs, or
   that the file lacks, are skipped with a ``UserWarning`` and keep their fresh initialisation
   (fine-tuning on another label set). Any other shape mismatch, a missing backbone entry, or
   (with ``strict=True``) an unexpected entry raises ``ValueError`` listing the keys.
   ``num_batches_tracked`` counters may be absent.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "algorithm", "module", "net")
# on a tie, dropping one of these first key components wins (in this order) over any other
_PREFERRED_PREFIXES = ("", "model", "backbone", "module", "encoder", "net")


@dataclass
class LoadResult:
    """What :func:`load_pretrained` did. ``prefix_rule`` names the key alignment used."""

    path: str
    loaded: List[str] = field(default_factory=list)
    skipped_head: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    prefix_rule: str = "as is"


def check_weights_path(path) -> Path:
    """``path`` as a ``Path`` to an existing file; ``TypeError``/``FileNotFoundError`` otherwise."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"pretrained must be a path to a local .safetensors/.pt file (downloads are not "
                        f"supported), got {type(path).__name__} ({path!r})")
    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: '{p}'")
    return p


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) and isinstance(v, Tensor)
                                                          for k, v in obj.items())


def _unwrap(obj, path: Path) -> Dict[str, Tensor]:
    seen = []
    for _ in range(4):
        if _is_state_dict(obj):
            return obj
        if not isinstance(obj, dict):
            break
        seen.append(sorted(map(str, obj))[:10])
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            # a dict mixing tensors and metadata: keep the tensors
            tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
            if tensors:
                return tensors
            break
        obj = inner
    raise ValueError(f"no state dict (a dict of name -> tensor) found in '{path}' (keys seen: {seen})")


def read_state_dict(path) -> Dict[str, Tensor]:
    """Read a state dict (CPU tensors) from a local ``.safetensors`` or ``.pt``-like file."""
    p = check_weights_path(path)
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        sd = load_file(str(p), device="cpu")
    elif suffix in TORCH_SUFFIXES:
        sd = _unwrap(torch.load(p, map_location="cpu", weights_only=True), p)
    else:
        raise ValueError(f"pretrained weights must be a {'/'.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)} file, "
                         f"got '{p}'")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def save_weights(model: nn.Module, path) -> Path:
    """Write ``model.state_dict()`` as safetensors (contiguous CPU copies). Returns the path."""
    from safetensors.torch import save_file

    p = Path(os.fspath(path)).expanduser()
    if p.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise ValueError(f"path must end with .safetensors, got '{p}'")
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(p))
    return p


def classifier_keys(model: nn.Module) -> List[str]:
    """State-dict keys of the classifier: ``model.get_classifier()`` if defined, else the last ``nn.Linear``."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        clf: Optional[nn.Module] = getter()
    else:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        clf = linears[-1] if linears else None
    if clf is None:
        return []
    ids = {id(t) for t in list(clf.parameters()) + list(clf.buffers())}
    return [k for k, t in model.state_dict(keep_vars=True).items() if id(t) in ids]


def _common_prefix(keys) -> str:
    firsts = {k.split(".", 1)[0] for k in keys if "." in k}
    if len(firsts) == 1 and all("." in k for k in keys):
        return firsts.pop() + "."
    return ""


def _align(sd: Dict[str, Tensor], own: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str], str]:
    """Return (aligned state dict, ignored file keys, rule name) maximising the keys shared with ``own``."""
    own_prefix = _common_prefix(own)
    candidates = [("as is", dict(sd), [])]
    if own_prefix and not all(k.startswith(own_prefix) for k in sd):
        candidates.append((f"added '{own_prefix}'", {own_prefix + k: v for k, v in sd.items()}, []))
    for first in sorted({k.split(".", 1)[0] for k in sd if "." in k}):
        p = first + "."
        kept = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
        ignored = [k for k in sd if not k.startswith(p)]
        candidates.append((f"dropped '{p}'", kept, ignored))
        if own_prefix and not all(k.startswith(own_prefix) for k in kept):
            candidates.append((f"dropped '{p}', added '{own_prefix}'",
                               {own_prefix + k: v for k, v in kept.items()}, ignored))
    def rank(item):
        i, (rule, aligned, _) = item
        first = rule.split("'")[1].rstrip(".") if rule.startswith("dropped") else ""
        preferred = _PREFERRED_PREFIXES.index(first) if first in _PREFERRED_PREFIXES else len(_PREFERRED_PREFIXES)
        return (-len(own.keys() & aligned.keys()), preferred, i)

    best = min(enumerate(candidates), key=rank)[1]
    return best[1], best[2], best[0]


def _fmt(keys: List[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_pretrained(model: nn.Module, path, strict: bool = True) -> LoadResult:
    """Load local weights into ``model`` (see the module docstring for the rules). Returns a :class:`LoadResult`.

    Raises ``FileNotFoundError`` (no such file, naming the path), ``ValueError`` (unreadable
    format, backbone keys missing or of another shape, unexpected keys when ``strict``).
    """
    p = check_weights_path(path)
    sd = read_state_dict(p)
    own = model.state_dict()
    sd, ignored, rule = _align(sd, own)
    result = LoadResult(path=str(p), ignored=ignored, prefix_rule=rule)
    head = set(classifier_keys(model))
    if not own.keys() & sd.keys():
        raise ValueError(f"no key of '{p}' matches {type(model).__name__}: the file has {_fmt(sorted(sd))}; "
                         f"the model expects {_fmt(list(own))}")
    to_load, bad_shape = {}, []
    for k, v in sd.items():
        if k not in own:
            result.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            if k in head:
                result.skipped_head.append(k)
            else:
                bad_shape.append(f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})")
        else:
            to_load[k] = v
    missing = [k for k in own if k not in sd]
    head_missing = [k for k in missing if k in head]
    result.missing = [k for k in missing if k not in head and not k.endswith("num_batches_tracked")]
    problems = []
    if bad_shape:
        problems.append(f"backbone tensors of another shape: {_fmt(bad_shape)}")
    if result.missing:
        problems.append(f"backbone keys missing from the file: {_fmt(result.missing)}")
    if strict and result.unexpected:
        problems.append(f"unexpected keys in the file (pass strict=False to ignore them): {_fmt(result.unexpected)}")
    if problems:
        raise ValueError(f"pretrained weights '{p}' do not fit {type(model).__name__}: " + "; ".join(problems))
    skipped = result.skipped_head + head_missing
    if skipped:
        warnings.warn(f"pretrained weights '{p}': classifier entries {_fmt(skipped)} were not loaded (other shape or "
                      f"absent); the classifier keeps its fresh initialisation", UserWarning, stacklevel=2)
    if result.unexpected:
        warnings.warn(f"pretrained weights '{p}': ignored unexpected keys {_fmt(result.unexpected)}", UserWarning,
                      stacklevel=2)
    model.load_state_dict(to_load, strict=False)
    result.loaded = sorted(to_load)
    result.skipped_head = skipped
    return result
