"""The run directory: its files, written by the main process only::

    RUN_DIR/config.yaml            the resolved config
    RUN_DIR/metrics.jsonl          one JSON object per epoch
    RUN_DIR/checkpoints/last.pt    exact-resume checkpoint (atomic), weights_only-loadable
    RUN_DIR/summary.json           top1_last, top1_best, top1_median_last10, ece, epochs, sec_per_iter
                                   (+ knn_top1 ... for self-supervised runs)
    RUN_DIR/curves.png             accuracy per epoch (curves_loss.png: losses)
    RUN_DIR/reliability.png        reliability diagram of the final model (classifiers)
    RUN_DIR/masks/                 learned masks for lambda 0..1 (algorithms that learn masks)
    RUN_DIR/tb/                    TensorBoard event files
    RUN_DIR/train.log              the log
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from samix._io import atomic_write_text

log = logging.getLogger("samix")

#: the lambdas of the learned-mask figures
MASK_LAMS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def setup_logging(out_dir: Path, is_main: bool) -> None:
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sh = logging.StreamHandler(sys.stdout)
    sh.setFormatter(fmt)
    log.addHandler(sh)
    if is_main:
        fh = logging.FileHandler(out_dir / "train.log")
        fh.setFormatter(fmt)
        log.addHandler(fh)


class RunLockedError(RuntimeError):
    """Another live process owns the run directory."""


class RunLock:
    """An exclusive lock on a run directory (``RUN/.lock``, ``fcntl.flock``): one run owns it.

    The lock is the kernel's, held by the open file: it is released when the owner exits, however it
    exits (a killed owner leaves a stale ``.lock`` file, which does not block the next run). The file
    names the owner (pid, host, start time) for the error message of a second run.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.fh = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "an unknown process"
            fh.close()
            raise RunLockedError(f"{self.path.parent} is in use by another run ({owner}); wait for it to end, or "
                                 f"choose another out_dir=...") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self.fh = fh
        return self

    def release(self) -> None:
        if self.fh is not None:
            import fcntl

            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


def remove_partial_writes(run_dir: Path) -> List[Path]:
    """Delete the temporary files an interrupted atomic write left in the run directory (``.NAME.*.tmp``)."""
    gone = []
    for d in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def read_metrics(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunDir:
    """The files of one run (main process). ``enabled=False`` (other ranks) makes every write a no-op."""

    def __init__(self, out_dir: Path, enabled: bool = True) -> None:
        self.path = Path(out_dir)
        self.enabled = enabled
        self.writer = None

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def read_metrics(self) -> List[dict]:
        return read_metrics(self.metrics_path)

    def write_metrics(self, rows: List[dict]) -> None:
        if self.enabled:
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def write_summary(self, summary: Dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")

    def open_tensorboard(self, start_epoch: int) -> None:
        if not self.enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.path / "tb"), purge_step=start_epoch + 1)
        except ImportError:  # pragma: no cover
            log.info("tensorboard is not installed: no event files")

    def log_scalars(self, row: Dict[str, Any], epoch: int) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                self.writer.add_scalar(k, v, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ------------------------------------------------------------------ figures
    def plot_curves(self, rows: List[dict], acc_keys=("top1", "top5", "knn_top1")) -> None:
        if not self.enabled:
            return
        from samix.viz import plot_curves

        nan = float("nan")
        epochs = [r["epoch"] for r in rows]

        def col(k):
            return [nan if r.get(k) is None else r[k] for r in rows]

        name = self.path.name
        plot_curves(self.path / "curves_loss.png", {"train loss": col("train_loss"), "test loss": col("test_loss")},
                    xlabel="epoch", ylabel="loss", title=f"{name}: loss", x=epochs)
        labels = {"top1": "test top-1 (%)", "top5": "test top-5 (%)", "knn_top1": "kNN top-1 (%)"}
        series = {labels.get(k, k): col(k) for k in acc_keys if any(r.get(k) is not None for r in rows)}
        if series:
            plot_curves(self.path / "curves.png", series, xlabel="epoch", ylabel="accuracy (%)",
                        title=f"{name}: accuracy", x=epochs)
        self.plot_mask_diagnostics(rows)

    def plot_mask_diagnostics(self, rows: List[dict]) -> Optional[Path]:
        """``RUN_DIR/curves_masks.png``: the learned-mask diagnostics of ``metrics.jsonl``
        (:data:`samix.algorithms.masks.DIAGNOSTIC_KEYS`) over the epochs; ``None`` when no row has one."""
        from samix.algorithms.masks import DIAGNOSTIC_KEYS, DIAGNOSTIC_LABELS

        present = [k for k in DIAGNOSTIC_KEYS if any(r.get(k) is not None for r in rows)]
        if not self.enabled or not present:
            return None
        from samix.viz import plot_curves

        series = {DIAGNOSTIC_LABELS[k]: [float("nan") if r.get(k) is None else r[k] for r in rows] for k in present}
        return plot_curves(self.path / "curves_masks.png", series, xlabel="epoch", ylabel="value (0..1)",
                           title=f"{self.path.name}: learned-mask diagnostics", x=[r["epoch"] for r in rows])

    def save_masks(self, algo, images, epoch: int, title: str) -> Optional[str]:
        """``RUN_DIR/masks/masks_epoch{epoch:04d}.png`` from ``algo.masks_for`` (None: no masks learned)."""
        if not self.enabled:
            return None
        masks = algo.masks_for(images, list(MASK_LAMS))
        if masks is None:
            return None
        from samix.viz import save_mask_grid

        path = self.path / "masks" / f"masks_epoch{epoch:04d}.png"
        return str(save_mask_grid(path, images[: masks.shape[1] * 2], masks, list(MASK_LAMS), title=title))

    def reliability(self, logits, labels, n_bins: int, title: str) -> None:
        if self.enabled:
            from samix.evaluate import reliability_diagram

            reliability_diagram(self.path / "reliability.png", logits, labels, n_bins=n_bins, title=title)
