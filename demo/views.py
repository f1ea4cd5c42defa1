"""What the page shows about one clip, computed from the bridge's ``ClipContext`` (pure functions, no Gradio).

* :func:`layout_image`: the K sampled frames, one row per dual-level temporal element (fine elements first,
  then the context element), each frame captioned with its position ``f0 .. f(K-1)``;
* :func:`top5_values`: the encoder's top-5 classes as a ``{name: probability}`` mapping (``gr.Label``'s chart);
* :func:`certainty_html`: the teacher's U head passes summarised as in Adaptive Regulation (μ*, σ*, τ1, τ2, η);
* :func:`choices_markdown`: a multiple-choice answer, every option with its log-likelihood.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["certainty_html", "choices_markdown", "element_names", "layout_image", "top5_values"]

TILE = 112  # px: frames are scaled so their short side has this many pixels
GAP = 6
LABEL_WIDTH = 118
CAPTION_HEIGHT = 18
BACKGROUND = (250, 250, 250)
INK = (40, 40, 40)


def element_names(num_elements: int) -> list[str]:
    """Row titles: ``fine 1 .. fine E-1`` then ``context``."""
    return [f"fine {i + 1}" for i in range(num_elements - 1)] + ["context"]


def _tile(frame: np.ndarray) -> Image.Image:
    h, w = frame.shape[:2]
    scale = TILE / min(h, w)
    return Image.fromarray(frame).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


def layout_image(frames: np.ndarray, layout: Sequence[Sequence[int]]) -> np.ndarray:
    """Frames ``(K, H, W, 3)`` uint8 laid out as the dual-level elements -> one RGB image ``(H', W', 3)`` uint8.

    ``layout[i]`` lists the frame positions of element ``i`` (fine elements, then the context element, as the
    encoder consumes them: the student's temporal perturbation reverses each fine row, never the context row).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (K, H, W, 3), got {frames.dtype} {frames.shape}")
    if not layout or any(not row for row in layout):
        raise ValueError(f"layout needs at least one non-empty element, got {layout}")
    bad = [i for row in layout for i in row if not 0 <= i < len(frames)]
    if bad:
        raise ValueError(f"layout positions {bad} are outside the {len(frames)} sampled frames")
    tiles = [_tile(frame) for frame in frames]
    tw, th = tiles[0].size
    columns = max(len(row) for row in layout)
    width = LABEL_WIDTH + columns * (tw + GAP) + GAP
    height = len(layout) * (th + CAPTION_HEIGHT + GAP) + GAP
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    for r, (name, row) in enumerate(zip(element_names(len(layout)), layout)):
        top = GAP + r * (th + CAPTION_HEIGHT + GAP)
        draw.text((GAP, top + th // 2), f"{name} ({len(row)})", fill=INK, font=font, anchor="lm")
        for c, index in enumerate(row):
            left = LABEL_WIDTH + GAP + c * (tw + GAP)
            canvas.paste(tiles[index], (left, top))
            draw.text((left + tw // 2, top + th + 2), f"f{index}", fill=INK, font=font, anchor="mt")
    return np.asarray(canvas)


def top5_values(top5: Sequence[tuple[str, float]]) -> dict[str, float]:
    """``[(name, p), ...]`` -> ``{name: p}`` in the given order (``gr.Label`` draws it as a bar chart)."""
    return {name: float(p) for name, p in top5}


_CERTAINTY_ROWS = (
    ("mu", "μ*", "confidence: the mean probability of the predicted class over the U passes", True),
    ("sigma", "σ*", "spread: the standard deviation of that probability over the passes", False),
    ("tau1", "τ1", "weight from the confidence, 2·sigmoid(e^μ* − e)", True),
    ("tau2", "τ2", "weight from the spread, 2·(sigmoid(1 / (β σ* + ε)) − 0.5)", True),
    ("eta", "η", "τ1·τ2: how much a pseudo-label on this clip would count in training", True),
)


def _bar(value: float) -> str:
    width = max(0.0, min(1.0, value)) * 100
    return (
        '<span style="display:inline-block;width:120px;height:10px;background:#e5e7eb;vertical-align:middle">'
        f'<span style="display:block;height:10px;width:{width:.0f}%;background:#f97316"></span></span>'
    )


def certainty_html(certainty: dict[str, float], passes: int | None = None) -> str:
    """An HTML table of the Adaptive Regulation quantities of one clip (keys ``mu sigma tau1 tau2 eta``)."""
    missing = [key for key, *_ in _CERTAINTY_ROWS if key not in certainty]
    if missing:
        raise ValueError(f"certainty lacks {missing}")
    rows = []
    for key, symbol, meaning, in_unit_range in _CERTAINTY_ROWS:
        value = float(certainty[key])
        shown = "nan" if math.isnan(value) else f"{value:.3f}"
        bar = _bar(value) if in_unit_range else ""
        rows.append(
            f'<tr data-key="{key}"><td><b>{symbol}</b></td><td style="font-family:monospace">{shown}</td>'
            f"<td>{bar}</td><td>{html.escape(meaning)}</td></tr>"
        )
    times = f"{passes} times" if passes else "several times"
    head = (
        f"<p>How sure the encoder is: its head run {times} with dropout on, summarised as in Adaptive "
        "Regulation. Confident and stable predictions get η near 1.</p>"
    )
    return head + '<table class="certainty">' + "".join(rows) + "</table>"


def _cell(text: str) -> str:
    return html.escape(" ".join(text.split())).replace("|", "&#124;")


def choices_markdown(options: Sequence[str], scores: Sequence[float], chosen: int) -> str:
    """A Markdown table: every option, its length-normalised log-likelihood, the chosen one marked."""
    if len(options) != len(scores) or not 0 <= chosen < len(options):
        raise ValueError(f"{len(options)} options, {len(scores)} scores, chosen={chosen}")
    lines = ["| | option | log-likelihood / token |", "|---|---|---|"]
    for i, (option, score) in enumerate(zip(options, scores)):
        mark = "✅" if i == chosen else ""
        lines.append(f"| {mark} | {_cell(option)} | {score:.3f} |")
    return f"**Answer:** {_cell(options[chosen])}\n\n" + "\n".join(lines)
