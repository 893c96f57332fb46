"""Cosine classifier, margin losses and the margin schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from speakerforge.errors import ConfigError
from speakerforge.models.heads import AAMSoftmax, AMSoftmax, CosineClassifier, build_margin_loss, margin_at_step


def _batch(seed: int = 0, n: int = 16, dim: int = 24, classes: int = 10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return x, labels


def test_classifier_weight_is_a_parameter_named_weight():
    model = torch.nn.Module()
    model.classifier = CosineClassifier(24, 10, sub_centers=3)
    names = dict(model.named_parameters())
    assert list(names) == ["classifier.weight"]
    assert names["classifier.weight"].shape == (30, 24)


def test_classifier_returns_cosines_of_normalised_vectors():
    x, _ = _batch()
    clf = CosineClassifier(24, 10)
    expected = (x / x.norm(dim=1, keepdim=True)) @ (clf.weight / clf.weight.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(clf(x), expected, atol=1e-6, rtol=0)


def test_sub_centre_cosine_is_the_max_over_each_class_centres():
    x, _ = _batch()
    clf = CosineClassifier(24, 10, sub_centers=3)
    all_cos = F.normalize(x) @ F.normalize(clf.weight).T  # [B, 30], row c*3+k
    expected = torch.stack([all_cos[:, 3 * c : 3 * c + 3].max(dim=1).values for c in range(10)], dim=1)
    torch.testing.assert_close(clf(x), expected, atol=1e-6, rtol=0)


def test_aam_logits_equal_the_direct_formula():
    x, labels = _batch()
    cosine = CosineClassifier(24, 10)(x).detach()
    m, s = 0.3, 30.0
    logits = AAMSoftmax(margin=m, scale=s).logits(cosine, labels)
    theta = torch.acos(cosine.clamp(-1, 1))
    expected = s * cosine.clone()
    for i, y in enumerate(labels.tolist()):
        t = theta[i, y].item()
        target = math.cos(t + m) if t + m <= math.pi else cosine[i, y].item() - (1 - math.cos(m))
        expected[i, y] = s * target
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_aam_below_threshold_branch_is_continuous():
    m = 0.4
    head = AAMSoftmax(margin=m, scale=1.0)
    at = math.cos(math.pi - m)
    cos = torch.tensor([[at + 1e-5, 0.0], [at - 1e-5, 0.0]])
    out = head.logits(cos, torch.tensor([0, 0]))[:, 0]
    assert abs(out[0].item() - out[1].item()) < 1e-3
    assert out[1].item() == pytest.approx(at - 1e-5 - (1 - math.cos(m)), abs=1e-6)


def test_easy_margin_leaves_negative_cosines_alone():
    head = AAMSoftmax(margin=0.3, scale=1.0, easy_margin=True)
    cos = torch.tensor([[-0.5, 0.1], [0.5, 0.1]])
    out = head.logits(cos, torch.tensor([0, 0]))
    assert out[0, 0].item() == pytest.approx(-0.5)
    assert out[1, 0].item() == pytest.approx(math.cos(math.acos(0.5) + 0.3), abs=1e-6)


@pytest.mark.parametrize("loss_cls", [AAMSoftmax, AMSoftmax])
def test_margin_zero_is_scaled_cosine_softmax(loss_cls):
    x, labels = _batch(1)
    cosine = CosineClassifier(24, 10)(x).detach()
    head = loss_cls(margin=0.0, scale=32.0)
    torch.testing.assert_close(head.logits(cosine, labels), 32.0 * cosine, atol=1e-5, rtol=0)
    torch.testing.assert_close(head(cosine, labels), F.cross_entropy(32.0 * cosine, labels), atol=1e-5, rtol=0)


def test_am_softmax_subtracts_margin_from_target_only():
    cos = torch.tensor([[0.2, 0.7, -0.1]])
    out = AMSoftmax(margin=0.25, scale=10.0).logits(cos, torch.tensor([1]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 4.5, -1.0]]))


def test_set_margin_changes_the_logits():
    cos = torch.tensor([[0.6, 0.1]])
    head = AAMSoftmax(margin=0.0, scale=1.0)
    before = head.logits(cos, torch.tensor([0]))[0, 0].item()
    head.set_margin(0.2)
    after = head.logits(cos, torch.tensor([0]))[0, 0].item()
    assert before == pytest.approx(0.6)
    assert after == pytest.approx(math.cos(math.acos(0.6) + 0.2), abs=1e-6)


def test_gradient_is_finite_when_cosine_is_one():
    cos = torch.tensor([[1.0, 0.0]], requires_grad=True)
    AAMSoftmax(margin=0.2)(cos, torch.tensor([0])).backward()
    assert torch.isfinite(cos.grad).all()


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
def test_aam_loss_matches_speakerlab_arc_margin_loss(margin, easy_margin):
    margin_loss = pytest.importorskip("speakerlab.loss.margin_loss")
    x, labels = _batch(2, n=32, classes=7)
    clf = CosineClassifier(24, 7)
    cosine = clf(x)
    ours = AAMSoftmax(margin=margin, scale=32.0, easy_margin=easy_margin)(cosine, labels)
    ref = margin_loss.ArcMarginLoss(scale=32.0, margin=margin, easy_margin=easy_margin)(cosine, labels)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_am_loss_matches_speakerlab_add_margin_loss():
    margin_loss = pytest.importorskip("speakerlab.loss.margin_loss")
    x, labels = _batch(3, n=32, classes=7)
    cosine = CosineClassifier(24, 7)(x)
    ours = AMSoftmax(margin=0.2, scale=32.0)(cosine, labels)
    ref = margin_loss.AddMarginLoss(scale=32.0, margin=0.2)(cosine, labels)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_build_margin_loss_by_name_and_errors():
    assert isinstance(build_margin_loss("aam", margin=0.1), AAMSoftmax)
    assert isinstance(build_margin_loss("am", scale=16.0), AMSoftmax)
    with pytest.raises(ConfigError, match="known: aam, am"):
        build_margin_loss("arcface")
    with pytest.raises(ConfigError, match="easy_margin"):
        build_margin_loss("am", easy_margin=True)


@pytest.mark.parametrize("kind", ["linear", "exponential"])
def test_margin_schedule_endpoints_and_monotonic(kind):
    kw = dict(start_step=100, end_step=400, initial=0.0, final=0.2, kind=kind)
    assert margin_at_step(0, **kw) == 0.0
    assert margin_at_step(100, **kw) == 0.0
    assert margin_at_step(400, **kw) == pytest.approx(0.2)
    assert margin_at_step(10_000, **kw) == pytest.approx(0.2)
    values = [margin_at_step(s, **kw) for s in range(500)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert 0.0 < margin_at_step(250, **kw) < 0.2


def test_linear_schedule_midpoint_and_exponential_rises_faster():
    kw = dict(start_step=0, end_step=100, initial=0.1, final=0.3)
    assert margin_at_step(50, **kw) == pytest.approx(0.2)
    assert margin_at_step(20, kind="exponential", **kw) > margin_at_step(20, **kw)


def test_schedule_matches_speakerlab_margin_scheduler():
    scheduler = pytest.importorskip("speakerlab.process.scheduler")

    class _Criterion:
        def update(self, margin):
            self.margin = margin

    for ours_kind, ref_kind in (("linear", "linear"), ("exponential", "exp")):
        ref = scheduler.MarginScheduler(_Criterion(), 2, 5, 10, 0.0, 0.3, increase_type=ref_kind)
        for step in range(70):
            ref.step(step)
            ours = margin_at_step(step, start_step=20, end_step=50, initial=0.0, final=0.3, kind=ours_kind)
            assert ours == pytest.approx(ref.get_margin(), abs=1e-6), (ours_kind, step)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="before start_step"):
        margin_at_step(0, start_step=10, end_step=5, initial=0.0, final=0.2)
    with pytest.raises(ConfigError, match="linear"):
        margin_at_step(0, start_step=0, end_step=5, initial=0.0, final=0.2, kind="cosine")
