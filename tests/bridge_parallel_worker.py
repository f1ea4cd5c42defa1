"""One process of a data-parallel bridge run (``accelerate launch --cpu --num_processes N`` or plain python).

    python tests/bridge_parallel_worker.py WRITES.jsonl train key=value ...
    python tests/bridge_parallel_worker.py WRITES.jsonl train-until STEP key=value ...   (then stop, as if killed)
    python tests/bridge_parallel_worker.py WRITES.jsonl eval RUN QUESTIONS OUT [METHODS [BATCH_SIZE]]

Every file the toolkit puts in place (``os.replace`` / ``os.rename``: every atomic write, the tokenizer folder)
is logged to ``WRITES.jsonl`` as ``{"rank", "path"}``, so a test can check that each file was written by one
process only. ``train`` runs :func:`bridge.train.train` on the config of the overrides; ``eval`` scores RUN's
adapter on QUESTIONS into OUT by the comma-separated METHODS (default likelihood), BATCH_SIZE questions a pass.
"""

from __future__ import annotations

import json
import os
import sys

LOG = sys.argv[1]
RANK = int(os.environ.get("RANK", "0"))
_replace, _rename = os.replace, os.rename


def _logged(real):
    def move(src, dst, *args, **kwargs):
        result = real(src, dst, *args, **kwargs)
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps({"rank": RANK, "path": os.fspath(dst)}) + "\n")
        return result
    return move


os.replace, os.rename = _logged(_replace), _logged(_rename)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    if sys.argv[2] in ("train", "train-until"):
        from bridge.config import load_config
        from bridge.train import train

        stop = int(sys.argv[3]) if sys.argv[2] == "train-until" else None
        summary = train(load_config(None, sys.argv[4:] if stop else sys.argv[3:]), stop_after=stop)
        if RANK == 0:
            print("SUMMARY " + json.dumps(summary))
    else:
        from bridge.run import evaluate_run

        run, questions, out = sys.argv[3:6]
        methods = sys.argv[6].split(",") if len(sys.argv) > 6 else ["likelihood"]
        batch = int(sys.argv[7]) if len(sys.argv) > 7 else None
        summary = evaluate_run(run, questions=questions, methods=methods, circular=False, out=out, batch_size=batch)
        if RANK == 0:
            print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    from common.distributed import release_process_group

    try:
        main()
    finally:
        release_process_group()
