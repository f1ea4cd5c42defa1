"""Training recipe of the Q-Former adapter on Gym-QA (a leaf: only drivers import it).

    sefar bridge train configs/bridge/syngym_smollm2.yaml [key=value ...]     # resumes RUN/checkpoints

validate the config -> cache the encoder's features of the questions' clips (resumable) -> load the frozen LLM ->
build the adapter (Q-Former from BERT) -> an explicit loop over ``train.steps`` steps -> export.

* Objective ``name`` (default): the prompt is the video and the question's stem (no options); the target is the
  correct option's text (for element questions, the element's name). ``letter``: the prompt lists the lettered options, the target is
  the letter. Only the answer tokens (and the end of turn) count in the loss.
* ``adapter.instruction: true`` (InstructBLIP): the question's text also enters the Q-Former, the stem for ``name``,
  the lettered question for ``letter`` (the text the LLM prompt asks); its BERT tokenizer is saved in
  ``RUN/checkpoints/qformer_tokenizer`` and in the export.
* Free-form conversations (:mod:`bridge.conversations`, detected by content in ``data.train_questions``): every
  assistant turn is a target, the conversation before it the prompt; ``train.objective`` does not apply and the
  clip list is derived from the records. ``data.train_questions`` may also be the paper's Gym-QA JSON.
* Resuming: ``RUN/checkpoints/last.safetensors`` holds the adapter, the AdamW state and the step, written
  atomically every ``train.save_every`` steps. Each step's batch and dropout draws come from generators seeded
  by ``(seed, step)``, so a run killed and resumed logs the same losses as one that never stopped.
* Outputs: ``RUN/config.yaml`` (resolved config), ``RUN/prompt.txt`` (a rendered training prompt and target),
  ``RUN/losses.json``, ``RUN/adapter/`` (the export, see :mod:`bridge.export`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from bridge.adapter import AdapterConfig, QFormerAdapter
from bridge.config import BridgeConfig, load_config, text_limits
from bridge.export import CHECKPOINT, read_checkpoint, write_adapter_export, write_qformer_tokenizer
from bridge.keymap import fit_to_checkpoint, lavis_shapes, load_lavis_checkpoint, read_lavis_state
from bridge.llm import LLMConfig, load_llm
from bridge.model import VideoLLM
from bridge.conversations import ConversationSet
from bridge.qa import feature_cache, read_training_set
from bridge.tokens import visual_tokens
from common.configfile import saved_config_changes
from common.errors import ConfigError, DataError
from common.jsonio import dumps, loads, write_json
from common.textio import write_text_atomic
from encoder.export import save_safetensors

__all__ = ["train", "main_train", "run_metadata", "parameter_groups"]


def _lr_at(step: int, cfg: BridgeConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of ``train.lr`` (``step`` counts from 0)."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def run_metadata(cfg: BridgeConfig, model: VideoLLM, layout: list[list[int]], question: str,
                 objective: str | None = None) -> dict:
    """What an export records besides the weights (see :mod:`bridge.export`); ``objective``: the recorded one
    when not ``train.objective`` (``"conversation"`` for free-form data)."""
    llm = LLMConfig(**vars(cfg.llm))
    source = cfg.encoder.export if cfg.encoder.kind == "sefar" else f"frames:{cfg.encoder.frames.model}"
    return {"llm": llm.to_dict(), "template": model.template.name,
            "features": {"kind": cfg.encoder.kind, "source": source, "layout": layout,
                         "use_cls": cfg.adapter.use_cls},
            "prompt": {"question": question, "objective": objective or cfg.train.objective}}


# Keys a run may resume under with another value: where it writes, how often it logs and saves, CPU threads, and
# what only scoring reads.
RESUME_FREE = ("out", "train.save_every", "train.log_every", "train.threads", "data.test_questions", "data.test_list",
               "data.direction_pairs", "eval")


def check_resumable(run: Path, cfg: BridgeConfig, free: tuple[str, ...] = ()) -> None:
    """A :class:`ConfigError` when ``run/config.yaml`` differs from ``cfg`` in a key that shapes training (beyond
    :data:`RESUME_FREE` and ``free``): resuming would mix two configs in one run. Keys added to the config since the
    run was made take their defaults, as the run did."""
    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        return
    def as_dict(config: BridgeConfig) -> dict:
        return OmegaConf.to_container(OmegaConf.structured(config))

    changed = saved_config_changes(saved_path, lambda path: as_dict(load_config(path)), as_dict(cfg),
                                   (*RESUME_FREE, *free))
    if changed:
        raise ConfigError(f"{saved_path}: the run was trained with another config ({'; '.join(changed[:3])}"
                          f"{'; ...' if len(changed) > 3 else ''}): use the same config, another out=, or start over "
                          "(--no-resume)")


def _build_adapter(cfg: BridgeConfig, feature_dim: int, llm, fused_dim: int | None = None) -> QFormerAdapter:
    a = cfg.adapter
    adapter_cfg = AdapterConfig(
        feature_dim=feature_dim, llm_width=llm.width, qformer=a.qformer, num_layers=a.num_layers,
        num_queries=a.num_queries, cross_attention_frequency=a.cross_attention_frequency,
        max_elements=a.max_elements, max_frames=a.max_frames, use_cls=a.use_cls, output_norm=a.output_norm,
        dropout=a.dropout, instruction=a.instruction, max_instruction_tokens=a.max_instruction_tokens,
        vision_width=a.vision_width, use_fused=a.use_fused, fused_dim=fused_dim if a.use_fused else None,
    )
    state = read_lavis_state(a.lavis_checkpoint) if a.lavis_checkpoint else None
    if state is not None:
        adapter_cfg, notes = fit_to_checkpoint(adapter_cfg, lavis_shapes(state))
        for note in notes:
            print(note)
    std = float(llm.model.get_input_embeddings().weight.float().std())
    adapter, report = QFormerAdapter.from_pretrained_bert(adapter_cfg, embedding_std=std)
    print(f"Q-Former from {a.qformer}: {report.summary()}")
    if state is not None:
        report = load_lavis_checkpoint(adapter, a.lavis_checkpoint, state)
        print(f"LAVIS checkpoint {a.lavis_checkpoint}: {report.summary()}")
    return adapter


def parameter_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as LAVIS makes them: weight decay on matrices only; biases, LayerNorm weights, scales (every
    parameter of fewer than 2 dimensions) and the learned query tokens train without it."""
    decay, free = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (free if p.ndim < 2 or name == "query_tokens" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": free, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------- checkpoints


def _save_checkpoint(run: Path, adapter: QFormerAdapter, optimizer: torch.optim.Optimizer, step: int,
                     losses: list[float], meta: dict) -> None:
    tensors = {f"adapter.{k}": v for k, v in adapter.state_dict().items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                tensors[f"optim.{i}.{name}"] = state[name]
        if "step" in state:
            tensors[f"optim.{i}.step"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1)
    metadata = {"step": str(step), "losses": dumps(losses), "adapter_config": dumps(adapter.cfg.to_dict()),
                "meta": dumps(meta)}
    save_safetensors(run / CHECKPOINT, tensors, metadata=metadata)
    write_json(run / "losses.json", losses, indent=None)


def _load_checkpoint(path: Path, adapter: QFormerAdapter, optimizer: torch.optim.Optimizer) -> tuple[int, list[float]]:
    state, tensors, metadata = read_checkpoint(path, "; delete it to start over")
    own = adapter.state_dict()
    if state.keys() != own.keys() or any(state[k].shape != own[k].shape for k in own):
        raise DataError(path, "checkpoint does not match the configured adapter; use a new run folder")
    adapter.load_state_dict(state)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        if f"optim.{i}.exp_avg" in tensors:
            if tensors[f"optim.{i}.exp_avg"].shape != p.shape:
                raise DataError(path, "its optimizer state does not fit this adapter's parameter groups (written by "
                                      "an older version?); use a new run folder or --no-resume")
            optimizer.state[p] = {"step": tensors[f"optim.{i}.step"][0].clone(),
                                  "exp_avg": tensors[f"optim.{i}.exp_avg"].to(p.device),
                                  "exp_avg_sq": tensors[f"optim.{i}.exp_avg_sq"].to(p.device)}
    losses = loads(metadata.get("losses", "[]"), path)
    if not isinstance(losses, list) or not str(metadata.get("step")).isdigit():
        raise DataError(path, "checkpoint metadata has no step and losses; delete it to start over")
    return int(metadata["step"]), losses


# ---------------------------------------------------------------------------------------------------- loop


def _batch_indices(cfg: BridgeConfig, step: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return torch.randint(n, (cfg.train.batch_size,), generator=g).tolist()


def train(cfg: BridgeConfig, resume: bool = True, stop_after: int | None = None, llm=None) -> dict:
    """Train (or resume) the run ``cfg.out``; returns a summary. ``stop_after``: stop once that step is saved
    (an interruption, for tests); ``llm``: the config's LLM already loaded (drivers that train several adapters
    on one LLM).

    Under ``accelerate launch --num_processes N`` the run is data parallel: every step draws the same global batch
    of ``train.batch_size`` questions on every process, each process takes its share (``batch[rank::N]``),
    gradients are averaged, and the loss is that of the whole batch, so N processes follow the same steps as one.
    The main process alone writes files."""
    from accelerate import Accelerator

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.train.mixed_precision)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if cfg.train.batch_size < world:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is the global batch: it must be at least the "
                          f"{world} processes")
    run = Path(cfg.out)
    if resume and (run / CHECKPOINT).is_file():
        check_resumable(run, cfg)
    run.mkdir(parents=True, exist_ok=True)
    if main:
        write_text_atomic(run / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    began = time.perf_counter()
    cache = feature_cache(cfg, "train", cfg.data.features or run / "features")
    if cfg.adapter.use_fused and cache.fused_width is None:  # before the LLM loads
        raise DataError(cache.root / "manifest.json", "records no 'fused' feature (not written by this toolkit?), "
                        "which adapter.use_fused=true feeds the Q-Former: set adapter.use_fused=false")
    qs = read_training_set(cfg, cache, text_limits(cfg))
    free = isinstance(qs, ConversationSet)
    if main:
        print(f"train {'conversations' if free else 'questions'}: {qs.count} ({qs.skipped} skipped: no features)")
    features = {cid: cache[cid] for cid in qs.clip_ids}
    feature_seconds = time.perf_counter() - began

    if llm is None:
        llm = load_llm(LLMConfig(**vars(cfg.llm)), device=accelerator.device)
    qs.check_lengths(text_limits(cfg), llm.tokenizer)  # in tokens, before any model work
    feature_dim = cache.width
    torch.manual_seed(cfg.seed)  # the adapter's initialisation (cross-attention, queries, positions)
    adapter = _build_adapter(cfg, feature_dim, llm, cache.fused_width).to(accelerator.device)
    optimizer = torch.optim.AdamW(parameter_groups(adapter, cfg.train.weight_decay), lr=cfg.train.lr)
    model = VideoLLM(adapter, llm)
    if cfg.train.gradient_checkpointing:
        model.enable_checkpointing()
    examples = qs.examples(model.template, cfg.train.objective)
    meta = run_metadata(cfg, model, cache.layout, qs.first_question, "conversation" if free else None)
    if main:
        write_qformer_tokenizer(run / "checkpoints", adapter)  # instruction adapters: `sefar bridge export` needs it
        write_text_atomic(run / "prompt.txt", examples[0].prompt + examples[0].target)

    step, losses = 0, []
    accelerator.wait_for_everyone()  # a checkpoint being written by a run before is complete
    if resume and (run / CHECKPOINT).is_file():
        step, losses = _load_checkpoint(run / CHECKPOINT, adapter, optimizer)
        if main:
            print(f"resumed {run} at step {step}")
    adapter_p, optimizer_p = accelerator.prepare(adapter, optimizer)
    model.adapter = adapter_p
    adapter_p.train()
    batch_size = cfg.train.batch_size
    train_began = time.perf_counter()
    with tqdm(total=cfg.train.steps, initial=step, desc="bridge train", unit="step", disable=not main) as bar:
        while step < cfg.train.steps:
            for group in optimizer_p.param_groups:
                group["lr"] = _lr_at(step, cfg)
            torch.manual_seed(cfg.seed * 7_919 + step)  # Q-Former dropout draws of this step
            batch = [examples[i] for i in _batch_indices(cfg, step, len(examples))[rank::world]]
            visual = visual_tokens([features[e.clip_id] for e in batch], cache.layout, cfg.adapter.use_cls)
            instructions = model.instructions_for([e.text for e in batch])
            with accelerator.autocast():
                per_sample = model.loss(visual, [e.prompt for e in batch], [e.target for e in batch], instructions)
            # This share's part of the global batch mean; the all-reduce averages over the processes.
            accelerator.backward(per_sample.sum() * (world / batch_size))
            if cfg.train.clip_grad:
                accelerator.clip_grad_norm_(adapter_p.parameters(), cfg.train.clip_grad)
            optimizer_p.step()
            optimizer_p.zero_grad(set_to_none=True)
            step += 1
            total = per_sample.detach().float().sum()
            if world > 1:
                total = accelerator.reduce(total, reduction="sum")
            losses.append(round(float(total) / batch_size, 6))
            if not math.isfinite(losses[-1]):
                raise ConfigError(f"training diverged: the loss is {losses[-1]} at step {step} (lower train.lr or "
                                  f"check the features in {cache.root})")
            if step % cfg.train.log_every == 0:
                bar.set_postfix(loss=f"{sum(losses[-cfg.train.log_every:]) / cfg.train.log_every:.3f}")
            bar.update(1)
            if step % cfg.train.save_every == 0 or step == cfg.train.steps:
                if main:
                    _save_checkpoint(run, accelerator.unwrap_model(adapter_p), optimizer_p, step, losses, meta)
                accelerator.wait_for_everyone()
                if stop_after is not None and step >= stop_after:
                    return {"step": step, "losses": losses, "stopped": True}
    adapter = accelerator.unwrap_model(adapter_p)
    summary = {"step": step, "losses": losses, "train_questions": qs.count, "train_examples": len(examples),
               "skipped": qs.skipped,
               "feature_seconds": round(feature_seconds, 1),
               "train_seconds": round(time.perf_counter() - train_began, 1), "world_size": world,
               "examples_per_rank": [step * len(range(r, batch_size, world)) for r in range(world)]}
    if main:
        write_adapter_export(run / "adapter", adapter, **meta, source={"run": run.name, "step": step})
        write_json(run / "train.json", summary, indent=1)
    accelerator.wait_for_everyone()
    return summary


def main_train(config: str | None, overrides: list[str], resume: bool = True) -> int:
    """``sefar bridge train``: load and validate the config, then :func:`train`."""
    cfg = load_config(None if config in (None, "-") else config, overrides)
    summary = train(cfg, resume=resume)
    last = summary["losses"][-10:]
    print(f"trained {summary['step']} steps; mean loss of the last {len(last)}: {sum(last) / max(1, len(last)):.3f}; "
          f"adapter exported to {Path(cfg.out) / 'adapter'}")
    return 0
