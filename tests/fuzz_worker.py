"""A worker process for tests/test_fuzz.py: runs one input at a time under a memory limit and reports the outcome.

Protocol: one JSON request per line on stdin, one JSON reply per line on the original stdout (file descriptor 1 is
pointed at /dev/null, so nothing a library prints can corrupt a reply). Requests:

* ``{"kind": "cli", "argv": [...]}``: ``sefar`` with these arguments;
* ``{"kind": "config", "path": str | null, "overrides": [...], "keys": [...]}``: :func:`encoder.config.load_config`,
  replying with the loaded values of ``keys``;
* ``{"kind": "decode", "path": str}``: :func:`encoder.data.video.read_frames` of every frame;
* ``{"kind": "export", "path": str}``: :func:`encoder.export.load`, replying with the loaded architecture;
* ``{"kind": "bridge", "what": "questions" | "cache" | "adapter" | "llm", "path": str}``: the bridge's readers
  (:func:`bridge.qa.read_question_set`, every clip of a :class:`bridge.featurecache.FeatureCache`,
  :func:`bridge.export.load_adapter`, :func:`bridge.llm.load_llm` of a folder), replying with what they read.

Reply: ``{"code", "stdout", "stderr", "fd_stderr", "crash", "value"}``; ``crash`` is the last line of any exception
that escaped (a traceback the user would see), including ``MemoryError`` when the memory limit is hit.

The limit is the address space after the imports plus ``--headroom`` MiB (RLIMIT_AS), so a blow-up ends in a
``MemoryError`` here instead of the kernel's out-of-memory killer.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import sys
import tempfile
import traceback


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _handle(request: dict) -> tuple[int | None, object]:
    kind = request["kind"]
    if kind == "cli":
        from sefar.cli import main

        return main(request["argv"]), None
    if kind == "config":
        from common.errors import ConfigError
        from encoder.config import load_config

        try:
            cfg = load_config(request["path"], request["overrides"])
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2, None
        values = {}
        for key in request["keys"]:
            node = cfg
            for part in key.split("."):
                node = getattr(node, part)
            values[key] = list(node) if isinstance(node, tuple) else node
        return 0, values
    if kind == "export":
        from common.errors import DataError
        from encoder.export import load

        try:
            encoder = load(request["path"])
        except DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2, None
        return 0, {"architecture": encoder.model.cfg.to_dict(), "class_names": list(encoder.class_names)}
    if kind == "bridge":
        from common.errors import ConfigError, DataError

        try:
            return 0, _bridge(request["what"], request["path"])
        except (DataError, ConfigError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2, None
    if kind == "decode":
        from common.errors import VideoReadError
        from encoder.data.video import read_frames

        try:
            return 0, len(read_frames(request["path"]))
        except VideoReadError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2, None
    raise ValueError(f"unknown request kind {kind!r}")


def _bridge(what: str, path: str) -> object:
    if what == "questions":
        from bridge.qa import read_question_set

        qs = read_question_set(path, ["element", "event", "set", "yesno"])
        return [[q.id, q.question, list(q.options)] for q in qs.questions]
    if what == "cache":
        from bridge.featurecache import FeatureCache

        cache = FeatureCache(path)
        return {key: {name: list(t.shape) for name, t in cache[key].items()} for key in cache.clip_ids}
    if what == "adapter":
        from bridge.export import load_adapter

        adapter, _ = load_adapter(path)
        return adapter.cfg.to_dict()
    from bridge.llm import LLMConfig, load_llm

    llm = load_llm(LLMConfig(path=path))
    return {"width": llm.width, "vocab": llm.model.get_input_embeddings().num_embeddings}


def _run(request: dict) -> dict:
    out, err = io.StringIO(), io.StringIO()
    code = value = crash = None
    with tempfile.TemporaryFile() as fd_err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(fd_err.fileno(), 2)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code, value = _handle(request)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - exactly what the fuzz suite looks for
            crash = traceback.format_exception_only(type(exc), exc)[-1].strip()[:500]
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        fd_err.seek(0)
        fd_text = fd_err.read(20_000).decode("utf-8", "replace")
    return {"code": code, "stdout": out.getvalue()[-4_000_000:], "stderr": err.getvalue()[-20_000:],
            "fd_stderr": fd_text, "crash": crash, "value": value}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--headroom", type=int, default=1536, help="MiB of address space above the warm-up")
    args = parser.parse_args()
    replies = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    import encoder.config  # noqa: F401  (warm up: the imports every request kind needs)
    import encoder.data.check  # noqa: F401
    import encoder.export  # noqa: F401
    import gymqa.score  # noqa: F401
    import sefar.cli

    sefar.cli.build_parser()
    encoder.config.load_config(None)  # imports what validation needs (torch, the model registry)
    limit = _address_space() + args.headroom * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    replies.write(json.dumps({"ready": True, "limit": limit}) + "\n")
    replies.flush()
    for line in sys.stdin:
        replies.write(json.dumps(_run(json.loads(line))) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
