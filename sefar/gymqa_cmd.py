"""``sefar gymqa build|score|stats|export|import|rotate``: argument parsing only; the work is in :mod:`gymqa`."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.errors import ConfigError
from common.jsonio import dumps


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_, description=help_)
    sub = p.add_subparsers(dest="action", required=True)
    _add_build(sub)
    _add_score(sub)
    _add_stats(sub)
    _add_export(sub)
    _add_import(sub)
    _add_rotate(sub)
    return p


# --------------------------------------------------------------------------- build


def _add_build(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("build", help="build Gym-QA (train.jsonl, test.jsonl, manifest.json) from FineGym-format files",
                       description="Either --finegym DIR (Gym-QA-99 and Gym-QA-288 from a FineGym release folder) or "
                                   "explicit --categories/--train/--val files (any FineGym-format folder, "
                                   "e.g. SynGym).")
    b.add_argument("--out", required=True, type=Path, help="output folder")
    src = b.add_argument_group("FineGym release folder")
    src.add_argument("--finegym", type=Path, help="folder with the standard FineGym file names")
    src.add_argument("--sefar-splits", type=Path, help="folder with all99_5/labeled.csv and all288_5/labeled.csv")
    files = b.add_argument_group("explicit files")
    files.add_argument("--categories", type=Path, help="gym99/gym288-style categories file")
    files.add_argument("--train", type=Path, help="train element list '<clip id> <label>'")
    files.add_argument("--val", type=Path, help="val element list '<clip id> <label>'")
    files.add_argument("--set-names", type=Path, help="set_categories.txt (needed for set questions)")
    files.add_argument("--qtree", type=Path, help="finegym_glabel_to_Qtree.json (needed for yes/no questions)")
    files.add_argument("--labeled", type=Path,
                       help="labeled list ('<path or clip id> <label>'): its clips are the train questions")
    files.add_argument("--annotations", type=Path, help="finegym_annotation_info_v1.1.json (adds element times)")
    files.add_argument("--name", default="gymqa", help="name recorded in the manifest (default: gymqa)")
    cfg = b.add_argument_group("questions")
    cfg.add_argument("--types", default="element",
                     help="comma list of event,set,element,yesno or 'all' (default: element)")
    cfg.add_argument("--strategy", default="random",
                     help="distractors: random, same-event, same-set, nearest (default: random)")
    cfg.add_argument("--num-options", type=int, default=4, help="options per question (default: 4)")
    cfg.add_argument("--fraction", type=float, default=0.05, help="labeled fraction of the train list (default: 0.05)")
    cfg.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    cfg.add_argument("--collision", default="redraw", help="equal option names: redraw or tag (default: redraw)")
    cfg.add_argument("--yesno-per-clip", type=int, default=1, help="yes/no questions per clip (default: 1)")
    b.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from gymqa.build import BuildConfig, build_finegym, build_gymqa
    from gymqa.question import TYPES

    types = TYPES if args.types == "all" else tuple(t.strip() for t in args.types.split(",") if t.strip())
    config = BuildConfig(num_options=args.num_options, strategy=args.strategy, types=types,
                         labeled_fraction=args.fraction, seed=args.seed, collision=args.collision,
                         yesno_per_clip=args.yesno_per_clip)
    explicit = [args.categories, args.train, args.val]
    if (args.finegym is None) == all(x is None for x in explicit):
        raise ConfigError("give either --finegym DIR or all of --categories, --train and --val")
    if args.finegym is not None:
        results = build_finegym(args.finegym, args.out, sefar_dir=args.sefar_splits, config=config)
    else:
        if any(x is None for x in explicit):
            raise ConfigError("explicit builds need all of --categories, --train and --val")
        results = {args.name: build_gymqa(args.categories, args.set_names, args.train, args.val, args.out,
                                          qtree=args.qtree, labeled=args.labeled, annotations=args.annotations,
                                          config=config, name=args.name)}
    print("| set | split | type | questions |\n| --- | --- | --- | ---: |")
    for name, result in results.items():
        for split, counts in result.manifest["counts"].items():
            for kind, n in counts.items():
                print(f"| {name} | {split} | {kind} | {n} |")
        print(f"wrote {result.files['manifest'].parent}")
    return 0


# --------------------------------------------------------------------------- score / stats


def _add_reading_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--categories", type=Path, help="categories file: fills event/set of the paper's JSON questions")
    p.add_argument("--lists", type=Path, nargs="*", default=[],
                   help="element lists mapping clip ids to labels (paper JSON)")


def _reading_options(args: argparse.Namespace) -> dict:
    from common.finegym import read_categories, read_element_list

    if args.categories is None:
        if args.lists:
            raise ConfigError("--lists needs --categories")
        return {}
    labels = {clip: label for path in args.lists for clip, label in read_element_list(path)}
    return {"categories": read_categories(args.categories), "clip_labels": labels}


def _add_score(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("score", help="score predictions (letter, index, free text or log-likelihoods per id)")
    s.add_argument("questions", type=Path, help="questions: our JSONL or the paper's JSON")
    s.add_argument("predictions", type=Path, help="predictions JSONL ({'id', one of letter/index/text/loglikelihoods})")
    s.add_argument("--out", type=Path, help="write the JSON report here")
    s.add_argument("--markdown", type=Path, help="write the Markdown tables here")
    _add_reading_options(s)
    s.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    from gymqa.score import score_files

    report = score_files(args.questions, args.predictions, **_reading_options(args))
    report.write(args.out, args.markdown)
    print(report.to_markdown(), end="")
    return 0


def _add_stats(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("stats",
                       help="questions per type/event/letter, duplicate options, classes with no train question")
    s.add_argument("file", type=Path, help="questions file (JSONL or paper JSON) or a build folder")
    s.add_argument("--out", type=Path, help="write the statistics as JSON here")
    _add_reading_options(s)
    s.set_defaults(func=_stats)


def _stats(args: argparse.Namespace) -> int:
    from gymqa.io import write_json
    from gymqa.stats import question_stats, read_question_set, stats_markdown

    options = _reading_options(args)
    stats = question_stats(read_question_set(args.file, **options), options.get("categories"))
    if args.out is not None:
        write_json(args.out, stats)
    print(stats_markdown(stats), end="")
    return 0


# --------------------------------------------------------------------------- paper format, rotations


def _add_export(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="write questions in the SeFAR paper's JSON format")
    e.add_argument("questions", type=Path, help="our JSONL")
    e.add_argument("out", type=Path, help="paper-format JSON to write")
    e.add_argument("--frame-lengths", type=Path, help="paper JSON or '<clip id> <frames>' lines giving frame_length")
    e.add_argument("--missing-frame-length", type=int, help="frame_length for clips with none (otherwise an error)")
    e.add_argument("--keep-ids", action="store_true", help="key by question id instead of 0000000, 0000001, ...")
    e.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from gymqa.paper_format import read_frame_lengths, write_paper_json
    from gymqa.question import read_questions_jsonl

    lengths = read_frame_lengths(args.frame_lengths) if args.frame_lengths is not None else None
    questions = read_questions_jsonl(args.questions)
    write_paper_json(args.out, questions, lengths, missing_frame_length=args.missing_frame_length,
                     renumber=not args.keep_ids)
    print(f"wrote {len(questions)} questions to {args.out}")
    return 0


def _add_import(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("import", help="convert the SeFAR paper's JSON into our JSONL")
    i.add_argument("paper", type=Path, help="paper-format JSON")
    i.add_argument("out", type=Path, help="JSONL to write")
    i.add_argument("--split", choices=("train", "test"),
                   help="split to record (default: train for train.json, else test)")
    _add_reading_options(i)
    i.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    from gymqa.paper_format import read_paper_json
    from gymqa.question import write_questions

    questions = read_paper_json(args.paper, split=args.split, **_reading_options(args))
    write_questions(args.out, questions)
    print(f"wrote {len(questions)} questions to {args.out}")
    return 0


def _add_rotate(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("rotate", help="add the option rotations of each question (for CircularEval)")
    r.add_argument("questions", type=Path, help="questions: our JSONL or the paper's JSON")
    r.add_argument("out", type=Path, help="JSONL to write (originals and rotations)")
    r.add_argument("--n", type=int, help="rotations per question (default: its number of options)")
    r.set_defaults(func=_rotate)


def _rotate(args: argparse.Namespace) -> int:
    from gymqa.question import write_questions
    from gymqa.rotate import rotate
    from gymqa.stats import read_questions

    try:
        questions = rotate(read_questions(args.questions), args.n)
    except ValueError as err:
        raise ConfigError(f"{args.questions}: {err}") from None
    write_questions(args.out, questions)
    print(dumps({"questions": len(questions), "out": str(args.out)}))
    return 0
