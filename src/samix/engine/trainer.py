"""``samix train``: read it top to bottom.

``train(cfg)`` sets up the process (one CPU, one GPU, or N processes under ``torchrun``), assembles the
run (:mod:`.assembly`), resumes it if asked, runs the epochs (:mod:`.loop`), evaluates through the
algorithm's own :meth:`~samix.algorithms.Algorithm.evaluate`, and writes the run directory
(:mod:`.rundir`). The engine knows no method by name: everything method-specific lives in the algorithm.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from samix.algorithms import EvalContext
from samix.evaluate import median_last

from . import distributed as D
from .assembly import build_algorithm_from_config, build_data, run_generator, seed_everything, seed_train_workers
from .checkpoint import (
    TRAINING_KEYS,
    load_training_checkpoint,
    recover_interrupted_save,
    resume_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import ConfigError, resume_drift, save_config
from .loop import DivergenceError, Progress, Stepper, amp_dtype_of, train_one_epoch
from .optim import build_optimizer
from .rundir import RunDir, RunLock, RunLockedError, log, remove_partial_writes, setup_logging

#: per-epoch accuracy metrics an algorithm may report; each gets _last/_best/_median_last10 in the summary
SUMMARY_METRICS = ("top1", "knn_top1")
#: evaluation results that are not per-epoch scalars
_NOT_LOGGED = ("n", "logits", "labels", "ece", "loss")


def train(cfg: DictConfig) -> Dict[str, Any]:
    """Run (or resume) the experiment described by ``cfg``; returns the summary (rank 0)."""
    di = D.setup(cfg.device, cfg.dist.backend)
    lock = None
    try:
        check_out_dir(Path(cfg.out_dir))
        problem = None
        if di.is_main:  # one run owns its directory (released when this process ends, however it ends)
            try:
                lock = RunLock(Path(cfg.out_dir)).acquire()
            except RunLockedError as e:
                problem = str(e)
        if di.distributed:  # every rank learns the outcome (no rank left waiting in a collective)
            box = [problem]
            dist.broadcast_object_list(box, src=0)
            problem = box[0]
        if problem:
            raise RunLockedError(problem)
        return _train(cfg, di)
    finally:
        if lock is not None:
            lock.release()
        D.cleanup()


def _eval_row(ev: Dict[str, Any]) -> Dict[str, Any]:
    row = {k: v for k, v in ev.items() if k not in _NOT_LOGGED}
    row["test_loss"] = ev.get("loss")
    return row


def check_out_dir(path: Path) -> None:
    """``out_dir`` must be a directory or a path that can become one (a sentence naming the key otherwise)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"out_dir={path} is a file, not a directory: choose another out_dir=...")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"out_dir={path} lies under {parent}, which is a file: choose another out_dir=...")
            break


def _train(cfg: DictConfig, di: D.DistInfo) -> Dict[str, Any]:
    run = RunDir(Path(cfg.out_dir), enabled=di.is_main)
    if di.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
    D.barrier()
    setup_logging(run.path, di.is_main)
    if resume_path(run.checkpoint).exists() and not cfg.resume:
        raise FileExistsError(
            f"{run.path} already holds a run (checkpoints/last.pt). Continue it with resume=true, "
            f"or choose another out_dir=... ; nothing was overwritten."
        )
    if di.is_main:
        if recover_interrupted_save(run.checkpoint):
            log.info(f"put the complete checkpoint of an interrupted save in place: {run.checkpoint}")
        for p in remove_partial_writes(run.path):
            log.info(f"removed {p} (left by an interrupted write)")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = di.device
    amp_dtype = amp_dtype_of(cfg.precision, device)

    # ---- assembly
    seed_everything(int(cfg.seed))  # same model init on every rank
    data = build_data(cfg, di.rank, di.world_size)
    info = data.info
    generator = run_generator(int(cfg.seed), di.rank)
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
    iters = len(data.train_loader)
    total = iters * int(cfg.epochs)
    stepper = Stepper(algo, module, optimizer, cfg, device, total,
                      warmup_steps=int(round(float(cfg.sched.warmup_epochs) * iters)))

    # ---- resume
    start_epoch, rows = 0, []
    if cfg.resume and resume_path(run.checkpoint).exists():
        ck = load_training_checkpoint(resume_path(run.checkpoint), map_location=device, keys=TRAINING_KEYS)
        drift = resume_drift(ck.get("config", {}), cfg)
        if drift:
            raise ConfigError("resume=true continues the run as it was trained; these keys differ from its "
                              "checkpoint: " + ", ".join(f"{k} (trained with {a!r}, now {b!r})" for k, a, b in drift)
                              + ". Resume without them, or start a new run with another out_dir=...")
        algo.load_state_dict(ck["algorithm"])
        optimizer.load_state_dict(ck["optimizer"])
        stepper.scaler.load_state_dict(ck["scaler"])
        start_epoch = int(ck["epoch"])
        rngs = ck["rng"]
        set_rng_state(rngs[di.rank] if di.rank < len(rngs) else rngs[0], {"mixer": generator})
        # the checkpoint carries the metric rows: an epoch whose row did not reach metrics.jsonl is not lost
        rows = list(ck["metrics"]) if "metrics" in ck else [r for r in run.read_metrics() if r["epoch"] <= start_epoch]
        log.info(f"resumed from {run.checkpoint} at epoch {start_epoch}/{cfg.epochs}")
    elif cfg.resume:
        log.info(f"resume=true but {run.checkpoint} does not exist: starting from scratch")
    if di.is_main:
        save_config(cfg, run.path / "config.yaml")
    run.write_metrics(rows)
    run.open_tensorboard(start_epoch)

    ctx = EvalContext(data.test_loader, device, info.num_classes, amp_dtype=amp_dtype,
                      channels_last=bool(cfg.channels_last), n_bins=int(cfg.eval.ece_bins),
                      memory_loader=data.memory_loader)
    n_params = sum(p.numel() for p in algo.eval_model().parameters())
    log.info(f"{cfg.algorithm.name} | model {cfg.model.name} ({n_params / 1e6:.2f}M params) | mixer "
             f"{cfg.mixer.name} | data {cfg.data.name} ({len(data.train_loader.dataset)} train, "
             f"{_eval_split(cfg)} {len(data.test_loader.dataset)}) | {iters} it/epoch | "
             f"{di.world_size} process(es) on {device}")

    # ---- the epochs
    vis: Dict[str, Any] = {}

    def keep_first(batch) -> None:
        if "images" not in vis:
            vis["images"] = algo.images_of(batch)[: int(cfg.viz.pairs) * 2].detach().clone()

    eval_keys: List[str] = list(algo.EVAL_KEYS)
    for epoch in range(start_epoch, int(cfg.epochs)):
        data.sampler.set_epoch(epoch)
        seed_train_workers(data.train_loader, int(cfg.seed), epoch, di.rank)
        prog = Progress(iters, f"epoch {epoch + 1}/{cfg.epochs}", di.is_main, int(cfg.log_interval), log=log.info)
        try:
            stats = train_one_epoch(stepper, data.train_loader, epoch, bool(cfg.channels_last), prog, keep_first)
        except DivergenceError as e:
            good = resume_path(run.checkpoint)
            where = (f"the last good checkpoint is {good} (epoch {epoch})" if good.exists()
                     else "no checkpoint was written yet")
            raise DivergenceError(f"{e}; stopping: {where}. Lower optim.lr or set optim.grad_clip") from None
        epoch_logs = algo.on_epoch_end(epoch + 1)

        # Evaluate every eval_interval epochs, and always in the last `median_last` epochs
        # (the protocol's median needs them); other epochs log the metrics as null.
        t1 = time.perf_counter()
        n_last = int(cfg.eval.median_last)
        if (epoch + 1) % int(cfg.eval_interval) == 0 or epoch + 1 > int(cfg.epochs) - n_last:
            ev_row = _eval_row(algo.evaluate(ctx))
            eval_keys = list(ev_row)
        else:
            ev_row = dict.fromkeys(eval_keys)
        row = {"epoch": epoch + 1, "train_loss": stats.train_loss, **ev_row, "lr": stats.lr,
               "epoch_time_s": stats.time_s, "sec_per_iter": stats.time_s / iters,
               "eval_time_s": time.perf_counter() - t1, **stats.extras, **epoch_logs}
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
                  "scaler": stepper.scaler.state_dict(), "epoch": epoch + 1, "step": (epoch + 1) * iters,
                  "rng": states, "config": OmegaConf.to_container(cfg, resolve=True), "metrics": rows}
            save_checkpoint(ck, run.checkpoint)
            run.write_metrics(rows)
            run.log_scalars(row, epoch + 1)
            run.plot_curves(rows)
            every = int(cfg.viz.every)
            if every and ((epoch + 1) % every == 0 or epoch + 1 == int(cfg.epochs)) and "images" in vis:
                p = run.save_masks(algo, vis["images"], epoch + 1,
                                   title=f"{cfg.algorithm.name}: learned masks, epoch {epoch + 1}")
                if p:
                    log.info(f"wrote {p}")
            acc = " ".join(f"{k} {row[k]:.2f}" for k in ("top1", "top5", "knn_top1") if row.get(k) is not None)
            log.info(f"epoch {epoch + 1}/{cfg.epochs} loss {stats.train_loss:.4f} {acc} lr {stats.lr:.4g} "
                     f"{stats.time_s:.1f}s ({stats.time_s / iters * 1000:.1f} ms/it)")
        D.barrier()

    summary = finish(cfg, algo, ctx, rows, di, run)
    run.close()
    return summary


def finish(cfg, algo, ctx: EvalContext, rows, di, run: RunDir) -> Dict[str, Any]:
    """Final evaluation (with calibration for classifiers), the reliability diagram and summary.json."""
    final_ctx = EvalContext(**{**ctx.__dict__, "return_logits": True})
    ev = algo.evaluate(final_ctx)
    ece = ev.get("ece")
    if "logits" in ev:
        # the diagram shows this process's shard (the whole test set on one process)
        run.reliability(ev["logits"], ev["labels"], int(cfg.eval.ece_bins),
                        title=f"{cfg.name}: reliability (ECE {float(ece):.2f}%)")
    spi = [r["sec_per_iter"] for r in rows]
    summary: Dict[str, Any] = {"name": cfg.name}
    n_med = int(cfg.eval.median_last)
    for key in SUMMARY_METRICS:
        if key not in ev:
            continue
        hist = [r[key] for r in rows if r.get(key) is not None]
        summary[f"{key}_last"] = ev[key]
        summary[f"{key}_best"] = max(hist) if hist else None
        # the papers' "median of the last 10 epochs", over the last eval.median_last epochs (median_window)
        summary[f"{key}_median_last10"] = median_last(hist, n_med) if hist else None
        summary[f"{key}_median_last5"] = median_last(hist, 5) if hist else None
    if "knn_top1" in ev:
        summary["knn_top1"] = ev["knn_top1"]
    if "top5" in ev:
        summary["top5_last"] = ev["top5"]
    summary.update({"eval_split": _eval_split(cfg), "median_window": n_med,
                    "ece": None if ece is None else float(ece), "epochs": len(rows),
                    "sec_per_iter": statistics.median(spi) if spi else None, "world_size": di.world_size})
    run.write_summary(summary)
    if di.is_main:
        log.info("summary: " + json.dumps(summary))
    return summary


def _eval_split(cfg) -> str:
    """``"val"`` for a validation run (``data.val_subset``: held-out training images), else ``"test"``."""
    return "val" if cfg.data.get("val_subset") else "test"
