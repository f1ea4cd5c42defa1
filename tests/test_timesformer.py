import logging
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block as TimmBlock
from torch import nn

from common.errors import ConfigError
from encoder.data.sampling import PAPER_COMBOS, ElementLayout
from encoder.timesformer import (
    DividedSpaceTimeBlock,
    TimeSformerConfig,
    TokenMix,
    checkpoint_filter_fn,
    create_model,
    list_models,
    load_pretrained,
    resize_pos_embed,
)

NUM_CLASSES = 5
SMALL = dict(img_size=32, depth=1, drop_path_rate=0.0)  # big configs shrunk for CPU tests


def _clip(model, batch=2, size=None, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    size = size or model.cfg.img_size
    return torch.randn(batch, 3, model.layout.num_frames, size, size, generator=gen)  # (B, C, K, H, W)


def _tiny(**kwargs):
    torch.manual_seed(0)
    return create_model("tiny", NUM_CLASSES, **{"img_size": 32, "depth": 2, **kwargs})


# ------------------------------------------------------------------------------------------ shapes per config


@pytest.mark.parametrize("name", list_models())
def test_config_forward_shapes(name):
    model = create_model(name, NUM_CLASSES, **({} if name == "tiny" else SMALL))
    x = _clip(model)
    d, e = model.embed_dim, model.layout.num_elements
    n = (model.cfg.img_size // model.cfg.patch_size) ** 2
    if name == "tiny":
        model(x).sum().backward()
        assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model(x).shape == (2, NUM_CLASSES)
        assert model.forward_features(x).shape == (2, e, d)
        out = model.forward_tokens(x)
    assert [t.shape for t in out["element_tokens"]] == [(2, size, n, d) for size in model.layout.sizes]
    assert out["element_cls"].shape == (2, e, d)
    assert out["fused"].shape == (2, model.cfg.fusion_dim)


def test_forward_tokens_agree_with_features_and_head():
    model = _tiny().eval()
    x = _clip(model)
    with torch.no_grad():
        out = model.forward_tokens(x)
        cls = model.forward_features(x)
        torch.testing.assert_close(out["element_cls"], cls)
        torch.testing.assert_close(out["fused"], model.forward_head(cls, pre_logits=True))
        torch.testing.assert_close(model.head.fc(out["fused"]), model(x))


def test_wrong_frame_count_is_rejected():
    model = _tiny()
    with pytest.raises(ValueError, match="needs 8 frames, got 6"):
        model(torch.zeros(1, 3, 6, 32, 32))


# ---------------------------------------------------------------------------------------- element batching


@pytest.mark.parametrize("combo", [*PAPER_COMBOS, "8"])
def test_equal_length_elements_share_one_backbone_pass(combo):
    model = _tiny(combo=combo)
    calls = []
    model.norm.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        model.forward_features(_clip(model, batch=3))
    sizes = ElementLayout.from_combo(combo).sizes
    assert len(calls) == len(set(sizes))  # e.g. "2-2-4": two passes
    assert sorted(calls) == sorted(3 * sizes.count(size) for size in set(sizes))  # batch = B x group size


def test_batched_elements_equal_per_element_passes():
    model = _tiny().eval()
    x = _clip(model)
    with torch.no_grad():
        batched = model.forward_features(x)
        for i, positions in enumerate(model.layout.elements):
            frames = x[:, :, list(positions)].transpose(1, 2)  # (B, L, C, H, W)
            time = model.time_embeds[i].expand(2, -1, -1)  # (B, L, D)
            torch.testing.assert_close(batched[:, i], model._backbone(*model._embed(frames), time)[:, 0])


# -------------------------------------------------------------------------------------------------- token mix


def _mix(model, batch=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    grid = model.cfg.img_size // model.cfg.patch_size
    mask = torch.rand(grid, grid, generator=gen) < 0.4  # (gh, gw): True where the partner's patch goes
    return torch.randperm(batch, generator=gen), mask


def test_token_mix_equals_pixel_mix_for_a_patchify_stem():
    """A patchify stem embeds each patch alone, so mixing its tokens is mixing the patches' pixels."""
    from encoder.ssl import tube_mix_tokens

    model = _tiny(stem="patch").eval()
    x = _clip(model, batch=3)
    partner, mask = _mix(model)
    with torch.no_grad():
        mixed = model(x, mix=TokenMix(partner, mask.flatten()))
        expected = model(torch.cat([x, tube_mix_tokens(x, partner, mask, model.cfg.patch_size)]))
    assert mixed.shape == (6, NUM_CLASSES)
    torch.testing.assert_close(mixed, expected, rtol=1e-4, atol=1e-5)


def test_token_mix_takes_the_partners_stem_tokens_for_a_conv_stem():
    """With a convolutional stem (receptive field across patches) the mixed clip's tokens are exact copies of either
    clip's own tokens, which pixel mixing would not give; the clips themselves come out as without the mix."""
    from encoder.ssl import tube_mix_tokens

    model = _tiny(stem="conv").eval()
    x = _clip(model, batch=3)
    partner, mask = _mix(model, seed=1)
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        plain = model(x)
        both = model(x, mix=TokenMix(partner, mask.flatten()))
        in_pixels = model(tube_mix_tokens(x, partner, mask, model.cfg.patch_size))
    torch.testing.assert_close(both[:3], plain, rtol=1e-5, atol=1e-6)
    take = mask.flatten()
    for tokens in seen[2:4]:  # the mixed run's block inputs, one per element length: (G*2B, 1+L*N, D)
        groups = tokens.unflatten(0, (-1, 6))  # (G, 2B, 1+L*N, D)
        n = take.numel()
        own, mixed = groups[:, :3, 1:].unflatten(2, (-1, n)), groups[:, 3:, 1:].unflatten(2, (-1, n))  # (G, B, L, N, D)
        # the embeddings added to the tokens (position, time) are the clip's own: compare after removing them
        diff = mixed - own
        torch.testing.assert_close(diff[:, :, :, ~take], torch.zeros_like(diff[:, :, :, ~take]))
        torch.testing.assert_close(mixed[:, :, :, take], own[:, partner][:, :, :, take])
    assert not torch.allclose(both[3:], in_pixels, atol=1e-4)  # the stem's receptive field crosses the patches


def test_token_mix_rejects_a_mask_or_partner_of_another_shape():
    model = _tiny().eval()
    x = _clip(model, batch=2)
    grid = model.cfg.img_size // model.cfg.patch_size
    with pytest.raises(ValueError, match="token mix"):
        model(x, mix=TokenMix(torch.tensor([1, 0]), torch.zeros(grid * grid + 1, dtype=torch.bool)))
    with pytest.raises(ValueError, match="token mix"):
        model(x, mix=TokenMix(torch.tensor([1, 0, 2]), torch.zeros(grid * grid, dtype=torch.bool)))


def test_each_element_sees_only_its_frames():
    model = _tiny().eval()
    x = _clip(model)
    changed = x.clone()
    changed[:, :, list(model.layout.context)] += 1.0
    with torch.no_grad():
        before, after = model.forward_features(x), model.forward_features(changed)
    torch.testing.assert_close(before[:, :-1], after[:, :-1])  # fine elements unchanged
    assert not torch.allclose(before[:, -1], after[:, -1])


@pytest.mark.parametrize("combo", [*PAPER_COMBOS, "8"])
def test_one_time_embedding_per_element_and_every_parameter_trained(combo):
    model = _tiny(combo=combo)
    sizes = ElementLayout.from_combo(combo).sizes
    assert [tuple(p.shape) for p in model.time_embeds] == [(1, size, model.embed_dim) for size in sizes]
    e = len(sizes)
    assert model.head.fuse[0].in_features == (e + e * (e - 1) // 2) * model.cfg.fusion_dim
    model(_clip(model, batch=1)).sum().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert unused == []  # no dead parameters (DDP would complain), also for the single-element combo "8"


# -------------------------------------------------------------------------------------------------- block


def _block_pair(dim=32, heads=4):
    torch.manual_seed(0)
    ours = DividedSpaceTimeBlock(dim, heads, mlp_ratio=4.0, qkv_bias=True, drop_path=0.0)
    for p in ours.parameters():  # non-trivial norms too
        nn.init.normal_(p, std=0.2)
    nn.init.zeros_(ours.temporal_fc.weight)
    nn.init.zeros_(ours.temporal_fc.bias)
    vit = TimmBlock(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    vit.load_state_dict({k: v for k, v in ours.state_dict().items() if not k.startswith("temporal_")})
    return ours, vit


def test_fresh_block_acts_like_a_vit_block_on_each_frame():
    ours, vit = _block_pair()
    b, t, n, d = 2, 3, 5, 32
    cls, patches = torch.randn(b, 1, d), torch.randn(b, t, n, d)
    x = torch.cat([cls, patches.flatten(1, 2)], dim=1)  # (B, 1 + T*N, D)
    out = ours(x, t)[:, 1:].reshape(b, t, n, d)  # (B, T, N, D)
    for f in range(t):
        expected = vit(torch.cat([cls, patches[:, f]], dim=1))[:, 1:]
        torch.testing.assert_close(out[:, f], expected)
    single = torch.cat([cls, patches[:, 0]], dim=1)  # one frame: the whole block equals the ViT block
    torch.testing.assert_close(ours(single, 1), vit(single))


def test_temporal_branch_mixes_frames_once_temporal_fc_is_trained():
    ours, vit = _block_pair()
    nn.init.normal_(ours.temporal_fc.weight, std=0.2)
    x = torch.randn(2, 1 + 3 * 5, 32)
    frame0 = torch.cat([x[:, :1], x[:, 1:6]], dim=1)
    assert not torch.allclose(ours(x, 3)[:, 1:6], vit(frame0)[:, 1:])


def test_fresh_model_has_zero_temporal_fc():
    model = _tiny()
    for block in model.blocks:
        assert block.temporal_fc.weight.abs().sum() == 0 and block.temporal_fc.bias.abs().sum() == 0


# ----------------------------------------------------------------------------------------- randomness


def test_head_dropout_is_the_only_randomness_of_the_head():
    model = _tiny()
    assert [name for name, m in model.named_modules() if isinstance(m, nn.Dropout)] == ["head.dropout"]
    cls = torch.randn(4, model.layout.num_elements, model.embed_dim)
    model.eval()
    torch.testing.assert_close(model.forward_head(cls), model.forward_head(cls))
    model.train()
    assert not torch.allclose(model.forward_head(cls), model.forward_head(cls))
    torch.testing.assert_close(model.forward_head(cls, pre_logits=True), model.forward_head(cls, pre_logits=True))
    torch.manual_seed(3)
    first = model.forward_head(cls)
    torch.manual_seed(3)
    torch.testing.assert_close(model.forward_head(cls), first)


def test_backbone_is_deterministic_in_eval_and_drop_path_active_in_train():
    model = _tiny(drop_path_rate=0.5)
    x = _clip(model)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model.forward_features(x), model.forward_features(x))
        model.train()
        assert not torch.allclose(model.forward_features(x), model.forward_features(x))


# ------------------------------------------------------------------------------------ misc model features


def test_pos_embed_interpolated_for_another_input_size():
    model = _tiny().eval()  # 32 px, patch 8: 4x4 grid
    with torch.no_grad():
        out = model.forward_tokens(_clip(model, size=48))
    assert out["element_tokens"][0].shape == (2, 2, 36, model.embed_dim)
    pos = model.pos_embed.detach()
    assert resize_pos_embed(pos, (4, 4)) is pos
    expected = resample_abs_pos_embed(pos, [6, 6], num_prefix_tokens=1, antialias=False)
    torch.testing.assert_close(resize_pos_embed(pos, (6, 6)), expected)


def test_grad_checkpointing_gives_same_outputs_and_grads():
    model = _tiny(drop_path_rate=0.0)
    x = _clip(model)
    model.eval()  # no dropout: compare exactly
    model(x).sum().backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], msg=name)


def test_no_weight_decay_names_parameters():
    model = _tiny()
    names = dict(model.named_parameters())
    assert model.no_weight_decay() == {"cls_token", "pos_embed", "time_embeds.0", "time_embeds.1", "time_embeds.2"}
    assert model.no_weight_decay() <= names.keys()


def test_config_round_trip_and_validation():
    cfg = TimeSformerConfig(num_classes=3, combo="2-2-6", depth=2)
    assert TimeSformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown TimeSformerConfig keys \\['depthh'\\]"):
        TimeSformerConfig.from_dict({"num_classes": 3, "depthh": 2})
    with pytest.raises(ConfigError) as err:
        TimeSformerConfig(num_classes=0, img_size=30, num_heads=5)
    assert "num_classes=0" in str(err.value) and "img_size=30" in str(err.value) and "num_heads=5" in str(err.value)
    with pytest.raises(ConfigError, match="combo"):
        TimeSformerConfig(num_classes=3, combo="2-x")
    with pytest.raises(ConfigError, match="unknown model 'vit_huge'"):
        create_model("vit_huge", 3)


# -------------------------------------------------------------------------------------- pretrained weights


def _timm_vit(name="vit_small_patch16_224", **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False, **{"depth": 2, "img_size": 32, **kwargs}).state_dict()


def _expected_missing(model) -> list[str]:
    return [
        k for k in model.state_dict() if k.startswith(("time_embeds.", "head.")) or ".temporal_fc." in k
    ]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_timm_vit_checkpoint(tmp_path, suffix):
    state = _timm_vit()
    path = tmp_path / f"vit_small{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    model = create_model("vit_small", NUM_CLASSES, img_size=32, depth=2)
    report = load_pretrained(model, path)
    assert sorted(report.missing) == sorted(_expected_missing(model))
    assert sorted(report.unexpected) == ["head.bias", "head.weight"]
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("head."):
            torch.testing.assert_close(own[key], value, msg=key)
    for i in range(2):
        for part in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight"):
            torch.testing.assert_close(own[f"blocks.{i}.temporal_{part}"], own[f"blocks.{i}.{part}"])
    text = str(report)
    assert "blocks.*.temporal_fc.weight (x2)" in text and "time_embeds.2" in text
    assert "unexpected (ignored): head." in text and "head.weight" in text


def test_create_model_loads_and_logs_report(tmp_path, caplog):
    path = tmp_path / "vit.pth"
    torch.save({"model": _timm_vit()}, path)  # wrapped checkpoints are unwrapped
    with caplog.at_level(logging.INFO, logger="encoder.timesformer"):
        model = create_model("vit_small", NUM_CLASSES, img_size=32, depth=2, pretrained=str(path))
    assert "missing (left at init)" in caplog.text
    torch.testing.assert_close(model.patch_embed.proj.weight, _timm_vit()["patch_embed.proj.weight"])


def test_pos_embed_grid_resampled_from_checkpoint():
    state = _timm_vit(img_size=32)  # 2x2 grid -> our 4x4 grid (patch 16, 64 px)
    model = create_model("vit_small", NUM_CLASSES, img_size=64, depth=2)
    pos = checkpoint_filter_fn(state, model)["pos_embed"]
    assert pos.shape == (1, 17, 384)
    expected = resample_abs_pos_embed(state["pos_embed"], [4, 4], num_prefix_tokens=1, antialias=False)
    torch.testing.assert_close(pos, expected)


def test_extra_prefix_tokens_are_handled(tmp_path):
    deit = _timm_vit("deit_small_distilled_patch16_224")  # pos_embed: cls, dist, 2x2 grid
    model = create_model("vit_small", NUM_CLASSES, img_size=32, depth=2)
    pos = checkpoint_filter_fn(deit, model)["pos_embed"]
    torch.testing.assert_close(pos, torch.cat([deit["pos_embed"][:, :1], deit["pos_embed"][:, 2:]], dim=1))
    torch.save(deit, tmp_path / "deit.pth")
    report = load_pretrained(model, tmp_path / "deit.pth")
    assert "dist_token" in report.unexpected
    dino = _timm_vit("vit_small_patch14_reg4_dinov2", img_size=28)  # pos_embed: 2x2 grid only, no cls position
    model = create_model("vit_small", NUM_CLASSES, img_size=28, patch_size=14, depth=2)
    pos = checkpoint_filter_fn(dino, model)["pos_embed"]
    torch.testing.assert_close(pos, torch.cat([torch.zeros(1, 1, 384), dino["pos_embed"]], dim=1))


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    path = tmp_path / "vit_base.pth"
    torch.save(_timm_vit("vit_base_patch16_224", depth=1), path)
    model = create_model("vit_small", NUM_CLASSES, img_size=32, depth=1)
    with pytest.raises(ConfigError, match=r"cls_token: checkpoint \(1, 1, 768\) vs model \(1, 1, 384\)"):
        load_pretrained(model, path)


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    model = _tiny()
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        load_pretrained(model, tmp_path / "nope.pth")


def test_timm_name_asks_timm_for_pretrained_weights(monkeypatch):
    asked = {}

    def fake_create_model(name, pretrained):
        asked.update(name=name, pretrained=pretrained)
        return timm.models.vision_transformer.VisionTransformer(img_size=32, embed_dim=384, depth=1, num_heads=6)

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    model = create_model("vit_small", NUM_CLASSES, img_size=32, depth=1)
    report = load_pretrained(model, "timm:vit_small_patch16_224.augreg_in21k")
    assert asked == {"name": "vit_small_patch16_224.augreg_in21k", "pretrained": True}
    assert report.source == "timm:vit_small_patch16_224.augreg_in21k"


@pytest.mark.parametrize("tokens", [2, 8, 17])
def test_attention_short_sequence_path_matches_fused_kernel(tokens):
    """On CPU, sequences of <= 8 tokens use plain matmul-softmax-matmul; it must equal the fused kernel."""
    from encoder import timesformer

    torch.manual_seed(0)
    attn = timesformer.Attention(dim=32, num_heads=4, qkv_bias=True)
    x = torch.randn(5, tokens, 32, requires_grad=True)
    out = attn(x)
    b, n, d = x.shape
    q, k, v = attn.qkv(x).view(b, n, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
    ref = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    grad, = torch.autograd.grad(out.square().sum(), x)
    ref_grad, = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)
