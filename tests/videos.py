"""Small videos written inside tests (no binary fixtures in the repository)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def frame_value(i: int) -> int:
    """Grey level that encodes frame ``i`` (robust to lossy coding: steps of 8)."""
    return (i * 8) % 256


def write_video(path: Path, n: int = 30, size: tuple[int, int] = (48, 64), fps: int = 10,
                codec: str = "libx264", pix_fmt: str = "yuv420p", options: dict | None = None) -> Path:
    """Write ``n`` frames whose red channel is ``frame_value(i)``; returns ``path``."""
    import av

    h, w = size
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = frame_value(i)
            img[..., 1] = 100
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(folder: Path, n: int = 12, size: tuple[int, int] = (40, 56), suffix: str = ".jpg") -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = frame_value(i)
        Image.fromarray(img).save(folder / f"{i:05d}{suffix}", quality=95)
    return folder


def write_toy_dataset(root: Path, classes: int = 4, train_per_class: int = 6, val_per_class: int = 2,
                      size: int = 32, seed: int = 0) -> Path:
    """A FineGym-format toy set: a bright square moving left→right or right→left, in the top or bottom half.

    Class ``c``: direction ``c % 2``, row ``(c // 2) % 2``. Writes ``videos/<clip>.mp4``, ``train_element.txt`` and
    ``val_element.txt`` (``<clip> <label>`` lines), so a training config with ``data.categories=null`` reads it.
    """
    import av

    rng = np.random.default_rng(seed)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"train": [], "val": []}
    for c in range(classes):
        for i in range(train_per_class + val_per_class):
            name = f"toy{c}_{i}"
            n = int(rng.integers(12, 24))
            with av.open(str(root / "videos" / f"{name}.mp4"), "w") as container:
                stream = container.add_stream("libx264", rate=10)
                stream.width = stream.height = size
                stream.pix_fmt = "yuv420p"
                for t in range(n):
                    img = np.full((size, size, 3), 40, np.uint8)
                    frac = t / max(1, n - 1)
                    x = int((frac if c % 2 == 0 else 1 - frac) * (size - 8))
                    y = 4 + ((c // 2) % 2) * (size // 2)
                    img[y : y + 8, x : x + 8] = (255, 200 - 40 * (c // 4), 60)
                    for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            lists["train" if i < train_per_class else "val"].append(f"{name} {c}")
    for split, lines in lists.items():
        (root / f"{split}_element.txt").write_text("\n".join(lines) + "\n")
    return root
