import math

import pytest
import torch
import torch.nn as nn

from encoder.ssl import (
    adaptive_weight,
    ema_decay_at,
    ema_update,
    pseudo_labels,
    soft_cross_entropy,
    teacher_passes,
    teacher_passes_full,
    tube_box_mask,
    tube_mix_tokens,
    warmup_factor,
)


def test_eta_matches_hand_computed_values():
    mu = torch.tensor([0.8, 1.0, 0.3])
    sigma = torch.tensor([0.05, 0.0, 0.2])
    # τ1 = 2σ(e^μ − e), τ2 = 2(σ(1/(20σ*)) − 0.5), computed by hand for the three cases
    expected = torch.tensor([0.758496 * 0.462117, 1.0, 0.405750 * 0.124353])
    torch.testing.assert_close(adaptive_weight(mu, sigma), expected, atol=1e-5, rtol=0)


def test_pseudo_labels_from_passes():
    # U=2 passes, B=1, C=3: probabilities chosen directly via log
    probs = torch.tensor([[[0.6, 0.3, 0.1]], [[0.8, 0.1, 0.1]]])
    out = pseudo_labels(probs.log(), adaptive=True)
    assert out.target.tolist() == [0]
    torch.testing.assert_close(out.probs, torch.tensor([[0.7, 0.2, 0.1]]))
    torch.testing.assert_close(out.confidence, torch.tensor([0.7]))
    torch.testing.assert_close(out.spread, torch.tensor([math.sqrt(0.02)]))  # unbiased std of (0.6, 0.8)
    torch.testing.assert_close(out.weight, adaptive_weight(torch.tensor([0.7]), torch.tensor([math.sqrt(0.02)])))


def test_threshold_baseline_masks_low_confidence():
    logits = torch.tensor([[[5.0, 0.0], [0.2, 0.0]]])  # U=1, B=2
    out = pseudo_labels(logits, adaptive=False, threshold=0.95)
    assert out.weight.tolist() == [1.0, 0.0]
    assert pseudo_labels(logits, adaptive=False).weight.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="at least 2"):
        pseudo_labels(logits, adaptive=True)


def test_tube_box_mask_target_and_weight():
    g = torch.Generator().manual_seed(0)
    mask, lam = tube_box_mask(4, 4, 0.75, generator=g)  # 4x4 grid, box 2x2 -> keeps 12/16
    assert lam == pytest.approx(0.75) and mask.shape == (4, 4) and mask.sum() == 4
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    assert rows.tolist() == list(range(rows[0], rows[0] + 2)) and cols.tolist() == list(range(cols[0], cols[0] + 2))
    assert mask[rows[0] : rows[0] + 2, cols[0] : cols[0] + 2].all()  # one 2x2 box
    assert tube_box_mask(4, 4, 1.0)[0].sum() == 0 and tube_box_mask(4, 4, 0.0)[0].all()
    clips = torch.stack([torch.zeros(3, 4, 32, 32), torch.ones(3, 4, 32, 32)])  # (B=2, C, K, H, W)
    mixed = tube_mix_tokens(clips, torch.tensor([1, 0]), mask, patch=8)
    assert mixed[0].mean().item() == pytest.approx(1 - lam)  # the box came from the partner, in every frame
    assert (mixed[0][:, 0] == mixed[0][:, 3]).all()
    # mixed target and weight as in the paper: λ p̄_i + (1-λ) p̄_j and η' = λ η_i + (1-λ) η_j
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    eta = torch.tensor([0.9, 0.5])
    partner = torch.tensor([1, 0])
    target = lam * p + (1 - lam) * p[partner]
    eta_mix = lam * eta + (1 - lam) * eta[partner]
    torch.testing.assert_close(target[0], torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(eta_mix, torch.tensor([0.8, 0.6]))


def test_soft_cross_entropy_equals_hard_ce_for_one_hot():
    logits = torch.randn(4, 5)
    target = torch.tensor([0, 3, 1, 4])
    torch.testing.assert_close(
        soft_cross_entropy(logits, nn.functional.one_hot(target, 5).float()),
        nn.functional.cross_entropy(logits, target, reduction="none"),
    )


def test_warmup_factor():
    assert warmup_factor(4.9, 5, 10) == 0.0
    assert warmup_factor(10, 5, 10) == pytest.approx(math.sin(math.pi / 4))
    assert warmup_factor(30, 5, 10) == 1.0
    assert warmup_factor(5, 5, 0) == 1.0


def test_ema_update():
    teacher, student = nn.Linear(2, 2), nn.Linear(2, 2)
    t0 = teacher.weight.detach().clone()
    ema_update(teacher, student, decay=0.9)
    torch.testing.assert_close(teacher.weight, 0.9 * t0 + 0.1 * student.weight.detach())


def test_ema_update_leaves_equal_frozen_tensors_untouched():
    """A frozen parameter or a buffer the teacher already holds is not written (its version stays, so caches built
    on it, like the frozen stem's folded copy, stay valid); a frozen one that differs still follows the student."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 2))
    teacher = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 2))
    teacher.load_state_dict(student.state_dict())
    student[0].requires_grad_(False)  # frozen, equal
    student[2].weight.requires_grad_(False)  # frozen, made to differ
    with torch.no_grad():
        student[2].weight.add_(1.0)
        student[2].bias.add_(1.0)  # trainable
    versions = {name: t._version for name, t in [*teacher.named_parameters(), *teacher.named_buffers()]}
    t_w2, t_b2 = teacher[2].weight.detach().clone(), teacher[2].bias.detach().clone()
    ema_update(teacher, student, decay=0.9)
    for name in ("0.weight", "0.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert dict([*teacher.named_parameters(), *teacher.named_buffers()])[name]._version == versions[name], name
    torch.testing.assert_close(teacher[2].weight, 0.9 * t_w2 + 0.1 * student[2].weight)
    torch.testing.assert_close(teacher[2].bias, 0.9 * t_b2 + 0.1 * student[2].bias)
    student[1].running_mean.add_(1.0)  # a buffer that changed is copied
    ema_update(teacher, student, decay=0.9)
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)
    with pytest.raises(ValueError):  # a teacher that is not the student's architecture is refused, not half-updated
        ema_update(nn.Sequential(nn.Linear(2, 2)), student, decay=0.9)


def test_ema_update_keeps_the_teachers_folded_stem():
    from encoder.timesformer import create_model

    student = create_model("tiny", 5, img_size=32, patch_size=16, depth=1, stem="effnet_lite0", freeze_stem=True)
    teacher = create_model("tiny", 5, img_size=32, patch_size=16, depth=1, stem="effnet_lite0", freeze_stem=True)
    teacher.load_state_dict(student.state_dict())
    folded = teacher.patch_embed.proj._folded()
    ema_update(teacher, student, decay=0.99)
    assert teacher.patch_embed.proj._folded() is folded  # not rebuilt after every step


def test_ema_decay_warmup():
    assert ema_decay_at(0, 0.99, warmup=False) == 0.99
    assert ema_decay_at(0, 0.99, warmup=True) == pytest.approx(0.1)  # 1/10
    assert ema_decay_at(80, 0.99, warmup=True) == pytest.approx(0.9)  # 81/90
    assert ema_decay_at(890, 0.99, warmup=True) == pytest.approx(0.99)  # 891/900: the cap is reached
    assert ema_decay_at(10_000, 0.99, warmup=True) == 0.99
    assert ema_decay_at(10_000, 0.9999, warmup=True) == pytest.approx(10_001 / 10_010)


class ToyModel(nn.Module):
    """Backbone (with drop-path-like randomness only in train mode) + a dropout head."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Dropout(0.3))
        self.head = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5), nn.Linear(16, 4))

    def forward_features(self, x):
        return self.backbone(x)

    def forward_head(self, f):
        return self.head(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_teacher_backbone_once_equals_full_passes():
    model = ToyModel()
    x = torch.randn(5, 3, 4)
    torch.manual_seed(1)
    fast = teacher_passes(model, model.head, x, passes=10)
    torch.manual_seed(1)
    full = teacher_passes_full(model, model.head, x, passes=10)
    torch.testing.assert_close(fast, full)
    assert fast.shape == (10, 5, 4)
    assert not torch.allclose(fast[0], fast[1])  # the head's dropout really is active
    assert model.training  # restored


# ------------------------------------------------------------------------------ the reference's variants


def test_token_mask_is_scattered_and_sized_by_lambda():
    from encoder.ssl import tube_token_mask

    mask, kept = tube_token_mask(8, 8, 0.5, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (8, 8) and int(mask.sum()) == 32 and kept == 0.5
    rows, cols = mask.nonzero().unbind(1)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert box > 32  # not one contiguous box
    assert tube_token_mask(4, 4, 1.0)[0].sum() == 0 and tube_token_mask(4, 4, 0.0)[0].all()


def test_token_mix_replaces_the_same_patches_in_every_frame():
    clips = torch.stack([torch.zeros(3, 4, 8, 8), torch.ones(3, 4, 8, 8)])  # (B=2, C, K, H, W)
    mask = torch.tensor([[True, False], [False, True]])  # 2x2 grid of 4-pixel patches
    mixed = tube_mix_tokens(clips, torch.tensor([1, 0]), mask, patch=4)
    for k in range(4):
        assert mixed[0, :, k, :4, :4].eq(1).all() and mixed[0, :, k, 4:, 4:].eq(1).all()
        assert mixed[0, :, k, :4, 4:].eq(0).all() and mixed[1, :, k, :4, :4].eq(0).all()


def test_mix_loss_is_the_references_mse_over_classes():
    from encoder.ssl import mse_to_probs

    logits = torch.tensor([[2.0, 0.0, -1.0]])
    target = torch.tensor([[0.5, 0.25, 0.25]])
    expected = ((2.0 - 0.5) ** 2 + 0.25**2 + 1.25**2) / 3
    torch.testing.assert_close(mse_to_probs(logits, target), torch.tensor([expected]))
    # far weaker than the soft cross-entropy for the same near-uniform target
    assert mse_to_probs(logits, target) < soft_cross_entropy(logits, target)


def test_xi_ramps_over_all_remaining_epochs_by_default():
    assert warmup_factor(1.9, 2, None, 10) == 0.0
    assert warmup_factor(6.0, 2, None, 10) == pytest.approx(math.sin(0.5 * math.pi * 4 / 8))
    assert warmup_factor(6.0, 2, None, 10) < 1.0  # ramp_epochs=5 reached 1 at epoch 7
    assert warmup_factor(10.0, 2, None, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        warmup_factor(3.0, 2, None)
