"""Configs are data: a YAML file merged over the defaults below, then ``key=value`` overrides.

Rules:
- A YAML file may name a parent with ``_base_: relative/path.yaml``; the parent is merged first.
- The top-level sections are fixed (a typo is an error naming the key, the allowed keys and the file).
- ``mixer`` and ``algorithm`` sections are open: their extra keys are the options of the chosen
  mixer/algorithm, which validate them (an unknown option names the allowed ones).
- Files are read with ``yaml.safe_load`` (through OmegaConf); nothing in a config executes code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from samix._io import atomic_write_text
from samix.algorithms import list_algorithms
from samix.data import list_datasets
from samix.losses import list_losses
from samix.mixing import list_mixers
from samix.models import list_models

DEFAULTS = {
    "name": "run",
    "seed": 0,
    "epochs": 100,
    "batch_size": 100,  # global batch size (split across processes under DDP)
    "out_dir": None,  # run directory; default runs/<name>
    "resume": False,
    "device": "auto",  # auto | cpu | cuda
    "precision": "fp32",  # fp32 | bf16 | fp16 (AMP; fp16/bf16 need a GPU to pay off)
    "channels_last": False,
    "num_workers": 0,
    "log_interval": 50,  # iterations between plain log lines (non-terminal)
    "eval_interval": 1,  # epochs between test evaluations
    "threads": None,  # torch.set_num_threads on the CPU
    "deterministic": False,
    "data": {
        "name": "cifar100",
        "root": "data",
        "preset": None,  # transform preset; default from the dataset
        "image_size": None,
        "padding": None,
        "train_subset": None,  # stratified subset size of the training set (low-data regime)
        "test_subset": None,
        # N stratified training images held out (the same for every seed) and evaluated instead of the test
        # set: the split on which alpha and recipes are chosen (the test set only for the final table)
        "val_subset": None,
        # the split trained on (default: the dataset's training split), e.g. stl10 "train+unlabeled"
        "train_split": None,
        # labeled images for the kNN monitor and the linear probe of self-supervised runs: a split (default:
        # the training images) and a stratified, seeded subset of it (default: all of it)
        "probe_split": None,
        "probe_subset": None,
    },
    "model": {"name": "resnet18", "width": 1.0, "in_chans": None, "pretrained": None, "kwargs": {}},
    "mixer": {"name": "none", "alpha": 1.0, "prob": 1.0, "mode": "batch"},
    "algorithm": {"name": "supervised"},
    # decoupled_eta: Decoupled Mixup on top of loss.name ("ce" -> DM(CE), "bce" -> DM(BCE)), eta > 0
    "loss": {"name": "ce", "label_smoothing": 0.0, "decoupled_eta": None, "kwargs": {}},
    "optim": {
        "name": "sgd",  # sgd | adamw | lamb
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "betas": [0.9, 0.999],
        "grad_clip": None,  # max global grad norm
    },
    "sched": {"name": "cosine", "warmup_epochs": 0, "min_lr": 0.0, "warmup_start_factor": 0.01},
    "eval": {"ece_bins": 15, "median_last": 10, "corruption": False, "corruption_subset": 1000},
    "dist": {"backend": "auto", "find_unused_parameters": False, "sync_bn": False},
    "viz": {"every": 0, "pairs": 6},  # learned-mask PNG every N epochs (learnable mixers)
}

OPEN_SECTIONS = ("mixer", "algorithm", "model.kwargs", "loss.kwargs")

#: what ``resume=true`` may change (logging, evaluation, length, outputs, where it runs); anything else
#: would silently continue another experiment
RESUMABLE = ("epochs", "resume", "name", "out_dir", "log_interval", "eval_interval", "threads", "num_workers",
             "device", "viz", "eval", "dist.backend", "data.probe_split", "data.probe_subset")

CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "precision": ("fp32", "bf16", "fp16"),
    "optim.name": ("sgd", "adamw", "lamb"),
    "sched.name": ("cosine", "step", "constant"),
    "mixer.mode": ("batch", "elem"),
}


class ConfigError(ValueError):
    """A config problem: names the key, what is allowed, and the file."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_yaml_file(path: Path):
    """The file as an OmegaConf object: safe YAML only (no tags that build Python objects), unique keys, text."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not a text (UTF-8) YAML file") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "could not determine a constructor" in str(e):
            problem = f"a YAML tag that would build a Python object ({problem}); configs hold plain data only"
        raise ConfigError(f"config {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return OmegaConf.create(data)


def _load_yaml(path: Path, seen: tuple = ()) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config {path}: _base_ cycle through {[str(s) for s in seen]}")
    cfg = _read_yaml_file(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config {path}: expected a mapping at the top level, got {type(cfg).__name__}")
    base = cfg.pop("_base_", None)
    if base is not None:
        bases = [base] if isinstance(base, str) else list(base)
        merged = OmegaConf.create({})
        for b in bases:
            merged = OmegaConf.merge(merged, _load_yaml(path.parent / b, seen + (path.resolve(),)))
        cfg = OmegaConf.merge(merged, cfg)
    return cfg


def _check_keys(cfg: DictConfig, schema: dict, where: str, source: str) -> None:
    for key in cfg.keys():
        dotted = f"{where}{key}"
        if key not in schema:
            raise ConfigError(
                f"unknown config key {dotted!r} in {source}; allowed keys here: {', '.join(sorted(schema))}"
            )
        if dotted.rstrip(".") in OPEN_SECTIONS:
            continue
        if isinstance(schema[key], dict):
            if not isinstance(cfg[key], DictConfig):
                raise ConfigError(f"config key {dotted!r} in {source} must be a section (a mapping of keys such as "
                                  f"{', '.join(sorted(schema[key])[:3])}), got {OmegaConf.to_container(cfg)[key]!r}")
            _check_keys(cfg[key], schema[key], f"{dotted}.", source)


def load_config(path: Optional[str | Path] = None, overrides: Iterable[str] = ()) -> DictConfig:
    """Defaults <- YAML file (with ``_base_``) <- ``key=value`` overrides, validated."""
    source = str(path) if path is not None else "<defaults>"
    cfg = OmegaConf.create(DEFAULTS)
    if path is not None:
        file_cfg = _load_yaml(Path(path))
        _check_keys(file_cfg, DEFAULTS, "", source)
        cfg = OmegaConf.merge(cfg, file_cfg)
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. epochs=10)")
    if overrides:
        try:
            ov = OmegaConf.from_dotlist(overrides)
        except OmegaConfBaseException as e:  # pragma: no cover - malformed dotlist
            raise ConfigError(f"bad override in {overrides}: {e}") from None
        _check_keys(ov, DEFAULTS, "", "command-line overrides")
        cfg = OmegaConf.merge(cfg, ov)
    validate(cfg, source)
    if cfg.out_dir is None:
        cfg.out_dir = str(Path("runs") / str(cfg.name))
    return cfg


#: integer keys and their minimum (``None`` allowed where the default is ``None``)
INT_KEYS = {"log_interval": 1, "eval_interval": 1, "num_workers": 0, "threads": 1, "eval.ece_bins": 1,
            "eval.median_last": 1, "eval.corruption_subset": 1, "viz.every": 0, "viz.pairs": 1,
            "data.train_subset": 1, "data.test_subset": 1, "data.val_subset": 1, "data.probe_subset": 1, "data.padding": 0}
#: number keys: (low, low_open, high)
NUMBER_KEYS = {"optim.lr": (0.0, True, None), "optim.momentum": (0.0, False, 1.0), "optim.weight_decay": (0.0, False, None),
               "optim.grad_clip": (0.0, True, None), "sched.warmup_epochs": (0.0, False, None),
               "sched.min_lr": (0.0, False, None), "sched.warmup_start_factor": (0.0, True, 1.0),
               "loss.label_smoothing": (0.0, False, 1.0), "model.width": (0.0, True, None)}
BOOL_KEYS = ("resume", "channels_last", "deterministic", "optim.nesterov", "eval.corruption", "dist.sync_bn",
             "dist.find_unused_parameters")


def _check_values(cfg: DictConfig, source: str) -> None:
    """Types and ranges of the fixed keys, checked before anything runs (the key is named)."""
    def fail(key, expected, value):
        raise ConfigError(f"config key {key!r} in {source} must be {expected}, got {value!r}")

    for key, low in INT_KEYS.items():
        v = OmegaConf.select(cfg, key)
        if v is None and (key in ("threads",) or key.startswith("data.")):
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            fail(key, f"an integer >= {low}" + (" (or null)" if key == "threads" or key.startswith("data.") else ""), v)
    for key, (low, low_open, high) in NUMBER_KEYS.items():
        v = OmegaConf.select(cfg, key)
        if v is None and key == "optim.grad_clip":
            continue
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
            (v > low if low_open else v >= low) and (high is None or v <= high)
        if not ok:
            rng = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
            fail(key, f"a number {rng}", v)
    for key in BOOL_KEYS:
        v = OmegaConf.select(cfg, key)
        if not isinstance(v, bool):
            fail(key, "true or false", v)


def validate(cfg: DictConfig, source: str = "<config>") -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"config key {key!r} in {source} must be one of {list(allowed)}, got {value!r}")
    for key in ("epochs", "batch_size"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"config key {key!r} in {source} must be a positive integer, got {v!r}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"config key 'seed' in {source} must be an integer, got {cfg.seed!r}")
    _check_values(cfg, source)
    if "label_smoothing" in cfg.loss.kwargs:
        raise ConfigError(f"config key 'loss.kwargs.label_smoothing' in {source}: set loss.label_smoothing instead "
                          f"(got both places)")
    eta = cfg.loss.get("decoupled_eta")
    if eta is not None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta <= 0:
            raise ConfigError(f"config key 'loss.decoupled_eta' in {source} must be a number > 0 (or null: no "
                              f"Decoupled Mixup), got {eta!r}")
        if cfg.loss.name not in ("ce", "bce"):
            raise ConfigError(f"config key 'loss.decoupled_eta' in {source} applies to loss.name 'ce' (DM(CE)) or "
                              f"'bce' (DM(BCE)), got loss.name={cfg.loss.name!r}")
        clash = sorted({"eta", "loss"} & set(cfg.loss.kwargs))
        if clash:
            raise ConfigError(f"config key 'loss.kwargs.{clash[0]}' in {source} conflicts with loss.decoupled_eta "
                              f"(which sets eta and takes the base loss from loss.name); drop one of them")
    # Registries: names must exist.
    checks = [("algorithm.name", list_algorithms()), ("model.name", list_models()),
              ("mixer.name", ["none"] + list_mixers()), ("data.name", list_datasets()), ("loss.name", list_losses())]
    for key, known in checks:
        value = OmegaConf.select(cfg, key)
        if key == "model.name" and isinstance(value, str) and value.startswith("timm:"):
            continue
        if value not in known:
            raise ConfigError(f"config key {key!r} in {source} must be one of {list(known)}, got {value!r}")


def section_options(section: DictConfig, reserved: Iterable[str] = ("name",)) -> dict:
    """The open options of a section (``mixer``/``algorithm``) as a plain dict, minus reserved keys."""
    d = OmegaConf.to_container(section, resolve=True)
    for k in reserved:
        d.pop(k, None)
    return d


def save_config(cfg: DictConfig, path: str | Path) -> None:
    atomic_write_text(Path(path), OmegaConf.to_yaml(cfg, resolve=True))


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resume_drift(trained: dict, now: DictConfig) -> list:
    """``[(key, trained value, new value)]`` for every key that differs between a checkpoint's config and the
    config of the resuming run, except the keys ``resume=true`` may change (:data:`RESUMABLE`)."""
    a = _flatten(trained)
    b = _flatten(OmegaConf.to_container(now, resolve=True))
    drift = []
    for key in sorted(set(a) | set(b)):
        if any(key == r or key.startswith(r + ".") for r in RESUMABLE):
            continue
        va, vb = a.get(key), b.get(key)
        if va != vb and not (va in (None, {}) and vb in (None, {})):
            drift.append((key, va, vb))
    return drift
