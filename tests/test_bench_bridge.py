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
