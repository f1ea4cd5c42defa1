import numpy as np
import pytest

from common.errors import ConfigError
from encoder.data.sampling import PAPER_COMBOS, ElementLayout, parse_combo, segment_frame_indices


def test_224_layout_is_the_papers():
    layout = ElementLayout.from_combo("{2-2-4}")
    assert layout.num_frames == 8
    assert layout.fine == ((1, 5), (3, 7))
    assert layout.context == (0, 2, 4, 6)
    assert layout.combo == "2-2-4"


@pytest.mark.parametrize("combo", PAPER_COMBOS)
def test_every_paper_combo_partitions_the_frames(combo):
    layout = ElementLayout.from_combo(combo)
    flat = sorted(p for element in layout.elements for p in element)
    assert flat == list(range(layout.num_frames))
    assert tuple(len(e) for e in layout.elements) == parse_combo(combo)
    for element in layout.fine:  # fine elements are evenly strided
        assert len(set(np.diff(element))) <= 1


def test_2224_layout_is_the_references():
    """The reference's decoder gives (f1, f6), (f2, f7), (f4, f9); (f0, f5) would take the context's first frame."""
    layout = ElementLayout.from_combo("2-2-2-4")
    assert layout.fine == ((1, 6), (2, 7), (4, 9))
    assert layout.context == (0, 3, 5, 8)


def test_other_layouts_are_pinned():
    assert ElementLayout.from_combo("2-4").elements == ((1, 4), (0, 2, 3, 5))
    assert ElementLayout.from_combo("2-2-8").fine == ((1, 7), (4, 10))


@pytest.mark.parametrize("bad", ["", "-", "2-x-4", "2-0-4", "2-4-1"])
def test_bad_combos_raise(bad):
    with pytest.raises(ConfigError):
        ElementLayout.from_combo(bad)


def test_eval_sampling_takes_segment_centres():
    assert segment_frame_indices(80, 8, train=False).tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    views = [segment_frame_indices(80, 8, train=False, views=2, view=v) for v in range(2)]
    assert views[0].tolist() == [2, 12, 22, 32, 42, 52, 62, 72]
    assert views[1].tolist() == [7, 17, 27, 37, 47, 57, 67, 77]


def test_train_sampling_stays_in_segments_and_is_seeded():
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = segment_frame_indices(80, 8, train=True, rng=rng)
        assert ((idx // 10) == np.arange(8)).all()
    a = segment_frame_indices(80, 8, train=True, rng=np.random.default_rng(3))
    b = segment_frame_indices(80, 8, train=True, rng=np.random.default_rng(3))
    assert (a == b).all()


def test_short_clips_repeat_frames():
    idx = segment_frame_indices(3, 8, train=False)
    assert len(idx) == 8 and idx.min() >= 0 and idx.max() <= 2
    assert sorted(set(idx.tolist())) == [0, 1, 2]
    assert segment_frame_indices(1, 8, train=True, rng=np.random.default_rng(0)).tolist() == [0] * 8


def test_single_element_combo_is_plain_clip():
    layout = ElementLayout.from_combo("8")
    assert layout.fine == () and layout.context == tuple(range(8))


def test_train_jitter_narrows_the_draw_towards_segment_centres():
    centres = segment_frame_indices(80, 8, train=False)
    # jitter 0: the evaluation centres, and the rng still advances as with any jitter
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert (segment_frame_indices(80, 8, train=True, rng=rng_a, jitter=0.0) == centres).all()
    segment_frame_indices(80, 8, train=True, rng=rng_b, jitter=0.7)
    assert rng_a.random() == rng_b.random()
    # jitter 1 (the default) is the whole segment, drawn exactly as before the option existed
    rng = np.random.default_rng(7)
    u = np.random.default_rng(7).random(8)
    expected = np.floor(np.arange(8) * 10.0 + u * 10.0).astype(np.int64)
    assert (segment_frame_indices(80, 8, train=True, rng=rng) == expected).all()
    assert (segment_frame_indices(80, 8, train=True, rng=np.random.default_rng(7), jitter=1.0) == expected).all()
    # jitter 0.5: the middle half of each 10-frame segment, frames 2.5..7.5 of it, and more than one of them
    rng = np.random.default_rng(0)
    seen = np.stack([segment_frame_indices(80, 8, train=True, rng=rng, jitter=0.5) for _ in range(200)])
    offsets = seen - np.arange(8) * 10
    assert offsets.min() >= 2 and offsets.max() <= 7 and len(np.unique(offsets)) >= 4
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="jitter"):
            segment_frame_indices(80, 8, train=True, rng=rng, jitter=bad)


def test_clip_dataset_reads_centre_frames_in_training_with_jitter_zero(tmp_path):
    from videos import frame_value, write_video

    from encoder.data.dataset import ClipDataset
    from encoder.data.splits import Sample

    path = write_video(tmp_path / "clip.mp4", n=40)

    def frames(ds):
        return [round(v / 8) * 8 for v in ds[0]["video"][:, 0].float().mean(dim=(1, 2)).tolist()]

    def keep(x, generator):
        return {"video": x}

    sample = Sample(path=str(path), label=0)
    centre = [frame_value(int(i)) for i in segment_frame_indices(40, 8, train=False)]
    assert frames(ClipDataset([sample], 8, keep, train=False)) == centre
    assert frames(ClipDataset([sample], 8, keep, train=True, jitter=0.0)) == centre
    drawn = [frames(ClipDataset([sample], 8, keep, train=True, seed=s)) for s in range(4)]
    assert any(d != centre for d in drawn)
    with pytest.raises(ValueError, match="jitter=2"):
        ClipDataset([sample], 8, keep, train=True, jitter=2)
