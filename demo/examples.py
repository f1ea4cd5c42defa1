"""Example clips for the demo page: a few SynGym clips rendered on first start into a cache folder.

Why generated rather than shipped: the repository holds no binary media (tests write their videos too), SynGym
is a pure function of ``(seed, class, preset)`` so every machine gets the same clips, and rendering the four
clips takes well under a second. They use SynGym's ``default`` preset (64 px, 32-48 frames at 25 fps), the
distribution the quickstart encoder was trained on, with a seed no training set uses, so they are unseen clips.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from encoder.data.syngym import CLASSES, SIZES, VERSION, clip_params, render_clip, write_video

__all__ = ["EXAMPLE_SEED", "EXAMPLES", "Example", "default_cache_dir", "ensure_examples"]

EXAMPLE_SEED = 20_250_000  # far from the seeds of generated datasets (0, 1, 2, ...)


@dataclass(frozen=True)
class Example:
    """One bundled clip: a SynGym class label and the clip index in its random stream."""

    class_id: int
    index: int

    @property
    def label(self) -> str:
        """What the page calls it: ``"FX: salto forward tucked"``."""
        return f"{CLASSES[self.class_id].event}: {CLASSES[self.class_id].name}"

    @property
    def file_name(self) -> str:
        element = CLASSES[self.class_id]
        name = element.name.replace(",", "").replace(" ", "_")
        return f"syngym{VERSION}_{element.event}_{name}_{self.index}.mp4"


# A forward salto and its time-reversed twin (only the order of the frames tells them apart), a beam turn
# (rotation counts) and a bars circle: one clip of each set family.
EXAMPLES = (Example(2, 0), Example(9, 1), Example(17, 2), Example(29, 3))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sefar/demo_examples`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sefar" / "demo_examples"


def ensure_examples(
    cache_dir: str | os.PathLike | None = None, examples: tuple[Example, ...] = EXAMPLES
) -> list[tuple[str, Path]]:
    """``(label, path)`` of the example clips under ``cache_dir``, rendering those not there yet (atomic writes)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    preset = SIZES["default"]
    paths = []
    for example in examples:
        path = folder / example.file_name
        if not path.is_file():
            element = CLASSES[example.class_id]
            scene, performance = clip_params(EXAMPLE_SEED, example.index, element, preset)
            write_video(path, [render_clip(element, scene, performance)], fps=preset.fps)
        paths.append((example.label, path))
    return paths
