"""The adapter's fused-feature option (``adapter.use_fused``): the encoder's clip-level feature as one more visual
token, through its own projection; off by default, where nothing changes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from bridge_fixtures import LAYOUT_224, fake_features, tiny_adapter_config

from bridge.adapter import QFormerAdapter
from bridge.export import load_adapter, write_adapter_export
from bridge.memory import adapter_params
from bridge.tokens import visual_tokens
from common.errors import ConfigError, DataError

FUSED = 24  # a fused width other than the tokens' 16, as SeFAR's fusion_dim differs from embed_dim


def _features(seed: int, fused: bool = True, frames=(2, 2, 4)) -> dict:
    out = fake_features(frames, seed=seed)
    out.pop("fused")  # fake_features' is as wide as the tokens
    if fused:
        out["fused"] = torch.randn(FUSED, generator=torch.Generator().manual_seed(100 + seed))
    return out


def _adapter(seed: int = 0, use_fused: bool = True) -> QFormerAdapter:
    torch.manual_seed(seed)
    cfg = replace(tiny_adapter_config(), use_fused=use_fused, fused_dim=FUSED if use_fused else None)
    return QFormerAdapter(cfg).eval()


def test_visual_tokens_stack_the_fused_features_only_when_every_clip_has_one():
    visual = visual_tokens([_features(0), _features(1)], LAYOUT_224)
    assert visual.fused.shape == (2, FUSED) and visual.fused.dtype == torch.float32
    assert torch.equal(visual.fused[1], _features(1)["fused"])
    assert visual.to("cpu").fused.shape == (2, FUSED)
    assert visual_tokens([_features(0), _features(1, fused=False)], LAYOUT_224).fused is None


def test_the_fused_token_is_one_more_token_through_its_projection():
    adapter = _adapter()
    visual = visual_tokens([_features(0), _features(1)], LAYOUT_224)
    with torch.no_grad():
        out = adapter(visual)
        # spelled out: the projected fused feature appended after the (padded) tokens, attended to
        frames = visual.frame_ids.clamp(max=8)
        x = visual.tokens + adapter.element_embed(visual.element_ids) + adapter.frame_embed(frames)
        x = torch.cat([x, adapter.fused_proj(visual.fused)[:, None]], dim=1)
        mask = torch.cat([visual.mask, torch.ones(2, 1, dtype=visual.mask.dtype)], dim=1)
        hidden = adapter.qformer(query_embeds=adapter.query_tokens.expand(2, -1, -1),
                                 encoder_hidden_states=adapter.ln_vision(x), encoder_attention_mask=mask).last_hidden_state
        assert torch.equal(out, adapter.out_norm(adapter.proj(hidden)) * adapter.out_scale)
        # the output follows the fused feature
        other = visual_tokens([_features(0), _features(1)], LAYOUT_224)
        other.fused = other.fused + 1.0
        assert not torch.allclose(adapter(other), out, atol=1e-4)


def test_padding_before_the_fused_token_does_not_change_a_clip():
    """A short clip batched with a longer one (padding between its tokens and its fused token) gives what it gives
    alone."""
    adapter = _adapter()
    short = _features(0, frames=(1, 1, 2))
    with torch.no_grad():
        visual = visual_tokens([short], [[1], [3], [0, 2]])
        alone = adapter(visual)
        pad = 5  # as many padding slots as a longer clip of the batch would leave
        padded = replace(visual, tokens=torch.cat([visual.tokens, torch.randn(1, pad, 16)], 1),
                         element_ids=torch.cat([visual.element_ids, torch.zeros(1, pad, dtype=torch.long)], 1),
                         frame_ids=torch.cat([visual.frame_ids, torch.zeros(1, pad, dtype=torch.long)], 1),
                         mask=torch.cat([visual.mask, torch.zeros(1, pad, dtype=torch.long)], 1))
        assert torch.allclose(adapter(padded), alone, atol=1e-5)


def test_without_the_option_the_fused_feature_is_ignored_and_nothing_else_changes():
    plain, fused = _adapter(use_fused=False), _adapter(use_fused=True)
    assert set(fused.state_dict()) - set(plain.state_dict()) == {"fused_proj.weight", "fused_proj.bias"}
    for key, value in plain.state_dict().items():  # the projection is drawn last: every other weight is the same
        assert torch.equal(value, fused.state_dict()[key]), key
    visual = visual_tokens([_features(0), _features(1)], LAYOUT_224)
    without = visual_tokens([_features(0, fused=False), _features(1, fused=False)], LAYOUT_224)
    with torch.no_grad():
        assert torch.equal(plain(visual), plain(without))
    assert adapter_params(fused.cfg) - adapter_params(plain.cfg) == FUSED * 16 + 16


def test_missing_or_foreign_fused_features_are_refused():
    with pytest.raises(ConfigError, match="fused_dim"):
        QFormerAdapter(replace(tiny_adapter_config(), use_fused=True))
    adapter = _adapter()
    with pytest.raises(ConfigError, match="no fused feature"):
        adapter(visual_tokens([_features(0, fused=False)], LAYOUT_224))
    wrong = visual_tokens([_features(0)], LAYOUT_224)
    wrong.fused = torch.randn(1, FUSED + 1)
    with pytest.raises(ConfigError, match="another encoder"):
        adapter(wrong)


def test_export_round_trip_and_a_damaged_width(tmp_path):
    adapter = _adapter(seed=3)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not the initialisation
    out_dir = write_adapter_export(tmp_path / "export", adapter, llm={}, template="chat", features={}, prompt={})
    config = json.loads((out_dir / "config.json").read_text())
    assert config["adapter"]["use_fused"] is True and config["adapter"]["fused_dim"] == FUSED
    loaded, _ = load_adapter(out_dir)
    visual = visual_tokens([_features(0), _features(1)], LAYOUT_224)
    with torch.no_grad():
        assert torch.equal(loaded(visual), adapter(visual))
    config["adapter"]["fused_dim"] = 1 << 30  # a damaged file must not allocate without bound
    (out_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="fused_dim"):
        load_adapter(out_dir)


def test_an_export_from_before_the_option_loads_without_it(tmp_path):
    plain = _adapter(use_fused=False)
    out_dir = write_adapter_export(tmp_path / "old", plain, llm={}, template="chat", features={}, prompt={})
    config = json.loads((out_dir / "config.json").read_text())
    del config["adapter"]["use_fused"], config["adapter"]["fused_dim"]
    (out_dir / "config.json").write_text(json.dumps(config))
    loaded, _ = load_adapter(out_dir)
    assert loaded.cfg.use_fused is False and not hasattr(loaded, "fused_proj")
    visual = visual_tokens([_features(0)], LAYOUT_224)
    with torch.no_grad():
        assert torch.equal(loaded(visual), plain(visual))
