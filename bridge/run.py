"""Drivers shared by the CLI, the comparison and the quickstart: evaluate a run or an export.

(The training recipe itself is :mod:`bridge.train`, a leaf that only drivers import.)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bridge.config import load_config, text_limits
from bridge.devices import check_device
from bridge.evaluate import BATCH_SIZE, evaluate, format_table
from bridge.export import is_adapter_export, load_video_llm
from bridge.featurecache import FeatureCache
from bridge.limits import MAX_OPTION_TOKENS, MAX_QUESTION_TOKENS, TextLimits
from bridge.qa import direction_pair_names, feature_cache
from common.errors import ConfigError

__all__ = ["eval_device", "evaluate_run", "evaluate_source"]


def eval_device(device: str | None) -> str:
    """The device an evaluation process loads on: ``device`` (checked later), else its own GPU when several
    processes were launched on a machine with GPUs, else the CPU."""
    if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        return "cuda"  # bridge.devices.check_device makes it cuda:<LOCAL_RANK>
    return device or "cpu"


def evaluate_run(run: str | os.PathLike, methods=None, max_questions=None, circular=None, llm=None,
                 questions: str | None = None, out: str | os.PathLike | None = None, loaded=None,
                 overrides: list[str] = (), device: str | None = None, quantization: str | None = None,
                 batch_size: int | None = None) -> dict:
    """Evaluate a training run folder on its config's test questions (features cached as needed).

    ``llm``: another LLM path than the recorded one; ``loaded``: an already loaded LLM to reuse; ``overrides``:
    ``key=value`` changes of the run's config (e.g. ``data.max_question_tokens=512``); ``device`` /
    ``quantization``: where and how the LLM loads (the adapter follows it); ``batch_size``: questions per LLM pass
    (None: the config's ``eval.batch_size``)."""
    run = Path(run)
    overrides = [*overrides, *([f"data.test_questions={questions}"] if questions else [])]
    cfg = load_config(run / "config.yaml", overrides)
    device = check_device(eval_device(device))  # a bad device is one line, before the features are cached
    cache = feature_cache(cfg, "test", cfg.data.features or run / "features")
    model, _ = load_video_llm(run / "adapter", llm, device=device, quantization=quantization, loaded=loaded)
    pairs = direction_pair_names(cfg.data.direction_pairs) if cfg.data.direction_pairs else None
    return evaluate(model, cache, cfg.data.test_questions, out or run / "eval",
                    methods=methods or cfg.eval.methods, types=cfg.data.types,
                    use_cls=cfg.adapter.use_cls, circular=cfg.eval.circular if circular is None else circular,
                    max_questions=cfg.eval.max_questions if max_questions is None else max_questions,
                    max_new_tokens=cfg.eval.max_new_tokens, direction_pairs=pairs, limits=text_limits(cfg),
                    batch_size=batch_size or cfg.eval.batch_size)


def evaluate_source(source: str | os.PathLike, *, questions=None, features=None, methods=("likelihood",),
                    max_questions=None, circular=True, llm=None, out=None, max_question_tokens=None,
                    max_option_tokens=None, device=None, quantization=None, batch_size=None) -> tuple[dict, str]:
    """``sefar bridge eval``: a run folder (its config gives questions and features) or an adapter export
    (``questions`` and ``features`` required). Returns the summary and its table. ``max_question_tokens`` /
    ``max_option_tokens``: the longest question / option allowed (None: the run's config, else the defaults);
    ``device``, ``quantization``, ``batch_size``: see :func:`evaluate_run`."""
    source = Path(source)
    device = check_device(eval_device(device))
    named = {"data.max_question_tokens": max_question_tokens, "data.max_option_tokens": max_option_tokens}
    if (source / "config.yaml").is_file() and is_adapter_export(source / "adapter"):
        overrides = [f"{k}={v}" for k, v in named.items() if v is not None]
        summary = evaluate_run(source, methods, max_questions, circular, llm, questions, out, overrides=overrides,
                               device=device, quantization=quantization, batch_size=batch_size)
    elif is_adapter_export(source):
        if not questions or not features:
            raise ConfigError(f"{source} is an adapter export: pass --questions JSONL and --features CACHE_DIR")
        model, config = load_video_llm(source, llm, device=device, quantization=quantization)
        summary = evaluate(model, FeatureCache(features), questions, out or source / "eval", methods=methods,
                           use_cls=config.get("features", {}).get("use_cls", True), circular=circular,
                           max_questions=max_questions,
                           limits=TextLimits(max_question_tokens or MAX_QUESTION_TOKENS,
                                             max_option_tokens or MAX_OPTION_TOKENS,
                                             "--max-question-tokens / --max-option-tokens"),
                           batch_size=batch_size or BATCH_SIZE)
    else:
        raise ConfigError(f"{source}: neither a bridge run folder (config.yaml + adapter/) nor an adapter export")
    return summary, format_table([(source.name, summary)])
