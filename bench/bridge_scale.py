"""Bridge at paper scale: predicted GPU memory of adapter training for Vicuna-7B / -13B, and the prediction
checked against a measured step on this CPU.

    python -m bench.bridge_scale                 # about a minute on 2 cores; writes bench/results/bridge_scale.json

1. For Vicuna-7B and -13B shapes (built on the ``meta`` device: no weights), bf16 / 8-bit / 4-bit weights,
   gradient checkpointing off and on, the paper config's global batch of 16: the predicted peak memory per GPU
   (:func:`bridge.memory.plan_memory`) on 1 GPU, and on 8 GPUs with data parallelism (2 samples each) and with
   the LLM spread over them (``llm.device_map=auto``).
2. The check: two small LLaMA shapes run the training step's LLM part on this CPU (the shared prefix once
   without gradient, its KV cache repeated for the batch, prompt + answer through the frozen decoder with the
   gradient flowing to the input embeddings, float32 logits of the answer tokens, backward). Each runs in a child
   process whose allocator returns freed memory to the system (``MALLOC_MMAP_THRESHOLD_``), so the rise of its
   peak resident memory over the step is the step's memory. Prediction and measurement must agree within 25%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bridge.memory import GiB, LLMShape, adapter_params, llm_shape, plan_memory
from common.results import Table, provenance, write_result

CHECK_SHAPES = [LLMShape("check-a", 512, 1376, 8, 8, 4, 8000), LLMShape("check-b", 384, 1024, 6, 6, 6, 12000)]
TOLERANCE = 0.25


def measure(shape: LLMShape, batch: int, prompt: int, answer: int, prefix: int) -> dict:
    """Run :func:`_step_in_child` in a child process; its peak memory rise over one step, in bytes."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    args = json.dumps({"shape": shape.__dict__, "batch": batch, "prompt": prompt, "answer": answer, "prefix": prefix})
    done = subprocess.run([sys.executable, "-m", "bench.bridge_scale", "--child", args], env=env,
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise SystemExit(f"error: the measured step failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _step_in_child(spec: dict) -> None:
    import gc

    import torch
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM

    torch.set_num_threads(1)
    shape = LLMShape(**spec["shape"])
    b, p, a, prefix, h = spec["batch"], spec["prompt"], spec["answer"], spec["prefix"], shape.hidden_size
    torch.manual_seed(0)
    model = LlamaForCausalLM(shape.transformers_config()).requires_grad_(False).eval()

    def step() -> None:
        with torch.no_grad():
            cache = model.model(inputs_embeds=torch.randn(1, prefix, h), use_cache=True).past_key_values
        cache.batch_repeat_interleave(b)
        x = torch.randn(b, p + a, h, requires_grad=True)
        mask = torch.ones(b, prefix + p + a, dtype=torch.long)
        positions = torch.arange(prefix, prefix + p + a).expand(b, -1)
        hidden = model.model(inputs_embeds=x, attention_mask=mask, position_ids=positions, past_key_values=cache,
                             use_cache=True).last_hidden_state
        logits = model.lm_head(hidden[:, -a:].reshape(-1, h)).float()
        F.cross_entropy(logits, torch.randint(0, shape.vocab_size, (b * a,))).backward()

    step()  # warm-up: kernels, thread pools
    rises = []
    for _ in range(2):
        gc.collect()
        base = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
        step()
        rises.append(_status("VmHWM") - base)
    print(json.dumps({"bytes": max(rises)}))


def plans_table(adapter_parameters: int) -> tuple[Table, list[dict]]:
    table = Table("Predicted peak memory per GPU, global batch 16 (paper config gymqa99_vicuna7b)",
                  ["LLM", "weights", "checkpointing", "1 GPU", "8 GPUs, data parallel", "8 GPUs, device_map",
                   "fits one 24 GB GPU"])
    rows = []
    for name in ("vicuna-7b", "vicuna-13b"):
        shape = llm_shape(name)
        for quant in (None, "8bit", "4bit"):
            for ckpt in (False, True):
                common = dict(dtype="bfloat16", quantization=quant, batch=16, checkpointing=ckpt,
                              adapter_parameters=adapter_parameters)
                one = plan_memory(shape, **common)
                data = plan_memory(shape, gpus=8, placement="data", **common)
                spread = plan_memory(shape, gpus=8, placement="device_map", **common)
                table.add(name, quant or "bf16", "on" if ckpt else "off", f"{one.per_gpu / GiB:.1f} GiB",
                          f"{data.per_gpu / GiB:.1f} GiB", f"{spread.per_gpu / GiB:.1f} GiB",
                          "yes" if one.per_gpu < 24e9 else "no")
                rows += [one.row(), data.row(), spread.row()]
    return table, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/bridge_scale.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _step_in_child(json.loads(args.child))
        return 0
    started = provenance()
    from bridge.adapter import AdapterConfig

    adapter = adapter_params(AdapterConfig(feature_dim=768, llm_width=4096, qformer="bert-base-uncased",
                                           num_queries=32, cross_attention_frequency=2))
    plans, rows = plans_table(adapter)
    plans.notes = (f"Adapter: BERT-base Q-Former, 32 queries, cross-attention every 2nd layer, ViT-B features: "
                   f"{adapter / 1e6:.1f} M trainable parameters (float32, with AdamW). Tokens per sample: 96 of "
                   "prompt after a 40-token shared prefix (32 video queries included) and a 12-token answer. "
                   "Each GPU also counts 0.5 GiB of CUDA context.")
    check = Table("The prediction against a measured step on this CPU (float32)",
                  ["LLM shape", "batch", "predicted MB", "measured MB", "measured / predicted"])
    ok = True
    for shape in CHECK_SHAPES:
        predicted = plan_memory(shape, dtype="float32", batch=8, context=0)
        got = measure(shape, 8, 96, 12, 40)["bytes"]
        step_bytes = predicted.activations + predicted.transient
        ratio = got / step_bytes
        ok &= abs(ratio - 1) <= TOLERANCE
        check.add(f"H {shape.hidden_size}, I {shape.intermediate_size}, {shape.num_hidden_layers} layers, "
                  f"vocab {shape.vocab_size}", 8, f"{step_bytes / 2**20:.0f}", f"{got / 2**20:.0f}", f"{ratio:.2f}")
    check.notes = (f"Goal: within {TOLERANCE:.0%}. Measured: the rise of the peak resident memory of a child "
                   "process over one step (weights excluded on both sides).")
    write_result(args.out, "Bridge at paper scale: predicted GPU memory", [plans, check], {"plans": rows},
                 started=started)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
