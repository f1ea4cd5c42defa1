"""The quickstart's adapter comparison over several seeds: SeFAR features vs frame-wise EfficientNet-Lite0 features.

    make quickstart                                        # the exports, Gym-QA and SynGym the adapters read
    python -m bench.quickstart_adapters                    # seeds 0-2, the configs' LLM dtype (auto)
    python -m bench.quickstart_adapters --dtypes bfloat16 float32

Each run is the quickstart's own adapter stage (:func:`pipelines.quickstart.adapter_stage`: the same configs, data
and scoring), with ``seed`` and ``llm.dtype`` set; the seed draws the adapter's initialisation and the order of its
training questions. A finished run (``train.json`` and ``eval/results.json`` in its folder under ``--runs``) is
read, not trained again, if it was trained under the same config (else one ``error:`` line: pass another ``--runs``). The last row of the table is the SeFAR teacher's own classifier on the same questions
(no LLM, no seed), what the adapters could take from the encoder's classifier alone. Reported: accuracy
(``likelihood_mean``, the quickstart's headline method) and direction pairs, mean ± std over the seeds, and every
seed's value, so a reader sees how far one quickstart run can move.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.syngym_tables import mean_std
from common.errors import ConfigError, DataError
from common.results import Table, provenance, write_result

ENCODERS = {"sefar": "SeFAR features", "frames": "frame-wise EfficientNet-Lite0"}
METHOD = "likelihood_mean"


def main(argv: list[str] | None = None) -> dict:
    from bridge.qa import direction_pair_names
    from common.devices import resolve_auto_dtype
    from pipelines.quickstart import adapter_stage, classifier_answers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quickstart", type=Path, default=Path("outputs/quickstart"),
                        help="the quickstart's output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["auto"], choices=["auto", "bfloat16", "float32"],
                        help="the frozen LLM's dtype (llm.dtype; auto: bfloat16 where this machine computes it "
                             "natively, else float32)")
    parser.add_argument("--runs", type=Path, default=Path("outputs/bench/quickstart_adapters"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/quickstart_adapters.json"))
    args = parser.parse_args(argv)

    started = provenance()
    qs = args.quickstart.resolve()
    needed = [qs / "export" / "sefar_tiny" / "config.json", qs / "gymqa" / "test.jsonl",
              qs / "syngym" / "manifest.json", qs / "encoder" / "sefar" / "final" / "val_predictions_teacher.safetensors"]
    missing = [p for p in needed if not p.is_file()]
    if missing:
        print(f"error: {missing[0]}: not found; run `make quickstart` (or pass --quickstart)", file=sys.stderr)
        raise SystemExit(2)
    results: dict[str, list[dict]] = {}
    llms: dict = {}
    scored = None
    args.dtypes = list(dict.fromkeys(resolve_auto_dtype(d, "--dtypes") for d in args.dtypes))
    for dtype in args.dtypes:
        for name in ENCODERS:
            for seed in args.seeds:
                run = args.runs.resolve() / f"{name}_{dtype}_seed{seed}"
                try:
                    summary = adapter_stage(qs, name, [f"seed={seed}", f"llm.dtype={dtype}", f"out={run}"], llms)
                except (DataError, ConfigError) as err:
                    print(f"error: {err}", file=sys.stderr)
                    raise SystemExit(2) from None
                scored = summary["scored"]
                r = summary["methods"][METHOD]
                results.setdefault(f"{name} {dtype}", []).append(
                    {"seed": seed, "accuracy": r["accuracy"], "pair_accuracy": r["pair_accuracy"],
                     "direction_pairs": r["direction_pairs"], "train_seconds": summary["train_seconds"]})
                print(f"{ENCODERS[name]}, LLM in {dtype}, seed {seed}: {100 * r['accuracy']:.1f}% "
                      f"(direction pairs {100 * r['pair_accuracy']:.1f}%)", flush=True)
    reference = classifier_answers(qs / "encoder" / "sefar", qs / "gymqa" / "test.jsonl", scored["types"],
                                   scored["max_questions"], scored["circular"],
                                   direction_pair_names(qs / "syngym" / "manifest.json"))["methods"]["classifier"]
    table = Table("Q-Former adapters into SmolLM2 over seeds (the quickstart's Gym-QA questions)",
                  ["features", "LLM dtype", "seeds", "accuracy", "direction pairs", "accuracy per seed",
                   "direction pairs per seed", "train s"])
    for key, rows in results.items():
        name, dtype = key.split()
        seconds = [r["train_seconds"] for r in rows]
        table.add(ENCODERS[name], dtype, " ".join(str(r["seed"]) for r in rows),
                  mean_std([r["accuracy"] for r in rows]), mean_std([r["pair_accuracy"] for r in rows]),
                  " / ".join(f"{100 * r['accuracy']:.1f}" for r in rows),
                  " / ".join(f"{100 * r['pair_accuracy']:.1f}" for r in rows),
                  f"{min(seconds):.0f}-{max(seconds):.0f}")
    table.add("SeFAR teacher's classifier (no LLM)", "-", "-", f"{100 * reference['accuracy']:.1f}",
              f"{100 * reference['pair_accuracy']:.1f}", "-", "-", "-")
    table.notes = (f"{reference['n']} test questions (4 options, chance 25%; {reference['direction_pairs']} with a "
                   f"time-reversed sibling: chance 50%), method {METHOD}; mean ± std over the seeds; the quickstart's "
                   f"exports, Gym-QA and configs (configs/bridge/syngym_smollm2*.yaml) with seed and llm.dtype set.")
    summary = {"seeds": args.seeds, "dtypes": args.dtypes, "method": METHOD, "results": results,
               "classifier": reference}
    write_result(args.out, "Quickstart adapters over seeds", [table], summary, started=started)
    return summary


if __name__ == "__main__":
    main()
