"""The adapter's AdamW groups follow LAVIS: no weight decay on biases, norms, scales and the query tokens."""

from __future__ import annotations

import torch
from bridge_fixtures import tiny_adapter_config

from bridge.adapter import QFormerAdapter
from bridge.train import parameter_groups


def test_weight_decay_only_on_matrices():
    adapter = QFormerAdapter(tiny_adapter_config())
    decay, free = parameter_groups(adapter, 0.05)
    names = {id(p): n for n, p in adapter.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in free["params"]}
    assert decay["weight_decay"] == 0.05 and free["weight_decay"] == 0.0
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    assert {"query_tokens", "out_scale", "ln_vision.weight", "ln_vision.bias", "proj.bias"} <= exempt
    assert {"proj.weight", "element_embed.weight"} <= decayed
    assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decay["params"])

    # one AdamW step with zero gradients: decay shrinks the matrices, never a LayerNorm weight or the queries
    before = {n: p.detach().clone() for n, p in adapter.named_parameters()}
    optimizer = torch.optim.AdamW([decay, free], lr=0.1)
    for p in adapter.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(adapter.named_parameters())
    assert torch.equal(after["ln_vision.weight"], before["ln_vision.weight"])
    assert torch.equal(after["query_tokens"], before["query_tokens"])
    assert not torch.equal(after["proj.weight"], before["proj.weight"])
