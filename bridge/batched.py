"""Several questions in one LLM pass: option log-likelihoods, next-token log-probabilities, greedy answers.

The same numbers as :class:`bridge.model.VideoLLM`'s one-question methods (up to float rounding), in fewer and
larger forwards:

* **letters** (:func:`next_token_logprobs`): the prompt text before the video that every row shares (system
  message, chat markup) runs once and its KV cache is repeated over the rows; the rest of each prompt (the rest of
  its head, its query embeddings, the text after the video) is right-padded into one forward with an attention
  mask that hides the padding and position ids that count real tokens only. The next-token distribution of each
  row is read at its last real position (only there does the output layer run).
* **options** (:func:`option_loglikelihoods`): the same shared head, then one forward for the whole batch: each
  row holds the rest of its prompt followed by the prefix tree of its options (a prefix that options
  share, such as "(FX) salto", runs once), under a tree attention mask: every token sees its prompt and its own
  prefix, and its position id is its prompt's length plus its depth. No KV cache is copied per option, and the
  output layer runs once per position that predicts an option token.
* **generation** (:func:`generate`): the full prompts left-padded, greedy decoding through ``generate`` (which
  derives position ids from the attention mask).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["left_pad", "next_token_logprobs", "option_loglikelihoods", "generate"]


def left_pad(rows: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """``rows`` of ``(n_i, W)`` embeddings as ``(B, N, W)`` with zeros on the left, and the ``(B, N)`` mask."""
    length = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros(len(rows), length, rows[0].shape[1])
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=embeds.device)
    for b, r in enumerate(rows):
        embeds[b, length - r.shape[0]:], mask[b, length - r.shape[0]:] = r, 1
    return embeds, mask


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return n


def _prompt_rows(model, queries: Sequence[Tensor], prompts: Sequence[str]) -> tuple[list[int], list[Tensor]]:
    """The token ids that every prompt starts with (its text before the video, as far as all agree), and each
    prompt's rest as embeddings ``(r, W)``: its own text before the video, its ``queries (Q, W)``, the text after."""
    splits = [model._split_prompt(p) for p in prompts]
    h = _common_prefix([before for before, _ in splits])
    dtype = model.llm_model.get_input_embeddings().weight.dtype
    return splits[0][0][:h], [torch.cat([model._embed(before[h:]), q.to(dtype), model._embed(after)])
                              for q, (before, after) in zip(queries, splits)]


@torch.no_grad()
def next_token_logprobs(model, queries: Sequence[Tensor], prompts: Sequence[str]) -> Tensor:
    """Log-probabilities ``(B, V)`` of the token after each prompt (letter scoring of a batch); see the module
    notes."""
    head, rows = _prompt_rows(model, queries, prompts)
    h, n, device = len(head), len(rows), model.device
    rest = torch.tensor([r.shape[0] for r in rows], device=device)
    length = int(rest.max())
    embeds = rows[0].new_zeros(n, length, rows[0].shape[1])
    mask = torch.zeros(n, h + length, dtype=torch.long, device=device)
    mask[:, :h] = 1
    for b, r in enumerate(rows):
        embeds[b, : r.shape[0]], mask[b, h : h + r.shape[0]] = r, 1
    positions = torch.arange(h, h + length, device=device).expand(n, -1)
    out = model.llm_model.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                        cache=_head_cache(model, head, n), use_cache=h > 0)
    last = out.last_hidden_state[torch.arange(n, device=device), rest - 1]  # (B, W)
    return model.llm_model.get_output_embeddings()(last).float().log_softmax(-1)


def _head_cache(model, head: Sequence[int], rows: int):
    """The KV cache of the shared prompt head, repeated over ``rows`` (None when there is no head)."""
    if not head:
        return None
    cache = model.llm_model.get_decoder()(inputs_embeds=model._embed(head)[None], use_cache=True).cache
    cache.batch_repeat_interleave(rows)
    return cache


def _prefix_tree(options: Sequence[Sequence[int]]) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """The options' token prefix tree: nodes ``(token, parent)`` (parent -1 at the root; a parent always comes
    before its children) and each option's path of node indices. Options sharing a prefix share its nodes."""
    nodes: list[tuple[int, int]] = []
    index: dict[tuple[int, int], int] = {}
    paths = []
    for option in options:
        node, path = -1, []
        for token in option:
            node = index.setdefault((node, token), len(nodes))
            if node == len(nodes):
                nodes.append((token, path[-1] if path else -1))
            path.append(node)
        paths.append(path)
    return nodes, paths


@torch.no_grad()
def option_loglikelihoods(model, queries: Sequence[Tensor], prompts: Sequence[str],
                          continuations: Sequence[Sequence[str]]) -> list[tuple[list[float], list[float]]]:
    """Per prompt, the sum and the mean per token of each of its continuations' log-likelihood.

    One forward for the whole batch: each row holds the rest of a prompt (after the shared head) followed by the
    prefix tree of its options, under a tree attention mask (a token sees its prompt and its own prefix only; its
    position id is its prompt's length plus its depth), so a prefix that options share runs once, and an option's
    last token, which predicts nothing, not at all. The output layer runs only where an option token is predicted.
    """
    head, prompt_rows = _prompt_rows(model, queries, prompts)
    h, dtype, device = len(head), prompt_rows[0].dtype, model.device
    trees = [_prefix_tree([model._ids(c) for c in conts]) for conts in continuations]
    rows, prompt_lengths = [], []
    slots = []  # per row, the position (after the prompt) of each tree node that has children; leaves need none
    for prompt, (nodes, _) in zip(prompt_rows, trees):  # prompt: (r, W)
        parents = sorted({parent for _, parent in nodes if parent >= 0})
        slots.append({node: k for k, node in enumerate(parents)})
        prompt_lengths.append(prompt.shape[0])
        rows.append(torch.cat([prompt, model._embed([nodes[i][0] for i in parents])]))
    n, length = len(rows), max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros(n, length, rows[0].shape[1])
    positions = torch.zeros(n, length, dtype=torch.long)
    allowed = torch.zeros(n, length, h + length, dtype=torch.bool)  # query row attends to key column
    allowed[:, :, :h] = True
    allowed[:, torch.arange(length), h + torch.arange(length)] = True  # padding rows see themselves: no empty row
    where, targets = [], []  # (row, position) predicting each tree node, and the node's token
    for b, (row, r, (nodes, _), slot) in enumerate(zip(rows, prompt_lengths, trees, slots)):
        embeds[b, : row.shape[0]] = row
        positions[b, :r] = torch.arange(h, h + r)
        allowed[b, :r, h : h + r] = torch.ones(r, r, dtype=torch.bool).tril()
        allowed[b, r:, h : h + r] = True
        depth = []
        for i, (token, parent) in enumerate(nodes):
            depth.append(0 if parent < 0 else depth[parent] + 1)
            if i in slot:
                positions[b, r + slot[i]] = h + r + depth[i]
                if parent >= 0:  # the parent's prefix (and the parent itself)
                    allowed[b, r + slot[i]] |= allowed[b, r + slot[parent]]
            where.append((b, r - 1 if parent < 0 else r + slot[parent]))
            targets.append(token)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
    hidden = model.llm_model.get_decoder()(
        inputs_embeds=embeds, attention_mask=mask.to(device), position_ids=positions.to(device),
        cache=_head_cache(model, head, n), use_cache=h > 0).last_hidden_state  # (B, L, W)
    at = torch.tensor(where, device=device)  # (T, 2)
    unique, inverse = at.unique(dim=0, return_inverse=True)  # each predicting position once
    logits = model.llm_model.get_output_embeddings()(hidden[unique[:, 0], unique[:, 1]]).float()  # (U, V)
    norm = logits.logsumexp(-1)  # (U,)
    node_lp = (logits[inverse, torch.tensor(targets, device=device)] - norm[inverse]).double().tolist()
    out, k = [], 0
    for nodes, paths in trees:
        sums = [float(sum(node_lp[k + i] for i in path)) for path in paths]
        out.append((sums, [s / len(path) for s, path in zip(sums, paths)]))
        k += len(nodes)
    return out


@torch.no_grad()
def generate(model, queries: Sequence[Tensor], prompts: Sequence[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy answer texts of a batch (special tokens removed), each as :meth:`VideoLLM.generate` gives it."""
    out = model.llm_model.generate(**model._generate_kwargs(queries, prompts, max_new_tokens))
    return [model.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]
