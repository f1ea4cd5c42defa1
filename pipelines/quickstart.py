"""The main job on the embedded default (``make quickstart``): SynGym → encoder (supervised vs SeFAR) → export.

Every stage writes into ``OUT`` and is skipped when its output is already complete, so an interrupted
quickstart resumes where it stopped:

    OUT/syngym/                   the generated dataset (``sefar data synth``)
    OUT/encoder/supervised/       supervised-only run on the 10% labeled clips
    OUT/encoder/sefar/            SeFAR run: same labeled clips, same steps and labeled batch
    OUT/export/sefar_tiny/        frozen SeFAR teacher (``sefar encoder export``)
    OUT/gymqa/                    Gym-QA built from SynGym's FineGym-format files
    OUT/quickstart.json           the comparison table below, as JSON
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from encoder.config import load_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "encoder" / "syngym_tiny.yaml"


def _synth(out: Path, seed: int, size: str) -> dict:
    from encoder.data.syngym import VERSION, format_summary, synthesize

    manifest = out / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text(encoding="utf-8"))
        if (info.get("seed"), info.get("size"), info.get("version")) == (seed, size, VERSION):
            print(f"[1/4] SynGym already in {out} (seed {seed}, {size})")
            return info
    print(f"[1/4] generating SynGym ({size}, seed {seed}) into {out}")
    summary = synthesize(out, seed=seed, size=size)
    print(format_summary(summary))
    return summary


def _train(config: Path, data: Path, out: Path, overrides: list[str]) -> dict:
    from encoder.train import train

    results = out / "final" / "results.json"
    if results.is_file():
        print(f"      {out.name}: already trained")
        return json.loads(results.read_text(encoding="utf-8"))
    cfg = load_config(config, [f"data.root={data}", f"out={out}", *overrides])
    return train(cfg, resume=True)


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
    return {"folder": str(out), "train": len(qa.train), "test": len(qa.test)}


def format_table(rows: list[dict]) -> str:
    """Both models of each run: the student and its EMA teacher (top-5 and mean class accuracy: the teacher's)."""
    lines = [
        "| model | labeled clips | steps | top-1 student | top-1 teacher | top-5 | mean class acc | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['labeled']} | {r['step']} | {100 * r['student']['top1']:.1f} | "
            f"{100 * r['teacher']['top1']:.1f} | {100 * r['teacher']['top5']:.1f} | "
            f"{100 * r['teacher']['mean_class_accuracy']:.1f} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def run_quickstart(out: str | os.PathLike, seed: int = 0, size: str = "default",
                   config: str | os.PathLike = DEFAULT_CONFIG, overrides: list[str] | None = None) -> dict:
    """Run every stage into ``out``; returns (and writes) the summary."""
    from encoder.export import export

    out = Path(out)
    began = time.perf_counter()
    data = out / "syngym"
    _synth(data, seed, size)
    rows = []
    for i, mode in enumerate(("supervised", "sefar")):
        print(f"[{2 + i}/4] training {mode} on 10% labels")
        result = _train(Path(config), data, out / "encoder" / mode, [f"ssl.mode={mode}", *(overrides or [])])
        split = json.loads((out / "encoder" / mode / "split" / "split.json").read_text(encoding="utf-8"))
        rows.append({"mode": mode, "labeled": split["num_labeled"], **result})
    print("[4/4] exporting the SeFAR teacher and building Gym-QA on SynGym")
    export(out / "encoder" / "sefar", out / "export" / "sefar_tiny")
    qa = _gymqa(data, out / "encoder" / "sefar" / "split" / "labeled.txt", out / "gymqa", seed)
    summary = {
        "rows": rows,
        "sefar_minus_supervised_top1": round(100 * (rows[1]["top1"] - rows[0]["top1"]), 2),
        "export": str(out / "export" / "sefar_tiny"),
        "gymqa": qa,
        "wall_seconds": round(time.perf_counter() - began, 1),
    }
    tmp = out / "quickstart.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, out / "quickstart.json")
    print()
    print(format_table(rows))
    print(f"SeFAR - supervised: {summary['sefar_minus_supervised_top1']:+.1f} top-1 points "
          f"(SynGym val, {rows[0]['labeled']} labeled clips); total {summary['wall_seconds']:.0f} s")
    return summary
