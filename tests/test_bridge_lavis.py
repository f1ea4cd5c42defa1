"""LAVIS BLIP-2 / InstructBLIP and Video-LLaMA checkpoints at their real shapes and key names (random values) load
into an adapter over any encoder width: a learned input projection when the checkpoint's Q-Former cross-attends to
another width (BLIP-2: EVA ViT-g's 1408), Video-LLaMA's frame embedding at the right rows, a loaded projection
into the LLM kept as trained."""

from __future__ import annotations

import torch

from bridge.adapter import AdapterConfig, QFormerAdapter
from bridge.keymap import fit_to_checkpoint, lavis_shapes, load_lavis_checkpoint
from bridge.tokens import VisualTokens

BERT_BASE = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072)


def lavis_state(prefix: str, layers: int, vision: int, frequency: int, queries: int, llm: int, proj: str,
                text: bool = False, width: int = 768, inter: int = 3072) -> dict[str, torch.Tensor]:
    """A checkpoint's trainable part as LAVIS (``Qformer.bert.``) or Video-LLaMA (``video_Qformer.bert.``) names
    it, random values at the real shapes. ``text``: InstructBLIP's text input (word/position embeddings, the text
    feed-forward), kept in its checkpoints; BLIP-2's LLM checkpoints drop them."""
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    s = {f"{prefix}embeddings.LayerNorm.weight": 1 + t(width), f"{prefix}embeddings.LayerNorm.bias": t(width)}
    if text:
        s[f"{prefix}embeddings.word_embeddings.weight"] = t(30523, width)  # bert-base-uncased + [DEC]
        s[f"{prefix}embeddings.position_embeddings.weight"] = t(512, width)
    for i in range(layers):
        layer = f"{prefix}encoder.layer.{i}."
        parts = [("attention.self.query", width, width), ("attention.self.key", width, width),
                 ("attention.self.value", width, width), ("attention.output.dense", width, width),
                 ("intermediate_query.dense", inter, width), ("output_query.dense", width, inter)]
        norms = ["attention.output.LayerNorm", "output_query.LayerNorm"]
        if i % frequency == 0:
            parts += [("crossattention.self.query", width, width), ("crossattention.self.key", width, vision),
                      ("crossattention.self.value", width, vision), ("crossattention.output.dense", width, width)]
            norms.append("crossattention.output.LayerNorm")
        if text:
            parts += [("intermediate.dense", inter, width), ("output.dense", width, inter)]
            norms.append("output.LayerNorm")
        for name, rows, cols in parts:
            s[f"{layer}{name}.weight"], s[f"{layer}{name}.bias"] = t(rows, cols), t(rows)
        for name in norms:
            s[f"{layer}{name}.weight"], s[f"{layer}{name}.bias"] = 1 + t(width), t(width)
    s[f"{proj}weight"], s[f"{proj}bias"] = t(llm, width), t(llm)
    return s


def _visual(batch: int, tokens: int, width: int) -> VisualTokens:
    return VisualTokens(torch.randn(batch, tokens, width), torch.zeros(batch, tokens, dtype=torch.long),
                        torch.arange(1, tokens + 1).clamp(max=8).expand(batch, -1).clone(),
                        torch.ones(batch, tokens, dtype=torch.long))


def test_a_blip2_qformer_loads_onto_sefar_vit_b_tokens_through_an_input_projection(tmp_path):
    state = lavis_state("Qformer.bert.", layers=12, vision=1408, frequency=2, queries=32, llm=4096, proj="llm_proj.")
    state["query_tokens"] = torch.randn(1, 32, 768) * 0.02
    state["ln_vision.weight"], state["ln_vision.bias"] = torch.ones(1408) * 1.5, torch.full((1408,), 0.1)
    torch.save({"model": state}, tmp_path / "blip2_vicuna7b.pth")

    cfg = AdapterConfig(feature_dim=768, llm_width=4096, qformer="random", num_layers=12, num_queries=32,
                        cross_attention_frequency=2, **BERT_BASE)
    shapes = lavis_shapes(state)
    assert (shapes.vision_width, shapes.projection, shapes.projection_width) == (1408, True, 4096)
    cfg, notes = fit_to_checkpoint(cfg, shapes)
    assert cfg.vision_width == 1408 and not cfg.output_norm and len(notes) == 2
    torch.manual_seed(0)
    adapter = QFormerAdapter(cfg)
    report = load_lavis_checkpoint(adapter, tmp_path / "blip2_vicuna7b.pth")
    assert report.unexpected == []
    assert sorted(report.missing) == ["element_embed.weight", "frame_embed.weight", "input_proj.bias",
                                      "input_proj.weight"]  # new parts, reported as such
    own = adapter.state_dict()
    assert torch.equal(own["qformer.encoder.layer.10.crossattention.attention.key.weight"],
                       state["Qformer.bert.encoder.layer.10.crossattention.self.key.weight"])
    assert torch.equal(own["ln_vision.weight"], state["ln_vision.weight"])
    assert torch.equal(own["proj.weight"], state["llm_proj.weight"])
    visual = _visual(2, 20, 768)
    with torch.no_grad():
        out = adapter.eval()(visual)
        x = visual.tokens + adapter.element_embed(visual.element_ids) + adapter.frame_embed(visual.frame_ids)
        hidden = adapter.qformer(query_embeds=adapter.query_tokens.expand(2, -1, -1),
                                 encoder_hidden_states=adapter.ln_vision(adapter.input_proj(x)),
                                 encoder_attention_mask=visual.mask).last_hidden_state
    assert out.shape == (2, 32, 4096)
    assert torch.allclose(out, adapter.proj(hidden), atol=1e-5)  # the loaded projection's own output, no norm


def test_video_llama_frame_embedding_fills_the_frame_rows_after_the_summary_row(tmp_path):
    state = lavis_state("video_Qformer.bert.", layers=2, vision=768, frequency=1, queries=32, llm=4096,
                        proj="llama_proj.")
    state["video_query_tokens"] = torch.randn(1, 32, 768) * 0.02
    state["video_frame_position_embedding.weight"] = torch.randn(32, 768)
    torch.save(state, tmp_path / "video_llama.pth")
    cfg = AdapterConfig(feature_dim=768, llm_width=4096, qformer="random", num_layers=2, num_queries=32,
                        cross_attention_frequency=1, max_frames=64, **BERT_BASE)
    cfg, notes = fit_to_checkpoint(cfg, lavis_shapes(state))
    assert cfg.vision_width is None and not cfg.output_norm  # same width: no input projection
    torch.manual_seed(0)
    adapter = QFormerAdapter(cfg)
    row0 = adapter.frame_embed.weight[0].detach().clone()
    report = load_lavis_checkpoint(adapter, tmp_path / "video_llama.pth")
    assert report.unexpected == [] and sorted(report.missing) == ["element_embed.weight", "ln_vision.bias",
                                                                  "ln_vision.weight"]
    frames = adapter.frame_embed.weight.detach()
    assert torch.equal(frames[1:33], state["video_frame_position_embedding.weight"])  # frame i at row i + 1
    assert torch.equal(frames[0], row0)  # the summary tokens' row keeps its initialisation
    assert torch.equal(adapter.query_tokens.detach(), state["video_query_tokens"])


def test_an_adapter_without_a_checkpoint_is_unchanged_by_the_new_options():
    cfg = AdapterConfig(feature_dim=16, llm_width=64, qformer="random", num_layers=1, num_queries=4,
                        hidden_size=32, num_attention_heads=4, intermediate_size=64)
    adapter = QFormerAdapter(cfg)
    assert adapter.input_proj is None and adapter.out_norm is not None
    assert "input_proj.weight" not in adapter.state_dict()
    assert AdapterConfig().max_instruction_tokens == 128  # LAVIS's instruction length
