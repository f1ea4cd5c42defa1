"""Bridge speed: training from the feature cache vs the encoder in the loop, KV-cache option scoring, LLM tokens/s.

    python -m bench.bridge_speed --export outputs/quickstart/export/sefar_tiny --videos outputs/quickstart/syngym/videos
    python -m bench.bridge_speed --arch vit_small --videos outputs/quickstart/syngym/videos   # a paper-scale encoder

``--arch NAME`` replaces the export by an untrained encoder of that architecture (``vit_small``, ``vit_base``: 224 px,
8 frames, combo 2-2-2-2; random weights, nothing downloaded), written as an export to a temporary folder: the speed
of a step does not depend on the weights, and what the feature cache saves grows with the encoder.

1. One adapter training step (batch B, forward + backward + AdamW) fed from cached features, against the same
   step that first decodes the B clips and runs the frozen encoder on them (what training without the cache does).
2. Scoring 4 options of one question: the prompt once + the options batched over its KV cache, against one full
   forward per option (:meth:`bridge.model.VideoLLM.option_loglikelihoods_bruteforce`).
3. Greedy generation tokens/s of the LLM (the embedded SmolLM2 by default).

Prints a table and writes JSON (``--out``). CPU numbers on a shared machine vary with its load: compare the
ratios, measured back to back in one run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bridge.adapter import AdapterConfig, QFormerAdapter
from bridge.chat import clip_features
from bridge.llm import LLMConfig, load_llm
from bridge.model import VideoLLM
from bridge.tokens import visual_tokens
from common.results import Table, provenance, write_result
from encoder.data.sampling import segment_frame_indices
from encoder.data.video import read_frames
from encoder.export import PreprocessConfig, build_export_config, load, save_export
from encoder.timesformer import create_model

OPTIONS = ["salto backward tucked", "2 turn in tuck stand on one leg, free leg optional",
           "giant circle forward with 1 turn to handstand", "salto forward stretched with 1 twist"]


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def _encode(encoder, videos: list[Path]) -> list[dict]:
    k = encoder.preprocess_config.num_frames
    out = []
    for video in videos:
        frames = read_frames(video, lambda n: segment_frame_indices(n, k, train=False))
        with torch.no_grad():
            out.append(clip_features(encoder.features(encoder.preprocess(frames))))
    return out


def untrained_export(arch: str, out: Path, combo: str = "2-2-2-2") -> Path:
    """An export of an untrained ``arch`` encoder (the paper's 224 px, 8-frame input) in ``out``."""
    model = create_model(arch, num_classes=99, combo=combo)
    pp = PreprocessConfig(num_frames=model.layout.num_frames, img_size=model.cfg.img_size,
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    names = [f"class {i}" for i in range(model.cfg.num_classes)]
    return save_export(out, model, build_export_config(model.cfg, pp, names, source={"untrained": arch}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", default="outputs/quickstart/export/sefar_tiny", help="SeFAR encoder export")
    parser.add_argument("--arch", default=None, help="an untrained encoder of this architecture instead of --export")
    parser.add_argument("--videos", default="outputs/quickstart/syngym/videos", help="folder of .mp4 clips")
    parser.add_argument("--llm", default="embedded", help="LLM folder / GGUF (default: embedded SmolLM2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="bench/results/bridge_speed.json")
    args = parser.parse_args()
    started = provenance()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.arch:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            encoder = load(untrained_export(args.arch, Path(tmp)))
    else:
        encoder = load(args.export)
    videos = sorted(Path(args.videos).glob("*.mp4"))[: args.batch]
    llm = load_llm(LLMConfig(path=args.llm))
    torch.manual_seed(0)
    adapter_cfg = AdapterConfig(feature_dim=encoder.model.cfg.embed_dim, llm_width=llm.width, num_layers=2,
                                num_queries=8, cross_attention_frequency=1)
    adapter, _ = QFormerAdapter.from_pretrained_bert(adapter_cfg)
    model = VideoLLM(adapter, llm)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    layout = [list(e) for e in encoder.layout.elements]
    prompt, target = model.template.with_answer("What gymnastics move is this athlete performing?", OPTIONS[0])
    cached = _encode(encoder, videos)

    def step(features: list[dict]) -> None:
        loss = model.loss(visual_tokens(features, layout), [prompt] * len(features), [target] * len(features)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    from_cache = _best(lambda: step(cached), args.repeats)
    with_encoder = _best(lambda: step(_encode(encoder, videos)), args.repeats)

    queries = adapter(visual_tokens(cached[:1], layout))[0].detach()
    question_prompt = model.template.render("What gymnastics move is this athlete performing?")
    continuations = [model.template.with_answer("What gymnastics move is this athlete performing?", o)[1] for o in OPTIONS]
    kv = _best(lambda: model.option_loglikelihoods(queries, question_prompt, continuations), args.repeats)
    brute = _best(lambda: model.option_loglikelihoods_bruteforce(queries, question_prompt, continuations), args.repeats)

    new_tokens = 48
    ids = llm.tokenizer(model.template.render("Describe a back salto in gymnastics.", video=False),
                        return_tensors="pt", add_special_tokens=False)

    def generate() -> None:
        with torch.no_grad():
            llm.model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    gen = _best(generate, max(1, args.repeats - 1))
    rows = [
        ("training step (batch %d)" % args.batch, "encoder every step", with_encoder, "feature cache", from_cache),
        ("4-option scoring", "full forward per option", brute, "shared-prefix KV cache", kv),
    ]
    data = {
        "threads": torch.get_num_threads(), "llm": llm.source, "batch": args.batch,
        "encoder": f"untrained {args.arch}" if args.arch else args.export,
        "encoder_input": f"{encoder.preprocess_config.num_frames}x{encoder.preprocess_config.img_size}px",
        "train_step_s": {"encoder_every_step": round(with_encoder, 3), "feature_cache": round(from_cache, 3),
                         "speedup": round(with_encoder / from_cache, 2)},
        "option_scoring_s": {"full_forward_per_option": round(brute, 3), "kv_cache": round(kv, 3),
                             "speedup": round(brute / kv, 2)},
        "generate_tokens_per_s": round(new_tokens / gen, 1),
    }
    table = Table("", ["measurement", "baseline", "s", "ours", "s", "speed-up"])
    for name, base, base_s, ours, ours_s in rows:
        table.add(name, base, f"{base_s:.3f}", ours, f"{ours_s:.3f}", f"{base_s / ours_s:.2f}x")
    table.notes = (f"Encoder: {data['encoder']} ({data['encoder_input']}); LLM: {llm.source}, "
                   f"{torch.get_num_threads()} threads; best of {args.repeats}. Greedy generation: "
                   f"{data['generate_tokens_per_s']} tokens/s.")
    write_result(args.out, "Bridge speed: feature cache, KV-cache option scoring, generation", [table], data,
                 started=started)


if __name__ == "__main__":
    main()
