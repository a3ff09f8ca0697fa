"""The retraining losses: SupCon (against a direct implementation of the paper's formula), soft labels, hard
negatives, the per-class memory queue, unlikelihood and soft cross-entropy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from train.contrastive import ClassMemory, soft_cross_entropy, supcon_loss, unlikelihood_loss


def reference_supcon(z: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
    """Khosla et al. 2020, eq. 2 (L_out), written as loops; anchors without positives are skipped."""
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in others)
        losses.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in positives) / len(positives))
    return torch.tensor(sum(losses) / len(losses))


def batch(n: int = 12, d: int = 8, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), torch.arange(n) % classes


def test_supcon_matches_the_paper_for_one_hot_labels() -> None:
    z, y = batch()
    got = supcon_loss(z, F.one_hot(y, 7).float(), temperature=0.2)
    assert torch.allclose(got, reference_supcon(z, y, 0.2), atol=1e-5)


def test_clustered_projections_score_lower_than_mixed_ones() -> None:
    z, y = batch(n=12, d=8)
    centres = F.normalize(torch.eye(8)[:3], dim=-1)
    clustered = F.normalize(centres[y] + 0.05 * z, dim=-1)
    target = F.one_hot(y, 7).float()
    assert supcon_loss(clustered, target) < supcon_loss(z, target) - 1.0


def test_gradient_steps_pull_same_label_projections_together() -> None:
    z0, y = batch(n=9, d=4, classes=3, seed=1)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.SGD([z], lr=0.5)
    target = F.one_hot(y, 7).float()
    for _ in range(50):
        loss = supcon_loss(F.normalize(z, dim=-1), target, temperature=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    zn = F.normalize(z.detach(), dim=-1)
    same = (zn @ zn.T)[y[:, None] == y[None, :]].mean()
    other = (zn @ zn.T)[y[:, None] != y[None, :]].mean()
    assert same > 0.9 and other < 0.0


def test_soft_labels_weigh_pairs_by_overlap() -> None:
    z, y = batch(n=6, classes=2)
    hard = F.one_hot(y, 7).float()
    assert torch.allclose(supcon_loss(z, hard), reference_supcon(z, y, 0.1), atol=1e-5)
    soft = hard.clone()
    soft[0] = 0.0
    soft[0, 0], soft[0, 1] = 0.5, 0.5  # anchor 0 is split between both classes: every other row is half a positive
    assert not torch.allclose(supcon_loss(z, soft), supcon_loss(z, hard))
    assert torch.isfinite(supcon_loss(z, soft))


def test_a_batch_without_pairs_gets_positives_from_the_memory() -> None:
    z, _ = batch(n=3, classes=3)
    y = torch.tensor([0, 1, 2])  # one item per class: no positive pair in the batch
    target = F.one_hot(y, 7).float()
    zq = z.clone().requires_grad_(True)
    alone = supcon_loss(zq, target)
    assert alone.item() == 0.0 and alone.requires_grad
    memory = ClassMemory(7, size=4, dim=z.shape[1])
    memory.push(F.normalize(z + 0.1, dim=-1), y)
    mem_z, mem_t = memory.entries()
    with_memory = supcon_loss(zq, target, memory_z=mem_z, memory_target=mem_t)
    assert with_memory.item() > 0
    with_memory.backward()
    assert zq.grad.abs().sum() > 0


def test_hard_negatives_weigh_more_in_the_denominator() -> None:
    z, y = batch(n=8, classes=2, seed=3)
    target = F.one_hot(y, 7).float()
    negative = 1 - y  # each anchor's wrong guess was the other class
    plain = supcon_loss(z, target, hard_weight=0.0, negative=negative)
    hard = supcon_loss(z, target, hard_weight=2.0, negative=negative)
    none = supcon_loss(z, target, hard_weight=2.0, negative=torch.full_like(y, -1))
    assert torch.allclose(plain, none) and hard > plain


def test_weights_scale_anchors() -> None:
    z, y = batch()
    target = F.one_hot(y, 7).float()
    full = supcon_loss(z, target, weight=torch.ones(len(z)))
    assert torch.allclose(supcon_loss(z, target, weight=torch.full((len(z),), 0.5)), full / 2)
    assert supcon_loss(z, target, weight=torch.zeros(len(z))).item() == 0.0


def test_memory_is_a_fifo_per_class_and_checkpoints() -> None:
    memory = ClassMemory(3, size=2, dim=2)
    memory.push(torch.tensor([[1.0, 0], [0, 1.0], [1.0, 1.0], [5.0, 0]]), torch.tensor([0, 0, 0, -1]))
    z, t = memory.entries()
    assert z.shape == (2, 2) and t.argmax(-1).tolist() == [0, 0]
    assert memory.count.tolist() == [2, 0, 0]
    # the oldest row ([1, 0]) was overwritten; rows are stored unit-norm; the -1 row was skipped
    stored = {tuple(round(v, 3) for v in row.tolist()) for row in z}
    assert stored == {(0.0, 1.0), (0.707, 0.707)}
    copy = ClassMemory(3, size=2, dim=2)
    copy.load_state_dict(memory.state_dict())
    assert torch.equal(copy.entries()[0], z)


def test_unlikelihood_lowers_the_wrong_label() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]], requires_grad=True)
    negative = torch.tensor([0, -1])
    loss = unlikelihood_loss(logits, negative, torch.ones(2))
    p0 = logits.softmax(-1)[0, 0].item()
    assert math.isclose(loss.item(), -math.log(1 - p0) / 2, rel_tol=1e-5)
    loss.backward()
    assert logits.grad[0, 0] > 0 and torch.all(logits.grad[1] == 0)  # gradient descent lowers the wrong logit
    assert unlikelihood_loss(logits, torch.tensor([-1, -1]), torch.ones(2)).item() == 0.0


def test_soft_cross_entropy_is_cross_entropy_for_one_hot_targets() -> None:
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 6, 2, 2])
    got = soft_cross_entropy(logits, F.one_hot(y, 7).float(), torch.ones(5))
    assert torch.allclose(got, F.cross_entropy(logits, y))
    half = soft_cross_entropy(logits, F.one_hot(y, 7).float(), torch.full((5,), 0.5))
    assert torch.allclose(half, got / 2)
