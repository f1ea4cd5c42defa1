"""``sefar encoder ...``: train, evaluate and export (argument parsing only; the feature cache is `sefar bridge features`)."""

from __future__ import annotations

import argparse

from sefar.cli import int_at_least

_positive_int = int_at_least(1)


def add_parser(subparsers, name: str, help_: str) -> None:
    p = subparsers.add_parser(name, help=help_, description=help_)
    sub = p.add_subparsers(dest="action", required=True)

    train = sub.add_parser("train", help="train an encoder run (resumes the run in its out folder)")
    train.add_argument("config", help="YAML config under configs/encoder/, or '-' for the defaults")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.01")
    train.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    train.add_argument("--allow-config-change", action="store_true",
                       help="resume even though the config differs from RUN/config.yaml (listed on stderr)")
    train.add_argument("--fork-from", metavar="CHECKPOINT",
                       help="start from another run's checkpoint (RUN/checkpoints/step_XXXXXXX) when this run has none "
                            "yet, e.g. SeFAR from a supervised-only run at the end of its supervised epochs "
                            "(config save_steps keeps such a checkpoint)")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="multi-view evaluation with metrics, confusion matrix and teacher spread")
    ev.add_argument("source", metavar="RUN_OR_EXPORT", help="a training run folder or an export folder")
    ev.add_argument("--list", metavar="LIST", help="'path label' list to evaluate (default: the run's val list)")
    ev.add_argument("--videos-root", metavar="DIR",
                    help="where the list's videos are (default: the run's videos, or the list's folder)")
    ev.add_argument("--views", type=_positive_int, metavar="T", help="temporal views (default: the run's setting)")
    ev.add_argument("--crops", type=_positive_int, metavar="S", help="spatial crops (default: the run's setting)")
    ev.add_argument("--passes", type=int, default=10, metavar="U",
                    help="dropout passes for the teacher spread (0: skip it)")
    ev.add_argument("--which", choices=("teacher", "student"), default="teacher", help="model of a run folder")
    ev.add_argument("--batch-size", type=_positive_int, default=8)
    ev.add_argument("--workers", type=int, default=2, help="data loader processes")
    ev.add_argument("--out", metavar="DIR", help="output folder (default: RUN_OR_EXPORT/eval)")
    ev.set_defaults(func=_eval)

    ex = sub.add_parser("export", help="write a frozen export folder (config.json + model.safetensors)")
    ex.add_argument("run", metavar="RUN", help="a training run folder")
    ex.add_argument("out", metavar="OUT", help="the export folder to write")
    ex.add_argument("--which", choices=("teacher", "student"), default="teacher")
    ex.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    from encoder.train import main_train

    return main_train(args.config, args.overrides, resume=not args.no_resume,
                      allow_config_change=args.allow_config_change, fork_from=args.fork_from)


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from encoder.evaluate import evaluate_run

    out = args.out or Path(args.source) / "eval"
    evaluate_run(
        args.source, out, list_path=args.list, views=args.views, crops=args.crops, passes=args.passes,
        which=args.which, videos_root=args.videos_root, batch_size=args.batch_size, num_workers=args.workers,
    )
    print(f"results written to {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from encoder.export import export

    out = export(args.run, args.out, which=args.which)
    print(f"{args.which} exported to {out}")
    return 0
