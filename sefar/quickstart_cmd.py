"""``sefar quickstart``: the main job on the embedded SynGym default (see :mod:`pipelines.quickstart`)."""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str, help_: str) -> None:
    p = subparsers.add_parser(name, help=help_, description=help_)
    p.add_argument("--out", default="outputs/quickstart", help="folder for every stage's output (resumable)")
    p.add_argument("--seed", type=int, default=0, help="SynGym and training seed")
    p.add_argument("--size", default="default", choices=("tiny", "default"), help="SynGym size")
    p.add_argument("--config", default=None, help="encoder config (default: configs/encoder/syngym_tiny.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides for both encoder training runs")
    p.add_argument("--bridge", action="append", default=[], metavar="KEY=VALUE",
                   help="override for both adapter runs (configs/bridge/syngym_smollm2*.yaml), e.g. train.steps=50")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    from pipelines.quickstart import DEFAULT_CONFIG, run_quickstart

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run_quickstart(args.out, seed=args.seed, size=args.size, config=args.config or DEFAULT_CONFIG,
                   overrides=args.overrides, bridge_overrides=args.bridge)
    return 0
