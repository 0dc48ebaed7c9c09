"""Nothing lost, nothing silently wrong: soft-label checks, one owner per run directory, exact resume with
data-loading workers, metric rows that survive a kill, refused config drift on resume, an honest median label.
Each test fails on the code before these fixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine_utils import make_fashion_mnist
from samix.engine import checkpoint as ckpt_mod
from samix.engine.config import ConfigError, load_config
from samix.mixing import build_mixer

TINY = ["data.name=fashion_mnist", "model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=3",
        "optim.lr=0.05", "num_workers=0", "threads=1", "log_interval=1000", "data.train_subset=100",
        "mixer.name=mixup", "eval.median_last=2"]


@pytest.fixture()
def fm_root(tmp_path):
    return make_fashion_mnist(tmp_path / "data", n_train=120, n_test=40)


def _cfg(out: Path, root, *extra):
    return load_config(None, TINY + [f"data.root={root}", f"out_dir={out}", *extra])


def _weights(run: Path):
    return ckpt_mod.load_checkpoint(run / "checkpoints" / "last.pt")["algorithm"]


def _rows(run: Path):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


# ------------------------------------------------------------------------------ 1. soft labels
@pytest.mark.parametrize("bad, why", [
    (torch.full((4, 10), 0.2), "sums to 2"),
    (torch.full((4, 10), 0.1).index_fill_(0, torch.tensor([2]), float("nan")), "row 2 holds NaN"),
    (torch.tensor([[1.2, -0.2] + [0.0] * 8] * 4), "negative"),
])
def test_probability_labels_are_checked_row_by_row(bad, why):
    mixer = build_mixer("cutmix", num_classes=10)
    with pytest.raises(ValueError, match=why):
        mixer(torch.randn(4, 3, 8, 8), bad)
    _, t = mixer(torch.randn(4, 3, 8, 8), torch.full((4, 10), 0.1))  # valid rows still pass
    torch.testing.assert_close(t.sum(1), torch.ones(4))


# ------------------------------------------------------------------------------ 2. one owner
def test_a_second_run_into_a_live_run_directory_fails_naming_the_owner(tmp_path, fm_root):
    from samix.engine.rundir import RunLock, RunLockedError
    from samix.engine.trainer import train

    out = tmp_path / "run"
    lock = RunLock(out).acquire()  # another live run holds the directory
    try:
        with pytest.raises(RunLockedError, match=r"in use by another run \(pid \d+"):
            train(_cfg(out, fm_root, "epochs=1"))
        assert not (out / "checkpoints").exists()  # nothing was written
    finally:
        lock.release()
    assert (out / ".lock").is_file()  # a stale lock file (owner gone) does not block
    train(_cfg(out, fm_root, "epochs=1"))
    assert len(_rows(out)) == 1


# ------------------------------------------------------------------------------ 3. workers + resume
def _crash_in_epoch(monkeypatch, trainer, epoch: int):
    orig = trainer.Progress.update

    def crash(self, i, loss_fn):
        if self.desc.startswith(f"epoch {epoch}/") and i == 1:
            raise KeyboardInterrupt("simulated kill")
        return orig(self, i, loss_fn)

    monkeypatch.setattr(trainer.Progress, "update", crash)
    return orig


@pytest.mark.slow
def test_resume_with_data_loading_workers_is_exact(tmp_path, fm_root, monkeypatch):
    from samix.engine import trainer

    extra = ("num_workers=2", "data.preset=grayscale", "data.padding=2")  # random crops drawn in the workers
    trainer.train(_cfg(tmp_path / "full", fm_root, *extra))
    orig = _crash_in_epoch(monkeypatch, trainer, 3)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(_cfg(tmp_path / "cut", fm_root, *extra))
    monkeypatch.setattr(trainer.Progress, "update", orig)
    trainer.train(_cfg(tmp_path / "cut", fm_root, *extra, "resume=true"))
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


# ------------------------------------------------------------------------------ 4. rows survive a kill
def test_a_kill_between_checkpoint_and_metrics_loses_no_row(tmp_path, fm_root, monkeypatch):
    from samix.engine import trainer
    from samix.engine.rundir import RunDir

    out = tmp_path / "run"
    orig = RunDir.write_metrics

    def kill_after_epoch_2_checkpoint(self, rows):
        if rows and rows[-1]["epoch"] == 2:
            raise KeyboardInterrupt("killed after the checkpoint, before metrics.jsonl")
        return orig(self, rows)

    monkeypatch.setattr(RunDir, "write_metrics", kill_after_epoch_2_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(_cfg(out, fm_root))
    monkeypatch.setattr(RunDir, "write_metrics", orig)
    assert [r["epoch"] for r in _rows(out)] == [1]  # the row of epoch 2 is only in the checkpoint
    leftover = out / "checkpoints" / ".last.pt.abc123.tmp"  # a write killed half-way
    leftover.write_bytes(b"partial")
    summary = trainer.train(_cfg(out, fm_root, "resume=true"))
    assert [r["epoch"] for r in _rows(out)] == [1, 2, 3] and summary["epochs"] == 3
    assert not leftover.exists()


# ------------------------------------------------------------------------------ 5. config drift
def test_resume_refuses_a_changed_experiment_naming_keys_and_values(tmp_path, fm_root):
    from samix.engine.trainer import train

    out = tmp_path / "run"
    train(_cfg(out, fm_root, "epochs=1"))
    with pytest.raises(ConfigError) as e:
        train(_cfg(out, fm_root, "epochs=2", "resume=true", "batch_size=10", "mixer.name=cutmix"))
    msg = str(e.value)
    assert "batch_size (trained with 20, now 10)" in msg and "mixer.name (trained with 'mixup', now 'cutmix')" in msg
    assert "epochs (trained" not in msg  # the length may change
    assert "batch_size: 20" in (out / "config.yaml").read_text()  # the run's config was not rewritten
    summary = train(_cfg(out, fm_root, "epochs=2", "resume=true", "log_interval=5"))  # allowed changes
    assert summary["epochs"] == 2


# ------------------------------------------------------------------------------ 6. the median's window
def test_the_summary_says_which_window_its_median_covers(tmp_path, fm_root):
    from samix.cli import compare_table
    from samix.engine.trainer import train

    out = tmp_path / "run"
    s = train(_cfg(out, fm_root))
    assert s["median_window"] == 2
    table = compare_table([str(out)])
    assert f"{s['top1_median_last10']:.2f} (2)" in table and "last N epochs" in table


@pytest.mark.slow
def test_a_real_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, fm_root):
    """SIGKILL a `samix train` process (2 data-loading workers) once it has written a checkpoint, resume it,
    and compare with an uninterrupted run: same weights, same metric rows."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo / "src")}
    common = TINY + [f"data.root={fm_root}", "epochs=4", "num_workers=2", "data.preset=grayscale",
                     "data.padding=2"]

    def cmd(out, *extra):
        return [sys.executable, "-m", "samix.cli", "train", str(repo / "configs/fashion_mnist/vanilla.yaml"),
                *common, f"out_dir={out}", *extra]

    assert subprocess.run(cmd(tmp_path / "full"), env=env, capture_output=True, timeout=600).returncode == 0
    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd(cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (cut / "checkpoints" / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its workers, wherever they are
    proc.wait()
    r = subprocess.run(cmd(cut, "resume=true"), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wa, wb = _weights(tmp_path / "full"), _weights(cut)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    strip = ("epoch_time_s", "sec_per_iter", "eval_time_s")
    rows_a = [{k: v for k, v in r.items() if k not in strip} for r in _rows(tmp_path / "full")]
    rows_b = [{k: v for k, v in r.items() if k not in strip} for r in _rows(cut)]
    assert rows_a == rows_b


def test_a_kill_between_the_checkpoint_renames_keeps_the_newest_checkpoint(tmp_path, fm_root):
    """last.pt moved to prev.pt, the complete new checkpoint still under its temp name: the next start puts
    it in place instead of deleting it as a partial write."""
    import os

    from samix.engine.trainer import train

    out = tmp_path / "run"
    train(_cfg(out, fm_root, "epochs=2"))
    ck = out / "checkpoints"
    os.replace(ck / "last.pt", ck / ".last.pt.next.tmp")  # as if killed between the two renames
    summary = train(_cfg(out, fm_root, "epochs=3", "resume=true"))
    assert summary["epochs"] == 3 and [r["epoch"] for r in _rows(out)] == [1, 2, 3]


def test_ssl_rows_without_evaluation_log_the_ssl_metrics_as_null(tmp_path):
    fm = make_fashion_mnist(tmp_path / "data", n_train=80, n_test=40)
    from samix.engine.trainer import train

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "configs/fashion_mnist/mocov2.yaml",
                      ["model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=3", "threads=1",
                       "log_interval=1000", "data.train_subset=null", "algorithm.queue_size=40", "eval_interval=2",
                       "eval.median_last=1", f"data.root={fm}", f"out_dir={tmp_path / 'run'}"])
    train(cfg)
    rows = _rows(tmp_path / "run")
    assert rows[0]["knn_top1"] is None and "top1" not in rows[0]  # epoch 1: not evaluated
    assert rows[1]["knn_top1"] is not None and rows[2]["knn_top1"] is not None


def test_eval_and_show_of_a_self_supervised_run(tmp_path, capsys):
    from samix.cli import main
    from samix.engine.evaluate_run import evaluate_run, show_run
    from samix.engine.trainer import train

    fm = make_fashion_mnist(tmp_path / "data", n_train=80, n_test=40)
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    train(load_config(repo / "configs/fashion_mnist/mocov2.yaml",
                      ["model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=1", "threads=1",
                       "log_interval=1000", "data.train_subset=null", "algorithm.queue_size=40",
                       "eval.median_last=1", f"data.root={fm}", f"out_dir={out}"]))
    res = evaluate_run(out)  # the run's own evaluation: kNN, not the frozen random classifier
    assert "knn_top1" in res and "top1" not in res and "reliability_png" not in res
    assert main(["eval", str(out), "--corruptions"]) == 2
    assert "trains none" in capsys.readouterr().err
    assert Path(show_run(out, out=str(tmp_path / "grid.png"))).is_file()  # no masks: the mixing grid
    with pytest.raises(ValueError, match="learns no masks"):
        from samix.engine.evaluate_run import compare_masks

        compare_masks([out], str(tmp_path / "m.png"))
    bare = tmp_path / "state.pth"
    torch.save({"weight": torch.ones(2)}, bare)
    assert main(["eval", str(out), "--checkpoint", str(bare)]) == 2
    assert "not a checkpoint written by samix train" in capsys.readouterr().err
