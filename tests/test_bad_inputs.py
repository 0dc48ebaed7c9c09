"""Bad inputs and faults, each a sentence: the exception type (or the CLI's exit code 2 and one line on
stderr, no traceback) and the key, argument or file it names. Grows with every new option; the count is in
docs/design.md ("Bad inputs")."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from engine_utils import make_fashion_mnist
from samix.cli import main
from samix.engine.checkpoint import CheckpointError, load_checkpoint
from samix.engine.config import ConfigError, load_config
from samix.mixing import build_mixer

REPO = Path(__file__).resolve().parents[1]
VANILLA = str(REPO / "configs/fashion_mnist/vanilla.yaml")
TINY = ["model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=1", "threads=1", "log_interval=1000",
        "data.train_subset=null", "eval.median_last=1"]


# ------------------------------------------------------------------------------ config files and keys
def _yaml(tmp_path, text: str | bytes) -> Path:
    p = tmp_path / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


@pytest.mark.parametrize("text, words", [
    ("epochs: 3\nepochs: 4\n", ["duplicate key 'epochs'", "line 2"]),
    ("epochs: [3\n", ["not valid YAML", "line 2"]),
    (b"\x7fELF\x02\x01\x01\x00\xff\xfe\xfa", ["not a text"]),
    ("data: 5\n", ["'data'", "section"]),
    ("epochs: !!python/object/apply:os.system ['echo pwned']\n", ["YAML tag", "plain data"]),
    ("epochz: 3\n", ["epochz", "allowed keys"]),
    ("- 1\n- 2\n", ["mapping"]),
])
def test_bad_config_files(tmp_path, text, words):
    p = _yaml(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert str(p) in str(e.value) or "c.yaml" in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("optim.lr=abc", "optim.lr"), ("optim.lr=0", "optim.lr"), ("threads=-1", "threads"),
    ("eval_interval=0", "eval_interval"), ("eval.ece_bins=0", "eval.ece_bins"), ("resume=maybe", "resume"),
    ("optim.momentum=2", "optim.momentum"), ("model.width=0", "model.width"),
    ("loss.label_smoothing=1.5", "loss.label_smoothing"), ("batch_size=0", "batch_size"), ("seed=x", "seed"),
    ("viz.pairs=0", "viz.pairs"), ("num_workers=-1", "num_workers"), ("device=tpu", "device"),
    ("mixer.name=mixupp", "mixer.name"), ("data.train_subset=-5", "data.train_subset"),
    ("eval.median_last=0", "eval.median_last"), ("epochs", "key=value"),
])
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(VANILLA, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------ the CLI: one line, exit 2
@pytest.fixture()
def fm_root(tmp_path):
    return make_fashion_mnist(tmp_path / "data", n_train=60, n_test=20)


def _cli(capsys, *argv) -> str:
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.startswith("samix: error: "), err
    return err


def test_cli_reports_config_errors_in_one_line(capsys):
    err = _cli(capsys, "train", VANILLA, "optim.lr=abc")
    assert "optim.lr" in err and len(err.strip().splitlines()) == 1


def test_cli_device_cuda_without_a_gpu(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "device='cuda'" in _cli(capsys, "train", VANILLA, "device=cuda", f"out_dir={tmp_path / 'r'}")


@pytest.mark.parametrize("extra, words", [
    (["data.train_subset=100000"], ["data.train_subset=100000", "larger than the data"]),
    (["batch_size=1000"], ["batch_size=1000", "larger than the training set"]),
])
def test_cli_data_sizes_name_the_key(capsys, tmp_path, fm_root, extra, words):
    err = _cli(capsys, "train", VANILLA, *TINY, f"data.root={fm_root}", f"out_dir={tmp_path / 'r'}", *extra)
    assert all(w in err for w in words), err


def test_cli_out_dir_that_is_a_file_or_under_one(capsys, tmp_path, fm_root):
    f = tmp_path / "afile"
    f.write_text("x")
    assert "is a file" in _cli(capsys, "train", VANILLA, *TINY, f"data.root={fm_root}", f"out_dir={f}")
    assert "lies under" in _cli(capsys, "train", VANILLA, *TINY, f"data.root={fm_root}", f"out_dir={f / 'x'}")


def test_cli_negative_subset(capsys, tmp_path):
    assert "--subset" in _cli(capsys, "eval", str(tmp_path), "--subset", "-5")


def test_cli_eval_of_a_missing_run(capsys, tmp_path):
    assert str(tmp_path / "nope") in _cli(capsys, "eval", str(tmp_path / "nope"))


# ------------------------------------------------------------------------------ runs and checkpoints
@pytest.fixture()
def run(tmp_path, fm_root):
    from samix.engine.trainer import train

    out = tmp_path / "run"
    train(load_config(REPO / "configs/fashion_mnist/automix.yaml",
                      TINY + [f"data.root={fm_root}", f"out_dir={out}", "epochs=2"]))
    return out


def test_damaged_checkpoints_say_so_and_name_the_older_one(run):
    last, prev = run / "checkpoints" / "last.pt", run / "checkpoints" / "prev.pt"
    assert prev.is_file()  # the checkpoint of epoch 1, kept when epoch 2's replaced it
    assert load_checkpoint(prev)["epoch"] == 1
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"damaged.*prev\.pt is intact"):
        load_checkpoint(last)
    last.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(last)
    prev.unlink()
    with pytest.raises(CheckpointError, match="no older checkpoint"):
        load_checkpoint(last)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_payload_is_refused_unread(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"algorithm": _Payload()}, fh)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    assert "not a samix checkpoint" in str(e.value) and "weights_only" not in str(e.value)
    assert "this must never run" not in capsys.readouterr().out


def test_export_onto_a_directory_is_refused(run, tmp_path, capsys):
    assert "is a directory" in _cli(capsys, "export-mixer", str(run), str(tmp_path))
    assert "directory" in _cli(capsys, "export-backbone", str(run), str(tmp_path))


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, fm_root, monkeypatch, capsys):
    import errno

    import samix.engine.checkpoint as ck_mod

    out = tmp_path / "r"
    assert main(["train", VANILLA, *TINY, f"data.root={fm_root}", f"out_dir={out}"]) == 0
    real_save = torch.save

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck_mod.torch, "save", full)
    err = _cli(capsys, "train", VANILLA, *TINY, f"data.root={fm_root}", f"out_dir={out}", "resume=true", "epochs=2")
    assert "disk is full" in err and "checkpoint" in err
    monkeypatch.setattr(ck_mod.torch, "save", real_save)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1  # still loadable
    assert not list((out / "checkpoints").glob(".*.tmp"))


def test_divergence_stops_at_the_step_naming_the_last_good_checkpoint(tmp_path, fm_root, monkeypatch):
    from samix.algorithms.supervised import Supervised
    from samix.engine.loop import DivergenceError
    from samix.engine.trainer import train

    orig = Supervised.forward
    calls = {"n": 0}

    def nan_at_step_5(self, batch):
        out = orig(self, batch)
        calls["n"] += 1
        if calls["n"] == 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(Supervised, "forward", nan_at_step_5)
    cfg = load_config(VANILLA, TINY + [f"data.root={fm_root}", f"out_dir={tmp_path / 'r'}", "epochs=2"])
    with pytest.raises(DivergenceError) as e:
        train(cfg)
    assert "at step 5" in str(e.value) and "last good checkpoint" in str(e.value)  # epoch 1 had 3 steps
    calls["n"] = 0
    cfg = load_config(VANILLA, TINY + [f"data.root={fm_root}", f"out_dir={tmp_path / 'r2'}", "epochs=2"])
    monkeypatch.setattr(Supervised, "forward", lambda self, b: {**orig(self, b), "loss": orig(self, b)["loss"] * float("nan")})
    with pytest.raises(DivergenceError, match="no checkpoint was written yet"):
        train(cfg)


# ------------------------------------------------------------------------------ the Python API
def test_api_errors_name_the_argument():
    with pytest.raises(ValueError, match="known mixers"):
        build_mixer("mixupp")
    with pytest.raises(TypeError, match="samix_p"):
        build_mixer("mixup", pretrained="x.safetensors")
    m = build_mixer("cutmix", num_classes=10)
    with pytest.raises(ValueError, match="index"):
        m.mix(torch.randn(4, 3, 8, 8), index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="row 0 sums to 2"):
        m(torch.randn(4, 3, 8, 8), torch.full((4, 10), 0.2))
