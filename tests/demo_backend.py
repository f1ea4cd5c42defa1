"""A scripted chat backend for the demo's page tests: real frames and layout, scripted model outputs.

It follows the ``bridge.chat.VideoChat`` contract (``encode`` / ``count_tokens`` / ``stream`` / ``choose``) so the
page logic, per-session state and error paths are tested without loading models; the end-to-end browser test
uses the real bridge on tiny artifacts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encoder.data.sampling import ElementLayout, segment_frame_indices
from encoder.data.video import read_frames

TOP5 = [("salto forward tucked", 0.41), ("salto backward tucked", 0.22), ("salto forward piked", 0.15),
        ("double salto forward tucked", 0.08), ("salto forward stretched", 0.05)]
VIDEO_PLACEHOLDER = "<video>"
CERTAINTY = {"mu": 0.41, "sigma": 0.07, "tau1": 0.36, "tau2": 0.61, "eta": 0.22, "passes": 10}


@dataclass
class ScriptedClip:
    frames: np.ndarray
    layout: list[list[int]]
    top5: list[tuple[str, float]]
    certainty: dict[str, float]
    features: dict = field(default_factory=dict)
    name: str = ""


class ScriptedChat:
    """Answers ``"<clip name> / turn <n>: <question>"`` word by word, ``delay`` seconds apart."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.layout = ElementLayout.from_combo("2-2-4")
        self.calls: list[tuple[str, list[dict], str]] = []
        self._lock = threading.Lock()

    def encode(self, video: str | Path) -> ScriptedClip:
        frames = read_frames(video, lambda n: segment_frame_indices(n, self.layout.num_frames, train=False))
        layout = [list(e) for e in self.layout.elements]
        return ScriptedClip(frames, layout, list(TOP5), dict(CERTAINTY), name=Path(video).name)

    def count_tokens(self, text: str) -> int:
        """One token per word (the real tokenizer gives more; the limits are checked the same way)."""
        return len(text.split())

    def stream(self, clip: ScriptedClip, history: list[dict], question: str, max_new_tokens: int = 128):
        with self._lock:
            self.calls.append((clip.name, [dict(m) for m in history], question))
        if VIDEO_PLACEHOLDER in question:  # a backend that fails on some text (the bridge once did on this)
            raise ValueError(f"the prompt must contain {VIDEO_PLACEHOLDER} exactly once")
        turn = sum(1 for m in history if m["role"] == "user") + 1
        for word in f"{clip.name} / turn {turn}: {question}".split(" ")[:max_new_tokens]:
            if self.delay:
                time.sleep(self.delay)
            yield word + " "

    def choose(self, clip: ScriptedClip, question: str, options: list[str]) -> tuple[int, list[float]]:
        if any(VIDEO_PLACEHOLDER in text for text in [question, *options]):
            raise ValueError(f"the prompt must contain {VIDEO_PLACEHOLDER} exactly once")
        scores = [-float(len(o)) / 10 for o in options]  # the shortest option wins
        return int(np.argmax(scores)), scores
