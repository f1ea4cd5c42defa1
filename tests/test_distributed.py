"""Entry points release the torch.distributed process group before exit (gloo may abort at interpreter exit)."""

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_release_process_group_destroys_an_initialised_group_and_is_idempotent():
    script = f"""
import torch.distributed as dist
from common.distributed import release_process_group
release_process_group()  # nothing to release yet
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
assert dist.is_initialized()
release_process_group()
assert not dist.is_initialized()
release_process_group()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_cli_releases_the_group_after_its_command_even_when_it_fails(monkeypatch, tmp_path, capsys):
    import common.distributed
    import sefar.cli as cli

    released = []
    monkeypatch.setattr(common.distributed, "release_process_group", lambda: released.append(True))
    code = cli.main(["gymqa", "score", str(tmp_path / "questions.jsonl"), str(tmp_path / "predictions.jsonl")])
    assert code == 2 and released == [True]
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'questions.jsonl'}: no such file")
