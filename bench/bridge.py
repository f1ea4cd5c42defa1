"""Bridge speed: training from the feature cache vs the encoder in the loop, KV-cache option scoring, LLM tokens/s.

    python bench/bridge.py --export outputs/quickstart/export/sefar_tiny --videos outputs/quickstart/syngym/videos

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
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path and this module would shadow the bridge package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import torch  # noqa: E402

from bridge.adapter import AdapterConfig, QFormerAdapter, visual_tokens  # noqa: E402
from bridge.chat import clip_features  # noqa: E402
from bridge.llm import LLMConfig, load_llm  # noqa: E402
from bridge.model import VideoLLM  # noqa: E402
from encoder.data.sampling import segment_frame_indices  # noqa: E402
from encoder.data.video import read_frames  # noqa: E402
from encoder.export import load  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", default="outputs/quickstart/export/sefar_tiny", help="SeFAR encoder export")
    parser.add_argument("--videos", default="outputs/quickstart/syngym/videos", help="folder of .mp4 clips")
    parser.add_argument("--llm", default="embedded", help="LLM folder / GGUF (default: embedded SmolLM2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="bench/results/bridge.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

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
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "llm": llm.source, "batch": args.batch,
        "train_step_s": {"encoder_every_step": round(with_encoder, 3), "feature_cache": round(from_cache, 3),
                         "speedup": round(with_encoder / from_cache, 2)},
        "option_scoring_s": {"full_forward_per_option": round(brute, 3), "kv_cache": round(kv, 3),
                             "speedup": round(brute / kv, 2)},
        "generate_tokens_per_s": round(new_tokens / gen, 1),
    }
    print("| measurement | baseline | s | ours | s | speed-up |")
    print("|---|---|---|---|---|---|")
    for name, base, base_s, ours, ours_s in rows:
        print(f"| {name} | {base} | {base_s:.3f} | {ours} | {ours_s:.3f} | {base_s / ours_s:.2f}x |")
    print(f"greedy generation: {result['generate_tokens_per_s']} tokens/s ({llm.source})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
