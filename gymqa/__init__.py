"""Gym-QA: build the multiple-choice benchmark from FineGym annotations and score answers (no torch)."""

from gymqa.build import BuildConfig, GymQA, build_finegym, build_gymqa, build_questions
from gymqa.paper_format import read_paper_json, write_paper_json
from gymqa.parse import parse_answer
from gymqa.question import Question, read_questions_jsonl, write_questions
from gymqa.rotate import rotate
from gymqa.score import ScoreReport, read_predictions, score, score_files
from gymqa.stats import question_stats, read_questions

__all__ = [
    "BuildConfig",
    "GymQA",
    "Question",
    "ScoreReport",
    "build_finegym",
    "build_gymqa",
    "build_questions",
    "parse_answer",
    "question_stats",
    "read_paper_json",
    "read_predictions",
    "read_questions",
    "read_questions_jsonl",
    "rotate",
    "score",
    "score_files",
    "write_paper_json",
    "write_questions",
]
