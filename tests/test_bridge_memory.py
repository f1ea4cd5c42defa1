"""Gradient checkpointing of the frozen LLM (same loss and gradients, fewer kept activations, no dropout) and
the memory planner (exact parameter counts on the meta device, activation bytes as autograd keeps them, the
dry run of the paper config)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bridge_fixtures import LAYOUT_224, fake_features, tiny_adapter_config, tiny_llama

from bridge.adapter import QFormerAdapter
from bridge.llm import LLMConfig, load_llm
from bridge.memory import (LLMShape, activation_bytes_per_token_layer, count_llm_params, llm_shape, plan_memory,
                           weight_bytes)
from bridge.model import VideoLLM
from bridge.tokens import visual_tokens

ROOT = Path(__file__).resolve().parents[1]


class SavedBytes:
    """Bytes of the tensors autograd keeps for the backward pass (parameters not counted: they exist anyway)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.skip = {p.data_ptr() for p in module.parameters()}
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr = t.data_ptr()
        if ptr not in self.skip and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += t.numel() * t.element_size()
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return load_llm(LLMConfig(path=str(tiny_llama(tmp_path_factory.mktemp("llama"), width=64))))


def _model(llm) -> VideoLLM:
    torch.manual_seed(0)
    return VideoLLM(QFormerAdapter(tiny_adapter_config(num_queries=4)), llm).eval()


def _batch(model):
    visual = visual_tokens([fake_features(seed=s) for s in (3, 4, 5)], LAYOUT_224)
    pairs = [model.template.with_answer(q, a) for q, a in
             (("what move", "salto"), ("is it tucked or piked", "giant circle backward"), ("what", "A"))]
    return visual, [p for p, _ in pairs], [a for _, a in pairs]


def test_checkpointed_loss_and_gradients_equal_the_cached_path(llm):
    plain, ckpt = _model(llm), _model(llm)
    ckpt.enable_checkpointing()
    visual, prompts, answers = _batch(plain)
    grads = []
    for model in (plain, ckpt):
        model.adapter.zero_grad()
        with SavedBytes(model) as saved:
            loss = model.loss(visual, prompts, answers)
        loss.sum().backward()
        grads.append(({n: p.grad.clone() for n, p in model.adapter.named_parameters() if p.grad is not None},
                      loss.detach(), saved.bytes))
    (g_plain, l_plain, b_plain), (g_ckpt, l_ckpt, b_ckpt) = grads
    assert torch.allclose(l_plain, l_ckpt, atol=1e-5)
    assert g_plain.keys() == g_ckpt.keys() and len(g_plain) > 10
    for name in g_plain:
        assert torch.allclose(g_plain[name], g_ckpt[name], atol=1e-5, rtol=1e-4), name
    assert b_ckpt < 0.7 * b_plain, (b_ckpt, b_plain)  # autograd keeps less
    assert not ckpt.llm_model.training  # back in eval mode after the loss
    assert all(p.grad is None for p in ckpt.llm_model.parameters())


def test_checkpointing_holds_dropout_at_zero(llm):
    model = _model(llm)
    model.enable_checkpointing()
    attention = [m for m in model.llm_model.modules() if isinstance(getattr(m, "attention_dropout", None), float)]
    assert attention
    for m in attention:
        m.attention_dropout = 0.5  # a model whose config asks for attention dropout
    visual, prompts, answers = _batch(model)
    with torch.no_grad():
        reference = model.loss_reference(visual, prompts, answers)
    first = model.loss(visual, prompts, answers)
    second = model.loss(visual, prompts, answers)
    assert torch.allclose(first, second) and torch.allclose(first, reference, atol=1e-5)
    assert all(m.attention_dropout == 0.5 for m in attention)  # restored
    for m in attention:
        m.attention_dropout = 0.0


@pytest.mark.parametrize("shape", [LLMShape("a", 64, 128, 2, 4, 2, 320), LLMShape("b", 96, 200, 3, 4, 4, 320),
                                   LLMShape("c", 128, 384, 2, 8, 4, 320)])
def test_activation_bytes_are_what_autograd_keeps(shape):
    """The planner's per-token, per-layer bytes equal what autograd keeps in a frozen decoder layer (float32)."""
    from dataclasses import replace

    from transformers import LlamaForCausalLM

    tokens = (2, 40)
    x = torch.randn(*tokens, shape.hidden_size, requires_grad=True)
    kept = []
    for layers in (1, shape.num_hidden_layers):
        torch.manual_seed(0)
        model = LlamaForCausalLM(replace(shape, num_hidden_layers=layers).transformers_config())
        model.requires_grad_(False).eval()
        with SavedBytes(model) as saved:
            model.model(inputs_embeds=x)
        kept.append(saved.bytes)
    measured = (kept[1] - kept[0]) / (shape.num_hidden_layers - 1) / (tokens[0] * tokens[1])
    assert measured == pytest.approx(activation_bytes_per_token_layer(shape, "float32"), rel=0.02)


def test_parameter_counts_and_weight_bytes_of_the_paper_llms():
    seven = count_llm_params(llm_shape("vicuna-7b"))
    assert seven["total"] == 6_738_415_616  # LLaMA-7B, as published
    assert weight_bytes(seven, llm_shape("vicuna-7b"), "bfloat16", None) == 2 * seven["total"]
    eight = weight_bytes(seven, llm_shape("vicuna-7b"), "bfloat16", "8bit")
    four = weight_bytes(seven, llm_shape("vicuna-7b"), "bfloat16", "4bit")
    assert 6.5e9 < eight < 7.5e9 and 3.5e9 < four < 4.2e9  # bitsandbytes' published footprints
    assert count_llm_params(llm_shape("vicuna-13b"))["total"] == 13_015_864_320


def test_plans_shrink_with_checkpointing_quantization_and_gpus():
    shape = llm_shape("vicuna-7b")
    base = plan_memory(shape, batch=16)
    assert plan_memory(shape, batch=16, checkpointing=True).per_gpu < base.per_gpu
    assert plan_memory(shape, batch=16, quantization="4bit").per_gpu < base.per_gpu
    data = plan_memory(shape, batch=16, gpus=8)
    assert data.batch_per_gpu == 2 and data.weights == base.weights and data.per_gpu < base.per_gpu
    spread = plan_memory(shape, batch=16, gpus=8, placement="device_map")
    assert spread.weights == pytest.approx(base.weights / 8, rel=0.01) and spread.batch_per_gpu == 16


def test_llm_shape_reads_a_config_and_names_what_is_missing(tmp_path):
    folder = tiny_llama(tmp_path / "llama")
    shape = llm_shape(folder)
    assert (shape.hidden_size, shape.num_hidden_layers, shape.kv_width) == (64, 2, 32)
    assert llm_shape("models/vicuna-7b-v1.1").name == "vicuna-7b"  # not downloaded yet: the preset
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="no config.json there and no preset"):
        llm_shape(tmp_path / "mystery")


def test_dry_run_of_the_paper_config_lists_what_to_supply():
    done = subprocess.run([sys.executable, "-m", "sefar", "bridge", "train", "configs/bridge/gymqa99_vicuna7b.yaml",
                           "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # files are missing on this machine
    out = done.stdout
    for key in ("encoder.export", "data.train_questions", "data.videos", "adapter.qformer", "llm.path"):
        assert any(line.strip().startswith("[MISSING]") and key in line for line in out.splitlines()), key
    assert "LLM vicuna-7b: 32 layers" in out and "8 GPUs, llm.device_map=auto" in out
    assert "GiB" in out and "nothing is loaded" in out


def test_dry_run_plans_the_fused_projection_with_the_exports_width(tmp_path, monkeypatch):
    """The embedded config (adapter.use_fused=true) plans with the export's fusion_dim, not its token width."""
    import bridge.dryrun
    import encoder.export
    from bridge.config import load_config

    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    monkeypatch.setattr(encoder.export, "read_export_config",
                        lambda path: {"architecture": {"embed_dim": 96, "fusion_dim": 40}})
    planned = []
    real = bridge.dryrun.adapter_params
    monkeypatch.setattr(bridge.dryrun, "adapter_params", lambda cfg: planned.append(cfg) or real(cfg))
    for fused in ("true", "false"):
        bridge.dryrun.dry_run(load_config(ROOT / "configs/bridge/syngym_smollm2.yaml",
                                          [f"encoder.export={export}", f"adapter.use_fused={fused}"]), 1)
    with_fused, without = planned
    assert (with_fused.feature_dim, with_fused.use_fused, with_fused.fused_dim) == (96, True, 40)
    assert (without.use_fused, without.fused_dim) == (False, None)
    assert real(with_fused) - real(without) == 40 * 96 + 96
