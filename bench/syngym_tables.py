"""SynGym tables at 10% labels, mean ± std over seeds: the paper's comparisons reproduced on the embedded set.

    python -m bench.syngym_tables --data outputs/quickstart/syngym --level set --seeds 0 1 2 \
        --runs outputs/bench/syngym_tables_set ssl.unlabeled_ratio=1

Rows (each a SeFAR config variant, all with the same labeled clips per seed, steps and labeled batch):

* main: supervised-only, FixMatch with a fixed 0.95 threshold, SeFAR;
* Tab. 3 ablation: SeFAR without Dual-Ele (one 8-frame element), without Mod-Perturb (temporal warping instead),
  without Ada-Reg (plain pseudo-labels, weight 1);
* Tab. 4 strong temporal augmentation: spatial-only, warping, all-reverse, all-shuffle, mod-perturb;
* the reference's choices against ours: the mix loss and tube (MSE + scattered tokens, the reference's and our
  default, vs soft cross-entropy + one box), the strong spatial augmentation (RandAugment, ours, vs the
  reference's per-element crop/flip + channel dropout), and where the tube is mixed (the stem's output tokens, ours,
  vs the frames before the stem, the reference's).

Every run of a seed takes the same optimizer steps (an epoch is one pass over the labeled clips in every mode).
The supervised-only row runs first; a row that differs from it only in keys acting on unlabeled clips
(``encoder.train.FORK_FREE``: every SeFAR and FixMatch row but w/o Dual-Ele) forks from its checkpoint where the
supervised-only epochs end instead of training those steps again: the same run, exactly, for less time (its
``train s`` still counts them).

``--level element`` classifies SynGym's 33 element classes; ``--level set`` its 6 sets (FineGym's set-level
task; the lists are relabelled into ``OUT/lists_set``), which the tiny model learns within a CPU budget.
Trailing ``key=value`` arguments override the config for every run (here: one unlabeled clip per labeled clip,
to fit 27 runs into an hour on 2 cores).

Reported: val top-1 of the EMA teacher and of the student, and for the teacher top-1 on the clips of SynGym's forward/backward direction-pair classes,
and pair accuracy (the clip's class scored above its time-reversed sibling's; at set level only the FX saltos,
the one pair whose two classes fall into different sets). Runs are resumable and reused: a run whose
``final/results.json`` exists is not trained again (runs under ``--runs``). Prints Markdown tables and
writes a result file (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.errors import ConfigError, DataError
from common.results import Table, provenance, write_result
from encoder.data.syngym import dataset_identity

ROWS: dict[str, list[str]] = {
    "supervised-only": ["ssl.mode=supervised"],
    "FixMatch (threshold 0.95)": ["ssl.mode=fixmatch", "ssl.threshold=0.95", "ssl.mix=false"],
    "SeFAR": ["ssl.mode=sefar"],
    "SeFAR w/o Dual-Ele": ["ssl.mode=sefar", "model.combo=8"],
    "SeFAR w/o Mod-Perturb (warping)": ["ssl.mode=sefar", "aug.temporal=warping"],
    "SeFAR w/o Ada-Reg": ["ssl.mode=sefar", "ssl.adaptive=false"],
    "strong aug: spatial-only": ["ssl.mode=sefar", "aug.temporal=spatial-only"],
    "strong aug: all-reverse": ["ssl.mode=sefar", "aug.temporal=all-reverse"],
    "strong aug: all-shuffle": ["ssl.mode=sefar", "aug.temporal=all-shuffle"],
    "SeFAR, mix: soft-CE, box": ["ssl.mode=sefar", "ssl.mix_loss=soft-ce", "ssl.mix_shape=box"],
    "SeFAR, strong aug: reference": ["ssl.mode=sefar", "aug.strong=reference"],
    "SeFAR, tube mixed in the frames": ["ssl.mode=sefar", "ssl.mix_space=pixels"],
}
TABLES = {
    "main": ["supervised-only", "FixMatch (threshold 0.95)", "SeFAR"],
    "ablation (Tab. 3)": ["SeFAR", "SeFAR w/o Dual-Ele", "SeFAR w/o Mod-Perturb (warping)", "SeFAR w/o Ada-Reg"],
    "strong temporal augmentation (Tab. 4)": [
        "strong aug: spatial-only", "SeFAR w/o Mod-Perturb (warping)", "strong aug: all-reverse",
        "strong aug: all-shuffle", "SeFAR",
    ],
    "the reference's choices vs ours": ["SeFAR", "SeFAR, mix: soft-CE, box", "SeFAR, strong aug: reference",
                                        "SeFAR, tube mixed in the frames"],
}
RENAME_IN_TAB4 = {"SeFAR w/o Mod-Perturb (warping)": "warping", "SeFAR": "mod-perturb (SeFAR)"}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def pair_metrics(probs: torch.Tensor, labels: torch.Tensor, elements: list[int], pairs: list[tuple[int, int]],
                 mapping: dict[int, int]) -> dict:
    """Top-1 on the clips of direction-pair element classes, and the accuracy of choosing between the clip's
    label and its time-reversed sibling's label (only where the level keeps the two apart: at set level, the
    FX front and back saltos). ``elements`` are the clips' element labels, ``mapping`` element -> trained label."""
    from encoder.evaluate import direction_pair_accuracy, direction_partners

    paired = {c for pair in pairs for c in pair}
    keep = torch.tensor([e in paired for e in elements])
    if not keep.any():
        return {"pair_top1": None, "pair_accuracy": None}
    top1 = (probs[keep].argmax(1) == labels[keep]).float().mean().item()
    binary, _ = direction_pair_accuracy(probs, labels, direction_partners(elements, pairs, mapping))
    return {"pair_top1": top1, "pair_accuracy": binary}


SUPERVISED = "supervised-only"


def forkable(row: str) -> bool:
    """Whether ``row`` is the supervised-only run during the supervised-only epochs (see the module notes)."""
    from encoder.train import FORK_FREE

    return row != SUPERVISED and all(o.split("=", 1)[0] in FORK_FREE for o in ROWS[row])


def run_one(config: Path, data: Path, out: Path, overrides: list[str], seed: int, level: dict,
            identity: dict | None = None, fork_from: Path | None = None) -> dict:
    """Train (resuming) or reuse the run in ``out``; ``identity``: the dataset's (:func:`dataset_identity`), kept
    in ``out/dataset.json`` so that a finished run of other clips is refused instead of reused. A finished run
    trained with another config (an older recipe) is refused too (:class:`ConfigError`). ``fork_from``: a
    checkpoint to start a new run from (``train(fork_from=...)``), used when it exists."""
    from encoder.config import load_config
    from encoder.train import check_resumable, train

    results = out / "final" / "results.json"
    stamp = out / "dataset.json"
    trained_on = json.loads(stamp.read_text()) if identity is not None and stamp.is_file() else identity
    if trained_on != identity:
        raise DataError(stamp, f"this run was trained on other clips than {data} holds now "
                               f"({trained_on.get('content_sha256', '?')[:16]}... vs "
                               f"{identity['content_sha256'][:16]}...): remove {out} or pass another --runs")
    cfg = load_config(config, [f"data.root={level['root']}", f"out={out}", f"seed={seed}",
                               f"data.split_seed={seed}", *level["overrides"], *overrides])
    if results.is_file():  # where the clips are may be spelled otherwise: dataset.json has shown they are the same
        check_resumable(out, cfg, allow_change=False, free=("data.root", "data.videos"))
    else:
        if identity is not None:
            out.mkdir(parents=True, exist_ok=True)
            stamp.write_text(json.dumps(identity) + "\n")
        train(cfg, resume=True, fork_from=fork_from if fork_from is not None and fork_from.is_dir() else None)
    result = json.loads(results.read_text())
    pred = load_file(out / "final" / "val_predictions_teacher.safetensors")
    if len(pred["labels"]) != len(level["elements"]):
        raise RuntimeError(f"{out}: {len(pred['labels'])} predictions for {len(level['elements'])} val clips")
    pairs = pair_metrics(pred["probs"], pred["labels"], level["elements"], level["pairs"], level["mapping"])
    return {"top1": result["teacher"]["top1"], "student_top1": result["student"]["top1"], "step": result["step"],
            "train_seconds": result["train_seconds"], **pairs}


def prepare_level(data: Path, level: str, out: Path) -> dict:
    """Where the runs read their lists: ``data`` itself (element level) or set-level copies under ``out``."""
    from common.finegym import Hierarchy, read_categories, read_element_list, write_level_lists

    manifest = json.loads((data / "manifest.json").read_text())
    info = {"pairs": [tuple(p) for p in manifest["direction_pairs"]],
            "elements": [label for _, label in read_element_list(data / "val_element.txt")]}
    info["mapping"] = Hierarchy(read_categories(data / "categories.txt")).level_labels(level)[0]
    info["classes"] = len(set(info["mapping"].values()))
    if level == "element":
        return {**info, "root": data, "overrides": []}
    root = out / f"lists_{level}"
    names = write_level_lists(data, root, level)
    print(f"{level} level: {len(names)} classes ({', '.join(names)})", flush=True)
    return {**info, "root": root, "overrides": [f"data.videos={(data / 'videos').resolve()}", "data.categories=null"]}


def fork_point(config: Path, level: dict, overrides: list[str]) -> int | None:
    """The step where the runs' supervised-only epochs end (None: not fixed by the config, or not inside the run)."""
    from encoder.config import load_config
    from encoder.train import supervised_steps_of

    return supervised_steps_of(load_config(config, [f"data.root={level['root']}", *level["overrides"], *overrides]))


def mean_std(values: list[float | None]) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("outputs/quickstart/syngym"))
    parser.add_argument("--config", type=Path, default=Path("configs/encoder/syngym_tiny.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--level", choices=["element", "set"], default="element",
                        help="classify the 33 element classes, or the 6 sets (FineGym's set level)")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help="subset of row names")
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder of the training runs (default: outputs/bench/syngym_tables_LEVEL)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: "
                        "bench/results/syngym_tables_LEVEL.json)")
    parser.add_argument("--title", help="the result's title (default: from the level and the labels)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run (e.g. a shorter budget)")
    args = parser.parse_args(argv)

    try:
        identity = dataset_identity(args.data)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    started = provenance()
    args.runs = args.runs or Path("outputs/bench") / f"syngym_tables_{args.level}"
    args.out = args.out or Path("bench/results") / f"syngym_tables_{args.level}.json"
    level = prepare_level(args.data, args.level, args.runs)
    results: dict[str, list[dict]] = {}
    shared = fork_point(args.config, level, args.overrides) if SUPERVISED in args.rows else None
    for name in sorted(args.rows, key=lambda n: n != SUPERVISED):  # the runs to fork from first
        for seed in args.seeds:
            out = args.runs / f"{slug(name)}_seed{seed}"
            extra, fork = list(args.overrides), None
            if shared and name == SUPERVISED:
                extra.append(f"save_steps=[{shared}]")
            elif shared and forkable(name):
                fork = args.runs / f"{slug(SUPERVISED)}_seed{seed}" / "checkpoints" / f"step_{shared:07d}"
            try:
                r = run_one(args.config, args.data, out, ROWS[name] + extra, seed, level, identity, fork)
            except (DataError, ConfigError) as err:
                print(f"error: {err}", file=sys.stderr)
                raise SystemExit(2) from None
            results.setdefault(name, []).append({"seed": seed, **r})
            print(f"{name} seed {seed}: top-1 {100 * r['top1']:.1f}", flush=True)

    results = {name: results[name] for name in args.rows}  # in the order asked for
    ratio = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("data.label_ratio=")), "0.1")
    labels = "all labels" if float(ratio) == 1.0 else f"{100 * float(ratio):g}% labels"
    tables = []
    for title, names in TABLES.items():
        names = [n for n in names if n in results]
        if not names or (title != "main" and len(names) < 2):  # a comparison table needs two rows that ran
            continue
        table = Table(title, ["method", "steps", "top-1 (teacher)", "top-1 (student)", "top-1 on direction pairs",
                              "pair accuracy", "train s"])
        for n in names:
            rs = results[n]
            label = RENAME_IN_TAB4.get(n, n) if title.startswith("strong") else n
            steps = "/".join(sorted({str(r["step"]) for r in rs}))
            seconds = [r["train_seconds"] for r in rs]
            table.add(label, steps, mean_std([r["top1"] for r in rs]), mean_std([r["student_top1"] for r in rs]),
                      mean_std([r["pair_top1"] for r in rs]), mean_std([r["pair_accuracy"] for r in rs]),
                      f"{min(seconds):.0f}-{max(seconds):.0f}" if len(seconds) > 1 else f"{seconds[0]:.0f}")
        table.notes = (f"SynGym val, {args.level} level ({level['classes']} classes), {labels}, mean ± std over "
                       f"seeds {', '.join(map(str, args.seeds))} (split seed = seed); "
                       f"{args.config.as_posix()}" + (f" with {' '.join(args.overrides)}" if args.overrides else "")
                       + ". Pair accuracy: the clip's class scored above its time-reversed sibling's (chance 50%).")
        tables.append(table)
    summary = {"level": args.level, "seeds": args.seeds, "overrides": args.overrides, "results": results, **identity}
    title = "supervised ceiling" if labels == "all labels" else "semi-supervised tables"
    write_result(args.out, args.title or f"SynGym {title} ({args.level} level, {labels})", tables, summary,
                 started=started)
    return summary


if __name__ == "__main__":
    main()
