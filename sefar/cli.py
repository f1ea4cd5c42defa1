"""``sefar <stage> <action> ...``: one console command with a sub-command group per stage.

Each group lives in its own small module (``sefar/<stage>_cmd.py``) that registers its parser and calls
the package that does the work. Bad input raises :class:`common.errors.DataError` or ``ConfigError`` (or an ``OSError`` naming a file),
which is printed as one ``error: <file>[:<line>]: <problem>`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (group name, module with ``add_parser(subparsers)``, help)
_GROUPS = (
    ("data", "sefar.data_cmd", "prepare, synthesise and check video datasets"),
    ("gymqa", "sefar.gymqa_cmd", "build, score and describe the Gym-QA benchmark"),
    ("encoder", "sefar.encoder_cmd", "train, evaluate and export the SeFAR encoder"),
    ("bridge", "sefar.bridge_cmd", "cache features, train, score and compare Q-Former adapters to an LLM; ask"),
    ("quickstart", "sefar.quickstart_cmd", "run the main job on the embedded SynGym default"),
    ("demo", "sefar.demo_cmd", "serve the Gradio chat page for questions about a clip"),
)


def int_at_least(minimum: int):
    """An argparse ``type`` accepting integers ``>= minimum``, with a one-line message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sefar", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", required=True, metavar="{" + ",".join(g for g, _, _ in _GROUPS) + "}")
    for name, module, help_ in _GROUPS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:  # a stage whose module is not installed yet
            if err.name != module:
                raise
            continue
        mod.add_parser(sub, name, help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from common.distributed import release_process_group
    from common.errors import ConfigError, DataError

    try:
        result = args.func(args)
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a missing, unreadable or unwritable file named on the command line
        print(f"error: {_os_error_line(err)}", file=sys.stderr)
        return 2
    finally:
        release_process_group()  # under accelerate launch: no abort at exit after the work is done
    return int(result or 0)


def _os_error_line(err: OSError) -> str:
    """``<file>: <problem>`` for an ``OSError`` (``[Errno 2] No such file ...`` becomes ``f: no such file``)."""
    if err.filename is None:
        return str(err)
    problem = "no such file or folder" if isinstance(err, FileNotFoundError) else (err.strerror or str(err))
    return f"{err.filename}: {problem}"
