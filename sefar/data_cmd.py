"""``sefar data ...``: check, split, relabel, prepare and synthesise video datasets (argument parsing only)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.jsonio import dumps

from sefar.cli import int_at_least as _int_at_least


def add_parser(subparsers, name: str, help_: str) -> None:
    p = subparsers.add_parser(name, help=help_, description=help_)
    sub = p.add_subparsers(dest="action", required=True)

    check = sub.add_parser("check", help="validate a dataset folder or list file (lists, labels, videos)")
    check.add_argument("path", help="dataset folder (FineGym, UCF101, HMDB51, FineDiving, lists) or a list file")
    check.add_argument("--videos-root", metavar="DIR", help="where the videos are (default: beside the lists)")
    check.add_argument("--no-open", action="store_true", help="only check that videos exist, do not open them")
    check.add_argument("--deep", action="store_true",
                       help="decode every frame of every video (slow; the default check reads the container's frame "
                            "count and the first and last frame)")
    check.add_argument("--lists-only", action="store_true", help="check the lists only, not the videos")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=_check)

    split = sub.add_parser("split", help="draw a reproducible labeled/unlabeled split of a list")
    split.add_argument("list", help="a 'path label' list, e.g. a FineGym train list converted to paths")
    split.add_argument("--out", required=True, metavar="DIR", help="writes labeled.txt, unlabeled.txt, split.json")
    split.add_argument("--ratio", required=True, type=float, help="fraction of clips labeled, e.g. 0.05")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--method", choices=("uniform", "stratified"), default="uniform",
                       help="uniform: like the SeFAR reference; stratified: >= 1 labeled clip per class")
    split.set_defaults(func=_split)

    relabel = sub.add_parser("relabel", help="copy FineGym-style element lists relabelled at the set or event level")
    relabel.add_argument("root", help="folder with categories.txt (+ set_categories.txt) and the element lists")
    relabel.add_argument("--out", required=True, metavar="DIR", help="where the relabelled lists are written")
    relabel.add_argument("--level", choices=("set", "event"), required=True)
    relabel.add_argument("--lists", nargs="+", default=["train_element.txt", "val_element.txt"], metavar="FILE",
                         help="element lists in ROOT to relabel (default: train_element.txt val_element.txt)")
    relabel.set_defaults(func=_relabel)

    prepare = sub.add_parser("prepare", help="cut downloaded videos into training clips")
    datasets = prepare.add_subparsers(dest="dataset", required=True)
    finegym = datasets.add_parser("finegym", help="broadcasts -> event clips -> element clips")
    finegym.add_argument("--videos", required=True, metavar="DIR", help="<youtube_id>.mp4/.mkv/.webm files")
    finegym.add_argument("--annotations", required=True, metavar="JSON", help="finegym_annotation_info_v1.1.json")
    finegym.add_argument("--out", required=True, metavar="DIR", help="writes events/, elements/, prepare_summary.json")
    finegym.add_argument("--workers", type=_int_at_least(1), default=1, metavar="N",
                         help="parallel processes (default 1)")
    finegym.add_argument("--short-side", type=_int_at_least(0), default=256, metavar="PX",
                         help="short side of the clips in pixels; 0 keeps the source size")
    finegym.set_defaults(func=_prepare_finegym)

    synth = sub.add_parser("synth", help="write the SynGym synthetic gymnastics dataset")
    synth.add_argument("--out", required=True, metavar="DIR")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", choices=("tiny", "default"), default="default")
    synth.add_argument("--workers", type=_int_at_least(1), default=None, metavar="N",
                       help="rendering processes (default: the CPUs available)")
    synth.add_argument("--broadcast", type=_int_at_least(0), default=0, metavar="N",
                       help="also write N long broadcast videos with a FineGym annotation JSON")
    synth.set_defaults(func=_synth)


def _check(args: argparse.Namespace) -> int:
    from encoder.data.check import check_dataset, format_report

    videos = "skip" if args.lists_only else "exists" if args.no_open else "deep" if args.deep else "open"
    report = check_dataset(args.path, videos_root=args.videos_root, videos=videos, progress=not args.json)
    print(dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def _split(args: argparse.Namespace) -> int:
    from encoder.data.lists import find_class_file, read_class_names
    from encoder.data.splits import split_list

    class_file = find_class_file(args.list)
    num_classes = len(read_class_names(class_file)) if class_file is not None else None
    split = split_list(args.list, args.out, args.ratio, seed=args.seed, method=args.method, num_classes=num_classes)
    print(f"{len(split.labeled)} labeled, {len(split.unlabeled)} unlabeled clips written to {args.out}")
    return 0


def _relabel(args: argparse.Namespace) -> int:
    from common.finegym import write_level_lists

    names = write_level_lists(args.root, args.out, args.level, tuple(args.lists))
    print(f"{len(names)} {args.level} classes: " + ", ".join(f"{i} {n}" for i, n in enumerate(names)))
    root = Path(args.root).resolve()
    print(f"lists written to {args.out}; train on them with data.root={args.out} data.videos={root / 'videos'} "
          "data.categories=null")
    return 0


def _prepare_finegym(args: argparse.Namespace) -> int:
    from encoder.data.prepare import SUMMARY_FILE, format_summary, prepare_finegym

    summary = prepare_finegym(args.videos, args.annotations, args.out, workers=args.workers,
                              short_side=args.short_side or None, progress=True)
    print(format_summary(summary))
    print(f"summary: {Path(args.out) / SUMMARY_FILE}")
    return 0 if summary.ok else 1


def _synth(args: argparse.Namespace) -> int:
    from encoder.data import syngym

    summary = syngym.synthesize(args.out, seed=args.seed, size=args.size, workers=args.workers,
                                broadcast=args.broadcast)
    print(syngym.format_summary(summary))
    return 0
