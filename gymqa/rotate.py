"""Option rotations for CircularEval.

Rotation ``k`` of a question with ``N`` options shows option ``(i + k) mod N`` at position ``i`` (the options list
shifted left by ``k``), so the correct answer moves to ``(answer - k) mod N``. Rotation 0 is the question itself
and keeps its id; rotation ``k > 0`` has id ``"<id>@r<k>"``, ``rotation = k`` and ``base_id = <id>``. A scorer
groups questions by ``base_id`` (JSONL) or by the ``@r<k>`` id suffix (the paper's JSON, which has no fields for it).
"""

from __future__ import annotations

from collections.abc import Sequence

from gymqa.question import Question

__all__ = ["rotate", "rotation_id"]


def rotation_id(base_id: str, k: int) -> str:
    """Id of rotation ``k`` of the question ``base_id`` (``base_id`` itself for ``k == 0``)."""
    return base_id if k == 0 else f"{base_id}@r{k}"


def rotate(questions: Sequence[Question], n: int | None = None) -> list[Question]:
    """Every question followed by its rotations ``1..R-1``, with ``R = n`` or, by default, its option count.

    Input questions must be originals (rotation 0); ``n`` must not exceed any question's option count.
    """
    out: list[Question] = []
    for q in questions:
        if q.rotation != 0:
            raise ValueError(f"question {q.id!r} is already rotation {q.rotation}; rotate the originals")
        count = len(q.options) if n is None else n
        if not 1 <= count <= len(q.options):
            raise ValueError(f"cannot make {count} rotations of question {q.id!r} with {len(q.options)} options")
        out.append(q)
        for k in range(1, count):
            options = q.options[k:] + q.options[:k]
            out.append(q.with_options(options, (q.answer - k) % len(q.options), id=rotation_id(q.id, k),
                                      rotation=k, base_id=q.id))
    return out
