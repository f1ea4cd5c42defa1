"""A short real run clearly above chance: tiny SynGym -> frame-wise ImageNet features -> Q-Former -> SmolLM2.

Real models (the embedded EfficientNet-Lite0, all-MiniLM-L6-v2 and SmolLM2-135M-Instruct), real generated clips,
the shipped recipe with a short budget: 66 train questions (two clips per class), 33 test questions with four
options (chance 25%), scored by option likelihood.
"""

from __future__ import annotations

import pytest

from bridge.config import load_config
from bridge.run import evaluate_run
from bridge.train import train
from gymqa.build import BuildConfig, build_gymqa

CONFIG = "configs/bridge/syngym_smollm2_frames.yaml"


@pytest.mark.slow
def test_short_run_on_tiny_syngym_is_clearly_above_chance(tmp_path):
    from pathlib import Path

    from encoder.data.syngym import synthesize

    data = tmp_path / "syngym"
    synthesize(data, seed=0, size="tiny", workers=1)
    qa = build_gymqa(data / "categories.txt", data / "set_categories.txt", data / "train_element.txt",
                     data / "val_element.txt", tmp_path / "gymqa", config=BuildConfig(labeled_fraction=1.0, seed=0))
    assert (len(qa.train), len(qa.test)) == (66, 33)
    cfg = load_config(Path(__file__).resolve().parents[1] / CONFIG, [
        f"out={tmp_path / 'run'}", f"data.train_questions={tmp_path / 'gymqa' / 'train.jsonl'}",
        f"data.test_questions={tmp_path / 'gymqa' / 'test.jsonl'}", f"data.train_list={data / 'train_element.txt'}",
        f"data.test_list={data / 'val_element.txt'}", f"data.videos={data / 'videos'}",
        f"data.direction_pairs={data / 'manifest.json'}", "train.steps=60", "eval.max_questions=null",
    ])
    trained = train(cfg)
    assert trained["losses"][-1] < trained["losses"][0]
    summary = evaluate_run(cfg.out)
    result = summary["methods"]["likelihood_mean"]
    assert result["n"] == 33
    assert result["accuracy"] >= 14 / 33  # chance 25%: 14 or more right of 33 happens by luck with p < 0.05
