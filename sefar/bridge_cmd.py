"""``sefar bridge ...``: feature cache, adapter training, evaluation, comparison, export, ask (argument parsing only)."""

from __future__ import annotations

import argparse
import os
import sys

from sefar.cli import int_at_least

_positive_int = int_at_least(1)


def add_parser(subparsers, name: str, help_: str) -> None:
    p = subparsers.add_parser(name, help=help_, description=help_)
    sub = p.add_subparsers(dest="action", required=True)

    ft = sub.add_parser("features", help="cache frozen-encoder features of a list (resumable; accelerate launch)")
    ft.add_argument("export", metavar="ENCODER",
                    help="a SeFAR export folder, or frames:<timm model> for a frame-wise image encoder")
    ft.add_argument("list", metavar="LIST", help="'path label' list of clips")
    ft.add_argument("out", metavar="OUT", help="cache folder (shards + manifest.json)")
    ft.add_argument("--videos-root", metavar="DIR", help="where the list's videos are (default: the list's folder)")
    ft.add_argument("--weights", default="package", help="frame encoder weights file ('package': EfficientNet-Lite0)")
    ft.add_argument("--img-size", type=_positive_int, default=112, help="frame encoder input size")
    ft.add_argument("--batch-size", type=_positive_int, default=8)
    ft.add_argument("--shard-size", type=_positive_int,
                    help="clips per shard file (default: the cache's own when resuming it, else 256)")
    ft.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    ft.add_argument("--workers", type=int, default=2, help="data loader processes")
    ft.set_defaults(func=_features)

    tr = sub.add_parser("train", help="train a Q-Former adapter (resumes the run in its out folder)")
    tr.add_argument("config", help="YAML config under configs/bridge/, or '-' for the defaults")
    tr.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100")
    tr.add_argument("--no-resume", action="store_true", help="start from scratch even if a checkpoint exists")
    tr.add_argument("--dry-run", action="store_true",
                    help="load no weights: list the files the run reads (found or missing) and the predicted peak "
                         "GPU memory; exit 1 when a file is missing")
    tr.add_argument("--gpus", type=_positive_int, default=8, help="with --dry-run: also plan for this many GPUs")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="score an adapter on Gym-QA questions (predictions JSONL + reports)")
    ev.add_argument("source", metavar="RUN_OR_EXPORT", help="a bridge run folder or an adapter export folder")
    ev.add_argument("--questions", help="Gym-QA JSONL or the paper's Gym-QA JSON (default: the run's "
                    "test questions)")
    ev.add_argument("--features", metavar="DIR", help="feature cache of the questions' clips (default: the run's)")
    ev.add_argument("--method", choices=("likelihood", "generate", "letter", "all"), default="all")
    ev.add_argument("--max-questions", type=_positive_int, help="score the first N questions only")
    ev.add_argument("--no-circular", action="store_true", help="skip the rotations (no CircularEval)")
    ev.add_argument("--llm", help="LLM folder or GGUF file instead of the recorded one")
    ev.add_argument("--out", metavar="DIR", help="output folder (default: RUN_OR_EXPORT/eval)")
    ev.add_argument("--max-question-tokens", type=_positive_int,
                    help="a longer question is an error (default: the run's data.max_question_tokens, else 256)")
    ev.add_argument("--max-option-tokens", type=_positive_int,
                    help="a longer option is an error (default: the run's data.max_option_tokens, else 64)")
    _llm_placement(ev)
    ev.add_argument("--batch-size", type=_positive_int,
                    help="questions per LLM pass (default: the run's eval.batch_size, else 16)")
    ev.set_defaults(func=_eval)

    cp = sub.add_parser("compare", help="the same adapter recipe over several encoders (paper Tab. 5)")
    cp.add_argument("config", help="YAML under configs/bridge/compare_*.yaml")
    cp.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every run")
    _llm_placement(cp, scoring=True)
    cp.add_argument("--batch-size", type=_positive_int, help="questions per LLM pass in scoring (eval.batch_size)")
    cp.set_defaults(func=_compare)

    ex = sub.add_parser("export", help="write an adapter export (config.json + adapter.safetensors)")
    ex.add_argument("run", metavar="RUN", help="a bridge run folder")
    ex.add_argument("out", metavar="OUT", help="the export folder to write")
    ex.set_defaults(func=_export)

    ask = sub.add_parser("ask", help="ask a question about one clip; the answer streams to the terminal")
    ask.add_argument("export", metavar="EXPORT", help="an adapter export folder")
    ask.add_argument("video", metavar="VIDEO", help="a video file or frame folder")
    ask.add_argument("question", help="the question")
    ask.add_argument("--encoder", help="SeFAR encoder export (default: the one the adapter was trained on)")
    ask.add_argument("--llm", help="LLM folder or GGUF file (default: the adapter's recorded LLM; the embedded "
                     "SmolLM2, with a notice, when that is not on this machine)")
    ask.add_argument("--max-question-tokens", type=_positive_int, default=256,
                     help="a longer question is an error (default 256)")
    ask.add_argument("--max-new-tokens", type=_positive_int, default=128)
    _llm_placement(ask)
    ask.set_defaults(func=_ask)


def _llm_placement(p: argparse.ArgumentParser, scoring: bool = False) -> None:
    """``--device`` and ``--quantization`` of a command that loads an LLM (the adapter follows the LLM)."""
    what = "scoring" if scoring else "the models"
    p.add_argument("--device", default=None,
                   help=f"torch device of {what}: cpu, cuda, cuda:N (checked; default cpu, or each process's GPU "
                        "under accelerate launch); an llm.device_map places the LLM instead")
    p.add_argument("--quantization", choices=("8bit", "4bit"),
                   help="load the LLM quantized (bitsandbytes)" + (": every run's llm.quantization" if scoring else ""))


def _features(args: argparse.Namespace) -> int:
    from bridge.features import extract_features
    from bridge.frames import FrameEncoderConfig

    source = args.export
    if source.startswith("frames:"):
        source = FrameEncoderConfig(model=source.removeprefix("frames:"), weights=args.weights, img_size=args.img_size)
    manifest = extract_features(
        source, args.list, args.out, videos_root=args.videos_root, batch_size=args.batch_size,
        shard_size=args.shard_size, dtype=args.dtype, num_workers=args.workers,
    )
    done, total = len(manifest["done_shards"]), manifest["num_shards"]
    if os.environ.get("RANK", "0") == "0":  # one summary under accelerate launch / torchrun
        print(f"{done}/{total} shards in {args.out}; {len(manifest['skipped'])} unreadable clips skipped")
    return 0 if manifest["complete"] else 1


def _train(args: argparse.Namespace) -> int:
    if args.dry_run:
        from bridge.config import load_config
        from bridge.dryrun import dry_run

        report, complete = dry_run(load_config(None if args.config == "-" else args.config, args.overrides), args.gpus)
        print(report)
        return 0 if complete else 1
    from bridge.train import main_train

    return main_train(args.config, args.overrides, resume=not args.no_resume)


def _eval(args: argparse.Namespace) -> int:
    from bridge.run import evaluate_source

    methods = ("likelihood", "generate", "letter") if args.method == "all" else (args.method,)
    summary, table = evaluate_source(args.source, questions=args.questions, features=args.features,
                                     methods=methods, max_questions=args.max_questions,
                                     circular=not args.no_circular, llm=args.llm, out=args.out,
                                     max_question_tokens=args.max_question_tokens,
                                     max_option_tokens=args.max_option_tokens, device=args.device,
                                     quantization=args.quantization, batch_size=args.batch_size)
    print(table)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pipelines.compare import run_compare

    overrides = [*args.overrides, *([f"llm.quantization={args.quantization}"] if args.quantization else []),
                 *([f"eval.batch_size={args.batch_size}"] if args.batch_size else [])]
    run_compare(args.config, overrides, device=args.device)
    return 0


def _export(args: argparse.Namespace) -> int:
    from bridge.export import export_run

    print(f"adapter exported to {export_run(args.run, args.out)}")
    return 0


def _ask(args: argparse.Namespace) -> int:
    from bridge.chat import VideoChat
    from bridge.export import read_adapter_config
    from bridge.limits import TextLimits

    from bridge.devices import check_device

    check_device(args.device)  # before anything is read or loaded
    limits = TextLimits(question=args.max_question_tokens, flag="--max-question-tokens")
    limits.check_argument("question argument", args.question)  # characters, before anything is loaded
    encoder = args.encoder or read_adapter_config(args.export).get("features", {}).get("source")
    chat = VideoChat.load(encoder, args.export, args.llm, device=args.device or "cpu", quantization=args.quantization)
    limits.check_argument("question argument", args.question, chat.model.tokenizer)
    clip = chat.encode(args.video)
    for piece in chat.stream(clip, [], args.question, max_new_tokens=args.max_new_tokens):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
