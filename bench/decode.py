"""Clips per second when reading the 8 dual-level frames of each clip: our reader vs the reference's approach.

    python -m bench.decode                      # makes 24 H.264 clips of 640x360, 90-150 frames, in a temp dir
    python -m bench.decode --videos DIR         # or times the mp4 files of DIR

The reference code opens each clip with OpenCV, seeks once per frame (``CAP_PROP_POS_FRAMES``) and resizes the
short side to 480. Ours (:func:`encoder.data.video.read_frames`) seeks with decord to the wanted frames in one
batch; it is timed without resizing and with the resize to 480 the reference does (same output shape, checked).
Each reader runs over the same files, in the same process, ``--repeats`` times; the best pass is reported.

Both readers decode on one thread, so their CPU time is their work: the speed-up is measured in clips per
CPU-second (``time.process_time``), which other jobs on a shared machine do not distort; wall-clock clips/s are
reported beside it. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common.results import Table, provenance, write_result
from encoder.data.sampling import segment_frame_indices
from encoder.data.video import read_frames


def make_clips(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """H.264 clips with moving content (so the encoder cannot skip frames), default x264 GOP."""
    import av

    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        path = folder / f"clip_{i:03d}.mp4"
        frames = int(rng.integers(90, 151))
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for t in range(frames):
                img = np.empty((height, width, 3), np.uint8)
                img[..., 0] = (xx + 4 * t) % 256
                img[..., 1] = (yy + 2 * t) % 256
                img[..., 2] = ((xx + yy) // 2 + 3 * t) % 256
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        paths.append(path)
    return paths


def reference_read(path: Path, num_frames: int, short_side: int) -> np.ndarray:
    """The reference's way: OpenCV, one seek + read per frame, resize the short side."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for i in segment_frame_indices(total, num_frames, train=False):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
        ok, frame = cap.read()
        if not ok:
            raise RuntimeError(f"{path}: cannot read frame {i}")
        h, w = frame.shape[:2]
        scale = short_side / min(h, w)
        frame = cv2.resize(frame, (round(w * scale), round(h * scale)))
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


def ours_read(path: Path, num_frames: int, short_side: int | None) -> np.ndarray:
    """As the dataset reads a clip: one open, the K segment centres, one batched seek."""
    return read_frames(path, lambda n: segment_frame_indices(n, num_frames, train=False), short_side=short_side)


def time_reader(fn, paths: list[Path], repeats: int) -> tuple[float, float]:
    """(clips per CPU-second, clips per wall-clock second), each the best of ``repeats`` passes."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        for p in paths:
            fn(p)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return len(paths) / best_cpu, len(paths) / best_wall


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path, help="folder of mp4 files (default: generate clips)")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--size", default="640x360", help="generated clip size WxH")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (the {2-2-4} combo reads 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/decode.json"))
    args = parser.parse_args(argv)
    started = provenance()

    import cv2

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.videos:
            paths = sorted(args.videos.glob("*.mp4"))[: args.clips]
        else:
            w, h = (int(v) for v in args.size.split("x"))
            paths = make_clips(Path(tmp), args.clips, w, h)
        if not paths:
            raise SystemExit(f"error: {args.videos}: no .mp4 files")
        readers = {
            "reference: OpenCV, seek per frame, short side 480": lambda p: reference_read(p, args.frames, 480),
            "ours: decord batch seek, native size": lambda p: ours_read(p, args.frames, None),
            "ours: decord batch seek, short side 480": lambda p: ours_read(p, args.frames, 480),
        }
        shapes = {name: fn(paths[0]).shape for name, fn in readers.items()}  # warm-up: imports, codecs, page cache
        names = list(readers)
        if shapes[names[0]] != shapes[names[2]]:
            raise SystemExit(f"error: unequal output: {shapes[names[0]]} vs {shapes[names[2]]}")
        rates = {name: time_reader(fn, paths, args.repeats) for name, fn in readers.items()}

    base_cpu, base_wall = next(iter(rates.values()))
    rows = [
        {"reader": name, "clips_per_cpu_s": round(cpu, 2), "speedup": round(cpu / base_cpu, 2),
         "clips_per_s": round(wall, 2), "wall_speedup": round(wall / base_wall, 2)}
        for name, (cpu, wall) in rates.items()
    ]
    result = {
        "clips": len(paths),
        "frames_per_clip": args.frames,
        "source": str(args.videos) if args.videos else f"generated {args.size} H.264, 90-150 frames",
        "rows": rows,
    }
    table = Table("", ["reader", "clips/CPU-s", "speed-up", "clips/s (wall)", "speed-up (wall)"])
    for r in rows:
        table.add(r["reader"], f"{r['clips_per_cpu_s']:.2f}", f"{r['speedup']:.2f}x", f"{r['clips_per_s']:.2f}",
                  f"{r['wall_speedup']:.2f}x")
    table.notes = (f"{result['clips']} clips ({result['source']}), {args.frames} frames each, best of "
                   f"{args.repeats} passes; both readers decode on one thread, so clips per CPU-second is the "
                   "measure other jobs on the machine do not distort. The two short-side-480 readers give the same "
                   "output shape (checked).")
    write_result(args.out, "Decoding the dual-level frames: ours vs the reference's reader", [table], result,
                 started=started)
    return result


if __name__ == "__main__":
    main()
