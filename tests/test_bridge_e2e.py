"""A short real run clearly above chance: tiny SynGym -> frame-wise ImageNet features -> Q-Former -> SmolLM2.

Real models (the embedded EfficientNet-Lite0, all-MiniLM-L6-v2 and SmolLM2-135M-Instruct), real generated clips,
the shipped recipe (configs/bridge/syngym_smollm2_frames.yaml) with a short budget, on Gym-QA's apparatus questions
("On which apparatus is this athlete performing?", one option per SynGym event: chance 1/3): 66 train questions
(every train clip), 33 test questions, scored by option likelihood. The element questions of the quickstart need a
longer budget (README, Results).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.run import evaluate_run
from bridge.train import train
from gymqa.build import BuildConfig, build_gymqa

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bridge" / "syngym_smollm2_frames.yaml"


@pytest.mark.slow
def test_short_run_on_tiny_syngym_is_clearly_above_chance(tmp_path):
    from encoder.data.syngym import synthesize

    data = tmp_path / "syngym"
    synthesize(data, seed=0, size="tiny", workers=1)
    qa = build_gymqa(data / "categories.txt", data / "set_categories.txt", data / "train_element.txt",
                     data / "val_element.txt", tmp_path / "gymqa",
                     config=BuildConfig(types=("event",), labeled_fraction=1.0, seed=0))
    assert (len(qa.train), len(qa.test)) == (66, 33)
    options = len(qa.test[0].options)
    cfg = load_config(CONFIG, [
        f"out={tmp_path / 'run'}", f"data.train_questions={tmp_path / 'gymqa' / 'train.jsonl'}",
        f"data.test_questions={tmp_path / 'gymqa' / 'test.jsonl'}", f"data.train_list={data / 'train_element.txt'}",
        f"data.test_list={data / 'val_element.txt'}", f"data.videos={data / 'videos'}", "data.types=[event]",
        f"data.direction_pairs={data / 'manifest.json'}",
        "train.steps=20", "train.save_every=20", "eval.max_questions=null",  # 20 and 30 steps: 24 of 33 right
    ])
    trained = train(cfg)
    first, last = trained["losses"][:5], trained["losses"][-5:]
    assert sum(last) < sum(first)
    result = evaluate_run(cfg.out)["methods"]["likelihood_mean"]
    assert result["n"] == 33
    assert result["accuracy"] >= 0.6 > 1 / options  # 20+ of 33 right by luck at chance <= 1/3: p < 0.001
