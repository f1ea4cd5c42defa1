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
