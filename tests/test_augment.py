import pytest
import torch

from encoder.augment import (
    TEMPORAL_PERTURBATIONS,
    eval_transform,
    normalize,
    resize_short_side,
    spatial_crops,
    strong_spatial_transform,
    temporal_perturbation,
    weak_transform,
)
from common.errors import ConfigError
from encoder.data.sampling import PAPER_COMBOS, ElementLayout

LAYOUT = ElementLayout.from_combo("2-2-4")  # fine (1, 5), (3, 7); context (0, 2, 4, 6)


def _coded_clip(k: int = 8, c: int = 3, h: int = 4, w: int = 4) -> torch.Tensor:
    """(C, K, H, W) whose pixel values are 10 * frame + channel."""
    frame = torch.arange(k).view(1, k, 1, 1)
    channel = torch.arange(c).view(c, 1, 1, 1)
    return (10 * frame + channel).expand(c, k, h, w).float()


def _random_clip(k=8, h=48, w=64, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (k, 3, h, w), generator=gen, dtype=torch.uint8)  # (K, C, H, W)


# -------------------------------------------------------------------------------------------- temporal


def test_mod_perturb_reverses_time_of_fine_elements_only():
    clip = _coded_clip()
    out = clip[:, temporal_perturbation("mod-perturb")(LAYOUT, torch.Generator())]  # (C, K, H, W)
    frames = out[0, :, 0, 0] / 10  # source frame shown at each position
    assert frames.tolist() == [0, 5, 2, 7, 4, 1, 6, 3]  # (1, 5) -> (5, 1), (3, 7) -> (7, 3); context in place
    channels = out[:, :, 0, 0] % 10
    assert (channels == torch.arange(3).view(3, 1)).all()  # colour channels untouched


def test_mod_perturb_on_longer_fine_elements():
    layout = ElementLayout.from_combo("4-4")  # fine (1, 3, 5, 7), context (0, 2, 4, 6)
    idx = temporal_perturbation("mod-perturb")(layout, torch.Generator())
    assert idx.tolist() == [0, 7, 2, 5, 4, 3, 6, 1]


@pytest.mark.parametrize("name", sorted(TEMPORAL_PERTURBATIONS))
@pytest.mark.parametrize("combo", PAPER_COMBOS)
def test_perturbation_returns_valid_index(name, combo):
    layout = ElementLayout.from_combo(combo)
    k = layout.num_frames
    for seed in range(5):
        idx = TEMPORAL_PERTURBATIONS[name](layout, torch.Generator().manual_seed(seed))
        assert idx.dtype == torch.long and idx.shape == (k,)
        assert 0 <= int(idx.min()) and int(idx.max()) < k


@pytest.mark.parametrize("name", sorted(TEMPORAL_PERTURBATIONS))
def test_perturbation_is_deterministic_under_a_seed(name):
    draws = [TEMPORAL_PERTURBATIONS[name](LAYOUT, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*draws)


def test_perturbation_semantics():
    gen = torch.Generator().manual_seed(0)
    k = LAYOUT.num_frames
    assert TEMPORAL_PERTURBATIONS["spatial-only"](LAYOUT, gen).tolist() == list(range(k))
    assert TEMPORAL_PERTURBATIONS["all-reverse"](LAYOUT, gen).tolist() == list(range(k))[::-1]
    for seed in range(10):
        gen = torch.Generator().manual_seed(seed)
        assert sorted(TEMPORAL_PERTURBATIONS["all-shuffle"](LAYOUT, gen).tolist()) == list(range(k))
        local = TEMPORAL_PERTURBATIONS["local-shuffle"](LAYOUT, gen)  # windows of 2 for K = 8
        assert sorted(local.tolist()) == list(range(k)) and (local // 2 == torch.arange(k) // 2).all()
        warp = TEMPORAL_PERTURBATIONS["warping"](LAYOUT, gen)
        assert (warp.diff() >= 0).all() and warp[0] == 0 and warp[-1] == k - 1
        slow = TEMPORAL_PERTURBATIONS["slow"](LAYOUT, gen).tolist()
        assert slow in ([0, 0, 2, 2, 4, 4, 6, 6], [1, 1, 3, 3, 5, 5, 7, 7])
        half = TEMPORAL_PERTURBATIONS["t-half"](LAYOUT, gen).tolist()
        assert half in ([0, 0, 1, 1, 2, 2, 3, 3], [4, 4, 5, 5, 6, 6, 7, 7])


def test_random_perturbations_vary_with_the_seed():
    for name in ("all-shuffle", "local-shuffle", "warping", "slow", "t-half"):
        perturb = TEMPORAL_PERTURBATIONS[name]
        draws = {tuple(perturb(LAYOUT, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
        assert len(draws) > 1, name


def test_unknown_perturbation_lists_valid_names():
    with pytest.raises(ConfigError, match="mod-perturb"):
        temporal_perturbation("reverse")


# --------------------------------------------------------------------------------------------- spatial


def test_randaugment_runs_and_treats_all_frames_alike():
    frame = _random_clip(k=1)
    clip = frame.expand(8, -1, -1, -1).clone()  # 8 identical frames
    strong = strong_spatial_transform(num_ops=2, magnitude=9)
    torch.manual_seed(0)
    outs = [strong(clip) for _ in range(5)]
    assert any(not torch.equal(out, clip) for out in outs)  # it really runs
    for out in outs:
        assert out.shape == clip.shape and out.dtype == torch.uint8
        assert (out == out[:1]).all()  # one op draw for the whole clip


def test_weak_transform_crops_flips_and_jitters_scale_identically_per_frame():
    frame = _random_clip(k=1)
    clip = frame.expand(8, -1, -1, -1).clone()
    weak = weak_transform(crop_size=32, short_side=(32, 48))
    torch.manual_seed(0)
    outs = [weak(clip) for _ in range(10)]
    for out in outs:
        assert out.shape == (8, 3, 32, 32)
        assert (out == out[:1]).all()
    assert len({out.float().sum().item() for out in outs}) > 1


def test_weak_transform_rejects_crop_larger_than_short_side():
    with pytest.raises(ValueError, match="crop_size"):
        weak_transform(crop_size=64, short_side=(32, 48))


def test_eval_transform_is_deterministic_centre_crop():
    clip = _random_clip(h=48, w=64)
    out = eval_transform(crop_size=32, short_side=48)(clip)
    assert torch.equal(out, clip[..., 8:40, 16:48])


def test_spatial_crops_left_centre_right():
    clip = _random_clip(h=32, w=64)
    left, centre, right = spatial_crops(clip, 3, 32)
    assert torch.equal(left, clip[..., :, :32])
    assert torch.equal(centre, clip[..., :, 16:48])
    assert torch.equal(right, clip[..., :, 32:])
    (only,) = spatial_crops(clip, 1, 32)
    assert torch.equal(only, centre)
    portrait = clip.transpose(-1, -2)  # 64 x 32: top/centre/bottom
    assert torch.equal(spatial_crops(portrait, 3, 32)[2], portrait[..., 32:, :])
    with pytest.raises(ValueError, match="resize its short side"):
        spatial_crops(clip, 3, 48)


def test_resize_short_side_keeps_aspect():
    assert resize_short_side(_random_clip(h=48, w=64), 24).shape == (8, 3, 24, 32)


def test_normalize_layout_and_values():
    clip = torch.full((8, 3, 4, 4), 255, dtype=torch.uint8)
    clip[:, 1] = 0
    out = normalize(clip, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert out.shape == (3, 8, 4, 4) and out.dtype == torch.float32
    assert out[:, 0, 0, 0].tolist() == [2.0, -1.0, 0.5]
    torch.testing.assert_close(normalize(clip.float() / 255, (0.5,) * 3, (0.25, 0.5, 1.0)), out)


def test_reference_strong_view_crops_each_element_on_its_own():
    from encoder.augment import per_element_views

    frames = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 3, 4, 4).clone()  # frame k has value k
    calls = []

    def record(clip):
        calls.append(clip[:, 0, 0, 0].tolist())
        return clip[..., :2, :2] + 10 * len(calls)  # a different "draw" per call

    out = per_element_views(frames, LAYOUT, record)
    assert calls == [[1, 5], [3, 7], [0, 2, 4, 6]]  # one draw per element, on that element's frames
    assert out.shape == (8, 3, 2, 2)
    assert out[:, 0, 0, 0].tolist() == [30, 11, 32, 23, 34, 15, 36, 27]


def test_channel_dropout_drops_whole_channels_per_element():
    from encoder.augment import channel_dropout

    clip = torch.ones(3, 8, 4, 4)  # (C, K, H, W)
    out = channel_dropout(clip, LAYOUT, 0.5, torch.Generator().manual_seed(3))
    values = set()
    for positions in LAYOUT.elements:
        for c in range(3):
            part = out[c, list(positions)]
            assert part.eq(part.flatten()[0]).all()  # one decision per channel and element
            values.add(float(part.flatten()[0]))
    assert values == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert torch.equal(channel_dropout(clip, LAYOUT, 0.0, torch.Generator()), clip)
