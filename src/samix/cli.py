"""``samix`` command line: train | eval | show | compare | export-mixer | export-backbone | list | bench.

    samix train configs/fashion_mnist/mixup.yaml epochs=80 seed=1
    torchrun --nproc_per_node=4 -m samix.cli train configs/cifar100/mixup_r18.yaml
    samix eval runs/mixup                       # top-1/top-5, ECE + reliability PNG (+ --corruptions)
    samix show [RUN_DIR] [--out grid.png]       # mixed-sample grid (or a run's learned masks)
    samix compare runs/vanilla runs/mixup ...   # table of summary.json files
    samix eval runs/mocov2 --linear [--epochs 100 --lr 0.1 --batch-size 256 --mode features|end_to_end
               --train-subset N --milestones 60 80]   # linear probe on the frozen backbone -> RUN/linear/
    samix eval runs/mocov2 --knn [--k 200 --t 0.1]     # kNN top-1/top-5 of any run's backbone -> RUN/knn.json
    samix export-mixer runs/samix mixer.safetensors   # trained Mixer for SAMix-P (mixer.name=samix_p)
    samix export-backbone runs/mocov2 backbone.safetensors   # the encoder, for transfer
    samix list                                  # mixers, models, datasets, algorithms, losses
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional


def _cmd_train(args) -> int:
    from samix.engine.config import load_config
    from samix.engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    train(cfg)
    return 0


def _cmd_eval(args) -> int:
    from samix.engine import evaluate_run as ev

    ssl = args.linear or args.knn
    if not ssl or args.corruptions:  # --linear / --knn alone skip the classifier evaluation
        if args.subset is not None and args.subset < 1:
            raise ValueError(f"--subset must be a positive number of test images, got {args.subset}")
        res = ev.evaluate_run(args.run_dir, corruptions=args.corruptions, corruption_subset=args.subset,
                              checkpoint=args.checkpoint)
        print(json.dumps(res, indent=2))
    if args.knn:
        r = ev.knn_eval_run(args.run_dir, k=args.k, temperature=args.t, checkpoint=args.checkpoint)
        print(f"kNN (k={r['k']}, T={r['t']:g}, {r['n_train']} labeled training images, {r['n_test']} test "
              f"images): top-1 {r['top1']:.2f} %, top-5 {r['top5']:.2f} %; wrote {r['path']}, knn_eval in "
              f"{r['run_summary_path']}")
    if args.linear:
        r = ev.linear_eval_run(args.run_dir, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                               mode=args.mode, train_subset=args.train_subset, milestones=args.milestones,
                               checkpoint=args.checkpoint)
        print(f"linear probe ({r['mode']}; {r['epochs']} epochs, lr {r['lr']:g} x0.1 at {r['milestones']}, "
              f"{r['n_train']} labeled training images, {r['n_test']} test images): top-1 last "
              f"{r['top1_last']:.2f} %, median of last 10 {r['top1_median_last10']:.2f} %, best "
              f"{r['top1_best']:.2f} %; wrote {r['metrics_path']}, {r['summary_path']}, linear_top1 in "
              f"{r['run_summary_path']}")
    return 0


def _cmd_show(args) -> int:
    if len(args.run_dir) > 1:
        from samix.engine.evaluate_run import compare_masks

        path = compare_masks(args.run_dir, out=args.out or "masks_compare.png", pairs=args.pairs)[0]
    elif args.run_dir:
        from samix.engine.evaluate_run import show_run, show_run_diagnostics

        path = show_run(args.run_dir[0], out=args.out)
        diag = show_run_diagnostics(args.run_dir[0], Path(args.out).parent if args.out else None)
        if diag:
            print(f"wrote {diag} (learned-mask diagnostics over the epochs)")
    else:
        from samix.viz import mixing_grid

        path = mixing_grid(args.out or "mixing_grid.png", policies=args.policies or None)
    print(f"wrote {path}")
    return 0


def _cmd_export_mixer(args) -> int:
    from samix.engine.export import export_mixer

    meta = export_mixer(args.run_dir, args.out, checkpoint=args.checkpoint, bn_recalibrate=args.bn_recalibrate,
                        bn_batches=args.bn_batches)
    print(f"wrote {args.out}: {meta.generator} (stage {meta.stage}, {meta.channels} channels) + "
          f"{meta.backbone} x{meta.width:g} stem..stage {meta.stage}, trained on {meta.dataset} "
          f"{meta.input_size[0]}x{meta.input_size[1]}; use it with mixer.name=samix_p mixer.pretrained={args.out}")
    bn = meta.source.get("bn_recalibration")
    if isinstance(bn, dict):
        print(f"BatchNorm statistics re-estimated on {bn['images']} clean training images ({bn['batches']} batches)")
    else:
        print(f"BatchNorm statistics: {bn} (those of training)")
    return 0


def _cmd_export_backbone(args) -> int:
    from samix.engine.evaluate_run import export_backbone_run

    r = export_backbone_run(args.run_dir, args.out, checkpoint=args.checkpoint)
    print(f"wrote {r['path']}: {r['model']} x{r['width']:g} encoder of run {r['run']} ({r['algorithm']}, epoch "
          f"{r['epoch']}), {r['tensors']} tensors, {r['feature_dim']}-d features, {r['key_format']} key names; "
          f"load it with samix.models.export.load_exported_backbone(path, model)")
    return 0


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def compare_table(run_dirs: List[str], baseline: Optional[str] = None, pngs: bool = False) -> str:
    """A plain-text table of the runs' summary.json files. ``baseline`` (a run's name or directory) adds the
    top-1 gain over it and the time per iteration relative to it; ``pngs`` lists each run's figures."""
    rows = []
    for d in run_dirs:
        p = Path(d) / "summary.json"
        if not p.is_file():
            rows.append((Path(d).name, None, None, None, None, None))
            continue
        s = json.loads(p.read_text())
        # top1_median_last10 is the median over the run's eval.median_last epochs (summary: median_window)
        window = s.get("median_window")
        med = s.get("top1_median_last10")
        med_txt = f"{med:.2f} ({window})" if isinstance(med, (int, float)) and window else _fmt(med, '.2f').strip()
        rows.append((s.get("name") or Path(d).name, s.get("top1_median_last5"), med_txt,
                     s.get("top1_best"), s.get("ece"), s.get("sec_per_iter")))
    base = None
    if baseline is not None:
        names = [r[0] for r in rows]
        dirs = [str(Path(d)) for d in run_dirs]
        k = names.index(baseline) if baseline in names else dirs.index(str(Path(baseline))) \
            if str(Path(baseline)) in dirs else None
        if k is None:
            raise ValueError(f"--baseline {baseline!r} is none of the runs compared ({', '.join(names)}): give the "
                             f"name or the directory of one of them")
        base = rows[k]
    head = f"{'run':<24} {'top1 med5':>9} {'top1 med(N)':>12} {'top1 best':>9} {'ECE %':>7} {'s/iter':>8}"
    if base is not None:
        head += f" {'vs ' + base[0][:10]:>14} {'time x':>7}"
    lines = [head, "-" * len(head)]
    for name, m5, med_txt, best, ece, spi in rows:
        line = (f"{name:<24} {_fmt(m5, '9.2f')} {med_txt:>12} {_fmt(best, '9.2f')} "
                f"{_fmt(ece, '7.2f')} {_fmt(spi, '8.4f')}")
        if base is not None:
            gain = m5 - base[1] if isinstance(m5, (int, float)) and isinstance(base[1], (int, float)) else None
            ratio = spi / base[5] if isinstance(spi, (int, float)) and isinstance(base[5], (int, float)) and base[5] \
                else None
            line += f" {_fmt(gain, '+14.2f')} {_fmt(ratio, '6.2f')}{'x' if ratio is not None else ' '}"
        lines.append(line)
    lines.append("med(N): median top-1 of the last N epochs (eval.median_last; the papers use N = 10)")
    if base is not None:
        lines.append(f"vs {base[0]}: top-1 med5 minus {base[0]}'s; time x: seconds per iteration / {base[0]}'s")
    if pngs:
        lines.append("figures:")
        for d, (name, *_) in zip(run_dirs, rows):
            figs = [str(Path(d) / f) for f in ("curves.png", "curves_masks.png", "reliability.png")
                    if (Path(d) / f).is_file()]
            masks = sorted((Path(d) / "masks").glob("masks_epoch*.png"))
            if masks:
                figs.append(str(masks[-1]))
            lines.append(f"  {name}: {', '.join(figs) if figs else '(none)'}")
    return "\n".join(lines)


def _cmd_compare(args) -> int:
    print(compare_table(args.run_dirs, baseline=args.baseline, pngs=args.pngs))
    return 0


def _cmd_list(args) -> int:
    from samix.algorithms import list_algorithms
    from samix.mixing import get_mixer_class, list_mixers
    from samix.models import list_models

    sections = {
        "mixers": [f"{m}{' (needs a model)' if get_mixer_class(m).needs_model else ''}"
                   f"{' (needs mixer.pretrained=FILE)' if get_mixer_class(m).needs_pretrained else ''}"
                   for m in list_mixers()],
        "models": list_models() + ["timm:<any timm model name>"],
        "algorithms": list_algorithms(),
    }
    try:
        from samix.data import list_datasets

        sections["datasets"] = list_datasets()
    except ImportError:  # pragma: no cover
        pass
    try:
        from samix.losses import list_losses

        sections["losses"] = list_losses()
    except ImportError:  # pragma: no cover
        pass
    for k, v in sections.items():
        print(f"{k}: {', '.join(v)}")
    return 0


def _cmd_bench(args) -> int:
    import runpy

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    script = root / f"{args.name}.py"
    if not script.is_file():
        known = sorted(p.stem for p in root.glob("*.py"))
        raise SystemExit(f"unknown benchmark {args.name!r}; known: {', '.join(known)} (looked in {root})")
    sys.argv = [str(script)] + args.rest
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samix", description="mixup-based visual representation learning")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (also SAMIX_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML config with key=value overrides")
    t.add_argument("config", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=10 mixer.name=cutmix")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a run directory (accuracy, ECE, corruption robustness)")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", default=None, help="checkpoint file (default RUN_DIR/checkpoints/last.pt)")
    e.add_argument("--corruptions", action="store_true", help="also the 15 corruptions x 5 severities")
    e.add_argument("--subset", type=int, default=None, help="test images used for the corruption benchmark")
    lin = e.add_argument_group("linear probe on the frozen backbone (--linear; writes RUN_DIR/linear/ and "
                               "linear_top1 in summary.json)")
    lin.add_argument("--linear", action="store_true", help="train and test a linear head on the frozen backbone")
    lin.add_argument("--epochs", type=int, default=None, help="probe epochs (default 100)")
    lin.add_argument("--lr", type=float, default=None, help="probe learning rate (default 0.1)")
    lin.add_argument("--batch-size", type=int, default=None, help="probe batch size (default 256)")
    lin.add_argument("--mode", choices=["features", "end_to_end"], default="features",
                     help="features: precomputed features, no augmentation (fast, default); end_to_end: "
                          "random-resized-crop + flip through the frozen backbone every epoch")
    lin.add_argument("--train-subset", type=int, default=None,
                     help="labeled training images (stratified, seeded by the run's seed; default "
                          "data.probe_subset, else the run's training set)")
    lin.add_argument("--milestones", type=int, nargs="+", default=None,
                     help="epochs after which the lr is multiplied by 0.1 (default 60%% and 80%% of the epochs: "
                          "60 80 of 100, samix.txt A.4; section 4.2 says 30 60)")
    kn = e.add_argument_group("kNN classifier on the backbone's features (--knn; writes RUN_DIR/knn.json)")
    kn.add_argument("--knn", action="store_true", help="weighted kNN top-1/top-5 (any run, supervised too)")
    kn.add_argument("--k", type=int, default=200, help="neighbours (default 200)")
    kn.add_argument("--t", type=float, default=0.1, help="temperature (default 0.1)")
    e.set_defaults(fn=_cmd_eval)

    s = sub.add_parser("show", help="PNG of mixed samples (all policies), a run's learned masks, or "
                                    "several runs' masks on the same pairs")
    s.add_argument("run_dir", nargs="*", default=[],
                   help="none: every policy on photos; one run: its learned masks; several automix/samix "
                        "runs: their masks side by side on the same test pairs")
    s.add_argument("--out", default=None, help="output PNG path")
    s.add_argument("--pairs", type=int, default=4, help="pairs in a mask comparison (several runs)")
    s.add_argument("--policies", nargs="+", default=None,
                   help="policies of the photo grid (no run): default every image-only policy; model-guided "
                        "ones (puzzlemix, attentivemix) are drawn with a model-free stand-in signal")
    s.set_defaults(fn=_cmd_show)

    c = sub.add_parser("compare", help="table of several runs' summary.json")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--baseline", default=None, help="a run's name or directory: add the top-1 gain over it and the "
                                                    "time per iteration relative to it")
    c.add_argument("--pngs", action="store_true", help="list each run's figures (curves, masks, reliability)")
    c.set_defaults(fn=_cmd_compare)

    ls = sub.add_parser("list", help="list mixers, models, datasets, algorithms and losses")
    ls.set_defaults(fn=_cmd_list)

    x = sub.add_parser("export-mixer", help="save a samix/automix run's trained Mixer + encoder stages "
                                             "(.safetensors) for SAMix-P (mixer.name=samix_p)")
    x.add_argument("run_dir", help="run directory of a finished samix or automix run")
    x.add_argument("out", help="output .safetensors file")
    x.add_argument("--checkpoint", default=None, help="checkpoint file (default RUN_DIR/checkpoints/last.pt)")
    x.add_argument("--no-bn-recalibrate", dest="bn_recalibrate", action="store_false",
                   help="keep the encoder's BatchNorm statistics from training (default: re-estimate them on the "
                        "run's clean training images, which the Mixer reads)")
    x.add_argument("--bn-batches", type=int, default=100,
                   help="at most this many batches (of the run's batch size) for the recalibration (default 100)")
    x.set_defaults(fn=_cmd_export_mixer)

    xb = sub.add_parser("export-backbone", help="save a run's encoder (classifier dropped) as .safetensors")
    xb.add_argument("run_dir", help="run directory (any algorithm: moco, samix, supervised, ...)")
    xb.add_argument("out", help="output .safetensors file")
    xb.add_argument("--checkpoint", default=None, help="checkpoint file (default RUN_DIR/checkpoints/last.pt)")
    xb.set_defaults(fn=_cmd_export_backbone)

    b = sub.add_parser("bench", help="run a script of benchmarks/ (e.g. mixing_throughput)")
    b.add_argument("name")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(fn=_cmd_bench)
    return p


#: errors that say what the user should change; anything else is reported as a probable bug
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError, RuntimeError)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("samix: interrupted (a run continues from its last checkpoint with resume=true)", file=sys.stderr)
        return 130
    except Exception as e:  # one format for every failure; the traceback behind --debug / SAMIX_DEBUG=1
        if args.debug or os.environ.get("SAMIX_DEBUG"):
            raise
        msg = str(e) or repr(e)
        if isinstance(e, OSError) and e.errno == 28:
            msg = f"the disk is full ({msg}); the last complete checkpoint is still in place: free space, then resume"
        print(f"samix: error: {type(e).__name__}: {msg}", file=sys.stderr)
        if not isinstance(e, USER_ERRORS + (OSError,)):
            print("samix: this looks like a bug in samix: rerun with --debug and report the traceback",
                  file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
