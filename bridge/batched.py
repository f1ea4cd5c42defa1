"""Several questions in one LLM pass: option log-likelihoods, next-token log-probabilities, greedy answers.

The same numbers as :class:`bridge.model.VideoLLM`'s one-question methods (up to float rounding), in fewer and
larger forwards:

* **prompt pass** (:func:`prompt_pass`): the prompt text before the video that every row shares (system message,
  chat markup) runs once and its KV cache is repeated over the rows; the rest of each prompt (the rest of its
  head, its query embeddings, the text after the video) is right-padded into one forward with an attention mask
  that hides the padding and position ids that count real tokens only. The next-token distribution of each row
  is read at its last real position (only there does the output layer run).
* **options** (:func:`option_loglikelihoods`): the prompt cache is selected once per option (its row repeated)
  and every option of every question runs as one batch after it, each at the positions that follow its own prompt;
  the output layer runs only where an option token is predicted.
* **generation** (:func:`generate`): the full prompts left-padded, greedy decoding through ``generate`` (which
  derives position ids from the attention mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PromptPass", "left_pad", "prompt_pass", "next_token_logprobs", "option_loglikelihoods", "generate"]


def left_pad(rows: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """``rows`` of ``(n_i, W)`` embeddings as ``(B, N, W)`` with zeros on the left, and the ``(B, N)`` mask."""
    length = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=embeds.device)
    for b, r in enumerate(rows):
        embeds[b, length - r.shape[0]:], mask[b, length - r.shape[0]:] = r, 1
    return embeds, mask


@dataclass
class PromptPass:
    """The prompts of a batch run through the LLM: their KV cache, where their real tokens are, and the
    log-probabilities ``(B, V)`` of the token that follows each."""

    cache: object  # a transformers Cache holding (B, ..., L) keys and values
    mask: Tensor  # (B, L) 1 on real prompt tokens
    lengths: Tensor  # (B,) real prompt tokens of each row
    next_logprobs: Tensor  # (B, V) float32


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return n


@torch.no_grad()
def prompt_pass(model, queries: Sequence[Tensor], prompts: Sequence[str]) -> PromptPass:
    """Run ``prompts`` (each with its ``queries (Q, W)`` at the video) as one batch; see the module notes."""
    splits = [model._split_prompt(p) for p in prompts]
    h = _common_prefix([before for before, _ in splits])
    dtype = model.llm_model.get_input_embeddings().weight.dtype
    rows = [torch.cat([model._embed(before[h:]), q.to(dtype), model._embed(after)])
            for q, (before, after) in zip(queries, splits)]
    n, device = len(rows), model.device
    rest = torch.tensor([r.shape[0] for r in rows], device=device)
    length = int(rest.max())
    embeds = rows[0].new_zeros(n, length, rows[0].shape[1])
    mask = torch.zeros(n, h + length, dtype=torch.long, device=device)
    mask[:, :h] = 1
    for b, r in enumerate(rows):
        embeds[b, : r.shape[0]], mask[b, h : h + r.shape[0]] = r, 1
    cache = None
    if h:
        head = splits[0][0][:h]
        cache = model.llm_model(inputs_embeds=model._embed(head)[None], use_cache=True).cache
        cache.batch_repeat_interleave(n)
    positions = torch.arange(h, h + length, device=device).expand(n, -1)
    out = model.llm_model.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                        cache=cache, use_cache=True)
    last = out.last_hidden_state[torch.arange(n, device=device), rest - 1]  # (B, W)
    logprobs = model.llm_model.get_output_embeddings()(last).float().log_softmax(-1)
    return PromptPass(out.cache, mask, h + rest, logprobs)


def next_token_logprobs(model, queries: Sequence[Tensor], prompts: Sequence[str]) -> Tensor:
    """Log-probabilities ``(B, V)`` of the token after each prompt (letter scoring of a batch)."""
    return prompt_pass(model, queries, prompts).next_logprobs


@torch.no_grad()
def option_loglikelihoods(model, queries: Sequence[Tensor], prompts: Sequence[str],
                          continuations: Sequence[Sequence[str]]) -> list[tuple[list[float], list[float]]]:
    """Per prompt, the sum and the mean per token of each of its continuations' log-likelihood."""
    p = prompt_pass(model, queries, prompts)
    ids = [model._ids(c) for conts in continuations for c in conts]
    owner = torch.tensor([b for b, conts in enumerate(continuations) for _ in conts], device=model.device)
    n, length = len(ids), max(len(i) for i in ids)
    tokens = torch.full((n, length), model.tokenizer.pad_token_id, dtype=torch.long, device=model.device)
    real = torch.zeros(n, length, dtype=torch.long, device=model.device)
    for k, row in enumerate(ids):
        tokens[k, : len(row)], real[k, : len(row)] = torch.tensor(row, device=model.device), 1
    p.cache.batch_select_indices(owner)
    positions = p.lengths[owner, None] + torch.arange(length, device=model.device)
    hidden = model.llm_model.get_decoder()(input_ids=tokens, attention_mask=torch.cat([p.mask[owner], real], 1),
                                           position_ids=positions, cache=p.cache, use_cache=True).last_hidden_state
    rows, cols = real[:, 1:].nonzero(as_tuple=True)  # position t predicts option token t + 1
    logits = model.llm_model.get_output_embeddings()(hidden[rows, cols]).float().log_softmax(-1)
    later = logits.gather(1, tokens[rows, cols + 1, None])[:, 0]
    totals = p.next_logprobs[owner, tokens[:, 0]].double().index_add(0, rows, later.double())
    out, k = [], 0
    for conts in continuations:
        sums = [float(totals[k + j]) for j in range(len(conts))]
        out.append((sums, [s / len(ids[k + j]) for j, s in enumerate(sums)]))
        k += len(conts)
    return out


@torch.no_grad()
def generate(model, queries: Sequence[Tensor], prompts: Sequence[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy answer texts of a batch (special tokens removed), each as :meth:`VideoLLM.generate` gives it."""
    out = model.llm_model.generate(**model._generate_kwargs(queries, prompts, max_new_tokens))
    return [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]
