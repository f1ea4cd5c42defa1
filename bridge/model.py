"""The adapter and the frozen LLM together: prompt embedding, the answer-only loss, option scoring, generation.

A sample's LLM input is the rendered prompt with its video placeholder replaced by the adapter's query
embeddings, followed (in training) by the answer::

    [prompt before <video>] [Q query embeddings] [prompt after <video>] [answer + end of turn]
     labels -100 ...          -100 ...             -100 ...              answer token ids

Only the answer tokens count in the loss (:func:`answer_loss`, one value per sample, computed here because the
models' built-in loss ignores ``reduction="none"``).

An adapter with the instruction option (InstructBLIP, see :mod:`bridge.adapter`) also takes each sample's
question text: :meth:`VideoLLM.loss` and :meth:`VideoLLM.queries` pass ``instructions`` on to it;
:meth:`VideoLLM.instructions_for` gives ``None`` for an adapter without the option, so callers need not check.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bridge.adapter import QFormerAdapter
from bridge.batched import left_pad
from bridge.llm import VIDEO_PLACEHOLDER, LoadedLLM, Prompt
from bridge.tokens import VisualTokens, visual_tokens

__all__ = ["IGNORE", "Batch", "VideoLLM", "answer_loss", "answer_hidden_loss"]

IGNORE = -100


@dataclass
class Batch:
    """LLM inputs of a batch, right-padded: embeddings, attention mask and labels (``IGNORE`` but on answers)."""

    inputs_embeds: Tensor  # (B, L, W)
    attention_mask: Tensor  # (B, L)
    labels: Tensor  # (B, L)


def answer_hidden_loss(head: nn.Module, hidden: Tensor, labels: Tensor) -> Tensor:
    """:func:`answer_loss` from the last hidden states ``(B, L, W)``: the output layer ``head`` runs only where an
    answer token is predicted (float32 logits of those positions, never the whole ``(B, L, V)``)."""
    targets = labels[:, 1:]  # position t predicts token t + 1
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    logits = head(hidden[rows, cols]).float()  # (answer tokens, V)
    ce = F.cross_entropy(logits, targets[rows, cols], reduction="none")
    per_sample = torch.zeros(labels.shape[0], device=ce.device).index_add(0, rows, ce)
    return per_sample / torch.bincount(rows, minlength=labels.shape[0]).clamp(min=1)


def answer_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample mean cross-entropy over the answer tokens: ``logits (B, L, V)``, ``labels (B, L)`` -> ``(B,)``.

    Position t predicts token t + 1; positions whose next label is ``IGNORE`` do not count.
    """
    shifted = labels[:, 1:]  # (B, L-1)
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), shifted, ignore_index=IGNORE, reduction="none")
    counts = (shifted != IGNORE).sum(1)
    return ce.sum(1) / counts.clamp(min=1)


class VideoLLM(nn.Module):
    """A :class:`QFormerAdapter` feeding a frozen :class:`LoadedLLM`."""

    def __init__(self, adapter: QFormerAdapter, llm: LoadedLLM) -> None:
        super().__init__()
        self.adapter = adapter.to(llm.device)  # where the LLM's input embeddings are, also under a device map
        self.llm_model = llm.model
        self.tokenizer = llm.tokenizer
        self.template = llm.template
        self.llm = llm
        self.checkpointing = False  # see enable_checkpointing

    def enable_checkpointing(self) -> None:
        """Recompute the frozen LLM's layers in the backward pass instead of keeping their activations (see
        :mod:`bridge.checkpointing`): the same loss and gradients, a fraction of the memory, about a third more
        compute (the shared prompt prefix then runs for every sample, inside the checkpoint)."""
        from bridge.checkpointing import enable_layer_checkpointing

        enable_layer_checkpointing(self.llm_model)
        self.checkpointing = True

    @property
    def device(self) -> torch.device:
        return self.llm.device

    @property
    def uses_instruction(self) -> bool:
        """Whether the adapter takes the question text (``adapter.instruction``); the adapter may be wrapped."""
        return bool(getattr(self.adapter, "module", self.adapter).cfg.instruction)

    def instructions_for(self, texts: Sequence[str]) -> list[str] | None:
        """``texts`` as the adapter's instructions, or None for an adapter without the instruction option."""
        return list(texts) if self.uses_instruction else None

    def queries(self, visual: VisualTokens, instructions: Sequence[str] | None = None) -> Tensor:
        """The adapter's query embeddings ``(B, Q, W)`` of a batch (on the LLM's device)."""
        return self.adapter(visual.to(self.device), instructions)

    @torch.no_grad()
    def clip_queries(self, features: dict[str, Tensor], layout: list[list[int]], use_cls: bool,
                     question: str) -> Tensor:
        """One clip's query embeddings ``(Q, W)`` from its cached features; ``question``: the text asked (the
        adapter's instruction, if it takes one)."""
        visual = visual_tokens([features], layout, use_cls)
        return self.queries(visual, self.instructions_for([question]))[0]

    # --------------------------------------------------------------------------------------------- inputs

    def _ids(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _split_prompt(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the video (BOS added for templates that need it).

        A :class:`~bridge.llm.Prompt` (what the template renders) knows where its video goes, whatever its user
        text says; a plain string must hold :data:`VIDEO_PLACEHOLDER` exactly once.
        """
        if isinstance(prompt, Prompt):
            before, after = prompt.before, prompt.after
        elif prompt.count(VIDEO_PLACEHOLDER) != 1:
            raise ValueError(f"the prompt must contain {VIDEO_PLACEHOLDER} exactly once")
        else:
            before, after = prompt.split(VIDEO_PLACEHOLDER)
        return self._ids(before, special=self.template.adds_bos), self._ids(after)

    def _embed(self, ids: Sequence[int]) -> Tensor:
        table = self.llm_model.get_input_embeddings()
        return table(torch.tensor(list(ids), dtype=torch.long, device=table.weight.device))  # (n, W)

    def prompt_embeds(self, queries: Tensor, prompt: str) -> Tensor:
        """One sample's prompt embeddings ``(P, W)`` with ``queries (Q, W)`` at the placeholder."""
        before, after = self._split_prompt(prompt)
        dtype = self.llm_model.get_input_embeddings().weight.dtype
        return torch.cat([self._embed(before), queries.to(dtype), self._embed(after)])

    def build_batch(self, queries: Tensor, prompts: Sequence[str], continuations: Sequence[str]) -> Batch:
        """Training inputs: ``queries (B, Q, W)``, prompts with the placeholder, and the answer continuations."""
        return self._build_rows(queries, prompts, continuations, skip=0)

    def _build_rows(self, queries: Tensor, prompts: Sequence[str], continuations: Sequence[str], skip: int) -> Batch:
        """:meth:`build_batch` without the first ``skip`` prompt tokens (a prefix shared through a KV cache)."""
        rows, labels = [], []
        for q, prompt, answer in zip(queries, prompts, continuations):
            p = self.prompt_embeds(q, prompt)[skip:]
            a_ids = self._ids(answer)
            rows.append(torch.cat([p, self._embed(a_ids)]))
            labels.append([IGNORE] * p.shape[0] + a_ids)
        length = max(r.shape[0] for r in rows)
        width = rows[0].shape[1]
        embeds = rows[0].new_zeros(len(rows), length, width)
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=embeds.device)
        label_t = torch.full((len(rows), length), IGNORE, dtype=torch.long, device=embeds.device)
        for b, (r, lab) in enumerate(zip(rows, labels)):
            embeds[b, : r.shape[0]], mask[b, : r.shape[0]] = r, 1
            label_t[b, : len(lab)] = torch.tensor(lab, device=embeds.device)
        return Batch(embeds, mask, label_t)

    # ----------------------------------------------------------------------------------------------- loss

    def loss(self, visual: VisualTokens, prompts: Sequence[str], continuations: Sequence[str],
             instructions: Sequence[str] | None = None) -> Tensor:
        """Per-sample answer-token loss ``(B,)`` (gradient flows into the adapter only).

        ``instructions``: each sample's question text for an adapter with the instruction option (else None).

        The text before the video placeholder is the same for every sample (system message, chat markup): it
        runs once, without gradient, and its KV cache is shared by the batch. Logits are computed only where an
        answer token is predicted. Equal to :meth:`loss_reference` up to float rounding, and much cheaper.
        """
        queries = self.queries(visual, instructions)
        if self.checkpointing and torch.is_grad_enabled():
            from bridge.checkpointing import checkpointed_loss

            return checkpointed_loss(self, queries, prompts, continuations)
        heads = {tuple(self._split_prompt(p)[0]) for p in prompts}
        if len(heads) != 1 or not next(iter(heads)):
            return self.loss_reference(visual, prompts, continuations, queries=queries)
        head = list(next(iter(heads)))
        with torch.no_grad():
            cache = self.llm_model(inputs_embeds=self._embed(head)[None], use_cache=True).cache
        cache.batch_repeat_interleave(len(prompts))
        batch = self._build_rows(queries, prompts, continuations, skip=len(head))
        n, length = batch.labels.shape
        mask = torch.cat([batch.attention_mask.new_ones(n, len(head)), batch.attention_mask], dim=1)
        positions = torch.arange(len(head), len(head) + length, device=self.device).expand(n, -1)
        hidden = self.llm_model.get_decoder()(inputs_embeds=batch.inputs_embeds, attention_mask=mask,
                                              position_ids=positions, cache=cache, use_cache=True).last_hidden_state
        return answer_hidden_loss(self.llm_model.get_output_embeddings(), hidden, batch.labels)

    def loss_reference(self, visual: VisualTokens, prompts: Sequence[str], continuations: Sequence[str],
                       instructions: Sequence[str] | None = None, *, queries: Tensor | None = None) -> Tensor:
        """:meth:`loss` the plain way: the whole sequence through the LLM, full logits, :func:`answer_loss`.

        ``queries``: the adapter's output when already computed (then ``visual`` and ``instructions`` are unused).
        """
        if queries is None:
            queries = self.queries(visual, instructions)
        batch = self.build_batch(queries, prompts, continuations)
        logits = self.llm_model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).logits
        return answer_loss(logits, batch.labels)

    # ----------------------------------------------------------------------------------- option scoring

    @torch.no_grad()
    def option_loglikelihoods(self, queries: Tensor, prompt: str, continuations: Sequence[str]) -> tuple[list[float], list[float]]:
        """Sum and length-normalised (mean per token) log-likelihood of each continuation after the prompt.

        The prompt runs once; its KV cache is repeated over the options, which run as one padded batch.
        """
        prompt_embeds = self.prompt_embeds(queries, prompt)[None]  # (1, P, W)
        out = self.llm_model(inputs_embeds=prompt_embeds, use_cache=True)
        first = out.logits[0, -1].float().log_softmax(-1)  # (V,) distribution of each option's first token
        ids = [self._ids(c) for c in continuations]
        n, length, plen = len(ids), max(len(i) for i in ids), prompt_embeds.shape[1]
        tokens = torch.full((n, length), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device)
        for i, row in enumerate(ids):
            tokens[i, : len(row)] = torch.tensor(row, device=self.device)
        cache = out.cache
        cache.batch_repeat_interleave(n)
        mask = torch.ones(n, plen + length, dtype=torch.long, device=self.device)
        positions = torch.arange(plen, plen + length, device=self.device).expand(n, -1)
        logits = self.llm_model(input_ids=tokens, attention_mask=mask, cache=cache,
                                position_ids=positions, use_cache=True).logits.float().log_softmax(-1)  # (n, T, V)
        sums, means = [], []
        for i, row in enumerate(ids):
            lp = first[row[0]] + logits[i, : len(row) - 1].gather(1, tokens[i, 1 : len(row), None]).sum()
            sums.append(float(lp))
            means.append(float(lp) / len(row))
        return sums, means

    @torch.no_grad()
    def option_loglikelihoods_bruteforce(self, queries: Tensor, prompt: str,
                                         continuations: Sequence[str]) -> tuple[list[float], list[float]]:
        """The same as :meth:`option_loglikelihoods` with one full forward per option (reference, benchmarks)."""
        batch = self.build_batch(queries[None].expand(len(continuations), -1, -1), [prompt] * len(continuations),
                                 continuations)
        sums, means = [], []
        for b in range(len(continuations)):
            logits = self.llm_model(inputs_embeds=batch.inputs_embeds[b : b + 1],
                                    attention_mask=batch.attention_mask[b : b + 1]).logits.float()
            labels = batch.labels[b, 1:]
            lp = logits[0, :-1].log_softmax(-1).gather(1, labels.clamp(min=0)[:, None])[:, 0]
            keep = labels != IGNORE
            sums.append(float(lp[keep].sum()))
            means.append(float(lp[keep].sum()) / int(keep.sum()))
        return sums, means

    @torch.no_grad()
    def next_token_logprobs(self, queries: Tensor, prompt: str) -> Tensor:
        """Log-probabilities ``(V,)`` of the token after the prompt (letter scoring)."""
        embeds = self.prompt_embeds(queries, prompt)[None]
        return self.llm_model(inputs_embeds=embeds, logits_to_keep=1).logits[0, -1].float().log_softmax(-1)

    # -------------------------------------------------------------------------------------------- generation

    def _generate_kwargs(self, queries: Sequence[Tensor], prompts: Sequence[str], max_new_tokens: int) -> dict:
        """``generate`` arguments of prompts (each with its ``(Q, W)`` queries), left-padded into one batch."""
        embeds, mask = left_pad([self.prompt_embeds(q, p) for q, p in zip(queries, prompts)])
        return dict(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self._stop_ids())

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = self.llm_model.generation_config.eos_token_id
        ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
        return sorted(i for i in ids if i is not None)

    @torch.no_grad()
    def generate(self, queries: Tensor, prompt: str, max_new_tokens: int = 32) -> str:
        """Greedy answer text (special tokens removed)."""
        out = self.llm_model.generate(**self._generate_kwargs([queries], [prompt], max_new_tokens))
        return self.tokenizer.decode(out[0], skip_special_tokens=True).strip()

    def stream(self, queries: Tensor, prompt: str, max_new_tokens: int = 128) -> Iterator[str]:
        """Yield the greedy answer's text pieces as they are generated.

        Closing the iterator (or dropping it) stops the generation at its next token: the thread that runs
        ``generate`` checks an event that closing sets.
        """
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=False, skip_special_tokens=True)
        closed = threading.Event()
        kwargs = self._generate_kwargs([queries.detach()], [prompt], max_new_tokens) | {
            "streamer": streamer, "stopping_criteria": StoppingCriteriaList([_StopWhenSet(closed)])}
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.no_grad():
                    self.llm_model.generate(**kwargs)
            except BaseException as err:  # re-raised in the caller's thread
                errors.append(err)
                streamer.end()

        thread = threading.Thread(target=run, name="VideoLLM.stream", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            closed.set()  # a no-op when generation ended by itself; stops it when the caller closed the stream
        thread.join()
        if errors:
            raise errors[0]


class _StopWhenSet:
    """A ``generate`` stopping criterion: stop every sequence once ``event`` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Tensor, scores, **kwargs) -> Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
