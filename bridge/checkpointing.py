"""Gradient checkpointing of the frozen LLM, for adapter training on large LLMs.

transformers checkpoints a decoder layer only while the layer is in training mode, and then drops the KV cache
(recomputing a layer must not append to the cache a second time). The frozen LLM stays in eval mode everywhere
else, and :meth:`bridge.model.VideoLLM.loss` normally runs the prompt's shared prefix once through a KV cache.
So, with checkpointing on, the loss runs each whole sequence (prefix included) through the decoder with its
layers switched to training mode for that call only, every dropout held at zero: the loss and the gradients are
those of the cached path (up to float rounding), autograd keeps only each layer's input, and each layer is
recomputed once in the backward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor, nn

__all__ = ["enable_layer_checkpointing", "layers_checkpointed", "checkpointed_loss"]


def enable_layer_checkpointing(llm_model: nn.Module) -> None:
    """Give the LLM's decoder layers their checkpoint function (non-reentrant: gradients reach the inputs)."""
    if not getattr(llm_model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(llm_model).__name__} does not support gradient checkpointing")
    llm_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


@contextmanager
def layers_checkpointed(llm_model: nn.Module) -> Iterator[None]:
    """The model in training mode (so its layers checkpoint) with no dropout anywhere; eval mode again after."""
    was_training = llm_model.training
    dropouts = [m for m in llm_model.modules() if isinstance(m, nn.Dropout)]
    attention = [(m, m.attention_dropout) for m in llm_model.modules()
                 if isinstance(getattr(m, "attention_dropout", None), float)]
    llm_model.train()
    for m in dropouts:
        m.eval()
    for m, _ in attention:
        m.attention_dropout = 0.0
    try:
        yield
    finally:
        for m, p in attention:
            m.attention_dropout = p
        llm_model.train(was_training)


def checkpointed_loss(model, queries: Tensor, prompts: Sequence[str], continuations: Sequence[str]) -> Tensor:
    """:meth:`bridge.model.VideoLLM.loss` for ``queries (B, Q, W)`` with the decoder layers checkpointed."""
    from bridge.model import answer_hidden_loss

    batch = model.build_batch(queries, prompts, continuations)
    with layers_checkpointed(model.llm_model):
        hidden = model.llm_model.get_decoder()(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                               use_cache=False).last_hidden_state
    return answer_hidden_loss(model.llm_model.get_output_embeddings(), hidden, batch.labels)
