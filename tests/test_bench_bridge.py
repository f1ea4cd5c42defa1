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
