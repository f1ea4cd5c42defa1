"""bench/bridge_speed.py can measure an untrained paper-scale encoder: its export round-trips through encoder.export.load."""

import torch


def _bench():
    from bench import bridge_speed

    return bridge_speed


def test_untrained_export_loads_as_an_encoder(tmp_path):
    from encoder.export import load

    bench = _bench()
    out = bench.untrained_export("tiny", tmp_path / "export")
    encoder = load(out)
    pp = encoder.preprocess_config
    assert (pp.num_frames, pp.img_size) == (8, 64)
    assert encoder.layout.sizes == (2, 2, 2, 2)
    frames = torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8).numpy()
    with torch.no_grad():
        tokens = encoder.features(encoder.preprocess(frames))
    assert tokens["element_cls"].shape == (1, 4, 96)


def test_bridge_eval_bench_writes_equal_scores(tmp_path, monkeypatch):
    """bench/bridge_eval.py on a tiny LLaMA: every batched run's scores equal the one-at-a-time ones."""
    import sys

    from bridge_fixtures import tiny_llama

    from bench import bridge_eval
    from common.results import read_result

    out = tmp_path / "bridge_eval.json"
    monkeypatch.setattr(sys, "argv", ["bridge_eval", "--llm", str(tiny_llama(tmp_path / "llama")), "--questions", "7",
                                      "--batch-sizes", "1,3", "--out", str(out)])
    bridge_eval.main()
    data = read_result(out)["data"]
    assert data["questions"] == 7 and set(data["batched"]) == {"1", "3"}
    for run in data["batched"].values():
        assert run["max_abs_difference"]["likelihood_sum"] < 1e-4
        assert run["max_abs_difference"]["likelihood_mean"] < 1e-4


def test_quickstart_adapters_bench_tabulates_seeds_and_refuses_a_missing_quickstart(tmp_path, monkeypatch, capsys):
    import pytest

    from bench import quickstart_adapters as bench
    from common.results import read_result
    from pipelines import quickstart

    qs = tmp_path / "qs"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quickstart", str(qs), "--out", str(tmp_path / "r.json")])
    assert exit_info.value.code == 2 and not (tmp_path / "r.json").exists()
    assert capsys.readouterr().err.startswith(f"error: {qs / 'export' / 'sefar_tiny' / 'config.json'}: not found")

    for rel in ("export/sefar_tiny/config.json", "gymqa/test.jsonl", "syngym/manifest.json",
                "encoder/sefar/final/val_predictions_teacher.safetensors"):
        (qs / rel).parent.mkdir(parents=True, exist_ok=True)
        (qs / rel).write_text("{}")
    calls = []

    def stage(out, name, overrides, llms):
        calls.append((name, overrides[:2]))
        seed = int(overrides[0].split("=")[1])
        accuracy = {"sefar": 0.6, "frames": 0.4}[name] + seed / 10
        return {"scored": {"types": ["element"], "max_questions": 200, "circular": True}, "train_seconds": 100 + seed,
                "methods": {"likelihood_mean": {"accuracy": accuracy, "pair_accuracy": 0.5, "direction_pairs": 157}}}

    reference = {"accuracy": 0.8, "pair_accuracy": 0.58, "n": 200, "direction_pairs": 157}
    monkeypatch.setattr(quickstart, "adapter_stage", stage)
    monkeypatch.setattr(quickstart, "classifier_answers", lambda *a: {"methods": {"classifier": reference}})
    monkeypatch.setattr("bridge.qa.direction_pair_names", lambda path: {})
    monkeypatch.setattr("common.devices.native_bf16", lambda: True)  # the default --dtypes auto resolves to bf16
    summary = bench.main(["--quickstart", str(qs), "--seeds", "0", "1", "--runs", str(tmp_path / "runs"),
                          "--out", str(tmp_path / "r.json")])
    assert calls == [("sefar", ["seed=0", "llm.dtype=bfloat16"]), ("sefar", ["seed=1", "llm.dtype=bfloat16"]),
                     ("frames", ["seed=0", "llm.dtype=bfloat16"]), ("frames", ["seed=1", "llm.dtype=bfloat16"])]
    assert [r["accuracy"] for r in summary["results"]["frames bfloat16"]] == [0.4, 0.5]
    rows = read_result(tmp_path / "r.json")["tables"][0]["rows"]
    assert rows[0][:7] == ["SeFAR features", "bfloat16", "0 1", "65.0 ± 7.1", "50.0 ± 0.0", "60.0 / 70.0", "50.0 / 50.0"]
    assert rows[-1][:5] == ["SeFAR teacher's classifier (no LLM)", "-", "-", "80.0", "58.0"]
