"""Devices of the bridge on a machine without GPUs: a requested device is checked (one ``error:`` line, no
traceback), and the adapter follows the LLM's input embeddings, also when a device map places the LLM."""

from __future__ import annotations

import pytest
import torch
from bridge_fixtures import tiny_adapter_config, tiny_llama

from bridge.adapter import QFormerAdapter
from bridge.devices import check_device
from bridge.export import load_video_llm, write_adapter_export
from bridge.llm import LLMConfig, load_llm
from bridge.model import VideoLLM
from common.errors import ConfigError

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages of a machine without CUDA")

PER_MODULE = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
              "lm_head": "cpu"}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama"))


def test_a_requested_device_is_checked():
    assert check_device(None) == torch.device("cpu") and check_device("cpu") == torch.device("cpu")
    for bad, words in (("cuda", "no cuda device is available"), ("cuda:1", "no cuda device"),
                       ("gpu0", "is not a torch device")):
        with pytest.raises(ConfigError, match=words):
            check_device(bad)


@pytest.mark.parametrize("command", [
    ["bridge", "eval", "somewhere", "--device", "cuda"],
    ["bridge", "compare", "configs/bridge/compare_syngym.yaml", "--device", "cuda:0"],
    ["bridge", "ask", "somewhere", "clip.mp4", "what move", "--device", "cuda"],
])
def test_cli_device_without_cuda_is_one_error_line(command, capsys):
    from sefar.cli import main

    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device cuda") and "available" in err[0], err


def test_demo_device_without_cuda_is_one_error_line(tmp_path, capsys):
    from sefar.cli import main

    for name in ("encoder", "adapter"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    assert main(["demo", "--encoder", str(tmp_path / "encoder"), "--bridge", str(tmp_path / "adapter"),
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device cuda"), err


@pytest.mark.parametrize("device_map", [{"": "cpu"}, PER_MODULE])
def test_the_adapter_follows_the_input_embeddings_under_a_device_map(llama, device_map):
    llm = load_llm(LLMConfig(path=str(llama), device_map=device_map))
    model = VideoLLM(QFormerAdapter(tiny_adapter_config()), llm)
    assert {p.device for p in model.adapter.parameters()} == {llm.model.get_input_embeddings().weight.device}
    llm.model.get_input_embeddings().to("meta")  # the embeddings placed elsewhere than the rest: the adapter follows
    moved = VideoLLM(QFormerAdapter(tiny_adapter_config()), llm)
    assert {p.device.type for p in moved.adapter.parameters()} == {"meta"}


def test_an_export_recording_a_device_map_loads_its_adapter_beside_the_embeddings(llama, tmp_path):
    torch.manual_seed(0)
    folder = write_adapter_export(tmp_path / "export", QFormerAdapter(tiny_adapter_config()),
                                  llm={"path": str(llama), "device_map": PER_MODULE}, template="vicuna_v1.1",
                                  features={"kind": "sefar", "use_cls": True}, prompt={})
    model, _ = load_video_llm(folder)
    assert {p.device for p in model.adapter.parameters()} == {model.llm_model.get_input_embeddings().weight.device}
    with pytest.raises(ConfigError, match="--device cuda"):
        load_video_llm(folder, device="cuda")
