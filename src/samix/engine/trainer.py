"""The training loop: read it top to bottom.

``train(cfg)`` builds data, model, mixer, loss and algorithm from a config, runs the epochs (one CPU,
one GPU, or N processes under ``torchrun``), evaluates, and writes the run directory::

    RUN_DIR/config.yaml            the resolved config
    RUN_DIR/metrics.jsonl          one JSON object per epoch
    RUN_DIR/checkpoints/last.pt    exact-resume checkpoint (atomic), weights_only-loadable
    RUN_DIR/summary.json           top1_last, top1_best, top1_median_last10, ece, epochs, sec_per_iter
    RUN_DIR/curves.png             loss and accuracy per epoch
    RUN_DIR/reliability.png        reliability diagram of the final model
    RUN_DIR/tb/                    TensorBoard event files
    RUN_DIR/train.log              the log

The engine knows no method by name: everything method-specific lives in the algorithm.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler

from . import distributed as D
from .checkpoint import atomic_torch_save, atomic_write_text, load_checkpoint, rng_state, set_rng_state
from .config import ConfigError, loss_spec, save_config, section_options
from .optim import build_optimizer, set_lr

log = logging.getLogger("samix")

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class ShardSampler(Sampler):
    """Evaluation sharding without padding: rank r takes indices r, r+W, r+2W, ... (exact totals)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _setup_logging(out_dir: Path, is_main: bool) -> None:
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sh = logging.StreamHandler(sys.stdout)
    sh.setFormatter(fmt)
    log.addHandler(sh)
    if is_main:
        fh = logging.FileHandler(out_dir / "train.log")
        fh.setFormatter(fmt)
        log.addHandler(fh)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------- building blocks
def build_data(cfg: DictConfig, rank: int, world: int):
    from samix.data import build_dataset, build_transform, dataset_info, stratified_subset

    info = dataset_info(cfg.data.name)
    preset = cfg.data.preset or info.default_preset
    size = cfg.data.image_size or info.image_size
    tkw = {}
    if cfg.data.padding is not None:
        tkw["padding"] = int(cfg.data.padding)
    train_tf = build_transform(preset, True, info, size, **tkw)
    test_tf = build_transform("none" if preset in ("cifar", "grayscale") else preset, False, info, size)
    train_set = build_dataset(cfg.data.name, cfg.data.root, train=True, transform=train_tf)
    test_set = build_dataset(cfg.data.name, cfg.data.root, train=False, transform=test_tf)
    if cfg.data.train_subset:
        train_set = stratified_subset(train_set, int(cfg.data.train_subset), seed=int(cfg.seed))
    if cfg.data.test_subset:
        test_set = stratified_subset(test_set, int(cfg.data.test_subset), seed=0)
    if cfg.batch_size % world != 0:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world})")
    local_bs = cfg.batch_size // world
    if len(train_set) < cfg.batch_size:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the training set ({len(train_set)} images)")
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=int(cfg.seed), drop_last=True)
    common = dict(num_workers=int(cfg.num_workers), pin_memory=torch.cuda.is_available(),
                  persistent_workers=int(cfg.num_workers) > 0)
    train_loader = DataLoader(train_set, batch_size=local_bs, sampler=sampler, drop_last=True, **common)
    test_loader = DataLoader(test_set, batch_size=max(local_bs, 100), shuffle=False,
                             sampler=ShardSampler(len(test_set), rank, world), **common)
    return info, train_loader, test_loader, sampler


def build_algorithm_from_config(cfg: DictConfig, info, device: torch.device, generator: torch.Generator):
    from samix.algorithms import build_algorithm
    from samix.losses import build_loss
    from samix.mixing import build_mixer
    from samix.models import build_model

    in_chans = cfg.model.in_chans or info.in_chans
    model_kwargs = OmegaConf.to_container(cfg.model.kwargs, resolve=True) or {}
    if cfg.model.pretrained:
        model_kwargs["pretrained"] = cfg.model.pretrained
    model = build_model(cfg.model.name, num_classes=info.num_classes, in_chans=in_chans,
                        width=float(cfg.model.width), **model_kwargs)
    mixer = None
    mixer_options = section_options(cfg.mixer)
    if cfg.mixer.name == "none":
        stray = sorted(set(mixer_options) - {"alpha", "prob", "mode"})
        if stray:
            raise ConfigError(f"mixer.{stray[0]} is set but mixer.name is 'none' (no mixing): set mixer.name "
                              f"(e.g. mixer.name=samix_p for mixer.pretrained) or drop "
                              f"{', '.join('mixer.' + k for k in stray)}")
    else:
        mixer = build_mixer(cfg.mixer.name, num_classes=info.num_classes, generator=generator, **mixer_options)
        if hasattr(mixer, "bind_data") and "dataset" not in mixer_options:
            # a pre-trained mixer (samix_p) checks its file against the run's data and re-normalises
            mixer.bind_data(dataset=cfg.data.name, image_size=cfg.data.get("image_size"))
    loss_name, loss_options = loss_spec(cfg.loss)
    loss_fn = build_loss(loss_name, **loss_options)
    algo = build_algorithm(cfg.algorithm.name, model=model, num_classes=info.num_classes, mixer=mixer,
                           loss_fn=loss_fn, generator=generator, **section_options(cfg.algorithm))
    algo.to(device)
    if cfg.channels_last:
        algo.to(memory_format=torch.channels_last)
    return algo


def _to_channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


def evaluate(algo, loader, device, amp_dtype, num_classes: int, channels_last: bool,
             return_logits: bool = False, n_bins: int = 15) -> Dict[str, Any]:
    from samix.evaluate import evaluate_classifier

    return evaluate_classifier(algo.eval_model(), loader, device, amp_dtype=amp_dtype, num_classes=num_classes,
                               return_logits=return_logits, n_bins=n_bins,
                               input_transform=_to_channels_last if channels_last else None)


# ----------------------------------------------------------------------------------- metrics files
def _read_metrics(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(path: Path, rows: List[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _plot_curves(out_dir: Path, rows: List[dict]) -> None:
    try:
        from samix.viz import plot_curves
    except ImportError:  # pragma: no cover
        return
    nan = float("nan")
    epochs = [r["epoch"] for r in rows]

    def col(k):
        return [nan if r.get(k) is None else r[k] for r in rows]

    plot_curves(out_dir / "curves_loss.png", {"train loss": col("train_loss"), "test loss": col("test_loss")},
                xlabel="epoch", ylabel="loss", title=f"{out_dir.name}: loss", x=epochs)
    plot_curves(out_dir / "curves.png", {"test top-1 (%)": col("top1"), "test top-5 (%)": col("top5")},
                xlabel="epoch", ylabel="accuracy (%)", title=f"{out_dir.name}: accuracy", x=epochs)


class _Progress:
    """tqdm bar with ETA on a terminal; plain log lines every ``interval`` iterations otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool, interval: int):
        self.total, self.desc, self.interval, self.enabled = total, desc, max(interval, 1), enabled
        self.bar = None
        self.t0 = time.time()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)

    def update(self, i: int, loss_fn) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if i % 10 == 0:
                self.bar.set_postfix(loss=f"{loss_fn():.4f}")
        elif (i + 1) % self.interval == 0:
            el = time.time() - self.t0
            eta = el / (i + 1) * (self.total - i - 1)
            log.info(f"{self.desc} it {i + 1}/{self.total} loss {loss_fn():.4f} eta {eta:.0f}s")

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------- the loop
def train(cfg: DictConfig) -> Dict[str, Any]:
    """Run (or resume) the experiment described by ``cfg``; returns the summary (rank 0)."""
    info_d = D.setup(cfg.device, cfg.dist.backend)
    try:
        return _train(cfg, info_d)
    finally:
        D.cleanup()


def _train(cfg: DictConfig, di: D.DistInfo) -> Dict[str, Any]:
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    if di.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    D.barrier()
    _setup_logging(out_dir, di.is_main)
    if ckpt_path.exists() and not cfg.resume:
        raise FileExistsError(
            f"{out_dir} already holds a run (checkpoints/last.pt). Continue it with resume=true, "
            f"or choose another out_dir=... ; nothing was overwritten."
        )
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = di.device
    amp_dtype = AMP_DTYPES[cfg.precision]
    if amp_dtype is torch.float16 and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device; use precision=bf16 or fp32 on the CPU")

    seed_everything(int(cfg.seed))  # same model init on every rank
    info, train_loader, test_loader, sampler = build_data(cfg, di.rank, di.world_size)
    generator = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + di.rank)
    algo = build_algorithm_from_config(cfg, info, device, generator)
    if di.rank:
        seed_everything(int(cfg.seed) + 7919 * di.rank)  # different augmentation draws per rank

    module = algo
    if di.distributed:
        if cfg.dist.sync_bn:
            algo = torch.nn.SyncBatchNorm.convert_sync_batchnorm(algo)
        module = torch.nn.parallel.DistributedDataParallel(
            algo, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(cfg.dist.find_unused_parameters))
    optimizer = build_optimizer(algo.param_groups(), cfg.optim, cfg.sched)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

    iters = len(train_loader)
    total = iters * int(cfg.epochs)
    warmup = int(round(float(cfg.sched.warmup_epochs) * iters))
    start_epoch, rows = 0, []
    if cfg.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, map_location=device)
        algo.load_state_dict(ck["algorithm"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        start_epoch = int(ck["epoch"])
        rngs = ck["rng"]
        set_rng_state(rngs[di.rank] if di.rank < len(rngs) else rngs[0], {"mixer": generator})
        rows = [r for r in _read_metrics(out_dir / "metrics.jsonl") if r["epoch"] <= start_epoch]
        log.info(f"resumed from {ckpt_path} at epoch {start_epoch}/{cfg.epochs}")
    elif cfg.resume:
        log.info(f"resume=true but {ckpt_path} does not exist: starting from scratch")
    if di.is_main:
        save_config(cfg, out_dir / "config.yaml")
        _write_metrics(out_dir / "metrics.jsonl", rows)

    writer = None
    if di.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_epoch + 1)
        except ImportError:  # pragma: no cover
            log.info("tensorboard is not installed: no event files")

    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    grad_clip = cfg.optim.grad_clip
    vis_batch = None
    n_params = sum(p.numel() for p in algo.eval_model().parameters())
    log.info(f"{cfg.algorithm.name} | model {cfg.model.name} ({n_params / 1e6:.2f}M params) | mixer "
             f"{cfg.mixer.name} | data {cfg.data.name} ({len(train_loader.dataset)} train) | {iters} it/epoch | "
             f"{di.world_size} process(es) on {device}")

    for epoch in range(start_epoch, int(cfg.epochs)):
        sampler.set_epoch(epoch)
        algo.train()
        loss_sum = torch.zeros((), device=device)
        extra_sums: Dict[str, torch.Tensor] = {}
        prog = _Progress(iters, f"epoch {epoch + 1}/{cfg.epochs}", di.is_main, int(cfg.log_interval))
        last = {"loss": torch.zeros(())}
        t0 = time.perf_counter()
        for i, (images, labels) in enumerate(train_loader):
            step = epoch * iters + i
            lr = set_lr(optimizer, step, total, warmup, cfg.sched)
            algo.set_progress(step, total)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if vis_batch is None:
                vis_batch = (images[: int(cfg.viz.pairs) * 2].detach().clone(), labels[: int(cfg.viz.pairs) * 2])
            with autocast():
                out = module(images, labels)
            loss = out["loss"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(algo.parameters(), float(grad_clip))
            scaler.step(optimizer)
            scaler.update()
            algo.on_train_step_end()
            loss_sum += loss.detach().float()
            for k, v in out.items():
                if k != "loss" and torch.is_tensor(v):
                    extra_sums[k] = extra_sums.get(k, torch.zeros((), device=device)) + v.detach().float()
            last = out
            prog.update(i, lambda: float(last["loss"]))
        prog.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - t0
        train_loss = float(D.all_reduce_mean(loss_sum / iters))
        extras = {k: float(D.all_reduce_mean(v / iters)) for k, v in extra_sums.items()}
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss is {train_loss} at epoch {epoch + 1}; stopping "
                                     f"(the last good checkpoint is {ckpt_path})")

        # Evaluate every eval_interval epochs, and always in the last `median_last` epochs
        # (the protocol's median needs them); other epochs log top1/top5 as null.
        t1 = time.perf_counter()
        n_last = int(cfg.eval.median_last)
        if (epoch + 1) % int(cfg.eval_interval) == 0 or epoch + 1 > int(cfg.epochs) - n_last:
            ev = evaluate(algo, test_loader, device, amp_dtype, info.num_classes, bool(cfg.channels_last))
        else:
            ev = {"top1": None, "top5": None, "loss": None}
        row = {"epoch": epoch + 1, "train_loss": train_loss, "top1": ev["top1"], "top5": ev["top5"],
               "test_loss": ev.get("loss"), "lr": lr, "epoch_time_s": train_time,
               "sec_per_iter": train_time / iters, "eval_time_s": time.perf_counter() - t1, **extras}
        rows.append(row)

        # checkpoint: every rank's RNG state travels to rank 0 (exact resume under DDP)
        state = rng_state({"mixer": generator})
        states = [None] * di.world_size
        if di.distributed:
            dist.all_gather_object(states, state)
        else:
            states = [state]
        if di.is_main:
            ck = {"algorithm": algo.state_dict(), "optimizer": optimizer.state_dict(),
                  "scaler": scaler.state_dict(), "epoch": epoch + 1, "step": (epoch + 1) * iters,
                  "rng": states, "config": OmegaConf.to_container(cfg, resolve=True)}
            atomic_torch_save(ck, ckpt_path)
            _write_metrics(out_dir / "metrics.jsonl", rows)
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and v is not None and k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
                writer.flush()
            _plot_curves(out_dir, rows)
            every = int(cfg.viz.every)
            if every and ((epoch + 1) % every == 0 or epoch + 1 == int(cfg.epochs)):
                p = algo.save_visuals(out_dir, epoch + 1, *vis_batch)
                if p:
                    log.info(f"wrote {p}")
            acc = f"top1 {ev['top1']:.2f} top5 {ev['top5']:.2f} " if ev["top1"] is not None else ""
            log.info(f"epoch {epoch + 1}/{cfg.epochs} loss {train_loss:.4f} {acc}lr {lr:.4g} "
                     f"{train_time:.1f}s ({train_time / iters * 1000:.1f} ms/it)")
        D.barrier()

    summary = finish(cfg, algo, test_loader, device, amp_dtype, info, rows, di)
    if writer is not None:
        writer.close()
    return summary


def finish(cfg, algo, test_loader, device, amp_dtype, info, rows, di) -> Dict[str, Any]:
    """Final evaluation with calibration, the reliability diagram and summary.json."""
    from samix.evaluate import median_last

    out_dir = Path(cfg.out_dir)
    n_bins = int(cfg.eval.ece_bins)
    ev = evaluate(algo, test_loader, device, amp_dtype, info.num_classes, bool(cfg.channels_last),
                  return_logits=True, n_bins=n_bins)
    ece = float(ev["ece"])  # global (all-reduced bin sums under DDP)
    if di.is_main:
        from samix.evaluate import reliability_diagram

        # the diagram shows this process's shard (the whole test set on one process)
        reliability_diagram(out_dir / "reliability.png", ev["logits"], ev["labels"], n_bins=n_bins,
                            title=f"{cfg.name}: reliability (ECE {ece:.2f}%)")
    top1 = [r["top1"] for r in rows if r["top1"] is not None]
    spi = [r["sec_per_iter"] for r in rows]
    summary = {
        "name": cfg.name,
        "top1_last": ev["top1"],
        "top1_best": max(top1) if top1 else None,
        "top1_median_last10": median_last(top1, int(cfg.eval.median_last)) if top1 else None,
        "top1_median_last5": median_last(top1, 5) if top1 else None,
        "top5_last": ev["top5"],
        "ece": ece,
        "epochs": len(rows),
        "sec_per_iter": statistics.median(spi) if spi else None,
        "world_size": di.world_size,
    }
    if di.is_main:
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        log.info("summary: " + json.dumps(summary))
    return summary
