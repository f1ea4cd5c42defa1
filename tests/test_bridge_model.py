"""VideoLLM on a tiny random LLaMA: placeholder splicing, answer-only labels, gradients, KV-cache scoring, and the
adapter's instruction option through the loss."""

from __future__ import annotations

import pytest
import torch
from bridge_fixtures import LAYOUT_224, fake_features, tiny_adapter_config, tiny_llama

from bridge.adapter import QFormerAdapter
from bridge.llm import LLMConfig, load_llm
from bridge.model import IGNORE, VideoLLM
from bridge.tokens import visual_tokens


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return load_llm(LLMConfig(path=str(tiny_llama(tmp_path_factory.mktemp("llama")))))


@pytest.fixture(scope="module")
def model(llm):
    torch.manual_seed(0)
    return VideoLLM(QFormerAdapter(tiny_adapter_config(num_queries=4)), llm).eval()  # no Q-Former dropout


def test_batch_places_queries_and_labels_only_the_answer(model):
    prompt, answer = model.template.with_answer("what move", "salto backward tucked")
    queries = torch.randn(1, 4, 64)
    batch = model.build_batch(queries, [prompt], [answer])
    before, after = model._split_prompt(prompt)
    answer_ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert before[0] == model.tokenizer.bos_token_id and answer_ids[-1] == model.tokenizer.eos_token_id
    p = len(before) + 4 + len(after)
    assert batch.inputs_embeds.shape == (1, p + len(answer_ids), 64)
    assert torch.equal(batch.inputs_embeds[0, len(before): len(before) + 4], queries[0])
    assert (batch.labels[0, :p] == IGNORE).all() and batch.labels[0, p:].tolist() == answer_ids


def test_padding_does_not_change_a_sample_loss(model):
    visual = visual_tokens([fake_features(seed=0), fake_features(seed=1)], LAYOUT_224)
    prompt, short = model.template.with_answer("what move", "salto")
    _, long = model.template.with_answer("what move", "giant circle backward with turn to handstand")
    both = model.loss(visual, [prompt, prompt], [short, long])
    alone = model.loss(visual_tokens([fake_features(seed=0)], LAYOUT_224), [prompt], [short])
    assert torch.allclose(both[0], alone[0], atol=1e-5)


def test_shared_prefix_loss_equals_the_plain_loss(model):
    visual = visual_tokens([fake_features(seed=3), fake_features(seed=4), fake_features(seed=5)], LAYOUT_224)
    pairs = [model.template.with_answer(q, a) for q, a in
             (("what move", "salto"), ("is it tucked or piked", "giant circle backward"), ("what", "A"))]
    prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
    fast, plain = model.loss(visual, prompts, answers), model.loss_reference(visual, prompts, answers)
    assert torch.allclose(fast, plain, atol=1e-5)
    fast.sum().backward()
    grad = model.adapter.query_tokens.grad.clone()
    model.adapter.zero_grad()
    plain.sum().backward()
    assert torch.allclose(grad, model.adapter.query_tokens.grad, atol=1e-5)
    model.adapter.zero_grad()


def test_gradient_reaches_the_adapter_only(model):
    visual = visual_tokens([fake_features(seed=0)], LAYOUT_224)
    prompt, answer = model.template.with_answer("what move", "salto")
    model.adapter.zero_grad()
    model.loss(visual, [prompt], [answer]).sum().backward()
    assert model.adapter.query_tokens.grad is not None and model.adapter.query_tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.llm_model.parameters())


def test_kv_cache_option_scores_equal_brute_force(model):
    queries = model.adapter(visual_tokens([fake_features(seed=2)], LAYOUT_224))[0].detach()
    prompt = model.template.render("what move")
    options = ["salto backward tucked", "giant circle", "turn on one leg with handstand", "A"]
    continuations = [model.template.with_answer("what move", o)[1] for o in options]
    sums, means = model.option_loglikelihoods(queries, prompt, continuations)
    brute_sums, brute_means = model.option_loglikelihoods_bruteforce(queries, prompt, continuations)
    assert sums == pytest.approx(brute_sums, abs=1e-4) and means == pytest.approx(brute_means, abs=1e-5)
    assert len(set(round(s, 3) for s in sums)) == 4


def test_training_steps_with_instructions(llm):
    torch.manual_seed(0)
    model = VideoLLM(QFormerAdapter(tiny_adapter_config(num_queries=4, instruction=True)), llm)
    assert model.uses_instruction and model.instructions_for(["what move"]) == ["what move"]
    visual = visual_tokens([fake_features(seed=0), fake_features(seed=1)], LAYOUT_224)
    questions = ["what move", "is the salto backward tucked or piked"]
    pairs = [model.template.with_answer(q, a) for q, a in zip(questions, ("salto backward tucked", "giant circle"))]
    prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
    with pytest.raises(ValueError, match="pass the instructions"):
        model.loss(visual, prompts, answers)
    model.eval()  # without dropout the fast loss equals the plain one, instructions included
    fast = model.loss(visual, prompts, answers, questions)
    assert torch.allclose(fast, model.loss_reference(visual, prompts, answers, questions), atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(model.queries(visual, questions), model.queries(visual, questions[::-1]), atol=1e-3)
    model.train()
    words = model.adapter.text_embeddings.word_embeddings.weight
    optimizer = torch.optim.AdamW(model.adapter.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        loss = model.loss(visual, prompts, answers, questions).mean()
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        ids = sorted({i for row in model.adapter.tokenizer(questions)["input_ids"] for i in row})
        assert words.grad[ids].abs().sum(1).gt(0).all()  # every instruction token's embedding learns
        unused = torch.ones(words.shape[0], dtype=torch.bool)
        unused[ids] = False
        assert words.grad[unused].abs().sum() == 0
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[0] != losses[1]
    assert all(p.grad is None for p in model.llm_model.parameters())


def test_adapter_without_the_option_gets_no_instructions(model):
    assert not model.uses_instruction and model.instructions_for(["what move"]) is None
