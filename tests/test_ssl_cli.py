"""Self-supervised evaluation of run directories: ``samix eval RUN --linear / --knn`` and
``samix export-backbone`` (samix.engine.evaluate_run), on tiny real-format Fashion-MNIST runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine_utils import make_fashion_mnist

from samix.cli import main
from samix.engine.config import load_config
from samix.engine.evaluate_run import export_backbone_run, knn_eval_run, linear_eval_run
from samix.engine.trainer import train
from samix.models import build_model
from samix.models.export import load_exported_backbone

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 100, 50
TINY = ["model.name=convnet", "model.width=0.25", "epochs=1", "batch_size=20", "data.train_subset=null",
        "data.probe_subset=null", "eval_interval=1", "threads=1", "num_workers=0", "log_interval=1000"]


def _train(tmp: Path, recipe: str, *extra: str) -> Path:
    root = make_fashion_mnist(tmp / "data", n_train=N_TRAIN, n_test=N_TEST)
    out = tmp / Path(recipe).stem
    train(load_config(REPO / "configs" / "fashion_mnist" / recipe,
                      TINY + [f"data.root={root}", f"out_dir={out}", *extra]))
    return out


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("moco"), "mocov2.yaml", "algorithm.queue_size=40")


@pytest.fixture(scope="module")
def sup_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("sup"), "vanilla.yaml")


def _bn_buffers(run: Path):
    ck = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["algorithm"]
    return {k: v.clone() for k, v in ck.items() if "running_" in k or "num_batches_tracked" in k}


def _summary(run: Path):
    return json.loads((run / "summary.json").read_text())


def test_linear_eval_writes_files_and_keeps_the_backbone(moco_run):
    bn_before = _bn_buffers(moco_run)
    knn_top1 = _summary(moco_run)["knn_top1"]
    res = linear_eval_run(moco_run, epochs=3, batch_size=20, progress=False)
    assert res["mode"] == "features (precomputed, no augmentation)"
    assert res["n_train"] == N_TRAIN and res["epochs"] == 3 and res["lr"] == 0.1
    rows = [json.loads(line) for line in (moco_run / "linear" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    lin = json.loads((moco_run / "linear" / "summary.json").read_text())
    for key in ("top1_last", "top1_median_last10", "top1_best", "mode", "epochs", "lr", "milestones", "n_train"):
        assert key in lin
    assert "head" not in lin
    s = _summary(moco_run)
    assert 0 <= s["linear_top1"] <= 100 and s["linear_top1"] == lin["top1_last"]
    assert s["linear_mode"] == lin["mode"] and s["knn_top1"] == knn_top1  # training-time entries kept
    # the checkpoint is untouched and a fresh rebuild has the same BN statistics
    bn_after = _bn_buffers(moco_run)
    assert bn_before.keys() == bn_after.keys() and bn_before
    assert all(torch.equal(bn_before[k], bn_after[k]) for k in bn_before)


def test_linear_eval_end_to_end_subset_and_milestones(moco_run, monkeypatch):
    import samix.engine.evaluate_run as er

    original, seen = er.train_linear_probe, {}

    def spy(backbone, *args, **kwargs):  # the frozen backbone's tensors, bitwise, before and after the probe
        before = {k: v.clone() for k, v in backbone.state_dict().items()}
        out = original(backbone, *args, **kwargs)
        seen["same"] = all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
        seen["bn"] = any("running_mean" in k for k in before)
        return out

    monkeypatch.setattr(er, "train_linear_probe", spy)
    res = linear_eval_run(moco_run, epochs=2, batch_size=32, mode="end_to_end", train_subset=50,
                          milestones=[1], lr=0.05, progress=False)
    assert res["mode"].startswith("end_to_end") and res["n_train"] == 50
    assert res["milestones"] == [1] and [r["lr"] for r in res["rows"]] == pytest.approx([0.05, 0.005])
    assert _summary(moco_run)["linear_mode"] == res["mode"]
    assert seen == {"same": True, "bn": True}
    with pytest.raises(ValueError, match="mode"):
        linear_eval_run(moco_run, epochs=1, mode="finetune", progress=False)


def test_knn_eval_on_a_supervised_run(sup_run):
    before = _summary(sup_run)
    res = knn_eval_run(sup_run, k=20, temperature=0.07)
    assert 0 <= res["top1"] <= res["top5"] <= 100 and res["n_train"] == N_TRAIN and res["n_test"] == N_TEST
    assert json.loads((sup_run / "knn.json").read_text())["top1"] == res["top1"]
    after = _summary(sup_run)
    assert after["knn_eval"] == {"top1": res["top1"], "top5": res["top5"], "k": 20, "t": 0.07}
    assert after["top1_last"] == before["top1_last"] and "knn_top1" not in after


def test_export_backbone_round_trip(moco_run, tmp_path):
    out = tmp_path / "enc.safetensors"
    meta = export_backbone_run(moco_run, out)
    assert out.is_file() and meta["algorithm"] == "moco" and meta["epoch"] == 1
    state, header = load_exported_backbone(out)
    assert header["model"] == "convnet" and header["width"] == 0.25 and header["in_chans"] == 1
    assert header["run"] == moco_run.name and header["algorithm"] == "moco" and header["epoch"] == 1
    ck = torch.load(moco_run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["algorithm"]
    trained = build_model("convnet", num_classes=10, in_chans=1, width=0.25)
    trained.load_state_dict({k[len("model."):]: v for k, v in ck.items() if k.startswith("model.")})
    fresh = build_model("convnet", num_classes=10, in_chans=1, width=0.25)
    load_exported_backbone(out, model=fresh)
    trained.eval(), fresh.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        for stage in range(0, 5):
            assert torch.equal(trained.features(x, stage), fresh.features(x, stage))
    with pytest.raises(ValueError, match=str(tmp_path)):
        export_backbone_run(moco_run, tmp_path)


def test_cli(moco_run, sup_run, tmp_path, capsys):
    assert main(["eval", str(moco_run), "--linear", "--epochs", "2", "--batch-size", "50",
                 "--milestones", "30", "60"]) == 0
    out = capsys.readouterr().out
    assert "linear probe" in out and "top-1" in out and str(moco_run / "linear" / "summary.json") in out
    assert json.loads((moco_run / "linear" / "summary.json").read_text())["milestones"] == [30, 60]
    assert main(["eval", str(sup_run), "--knn", "--k", "10", "--t", "0.2"]) == 0
    assert "kNN (k=10" in capsys.readouterr().out
    assert not (sup_run / "eval.json").exists()  # --knn alone skips the classifier evaluation
    assert main(["eval", str(sup_run)]) == 0  # the classifier evaluation as before
    assert json.loads(capsys.readouterr().out)["top1"] >= 0
    f = tmp_path / "b.safetensors"
    assert main(["export-backbone", str(moco_run), str(f)]) == 0
    assert f.is_file() and str(f) in capsys.readouterr().out


def test_cli_errors(moco_run, tmp_path, capsys):
    bad = tmp_path / "nowhere"
    assert main(["eval", str(bad), "--linear"]) == 2
    assert str(bad) in capsys.readouterr().err
    no_ck = tmp_path / "no_ck"
    no_ck.mkdir()
    (no_ck / "config.yaml").write_text((moco_run / "config.yaml").read_text())
    assert main(["eval", str(no_ck), "--linear", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and str(no_ck / "checkpoints" / "last.pt") in err
    assert main(["export-backbone", str(moco_run), str(tmp_path)]) == 2
    assert "existing directory" in capsys.readouterr().err
    assert main(["export-backbone", str(no_ck), str(tmp_path / "x.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
