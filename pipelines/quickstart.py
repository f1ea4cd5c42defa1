"""The main job on the embedded default (``make quickstart``): SynGym → encoders (supervised vs SeFAR) → export
→ Gym-QA → features → Q-Former adapters on SmolLM2 (SeFAR features vs a frame-wise ImageNet baseline) → scores.

Every stage writes into ``OUT`` and is skipped when its output is already complete, so an interrupted
quickstart resumes where it stopped:

    OUT/syngym/                   the generated dataset (``sefar data synth``)
    OUT/encoder/supervised/       supervised-only run on the 10% labeled clips
    OUT/encoder/sefar/            SeFAR run: same labeled clips, same steps and labeled batch
    OUT/export/sefar_tiny/        frozen SeFAR teacher (``sefar encoder export``); supervised_tiny/ likewise
    OUT/gymqa/                    Gym-QA built from SynGym's FineGym-format files
    OUT/bridge/sefar/             adapter on the SeFAR export's features (configs/bridge/syngym_smollm2.yaml);
                                  its export in OUT/bridge/sefar/adapter, scores in OUT/bridge/sefar/eval
    OUT/bridge/frames/            the same recipe on frame-wise EfficientNet-Lite0 features (..._frames.yaml)
    OUT/quickstart.json           both comparison tables below, as a result file (``common.results``):
                                  ``python -m bench.report --add OUT/quickstart.json`` publishes it

Paths are made absolute first, so the lists written by one stage resolve in the next wherever they run; what the
quickstart prints and writes names them relative to the working directory.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from common.jsonio import dumps, read_json_object
from common.results import Table, provenance, write_result
from encoder.config import load_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "encoder" / "syngym_tiny.yaml"
BRIDGE_CONFIGS = {
    "sefar": Path(__file__).resolve().parents[1] / "configs" / "bridge" / "syngym_smollm2.yaml",
    "frames": Path(__file__).resolve().parents[1] / "configs" / "bridge" / "syngym_smollm2_frames.yaml",
}


def shown(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it (what a user typed), else as it is."""
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)


def _synth(out: Path, seed: int, size: str) -> dict:
    from encoder.data.syngym import VERSION, format_summary, synthesize

    manifest = out / "manifest.json"
    if manifest.is_file():
        info = read_json_object(manifest)
        if (info.get("seed"), info.get("size"), info.get("version")) == (seed, size, VERSION):
            print(f"[1/6] SynGym already in {shown(out)} (seed {seed}, {size})")
            return info
    print(f"[1/6] generating SynGym ({size}, seed {seed}) into {shown(out)}")
    summary = synthesize(out, seed=seed, size=size)
    print(format_summary(summary | {"out": shown(out)}))
    return summary


def _train(config: Path, data: Path, out: Path, overrides: list[str], fork_from: Path | None = None) -> dict:
    from encoder.train import train

    results = out / "final" / "results.json"
    if results.is_file():
        print(f"      {out.name}: already trained")
        return read_json_object(results)
    cfg = load_config(config, [f"data.root={data}", f"out={out}", *overrides])
    fork = shown(fork_from) if fork_from is not None and fork_from.is_dir() else None  # as printed and recorded
    return train(cfg, resume=True, fork_from=fork)


def fork_step(config: Path, overrides: list[str]) -> int | None:
    """The step where SeFAR's supervised-only epochs end: up to it SeFAR trains exactly as the supervised-only run,
    so it forks from that run's checkpoint there instead of training those steps again (None: nothing shared)."""
    from encoder.train import supervised_steps_of

    return supervised_steps_of(load_config(config, overrides))


def _gymqa(data: Path, labeled: Path, out: Path, seed: int) -> dict:
    """Gym-QA (element questions, the paper's random distractors) from SynGym's FineGym-format files; the train
    questions cover exactly the encoder's labeled clips."""
    from gymqa.build import BuildConfig, build_gymqa

    qa = build_gymqa(
        categories=data / "categories.txt",
        set_names=data / "set_categories.txt",
        train_list=data / "train_element.txt",
        val_list=data / "val_element.txt",
        out_dir=out,
        labeled=labeled,
        config=BuildConfig(seed=seed),
        name="gymqa-syngym",
    )
    return {"folder": shown(out), "train": len(qa.train), "test": len(qa.test)}


def encoder_table(rows: list[dict]) -> Table:
    """Both models of each run: the student and its EMA teacher (top-5, mean class accuracy, direction pairs:
    the teacher's; pseudo-labels: the accuracy of the teacher's pseudo-labels against the hidden labels, averaged
    over the steps logged in the last epoch)."""
    table = Table("Encoders (SynGym val, element level)", ["model", "labeled clips", "steps", "top-1 student",
                  "top-1 teacher", "top-5", "mean class acc", "direction pairs", "pseudo-label acc", "train s"])
    for r in rows:
        pseudo = r.get("pseudo_label_accuracy")
        table.add(r["mode"], r["labeled"], r["step"], f"{100 * r['student']['top1']:.1f}",
                  f"{100 * r['teacher']['top1']:.1f}", f"{100 * r['teacher']['top5']:.1f}",
                  f"{100 * r['teacher']['mean_class_accuracy']:.1f}", f"{100 * r['direction_pairs']:.1f}",
                  "-" if pseudo is None else f"{100 * pseudo:.1f}", f"{r['train_seconds']:.0f}")
    return table


def direction_pair_accuracy(run: Path, pairs: list[tuple[int, int]]) -> float:
    """How often the teacher scores a val clip's class above its time-reversed sibling (clips of paired classes);
    a tie counts as a loss, as in the SynGym benches."""
    from safetensors.torch import load_file

    from encoder.evaluate import direction_pair_accuracy as pair_accuracy, direction_partners

    pred = load_file(run / "final" / "val_predictions_teacher.safetensors")
    labels = pred["labels"].long()
    accuracy, _ = pair_accuracy(pred["probs"], labels, direction_partners(labels.tolist(), pairs))
    if accuracy is None:
        raise ValueError(f"{run}: no val clip of a direction-pair class")
    return accuracy


def pseudo_label_accuracy(run: Path) -> float | None:
    """Mean of the pseudo-label accuracy logged during the last epoch (None for a supervised run). Each record
    holds the micro-batches of the step it was logged at (every ``log_every`` steps), not every step between."""
    from common.jsonio import read_jsonl

    records = [r for _, r in read_jsonl(run / "metrics.jsonl") if r.get("pseudo_accuracy") is not None]
    if not records:
        return None
    last = records[-1]["epoch"]
    tail = [r["pseudo_accuracy"] for r in records if r["epoch"] > last - 1]
    return sum(tail) / len(tail)


def classifier_answers(run: Path, questions: Path, types: list[str], limit: int | None, circular: bool,
                       direction_pairs: dict[str, str]) -> dict:
    """The encoder's own classifier answering the adapters' Gym-QA questions, without an LLM: per question, the
    option whose name the teacher gives the highest probability on the clip (the sum over the classes of that name:
    some names belong to two events). What the adapters could take from the classifier alone, scored as theirs
    are (same questions, CircularEval, and the direction-pair check: the true name's probability above its
    time-reversed sibling's); returns an evaluation summary shaped like an adapter's, with method ``classifier``."""
    from safetensors.torch import load_file

    from bridge.qa import read_question_set
    from common.finegym import read_categories
    from encoder.run import build_eval_items
    from gymqa.build import clip_id_of
    from gymqa.rotate import rotate
    from gymqa.score import Prediction, score

    began = time.perf_counter()
    cfg = load_config(run / "config.yaml")
    predictions = load_file(run / "final" / "val_predictions_teacher.safetensors")
    probs, labels = predictions["probs"].double(), predictions["labels"].long()
    items = build_eval_items(cfg)
    if [s.label for s in items] != labels.tolist():
        raise ValueError(f"{run}: the saved val predictions do not follow the run's val list")
    row = {clip_id_of(s.path): i for i, s in enumerate(items)}
    classes: dict[str, list[int]] = {}
    for c in read_categories(cfg.data_path(cfg.data.categories)):
        classes.setdefault(c.name, []).append(c.label)
    originals = read_question_set(questions, types, limit=limit).questions
    scores, wins = {}, []
    for q in originals:
        if q.clip_id not in row:
            raise ValueError(f"{questions}: question {q.id}'s clip {q.clip_id} is not in {run}'s val list")
        p = probs[row[q.clip_id]]
        unknown = [o for o in q.options if o not in classes]
        if unknown:
            raise ValueError(f"{questions}: question {q.id}'s option {unknown[0]!r} names no class of {run}")
        scores[q.id] = {o: math.log(max(p[classes[o]].sum().item(), 1e-300)) for o in q.options}
        if (sibling := direction_pairs.get(q.answer_text)) is not None:
            wins.append(p[classes[q.answer_text]].sum().item() > p[classes[sibling]].sum().item())
    everything = rotate(originals) if circular else originals
    report = score(everything, {q.id: Prediction("loglikelihoods", [scores[q.base_id][o] for o in q.options])
                                for q in everything})
    return {"questions": len(originals), "methods": {"classifier": {
        "accuracy": report.overall.accuracy, "circular": (report.circular or {}).get("accuracy"),
        "n": report.overall.n, "seconds": round(time.perf_counter() - began, 1),
        "direction_pairs": len(wins), "pair_accuracy": sum(wins) / len(wins) if wins else None}}}


# Set by adapter_stage from the quickstart folder: a folder that moved keeps its runs.
_STAGE_PATHS = ("data.train_questions", "data.train_list", "data.videos", "encoder.export")


def adapter_stage(out: Path, name: str, overrides: list[str], llms: dict) -> dict:
    """Train (resuming) and score one adapter of the quickstart; returns the evaluation summary. ``llms`` keeps
    the loaded LLM for the next adapter (one load for the whole quickstart)."""
    from bridge.config import load_config
    from bridge.run import evaluate_run
    from bridge.train import check_resumable, train

    data = out / "syngym"
    paths = [
        f"out={out / 'bridge' / name}", f"data.train_questions={out / 'gymqa' / 'train.jsonl'}",
        f"data.test_questions={out / 'gymqa' / 'test.jsonl'}", f"data.train_list={data / 'train_element.txt'}",
        f"data.test_list={data / 'val_element.txt'}", f"data.videos={data / 'videos'}",
        f"data.direction_pairs={data / 'manifest.json'}",
    ]
    if name == "sefar":
        paths.append(f"encoder.export={out / 'export' / 'sefar_tiny'}")
    cfg = load_config(BRIDGE_CONFIGS[name], [*paths, *overrides])
    run = Path(cfg.out)
    if (run / "train.json").is_file() and (run / "eval" / "results.json").is_file():
        check_resumable(run, cfg, free=_STAGE_PATHS)  # finished under this config, or refused
        print(f"      bridge/{name}: already trained and scored")
        trained = read_json_object(run / "train.json")
        summary = read_json_object(run / "eval" / "results.json")
    else:
        from bridge.llm import LLMConfig, load_llm

        key = dumps(vars(cfg.llm), sort_keys=True)
        if key not in llms:
            llms[key] = load_llm(LLMConfig(**vars(cfg.llm)))
        trained = train(cfg, llm=llms[key])
        summary = evaluate_run(run, loaded=llms[key])
    scored = {"types": list(cfg.data.types), "max_questions": cfg.eval.max_questions, "circular": cfg.eval.circular}
    return summary | {"train_seconds": trained["train_seconds"], "feature_seconds": trained["feature_seconds"],
                      "scored": scored}


def run_quickstart(out: str | os.PathLike, seed: int = 0, size: str = "default",
                   config: str | os.PathLike = DEFAULT_CONFIG, overrides: list[str] | None = None,
                   bridge_overrides: list[str] | None = None) -> dict:
    """Run every stage into ``out``; returns (and writes) the summary."""
    from encoder.export import export

    from bridge.evaluate import results_table
    from bridge.qa import direction_pair_names

    started = provenance()
    out = Path(out).resolve()
    began = time.perf_counter()
    data = out / "syngym"
    pairs = [tuple(p) for p in _synth(data, seed, size)["direction_pairs"]]
    rows = []
    shared = fork_step(Path(config), [f"data.root={data}", *(overrides or [])])
    for i, mode in enumerate(("supervised", "sefar")):
        run = out / "encoder" / mode
        if mode == "supervised":
            extra, fork = [f"save_steps=[{shared}]"] if shared else [], None
            print(f"[{2 + i}/6] training {mode} on 10% labels")
        else:
            extra, fork = [], out / "encoder" / "supervised" / "checkpoints" / f"step_{shared:07d}" if shared else None
            print(f"[{2 + i}/6] training {mode} on 10% labels" + (
                f" (its first {shared} steps, supervised-only, are the supervised run's: forked from there)"
                if shared else ""))
        result = _train(Path(config), data, run, [f"ssl.mode={mode}", *extra, *(overrides or [])], fork)
        split = read_json_object(run / "split" / "split.json")
        rows.append({"mode": mode, "labeled": split["num_labeled"], **result,
                     "direction_pairs": direction_pair_accuracy(run, pairs),
                     "pseudo_label_accuracy": pseudo_label_accuracy(run)})
    print("[4/6] exporting the SeFAR teacher and building Gym-QA on SynGym")
    export(out / "encoder" / "sefar", out / "export" / "sefar_tiny")
    export(out / "encoder" / "supervised", out / "export" / "supervised_tiny")  # for sefar bridge compare
    qa = _gymqa(data, out / "encoder" / "sefar" / "split" / "labeled.txt", out / "gymqa", seed)
    encoders_seconds = time.perf_counter() - began
    bridge, llms = {}, {}
    for i, name in enumerate(("sefar", "frames")):
        print(f"[{5 + i}/6] adapter on SmolLM2 over {'SeFAR' if name == 'sefar' else 'frame-wise EfficientNet-Lite0'} "
              "features: train and score")
        bridge[name] = adapter_stage(out, name, [f"seed={seed}", *(bridge_overrides or [])], llms)
    scored = bridge["sefar"]["scored"]
    reference = classifier_answers(out / "encoder" / "sefar", out / "gymqa" / "test.jsonl", scored["types"],
                                   scored["max_questions"], scored["circular"],
                                   direction_pair_names(data / "manifest.json"))
    wall = time.perf_counter() - began
    delta = round(100 * (rows[1]["teacher"]["top1"] - rows[0]["teacher"]["top1"]), 2)
    summary = {
        "rows": rows,
        "sefar_minus_supervised_top1": delta,
        "export": shown(out / "export" / "sefar_tiny"),
        "gymqa": qa,
        "bridge": bridge,
        "classifier": reference,
        "encoders_seconds": round(encoders_seconds, 1),
        "wall_seconds": round(wall, 1),
    }
    labels = {"sefar": "SeFAR features", "frames": "frame-wise EfficientNet-Lite0"}
    text = (f"SynGym {size}, seed {seed}: {rows[0]['labeled']} labeled clips (10%), 33 element classes (chance 3.0%). "
            f"SeFAR - supervised-only: {delta:+.1f} top-1 points (teachers). Gym-QA on SynGym: {qa['train']} train / "
            f"{qa['test']} test questions. Whole job {wall / 60:.1f} min of wall clock, of which generation, both "
            f"encoders, exports and Gym-QA {encoders_seconds / 60:.1f} min.")
    print()
    write_result(out / "quickstart.json", "Quickstart: the main job on SynGym (10% labels)",
                 [encoder_table(rows), results_table(
                     [*((labels[k], v) for k, v in bridge.items()), ("SeFAR teacher's classifier (no LLM)", reference)],
                     "Q-Former adapters into SmolLM2 (Gym-QA on SynGym, 4 options, chance 25%); the last row: the "
                     "encoder's own classifier on the same questions")], summary,
                 summary=text, started=started)
    print(text)
    return summary
