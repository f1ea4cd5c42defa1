"""Builders of tiny bridge artifacts for tests: a random LLaMA with a real SentencePiece tokenizer, a tiny adapter.

Everything is built through public functions (transformers' ``save_pretrained``, :mod:`bridge`), nothing is
downloaded. The tokenizer follows the pinned-version pitfalls: ``tokenizer.model`` is trained with identity
normalisation and byte fallback, saved in a folder and loaded with ``from_pretrained`` (``LlamaTokenizer(
vocab_file=...)`` would build an empty vocabulary).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = (
    "salto backward forward tucked piked stretched turn on one leg circle giant handstand what gymnastics move is "
    "this athlete performing answer with the letter of a chat between curious user and an artificial intelligence "
    "assistant gives helpful detailed polite answers to question USER ASSISTANT video A B C D"
).split()


def tiny_llama(folder: Path, seed: int = 0, width: int = 64) -> Path:
    """A random 2-layer LLaMA (vocabulary 320) with its tokenizer, saved in ``folder`` (created)."""
    import sentencepiece as spm
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    folder = Path(folder)
    work = folder / "spm"
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    (work / "corpus.txt").write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(2000)))
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "tokenizer"), vocab_size=320, model_type="bpe",
        normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    tokenizer = LlamaTokenizer.from_pretrained(work, add_bos_token=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def tiny_adapter_config(feature_dim: int = 16, llm_width: int = 64, num_queries: int = 4, instruction: bool = False,
                        num_layers: int = 2):
    """An :class:`bridge.adapter.AdapterConfig` for a random 2-layer Q-Former of width 32 (``instruction``: with
    the InstructBLIP option, tokenized by the embedded BERT's tokenizer, at most 16 instruction tokens)."""
    from bridge.adapter import AdapterConfig

    return AdapterConfig(feature_dim=feature_dim, llm_width=llm_width, qformer="random", num_layers=num_layers,
                         num_queries=num_queries, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                         max_frames=8, instruction=instruction, max_instruction_tokens=16)


def fake_features(num_frames_per_element=(2, 2, 4), patches: int = 4, dim: int = 16, seed: int = 0) -> dict:
    """One clip's features in the feature-cache layout (``element_tokens.<i>``, ``element_cls``, ``fused``)."""
    g = torch.Generator().manual_seed(seed)
    out = {f"element_tokens.{i}": torch.randn(n, patches, dim, generator=g) for i, n in enumerate(num_frames_per_element)}
    out["element_cls"] = torch.randn(len(num_frames_per_element), dim, generator=g)
    out["fused"] = torch.randn(dim, generator=g)
    return out


LAYOUT_224 = [[1, 5], [3, 7], [0, 2, 4, 6]]  # the {2-2-4} dual-level elements
