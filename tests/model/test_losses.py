import math

import pytest
import torch

from model.config import ModelConfig
from model.losses import (
    ContrastiveLoss,
    InstanceLoss,
    NormSoftmaxLoss,
    QuartetLoss,
    TripletMarginLoss,
    build_loss,
)
from model.network import EmbeddingNet
from tests.model.test_mining import points


def test_triplet_loss_hand_computed() -> None:
    # a at 0 deg, p at 90 deg, n at 180 deg: d(a,p) = sqrt 2, d(a,n) = 2
    emb = points(0, 90, 180)
    labels = torch.tensor([0, 0, 1])
    loss = TripletMarginLoss(margin=1.0, mining="batch_hard")(emb, labels)
    # anchors 0 and 1 each: sqrt2 - d(anchor, n) + 1; d(1, n) = sqrt 2
    expected = ((math.sqrt(2) - 2 + 1) + (math.sqrt(2) - math.sqrt(2) + 1)) / 2
    assert loss.loss.item() == pytest.approx(expected, abs=1e-5)
    assert loss.tuples == 2 and loss.active == 2


def test_triplet_loss_is_zero_when_the_margin_is_met() -> None:
    emb = points(0, 1, 180)
    result = TripletMarginLoss(margin=0.2, mining="all")(emb, torch.tensor([0, 0, 1]))
    assert result.loss.item() == 0.0 and result.active == 0


def test_batch_all_averages_over_active_triplets_only() -> None:
    emb = points(0, 90, 180, 95)  # classes 0: {0, 90}, 1: {180, 95}
    labels = torch.tensor([0, 0, 1, 1])
    result = TripletMarginLoss(margin=0.5, mining="all")(emb, labels)
    from model.mining import mine_triplets, pairwise_distances

    d = pairwise_distances(emb)
    a, p, n = mine_triplets(d, labels, "all", 0.5)
    losses = (d[a, p] - d[a, n] + 0.5).clamp(min=0)
    assert result.loss.item() == pytest.approx((losses.sum() / (losses > 0).sum()).item())


def test_contrastive_loss_hand_computed() -> None:
    emb = points(0, 90, 180)
    labels = torch.tensor([0, 0, 1])
    result = ContrastiveLoss(margin=1.5, mining="all")(emb, labels)
    # pairs: (0,1) same d=sqrt2 -> 2; (0,2) diff d=2 -> 0; (1,2) diff d=sqrt2 -> (1.5-sqrt2)^2
    active = [2.0, (1.5 - math.sqrt(2)) ** 2]
    assert result.loss.item() == pytest.approx(sum(active) / 2, abs=1e-5)


def test_quartet_loss_adds_the_between_negatives_term() -> None:
    emb = points(0, 10, 90, 100)
    labels = torch.tensor([0, 0, 1, 2])
    # anchors 0 and 1 (classes 1 and 2 have no positive): the triplet term is 0 for both,
    # as d(a, p) = d(n1, n2) = 2 sin 5 deg; the second term is margin / 2 = 0.5 for both
    quartet = QuartetLoss(margin=1.0, mining="batch_hard")(emb, labels).loss
    triplet = TripletMarginLoss(margin=1.0, mining="batch_hard")(emb, labels).loss
    assert triplet.item() == 0.0
    assert quartet.item() == pytest.approx((0 + 0 + 0.5 + 0.5) / 4, abs=1e-5)
    two_classes = torch.tensor([0, 0, 1, 1])
    assert QuartetLoss(1.0, "batch_hard")(emb, two_classes).loss.item() == pytest.approx(
        TripletMarginLoss(1.0, "batch_hard")(emb, two_classes).loss.item()
    )


@pytest.mark.parametrize("model_type", ["siamese", "triplet", "quartet"])
@pytest.mark.parametrize("mining", ["all", "batch_hard", "semi_hard", "random"])
def test_every_loss_trains_the_shared_network(model_type: str, mining: str) -> None:
    torch.manual_seed(0)
    net = EmbeddingNet(ModelConfig(input_size=16, embedding_dim=8, stem="stride2"))
    images = torch.randn(12, 3, 16, 16)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    loss_fn = build_loss(model_type, 0.5 if model_type != "siamese" else 1.0, mining)  # type: ignore[arg-type]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same tuples each time (random mining draws them)
        return loss_fn(net(images), labels).loss

    first = loss().item()
    for _ in range(10):  # a few steps through the shared network on one batch
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert first > 0 and loss().item() < 0.8 * first


def test_shared_weights_give_each_tuple_member_the_batch_embedding() -> None:
    net = EmbeddingNet(ModelConfig(input_size=16, embedding_dim=8)).eval()
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        batch = net(images)
        separately = torch.cat([net(images[i : i + 1]) for i in range(3)])
    assert torch.allclose(batch, separately, atol=1e-5)


def test_normsoftmax_hand_computed() -> None:
    head = NormSoftmaxLoss(classes=2, dim=2, scale=4.0, label_smoothing=0.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))  # norms do not matter
    emb = points(0, 60)  # cosines to the class directions: (1, 0) and (0.5, 0.866)
    result = head(emb, torch.tensor([0, 0]))
    # row 0: logits (4, 0); row 1: logits (2, 2 * sqrt 3)
    first = -math.log(math.exp(4) / (math.exp(4) + 1))
    second = -math.log(math.exp(2) / (math.exp(2) + math.exp(2 * math.sqrt(3))))
    assert result.loss.item() == pytest.approx((first + second) / 2, abs=1e-5)
    assert result.active == 1  # the second row is classified as class 1


def test_normsoftmax_label_smoothing_hand_computed() -> None:
    head = NormSoftmaxLoss(classes=2, dim=2, scale=4.0, label_smoothing=0.2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    result = head(points(0), torch.tensor([0]))
    log_p = [4 - math.log(math.exp(4) + math.exp(-4)), -4 - math.log(math.exp(4) + math.exp(-4))]
    expected = -(0.9 * log_p[0] + 0.1 * log_p[1])  # targets 1 - 0.2 + 0.1 and 0.1
    assert result.loss.item() == pytest.approx(expected, abs=1e-5)


def test_instance_loss_hand_computed() -> None:
    # views: image A at 0 and 10 deg, image B at 90 and 100 deg
    emb = points(0, 90, 10, 100)
    result = InstanceLoss(temperature=1.0)(emb)

    def nll(twin: float, *others: float) -> float:
        terms = [math.exp(math.cos(math.radians(a))) for a in (twin, *others)]
        return -math.log(terms[0] / sum(terms))

    # angle to the twin, then to the two other views: views at 0 and 100 deg see
    # (10; 90, 100), views at 90 and 10 deg see (10; 90, 80)
    expected = (2 * nll(10, 90, 100) + 2 * nll(10, 90, 80)) / 4
    assert result.loss.item() == pytest.approx(expected, abs=1e-5)
    assert result.active == 0  # every view picks its twin
    assert InstanceLoss(0.1)(points(0, 90, 10, 100)).loss < result.loss


def test_instance_loss_needs_pairs_of_views() -> None:
    with pytest.raises(ValueError):
        InstanceLoss()(points(0, 90, 10))
