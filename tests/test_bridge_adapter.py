"""Q-Former adapter: BERT initialisation, LAVIS / Video-LLaMA key mapping, width errors, answer-only loss, and the
InstructBLIP option (the instruction text inside the Q-Former)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from bridge_fixtures import LAYOUT_224, fake_features, tiny_adapter_config
from safetensors.torch import load_file, save_file

from bridge.adapter import AdapterConfig, QFormerAdapter
from bridge.bert import embedded_bert_path
from bridge.export import TOKENIZER_DIR, load_adapter, write_adapter_export
from bridge.keymap import load_lavis_checkpoint, map_lavis_state_dict
from bridge.model import IGNORE, answer_loss
from bridge.tokens import visual_tokens
from common.errors import ConfigError, DataError

QUESTIONS = ["What gymnastics move is this athlete performing?",
             "Is the salto backward tucked, piked or stretched, and how many turns does the athlete make in the air?"]


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
        elif key.startswith("text_embeddings."):  # an adapter with the instruction option
            state[prefix + "embeddings." + key.removeprefix("text_embeddings.")] = value.clone()
    width = adapter.cfg.hidden_size
    if adapter.cfg.instruction:  # LAVIS appends [DEC] to bert-base-uncased's vocabulary: one row more
        words = state[prefix + "embeddings.word_embeddings.weight"]
        state[prefix + "embeddings.word_embeddings.weight"] = torch.cat([words, torch.randn(1, width)])
    else:
        state[prefix + "embeddings.word_embeddings.weight"] = torch.zeros(30522, width)
        state[prefix + "embeddings.position_embeddings.weight"] = torch.zeros(512, width)
        state[prefix + "encoder.layer.0.intermediate.dense.weight"] = torch.zeros(64, width)  # the text FFN
        state[prefix + "encoder.layer.0.output.dense.weight"] = torch.zeros(width, 64)
    state[prefix + "embeddings.position_ids"] = torch.arange(512)[None]
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


# ------------------------------------------------------------------------------------- the InstructBLIP option


def _instruct_adapter(seed: int = 0, **kwargs) -> QFormerAdapter:
    torch.manual_seed(seed)
    return QFormerAdapter(tiny_adapter_config(instruction=True, **kwargs)).eval()


def test_instruction_steers_the_queries_and_padding_does_not():
    adapter = _instruct_adapter()
    clip0, clip1 = fake_features(seed=0), fake_features(seed=1)
    video = visual_tokens([clip0, clip0], LAYOUT_224)
    with torch.no_grad():
        same_video = adapter(video, QUESTIONS)
        assert same_video.shape == (2, 4, 64)
        assert not torch.allclose(same_video[0], same_video[1], atol=1e-3)  # other question, other queries
        other_video = adapter(visual_tokens([clip1], LAYOUT_224), QUESTIONS[:1])
        assert not torch.allclose(other_video[0], same_video[0], atol=1e-3)  # the queries still see the video
        # a batch of a short and a long instruction (padded) equals each sample run alone
        both = adapter(visual_tokens([clip0, clip1], LAYOUT_224), QUESTIONS)
        alone = [adapter(visual_tokens([c], LAYOUT_224), [q])[0] for c, q in zip((clip0, clip1), QUESTIONS)]
    lengths = adapter.tokenizer(QUESTIONS, truncation=True, max_length=16)["input_ids"]
    assert len(lengths[0]) < len(lengths[1]) == 16  # really padded, and the long one truncated to 16 tokens
    assert torch.allclose(both[0], alone[0], atol=1e-5) and torch.allclose(both[1], alone[1], atol=1e-5)
    assert torch.allclose(both[0], same_video[0], atol=1e-5)


def test_instruction_is_required_with_the_option_and_refused_without():
    adapter = _instruct_adapter()
    visual = visual_tokens([fake_features(seed=0)], LAYOUT_224)
    with pytest.raises(ValueError, match="built with adapter.instruction=true: pass the instructions"):
        adapter(visual)
    with pytest.raises(ValueError, match="a list of 1 texts .* got a string"):
        adapter(visual, "what move")
    with pytest.raises(ValueError, match="a list of 1 texts .* got 2 texts"):
        adapter(visual, QUESTIONS)
    with pytest.raises(ValueError, match="built without adapter.instruction"):
        QFormerAdapter(tiny_adapter_config())(visual, QUESTIONS[:1])


def test_text_positions_skip_cross_attention_and_use_the_text_feed_forward():
    adapter = _instruct_adapter(num_layers=1)  # one layer, with cross-attention
    lengths, outputs = {}, []

    def length_of(name):  # a forward hook recording how many positions a module sees (returns None: no change)
        def hook(module, args, kwargs, out):
            lengths[name] = (args[0] if args else kwargs["hidden_states"]).shape[1]
        return hook

    layer = adapter.qformer.encoder.layer[0]
    hooks = [layer.crossattention.register_forward_hook(length_of("cross"), with_kwargs=True),
             layer.intermediate.register_forward_hook(length_of("text_ffn"), with_kwargs=True),
             layer.intermediate_query.register_forward_hook(length_of("query_ffn"), with_kwargs=True),
             adapter.qformer.register_forward_hook(lambda m, args, out: outputs.append(out.last_hidden_state))]
    with torch.no_grad():
        for seed in (0, 1):
            adapter(visual_tokens([fake_features(seed=seed)], LAYOUT_224), QUESTIONS[:1])
    for hook in hooks:
        hook.remove()
    text = len(adapter.tokenizer(QUESTIONS[0])["input_ids"])
    assert lengths == {"cross": 4, "query_ffn": 4, "text_ffn": text}
    a, b = outputs
    assert a.shape[1] == 4 + text
    assert not torch.allclose(a[:, :4], b[:, :4], atol=1e-3)  # the query positions see the video
    assert torch.equal(a[:, 4:], b[:, 4:])  # the text positions do not (no cross-attention path in this layer)


def test_without_the_option_nothing_changes(tmp_path):
    torch.manual_seed(0)
    plain = QFormerAdapter(tiny_adapter_config()).eval()
    keys = set(plain.state_dict())
    assert not any(k.startswith("text_embeddings.") or re.search(r"\.layer\.\d+\.(?:intermediate|output)\.", k)
                   for k in keys)
    assert plain.tokenizer is None
    visual = visual_tokens([fake_features(seed=0), fake_features(seed=1)], LAYOUT_224)
    with torch.no_grad():
        out = plain(visual)
        # the forward of before the option, spelled out: queries cross-attend, nothing else enters
        x = plain.ln_vision(visual.tokens + plain.element_embed(visual.element_ids)
                            + plain.frame_embed(visual.frame_ids.clamp(max=8)))
        hidden = plain.qformer(query_embeds=plain.query_tokens.expand(2, -1, -1), encoder_hidden_states=x,
                               encoder_attention_mask=visual.mask).last_hidden_state
        assert torch.equal(out, plain.out_norm(plain.proj(hidden)) * plain.out_scale)
    # a state dict saved from it loads strictly into a fresh adapter built without the option: same outputs
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, tmp_path / "plain.safetensors")
    fresh = QFormerAdapter(tiny_adapter_config()).eval()
    fresh.load_state_dict(load_file(tmp_path / "plain.safetensors"))
    with torch.no_grad():
        assert torch.equal(fresh(visual), out)
    # the option adds exactly the text embeddings and the text feed-forward
    added = set(_instruct_adapter().state_dict()) - keys
    assert added == {"text_embeddings.word_embeddings.weight", "text_embeddings.position_embeddings.weight",
                     *(f"qformer.encoder.layer.{i}.{name}" for i in range(2) for name in (
                         "intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight",
                         "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias"))}
    # an export written before the option existed (no instruction keys in its config) still loads
    out_dir = write_adapter_export(tmp_path / "old", plain, llm={}, template="chat", features={}, prompt={})
    config = json.loads((out_dir / "config.json").read_text())
    for key in ("instruction", "max_instruction_tokens", "vocab_size", "max_position_embeddings"):
        del config["adapter"][key]
    (out_dir / "config.json").write_text(json.dumps(config))
    assert not (out_dir / TOKENIZER_DIR).exists()
    loaded, _ = load_adapter(out_dir)
    with torch.no_grad():
        assert torch.equal(loaded(visual), out)


def test_bert_initialises_the_instruction_embeddings_and_both_feed_forwards():
    cfg = AdapterConfig(feature_dim=16, llm_width=64, num_queries=4, num_layers=2, instruction=True)
    adapter, report = QFormerAdapter.from_pretrained_bert(cfg)
    assert (adapter.cfg.vocab_size, adapter.cfg.max_position_embeddings) == (30522, 512)
    assert report.missing == [] and report.unexpected == []
    assert "embeddings.word_embeddings.weight" not in report.ignored
    assert "embeddings.token_type_embeddings.weight" in report.ignored and "pooler.dense.weight" in report.ignored
    bert = load_file(embedded_bert_path() / "model.safetensors")
    text = adapter.text_embeddings
    assert torch.equal(text.word_embeddings.weight, bert["embeddings.word_embeddings.weight"])
    assert torch.equal(text.position_embeddings.weight, bert["embeddings.position_embeddings.weight"])
    q = adapter.qformer.state_dict()
    for name in ("intermediate.dense.weight", "output.dense.weight", "output.LayerNorm.bias"):
        assert torch.equal(q[f"encoder.layer.1.{name}"], bert[f"encoder.layer.1.{name}"]), name
        query_name = name.replace("intermediate.", "intermediate_query.").replace("output.", "output_query.")
        assert torch.equal(q[f"encoder.layer.1.{query_name}"], bert[f"encoder.layer.1.{name}"]), query_name
    assert torch.equal(q["encoder.layer.1.attention.output.dense.weight"],
                       bert["encoder.layer.1.attention.output.dense.weight"])
    ids = adapter.tokenizer("what move")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP] of the embedded BERT's vocabulary
    embeds, mask = adapter._instruction_embeds(["what move"])  # BERT's word + position embeddings, from 0
    want = bert["embeddings.word_embeddings.weight"][ids] + bert["embeddings.position_embeddings.weight"][:len(ids)]
    assert torch.equal(embeds[0], want) and mask.tolist() == [[1] * len(ids)]


def test_instruction_export_round_trip_carries_the_tokenizer(tmp_path):
    adapter = _instruct_adapter(seed=3)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the initialisation
    out_dir = write_adapter_export(tmp_path / "export", adapter, llm={}, template="chat", features={}, prompt={})
    assert (out_dir / TOKENIZER_DIR).is_dir() and not list(out_dir.glob(".*partial"))
    config = json.loads((out_dir / "config.json").read_text())
    assert config["adapter"]["instruction"] is True and config["adapter"]["vocab_size"] == 30522
    config["adapter"]["qformer"] = str(tmp_path / "no_such_bert")  # rebuilt without the BERT folder
    (out_dir / "config.json").write_text(json.dumps(config))
    loaded, _ = load_adapter(out_dir)
    visual = visual_tokens([fake_features(seed=0), fake_features(seed=1)], LAYOUT_224)
    with torch.no_grad():
        assert torch.equal(loaded(visual, QUESTIONS), adapter(visual, QUESTIONS))
    assert loaded.tokenizer(QUESTIONS)["input_ids"] == adapter.tokenizer(QUESTIONS)["input_ids"]
    shutil.rmtree(out_dir / TOKENIZER_DIR)
    with pytest.raises(DataError) as err:
        load_adapter(out_dir)
    assert str(err.value).startswith(f"{out_dir / TOKENIZER_DIR}: missing: an adapter with adapter.instruction=true")
    assert "\n" not in str(err.value)


def test_lavis_instructblip_checkpoint_loads_strictly_with_the_option(tmp_path):
    source = _instruct_adapter(seed=1)
    state = _lavis_state(source)
    torch.save({"model": state}, tmp_path / "instructblip.pth")
    target = _instruct_adapter(seed=2)
    report = load_lavis_checkpoint(target, tmp_path / "instructblip.pth")
    assert report.unexpected == []
    assert sorted(report.missing) == ["element_embed.weight", "frame_embed.weight", "out_norm.bias",
                                      "out_norm.weight", "out_scale"]
    assert "Qformer.bert.embeddings.word_embeddings.weight[30522:30523]" in report.ignored  # LAVIS's [DEC] row
    assert not any(".intermediate." in k for k in report.ignored)  # the text feed-forward is kept
    for key, value in source.state_dict().items():
        if key not in report.missing:
            assert torch.equal(target.state_dict()[key], value), key
    mapped, _ = map_lavis_state_dict(state, use_qformer_text_input=True)
    assert torch.equal(mapped["text_embeddings.position_embeddings.weight"],
                       source.text_embeddings.position_embeddings.weight)
    # the same checkpoint into an adapter without the option: as before, the text parts are ignored
    plain = QFormerAdapter(tiny_adapter_config())
    report = load_lavis_checkpoint(plain, tmp_path / "instructblip.pth")
    assert report.unexpected == [] and any("word_embeddings" in k for k in report.ignored)
    assert any(".intermediate." in k for k in report.ignored)
