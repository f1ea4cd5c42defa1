"""Free-form training data: conversations about clips, for training an adapter on one's own videos.

A JSONL file, one record per line::

    {"video": "gym/clip_001.mp4", "id": "c1",
     "conversations": [{"from": "human", "value": "What is the gymnast doing?"},
                       {"from": "gpt", "value": "A round-off into a back handspring."},
                       {"from": "human", "value": "Is the landing clean?"},
                       {"from": "gpt", "value": "No, she steps forward."}]}

* ``video``: a path relative to ``data.videos`` (or absolute), or a bare clip id as in FineGym lists; its clip id
  (:func:`common.clipid.clip_id`) is the feature cache's key. Several records may name the same clip.
* ``conversations`` (or ``messages``): turns ``{"from": "human"|"gpt", "value": str}`` (LLaVA / VideoChat2) or
  ``{"role": "user"|"assistant", "content": str}``, user first, alternating, ending with an assistant turn.
* ``id``: optional (default ``line<N>``).

The template puts the video before the first user turn; a ``<video>`` at the start or end of that turn (as
LLaVA-style files write it) is dropped, anywhere else it is plain text. Every assistant turn is a training target:
the prompt is the conversation up to it, the loss is on its tokens (and the end of turn) only. A user turn may
take ``data.max_question_tokens`` tokens, an assistant turn ``data.max_option_tokens``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.datafile import CONVERSATION_KEYS, ClipRecords, Example
from bridge.limits import TextLimits
from common.clipid import clip_id
from common.errors import DataError, ListFormatError
from common.jsonio import read_jsonl

__all__ = ["ROLES", "Conversation", "ConversationSet", "clip_list_text", "read_conversations"]

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_EDGE_PLACEHOLDER = re.compile(r"^\s*<video>\s*|\s*<video>\s*$")


@dataclass(frozen=True)
class Conversation:
    """One record: its clip, its turns as chat messages (``{"role", "content"}``) and the line it is on."""

    id: str
    video: str
    clip_id: str
    turns: tuple[dict, ...]
    line: int

    @property
    def targets(self) -> list[tuple[str, list[dict], str]]:
        """``(question, history before it, answer)`` of every assistant turn."""
        t = self.turns
        return [(t[i - 1]["content"], [dict(m) for m in t[: i - 1]], t[i]["content"])
                for i in range(1, len(t), 2)]


def _turn(path: str | os.PathLike, line: int, n: int, turn: object) -> dict:
    """One turn as ``{"role", "content"}``, checked."""
    if not isinstance(turn, dict):
        raise ListFormatError(path, f"turn {n} must be an object, got {type(turn).__name__}", line=line)
    if "from" in turn or "value" in turn:
        role, content = turn.get("from"), turn.get("value")
    elif "role" in turn or "content" in turn:
        role, content = turn.get("role"), turn.get("content")
    else:
        raise ListFormatError(path, f"turn {n} needs 'from' and 'value' (or 'role' and 'content')", line=line)
    if role not in ROLES:
        raise ListFormatError(path, f"turn {n} has unknown role {role!r}: use {', '.join(map(repr, ROLES))}",
                              line=line)
    if not isinstance(content, str):
        raise ListFormatError(path, f"turn {n}'s text must be a string, got {type(content).__name__}", line=line)
    return {"role": ROLES[role], "content": content}


def _conversation(path: str | os.PathLike, line: int, record: dict) -> Conversation:
    video = record.get("video")
    if not isinstance(video, str) or not video.strip() or video != video.strip() or "\n" in video:
        raise ListFormatError(path, f"'video' must be a clip id or a video path (a non-empty string without "
                                    f"surrounding spaces), got {video!r}", line=line)
    keys = [k for k in CONVERSATION_KEYS if k in record]
    if len(keys) != 1:
        raise ListFormatError(path, "needs one list of turns, 'conversations' or 'messages'", line=line)
    raw = record[keys[0]]
    if not isinstance(raw, list) or not raw:
        raise ListFormatError(path, f"'{keys[0]}' must be a non-empty list of turns", line=line)
    name = record.get("id", f"line{line}")
    if not isinstance(name, str) or not name:
        raise ListFormatError(path, f"'id' must be a non-empty string, got {name!r}", line=line)
    turns = [_turn(path, line, n, t) for n, t in enumerate(raw, start=1)]
    turns[0]["content"] = _EDGE_PLACEHOLDER.sub("", turns[0]["content"])
    for n, t in enumerate(turns, start=1):
        expected = "user" if n % 2 else "assistant"
        if t["role"] != expected:
            raise ListFormatError(path, f"turn {n} is a {t['role']} turn where a {expected} turn is due (turns "
                                        "alternate, user first)", line=line)
        if not t["content"].strip():
            raise ListFormatError(path, f"turn {n} ({t['role']}) has no text", line=line)
    if len(turns) < 2:
        raise ListFormatError(path, "no assistant turn: nothing to train on", line=line)
    if len(turns) % 2:
        raise ListFormatError(path, f"the last turn ({len(turns)}) is a user turn with no answer", line=line)
    try:
        key = clip_id(video)
    except ValueError as err:
        raise ListFormatError(path, f"'video': {err}", line=line) from None
    return Conversation(name, video, key, tuple(turns), line)


def read_conversations(path: str | os.PathLike) -> list[Conversation]:
    """Every record of a free-form JSONL file, checked; the first problem is a :class:`ListFormatError` naming
    the file and line."""
    try:
        rows = read_jsonl(path)
    except FileNotFoundError:
        raise DataError(path, "no such data file") from None
    if not rows:
        raise DataError(path, "empty: no conversations in this file")
    return [_conversation(path, line, record) for line, record in rows]


@dataclass
class ConversationSet(ClipRecords):
    """The conversations of a free-form file (all with features once checked against a cache)."""

    conversations: list[Conversation]
    path: str = ""
    skipped: int = 0

    def records(self) -> list[Conversation]:
        return self.conversations

    @property
    def first_question(self) -> str:
        return self.conversations[0].turns[0]["content"]

    def check_lengths(self, limits: TextLimits, tokenizer=None) -> None:
        """Refuse a user turn over ``limits.question`` or an assistant turn over ``limits.option`` (characters
        only without ``tokenizer``), naming the file and line."""
        for c in self.conversations:
            for n, turn in enumerate(c.turns, start=1):
                limit = limits.question if turn["role"] == "user" else limits.option
                if (why := limits.problem(turn["content"], limit, tokenizer)) is not None:
                    raise DataError(self.path, f"turn {n} ({turn['role']}) is too long: {why}; raise {limits.flag} "
                                               "to allow it", line=c.line)

    def check_features(self, cache) -> None:
        """A :class:`DataError` naming the line of the first conversation whose clip has no features."""
        skipped = cache.manifest.get("skipped") or {}
        for c in self.conversations:
            if c.clip_id not in cache:
                why = f" (unreadable: {skipped[c.clip_id]})" if c.clip_id in skipped else ""
                raise DataError(self.path, f"clip {c.clip_id!r} (video {c.video!r}) has no features in "
                                           f"{cache.root}{why}", line=c.line)

    def examples(self, template, objective: str | None = None) -> list[Example]:
        """One :class:`Example` per assistant turn (``objective`` does not apply to conversations)."""
        out = []
        for c in self.conversations:
            for question, history, answer in c.targets:
                prompt, target = template.with_answer(question, answer, history)
                out.append(Example(c.clip_id, prompt, target, question))
        return out


def clip_list_text(conversations: Sequence[Conversation]) -> str:
    """A ``path label`` list of the conversations' videos (each once, label 0) for the feature extractor."""
    from encoder.data.splits import Sample, format_samples

    seen: dict[str, str] = {}
    for c in conversations:
        seen.setdefault(c.clip_id, c.video)
    return format_samples([Sample(video, 0) for video in seen.values()])
