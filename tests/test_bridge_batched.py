"""Batched scoring (bridge.batched) against the one-question methods of VideoLLM, on a tiny random LLaMA with
questions of different lengths and option counts: option log-likelihoods and letter log-probabilities within
1e-4, greedy answers the same text."""

from __future__ import annotations

import pytest
import torch
from bridge_fixtures import LAYOUT_224, fake_features, tiny_adapter_config, tiny_llama

from bridge import batched
from bridge.adapter import QFormerAdapter
from bridge.llm import LLMConfig, load_llm
from bridge.model import VideoLLM
from bridge.tokens import visual_tokens

QUESTIONS = [
    ("what move", ["salto backward tucked", "giant circle", "turn on one leg with handstand", "A"]),
    ("what gymnastics move is this athlete performing on the beam with one leg", ["salto", "turn"]),
    ("is this a salto", ["yes", "no", "salto forward piked stretched tucked backward with turn"]),
    ("answer with the letter", ["A", "B", "C", "D", "handstand"]),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    llm = load_llm(LLMConfig(path=str(tiny_llama(tmp_path_factory.mktemp("llama")))))
    torch.manual_seed(0)
    return VideoLLM(QFormerAdapter(tiny_adapter_config(num_queries=4)), llm).eval()


@pytest.fixture(scope="module")
def queries(model):
    with torch.no_grad():
        return model.adapter(visual_tokens([fake_features(seed=s) for s in range(len(QUESTIONS))], LAYOUT_224))


def _prompts(model, history=()):
    return [model.template.render(q, history) for q, _ in QUESTIONS]


def test_batched_option_scores_equal_one_at_a_time(model, queries):
    prompts = _prompts(model)
    continuations = [[model.template.with_answer(q, o)[1] for o in options] for q, options in QUESTIONS]
    together = batched.option_loglikelihoods(model, list(queries), prompts, continuations)
    assert len(together) == len(QUESTIONS)
    for b, (sums, means) in enumerate(together):
        alone_sums, alone_means = model.option_loglikelihoods(queries[b], prompts[b], continuations[b])
        assert sums == pytest.approx(alone_sums, abs=1e-4) and means == pytest.approx(alone_means, abs=1e-4)
    one = batched.option_loglikelihoods(model, [queries[1]], prompts[1:2], continuations[1:2])[0]
    assert one[0] == pytest.approx(together[1][0], abs=1e-4)  # a batch of one is the same


def test_batched_letters_equal_one_at_a_time(model, queries):
    history = [{"role": "user", "content": "what move"}, {"role": "assistant", "content": "a salto"}]
    differing = ["USER: <video> what move ASSISTANT:", "USER: curious <video> salto ASSISTANT:",
                 "<video> A B C D", "polite answers USER: <video> turn"]  # heads shared in part only
    for prompts in (_prompts(model), [*_prompts(model)[:2], *_prompts(model, history)[2:]], differing):
        together = batched.next_token_logprobs(model, list(queries), prompts)
        for b, prompt in enumerate(prompts):
            alone = model.next_token_logprobs(queries[b], prompt)
            assert torch.allclose(together[b], alone, atol=1e-4), (b, (together[b] - alone).abs().max())


def test_batched_generation_equals_one_at_a_time(model, queries):
    prompts = _prompts(model)
    together = batched.generate(model, list(queries), prompts, max_new_tokens=12)
    alone = [model.generate(queries[b], prompts[b], max_new_tokens=12) for b in range(len(prompts))]
    assert together == alone
    assert len(set(alone)) > 1  # the rows really differ


def test_evaluation_batches_by_length_and_keeps_the_question_order():
    from bridge.evaluate import _map_by_length
    from bridge.shards import Shards
    from gymqa.question import Question

    lengths = [30, 5, 50, 12, 41, 7, 22]
    qs = [Question(id=f"q{i}", clip_id=f"c{i}", question="x" * n, options=("a", "b"), answer=0, type="element",
                   level="element", split="test") for i, n in enumerate(lengths)]
    batches = []

    def fn(batch):
        batches.append([len(q.question) for q in batch])
        return [q.id for q in batch]

    assert _map_by_length(Shards(), qs, 3, fn, "test") == [q.id for q in qs]  # results in the given order
    assert batches == [[5, 7, 12], [22, 30, 41], [50]]  # each batch holds neighbours in length: little padding


def test_options_sharing_prefixes_score_as_alone(model, queries):
    """The prefix tree: duplicates, an option that is a prefix of another, and shared stems."""
    prompts = _prompts(model)[:2]
    options = [["salto", "salto", "salto backward", "salto backward tucked", "turn"], ["A", "A B", "B"]]
    continuations = [[model.template.with_answer("q", o)[1] for o in opts] for opts in options]
    raw = [[" salto", " salto backward"], [" A", " A"]]  # without the template's end token: true prefixes
    for conts in (continuations, raw):
        together = batched.option_loglikelihoods(model, list(queries[:2]), prompts, conts)
        for b in range(2):
            sums, means = model.option_loglikelihoods(queries[b], prompts[b], conts[b])
            assert together[b][0] == pytest.approx(sums, abs=1e-4)
            assert together[b][1] == pytest.approx(means, abs=1e-4)
    nodes, paths = batched._prefix_tree([[1, 2, 3], [1, 2], [1, 4], [1, 2, 3]])
    assert nodes == [(1, -1), (2, 0), (3, 1), (4, 0)] and paths == [[0, 1, 2], [0, 1], [0, 3], [0, 1, 2]]
