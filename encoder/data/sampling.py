"""Dual-level temporal elements: which frames of a clip each element sees.

A combo such as ``"2-2-4"`` lists the element sizes: every size but the last is a *fine* element, the last is
the *context* element. The clip is cut into ``K = sum(sizes)`` equal segments and one frame is taken per segment
(a random frame inside the segment in training, the segment's centre in evaluation), giving f0..f(K-1).

Fine element ``i`` of ``n``, with ``L`` frames, takes every ``s = K // L``-th frame starting at
``o_i = max(1, floor((2i + 1) * s / (2n)))`` (no fine element starts at f0, which stays in the context, as in the
reference's decoder); the context element keeps the remaining frames in order. ``"2-2-4"`` gives fine elements
(f1, f5) and (f3, f7) and the context element (f0, f2, f4, f6), as in the paper; ``"2-2-2-4"`` gives (f1, f6),
(f2, f7), (f4, f9), as the reference's decoder.

Elements are always listed in the combo's order: fine elements first, the context element last. A single size
(``"8"``) is the plain single-element model of the "without Dual-Ele" ablation: one context element, no fine.
Pure Python + numpy; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError

#: The combos studied in the paper (Tab. 6); any other valid combo works too.
PAPER_COMBOS = ("2-4", "2-2-4", "2-2-2-4", "2-2-6", "2-2-8")


@dataclass(frozen=True)
class ElementLayout:
    """Frame positions (indices into f0..f(K-1)) of each temporal element."""

    sizes: tuple[int, ...]
    elements: tuple[tuple[int, ...], ...]

    @property
    def num_frames(self) -> int:
        """K, the number of frames sampled from the clip."""
        return sum(self.sizes)

    @property
    def num_elements(self) -> int:
        return len(self.sizes)

    @property
    def fine(self) -> tuple[tuple[int, ...], ...]:
        return self.elements[:-1]

    @property
    def context(self) -> tuple[int, ...]:
        return self.elements[-1]

    @property
    def combo(self) -> str:
        return "-".join(str(s) for s in self.sizes)

    @classmethod
    def from_combo(cls, combo: str | tuple[int, ...] | list[int]) -> "ElementLayout":
        sizes = parse_combo(combo)
        k = sum(sizes)
        fine_sizes = sizes[:-1]
        n = len(fine_sizes)
        taken: set[int] = set()
        fine: list[tuple[int, ...]] = []
        for i, length in enumerate(fine_sizes):
            step = k // length
            offset = max(1, ((2 * i + 1) * step) // (2 * n))
            positions = tuple(offset + step * j for j in range(length))
            if taken.intersection(positions) or positions[-1] >= k:
                raise ConfigError(f"combo {combo!r}: fine elements overlap; use sizes like '2-2-4'")
            taken.update(positions)
            fine.append(positions)
        context = tuple(p for p in range(k) if p not in taken)
        if len(context) != sizes[-1]:
            raise ConfigError(f"combo {combo!r}: context element has {len(context)} frames, expected {sizes[-1]}")
        return cls(sizes=sizes, elements=(*fine, context))


def parse_combo(combo: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``"2-2-4"``, ``"{2-2-4}"`` or ``(2, 2, 4)`` -> ``(2, 2, 4)``."""
    if isinstance(combo, str):
        text = combo.strip().strip("{}")
        try:
            sizes = tuple(int(part) for part in text.split("-"))
        except ValueError:
            raise ConfigError(f"combo {combo!r}: expected sizes joined by '-', such as '2-2-4'") from None
    else:
        sizes = tuple(int(s) for s in combo)
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"combo {combo!r}: every element needs at least one frame")
    return sizes


def check_jitter(jitter: float) -> None:
    """Raise ``ValueError`` unless ``jitter`` (the share of a segment training frames are drawn from) is in [0, 1]."""
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter={jitter}: use a share of the segment in [0, 1]")


def segment_frame_indices(
    num_video_frames: int,
    num_segments: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    views: int = 1,
    view: int = 0,
    jitter: float = 1.0,
) -> np.ndarray:
    """Frame indices (K,) into a video of ``num_video_frames`` frames: one per equal segment.

    In training a uniformly random frame inside each segment (``rng`` required), drawn from the middle
    ``jitter`` share of it: 1 is anywhere in the segment (TSN's sampling, the paper's), 0.5 the middle half, 0 its
    centre. In evaluation a fixed frame: with ``views`` temporal views, view ``v`` takes the point at fraction
    ``(v + 0.5) / views`` of each segment (so one view is the centre). A video shorter than K frames repeats frames
    instead of failing.
    """
    if num_video_frames < 1:
        raise ValueError("a video needs at least one frame")
    check_jitter(jitter)
    bounds = np.linspace(0.0, num_video_frames, num_segments + 1)  # (K + 1,) segment edges in frames
    starts, ends = bounds[:-1], bounds[1:]
    if train:
        if rng is None:
            raise ValueError("training-mode sampling needs an rng")
        draws = rng.random(num_segments)  # always drawn, so the rng advances alike whatever the jitter
        if jitter != 1.0:
            draws = 0.5 + jitter * (draws - 0.5)
        points = starts + draws * (ends - starts)
    else:
        if not 0 <= view < views:
            raise ValueError(f"view {view} out of range for {views} views")
        points = starts + (view + 0.5) / views * (ends - starts)
    return np.clip(np.floor(points).astype(np.int64), 0, num_video_frames - 1)
