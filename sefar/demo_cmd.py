"""``sefar demo``: serve the Gradio chat page on exports (see :mod:`demo.serve`); it never trains."""

from __future__ import annotations

import argparse

from sefar.cli import int_at_least

DEFAULT_ENCODER_EXPORT = "outputs/quickstart/export/sefar_tiny"  # bridge.chat's defaults, without importing torch
DEFAULT_ADAPTER_EXPORT = "outputs/quickstart/bridge/sefar/adapter"
# demo.upload's defaults, without importing it (and with it the video readers) for --help
MAX_FRAME_PIXELS = 4096 * 2160
MAX_FRAMES = 240 * 60
MAX_PIXELS = 16_000_000_000


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be > 0")
    return value


def _positive_int(text: str) -> int:
    """A positive whole number, also written as a float such as ``1.6e10``."""
    value = _positive_float(text)
    if value != int(value) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def add_parser(subparsers, name: str, help_: str) -> None:
    p = subparsers.add_parser(name, help=help_, description=help_)
    p.add_argument("--encoder", default=DEFAULT_ENCODER_EXPORT, help="SeFAR encoder export folder")
    p.add_argument("--bridge", default=DEFAULT_ADAPTER_EXPORT, help="adapter export folder of `sefar bridge train`")
    p.add_argument("--llm", default=None,
                   help="LLM folder or GGUF file (default: the one the adapter was trained with)")
    p.add_argument("--encoder-only", action="store_true", help="no adapter and no LLM: the clip views without chat")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the demo to the network)")
    p.add_argument("--port", type=int_at_least(1), default=None, help="port (default: the first free from 7860)")
    p.add_argument("--device", default="cpu", help="torch device for the models")
    p.add_argument("--quantization", default=None, choices=("8bit", "4bit"), help="load the LLM quantized")
    p.add_argument("--max-upload-mb", type=_positive_float, default=50.0, help="largest accepted upload (MB)")
    p.add_argument("--max-seconds", type=_positive_float, default=60.0, help="longest accepted clip (s)")
    p.add_argument("--max-frame-pixels", type=_positive_int, default=MAX_FRAME_PIXELS,
                   help="largest accepted frame (width x height, from the clip's metadata, checked before decoding)")
    p.add_argument("--max-frames", type=_positive_int, default=MAX_FRAMES,
                   help="most frames an accepted clip may have (checked before decoding)")
    p.add_argument("--max-pixels", type=_positive_int, default=MAX_PIXELS,
                   help="largest decoded size of a clip: width x height x frames, e.g. 1.6e10 (checked before "
                        "decoding)")
    p.add_argument("--max-question-tokens", type=int_at_least(1), default=256,
                   help="longest question, and longest multiple-choice option, in the LLM's tokens")
    p.add_argument("--max-options", type=int_at_least(2), default=10, help="most multiple-choice options")
    p.add_argument("--request-timeout-s", type=_positive_float, default=120.0,
                   help="a request running longer is stopped with a message and its model slot freed (s)")
    p.add_argument("--concurrency", type=int_at_least(1), default=1, help="model calls running at once, all users")
    p.add_argument("--queue-size", type=int_at_least(1), default=32, help="waiting requests before refusing more")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=128, help="longest answer (tokens)")
    p.add_argument("--max-sessions", type=int_at_least(1), default=200,
                   help="browser sessions whose clip and chat are kept in memory (the oldest are dropped)")
    p.add_argument("--examples-dir", default=None,
                   help="where the SynGym example clips are rendered (default: ~/.cache/sefar/demo_examples)")
    p.add_argument("--no-examples", action="store_true", help="do not offer example clips")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import logging
    import sys
    from pathlib import Path

    from demo.serve import Artifacts, check_artifacts

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    artifacts = Artifacts(Path(args.encoder), None if args.encoder_only else Path(args.bridge), args.llm,
                          args.device, args.quantization)
    check_artifacts(artifacts)  # before the slow imports: a missing export is one line at once
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: anyone who can reach this machine can use the demo", file=sys.stderr)

    from demo.app import DemoConfig
    from demo.serve import load_backend, serve
    from demo.upload import UploadLimits

    limits = UploadLimits(args.max_upload_mb, args.max_seconds, max_frame_pixels=args.max_frame_pixels,
                          max_frames=args.max_frames, max_pixels=args.max_pixels)
    config = DemoConfig(host=args.host, port=args.port, limits=limits, concurrency=args.concurrency,
                        queue_size=args.queue_size, max_new_tokens=args.max_new_tokens, max_sessions=args.max_sessions,
                        chat=not args.encoder_only, max_question_tokens=args.max_question_tokens,
                        max_options=args.max_options, request_timeout_s=args.request_timeout_s)
    serve(load_backend(artifacts), config, args.examples_dir, with_examples=not args.no_examples)
    return 0
