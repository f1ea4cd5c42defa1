"""Q-Former adapter: BERT initialisation, LAVIS / Video-LLaMA key mapping, width errors, answer-only loss."""

from __future__ import annotations

import pytest
import torch
from bridge_fixtures import LAYOUT_224, fake_features, tiny_adapter_config
from safetensors.torch import load_file

from bridge.adapter import (AdapterConfig, QFormerAdapter, embedded_bert_path, load_lavis_checkpoint,
                            map_lavis_state_dict, visual_tokens)
from bridge.model import IGNORE, answer_loss
from common.errors import ConfigError, DataError


def _lavis_state(adapter: QFormerAdapter, prefix: str = "Qformer.bert.", proj: str = "llm_proj.") -> dict:
    """A LAVIS-format state dict holding ``adapter``'s values under LAVIS names, plus LAVIS-only keys."""
    state = {}
    for key, value in adapter.state_dict().items():
        if key.startswith("qformer."):
            name = key.removeprefix("qformer.").replace("layernorm.", "embeddings.LayerNorm.")
            name = name.replace(".attention.attention.", ".attention.self.")
            name = name.replace(".crossattention.attention.", ".crossattention.self.")
            state[prefix + name] = value.clone()
        elif key.startswith("proj."):
            state[proj + key.removeprefix("proj.")] = value.clone()
        elif key in ("query_tokens",) or key.startswith("ln_vision."):
            state[key] = value.clone()
    width = adapter.cfg.hidden_size
    state[prefix + "embeddings.word_embeddings.weight"] = torch.zeros(30522, width)
    state[prefix + "embeddings.position_embeddings.weight"] = torch.zeros(512, width)
    state[prefix + "encoder.layer.0.intermediate.dense.weight"] = torch.zeros(64, width)  # the text FFN
    state[prefix + "encoder.layer.0.output.dense.weight"] = torch.zeros(width, 64)
    state[prefix.replace("bert.", "") + "cls.predictions.bias"] = torch.zeros(30522)
    return state


def test_lavis_key_mapping_round_trip(tmp_path):
    torch.manual_seed(0)
    source = QFormerAdapter(tiny_adapter_config())
    torch.save({"model": _lavis_state(source)}, tmp_path / "blip2.pth")
    target = QFormerAdapter(tiny_adapter_config())
    report = load_lavis_checkpoint(target, tmp_path / "blip2.pth")
    assert report.unexpected == []
    assert sorted(report.missing) == ["element_embed.weight", "frame_embed.weight", "out_norm.bias",
                                      "out_norm.weight", "out_scale"]  # LAVIS has no element/frame positions
    assert any("word_embeddings" in k for k in report.ignored) and any(".intermediate." in k for k in report.ignored)
    assert any("cls.predictions" in k for k in report.ignored)
    for key, value in source.state_dict().items():
        if key not in report.missing:
            assert torch.equal(target.state_dict()[key], value), key


def test_video_llama_mapping_and_strictness(tmp_path):
    source = QFormerAdapter(tiny_adapter_config())
    state = _lavis_state(source, prefix="video_Qformer.bert.", proj="llama_proj.")
    state["video_query_tokens"] = state.pop("query_tokens")
    state["video_frame_position_embedding.weight"] = source.frame_embed.weight.clone()
    mapped, _ = map_lavis_state_dict(state)
    assert "query_tokens" in mapped and "frame_embed.weight" in mapped and "proj.weight" in mapped
    assert "qformer.encoder.layer.0.crossattention.attention.key.weight" in mapped
    state["visual_encoder.blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "video_llama.pth")
    with pytest.raises(DataError, match=r"video_llama\.pth: checkpoint keys with no place in the adapter: .*"
                                        r"visual_encoder\.blocks\.0\.attn\.qkv\.weight"):
        load_lavis_checkpoint(QFormerAdapter(tiny_adapter_config()), tmp_path / "video_llama.pth")


def test_qformer_starts_from_the_embedded_bert():
    adapter, report = QFormerAdapter.from_pretrained_bert(AdapterConfig(feature_dim=16, llm_width=64, num_queries=4))
    assert (adapter.cfg.hidden_size, adapter.cfg.num_layers, adapter.cfg.num_attention_heads) == (384, 6, 12)
    assert report.missing == [] and report.unexpected == []
    assert "embeddings.word_embeddings.weight" in report.ignored and "pooler.dense.weight" in report.ignored
    bert = load_file(embedded_bert_path() / "model.safetensors")
    q = adapter.qformer.state_dict()
    assert torch.equal(q["layernorm.weight"], bert["embeddings.LayerNorm.weight"])
    assert torch.equal(q["encoder.layer.3.attention.attention.value.weight"],
                       bert["encoder.layer.3.attention.self.value.weight"])
    assert torch.equal(q["encoder.layer.5.intermediate_query.dense.weight"], bert["encoder.layer.5.intermediate.dense.weight"])
    assert torch.equal(q["encoder.layer.5.output_query.dense.weight"], bert["encoder.layer.5.output.dense.weight"])
    assert "encoder.layer.0.crossattention.attention.key.weight" in q  # cross-attention every 2nd layer, random
    assert "encoder.layer.1.crossattention.attention.key.weight" not in q


def test_forward_shapes_positions_and_width_error():
    torch.manual_seed(0)
    adapter = QFormerAdapter(tiny_adapter_config(num_queries=4)).eval()
    feats = [fake_features(seed=0), fake_features(seed=1)]
    visual = visual_tokens(feats, LAYOUT_224)
    assert visual.tokens.shape == (2, 8 * 4 + 3, 16)
    assert visual.frame_ids[0, :4].tolist() == [2] * 4 and visual.frame_ids[0, -3:].tolist() == [0, 0, 0]
    assert visual.element_ids[0, -3:].tolist() == [0, 1, 2]
    out = adapter(visual)
    assert out.shape == (2, 4, 64)
    # the frame order matters: swapping the frames of the context element changes the queries
    swapped = dict(feats[0])
    swapped["element_tokens.2"] = feats[0]["element_tokens.2"].flip(0)
    assert not torch.allclose(adapter(visual_tokens([swapped], LAYOUT_224))[0], out[0])
    wide = visual_tokens([fake_features(dim=24)], LAYOUT_224)
    with pytest.raises(ConfigError, match="width 24 but the Q-Former's encoder_hidden_size is 16"):
        adapter(wide)


def test_answer_loss_counts_only_answer_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.full((2, 6), IGNORE)
    labels[0, 4:] = torch.tensor([3, 7])
    labels[1, 5] = 2
    loss = answer_loss(logits, labels)
    want0 = torch.nn.functional.cross_entropy(logits[0, 3:5], torch.tensor([3, 7]))
    want1 = torch.nn.functional.cross_entropy(logits[1, 4:5], torch.tensor([2]))
    assert torch.allclose(loss, torch.stack([want0, want1]))
    changed = logits.clone()
    changed[0, :3] = 100 * torch.randn(3, 11)  # positions that predict prompt tokens
    changed[1, 5] = 100.0  # the last position predicts nothing
    assert torch.allclose(answer_loss(changed, labels), loss)
