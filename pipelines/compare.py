"""The encoder comparison (paper Tab. 5): one adapter recipe trained and scored over several frozen encoders.

    sefar bridge compare configs/bridge/compare_<name>.yaml [key=value ...]

A compare file names a base bridge config, an output folder and the runs (each a list of ``key=value``
overrides of the base, e.g. another ``encoder.export`` or ``encoder.kind=frames``). Each run trains (resuming)
into ``OUT/<run>`` and is scored on the base config's test questions; the comparison is printed as one table and
written as ``OUT/compare.json`` and ``OUT/compare.png`` (accuracy, CircularEval and the direction-pair check
per encoder).
"""

from __future__ import annotations

import os
from pathlib import Path

from common.configfile import read_yaml_mapping
from common.errors import ConfigError
from common.textio import write_text_atomic
from common.jsonio import dumps

__all__ = ["read_compare", "run_compare", "plot_compare", "plotted_method"]


def read_compare(path: str | os.PathLike) -> tuple[str, str, dict[str, list[str]]]:
    """``(base config, out folder, {run name: overrides})`` of a compare file."""
    data = read_yaml_mapping(path)
    problems = [f"{path}: missing key {key!r}" for key in ("base", "out", "runs") if key not in data]
    runs = data.get("runs") or {}
    if not isinstance(runs, dict) or not all(isinstance(v, list) and all(isinstance(o, str) for o in v)
                                             for v in runs.values()):
        problems.append(f"{path}: runs must map each run name to a list of key=value strings")
    unknown = sorted(set(data) - {"base", "out", "runs"})
    if unknown:
        problems.append(f"{path}: unknown keys {unknown} (use base, out, runs)")
    if problems:
        raise ConfigError("; ".join(problems))
    return str(data["base"]), str(data["out"]), {str(k): list(v) for k, v in runs.items()}


def run_compare(path: str | os.PathLike, overrides: list[str] | None = None, device: str | None = None) -> dict:
    """Train and score every run of the compare file; returns ``{run: evaluation summary}``. ``device``: where
    the scoring loads the LLM (checked before any training; training places it as ``sefar bridge train`` does)."""
    from bridge.config import load_config
    from bridge.devices import check_device
    from bridge.evaluate import format_table
    from bridge.run import eval_device, evaluate_run
    from bridge.train import train

    device = check_device(eval_device(device))
    base, out, runs = read_compare(path)
    configs = {name: load_config(base, [*extra, *(overrides or []), f"out={Path(out) / name}"])
               for name, extra in runs.items()}  # every config is validated before any training starts
    results = {}
    for name, cfg in configs.items():
        print(f"== {name}")
        trained = train(cfg)
        results[name] = evaluate_run(cfg.out, device=device) | {
            "train": {k: trained.get(k) for k in ("step", "train_seconds")}}
    table = format_table(list(results.items()))
    print(table)
    write_text_atomic(Path(out) / "compare.json", dumps(results, indent=1) + "\n")
    write_text_atomic(Path(out) / "compare.md", table + "\n")
    plot_compare(results, Path(out) / "compare.png")
    return results


def plotted_method(results: dict) -> str:
    """The scoring method a comparison is plotted with: ``likelihood_mean`` (the one the README reports) when
    every run has it, else the first method every run has."""
    common = [m for m in next(iter(results.values()))["methods"] if all(m in r["methods"] for r in results.values())]
    if not common:
        raise ValueError("the runs share no scoring method")
    return "likelihood_mean" if "likelihood_mean" in common else common[0]


def plot_compare(results: dict, path: str | os.PathLike) -> Path:
    """Bar chart: accuracy and CircularEval of each run under :func:`plotted_method`, values on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    method = plotted_method(results)
    scores = [results[n]["methods"][method] for n in names]
    fig, ax = plt.subplots(figsize=(2.6 + 1.4 * len(names), 3.2))
    xs = range(len(names))
    for offset, key, label in ((-0.2, "accuracy", "accuracy"), (0.2, "circular", "CircularEval")):
        values = [100 * (s.get(key) or 0) for s in scores]
        bars = ax.bar([x + offset for x in xs], values, width=0.4, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(list(xs), names, rotation=15)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(f"Gym-QA by visual encoder ({method})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the bars, never over them
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path
