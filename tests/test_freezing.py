"""Freezing by FunASR prefixes and globs, optimizer groups of trainable tensors, and the update-integrity check."""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict

import pytest
import torch
from torch import nn

from speakerforge.errors import ConfigError
from speakerforge.train.freezing import apply_freeze, frozen_batchnorms, match_parameters, parse_freeze_patterns
from speakerforge.train.integrity import IntegrityError, UpdateIntegrityCheck, find_free_tensors
from speakerforge.train.optim import trainable_parameter_groups


class Tiny(nn.Module):
    """backbone (conv, bn1, layer1 = conv + bn, a non-affine pool_bn) -> head (fc, bn)."""

    def __init__(self, n_classes: int = 5) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            OrderedDict(
                conv=nn.Conv1d(4, 8, 3, padding=1, bias=False),
                bn1=nn.BatchNorm1d(8),
                act=nn.ReLU(),
                layer1=nn.Sequential(nn.Conv1d(8, 8, 1, bias=False), nn.BatchNorm1d(8), nn.ReLU()),
                pool_bn=nn.BatchNorm1d(8, affine=False),
            )
        )
        self.head = nn.Sequential(OrderedDict(fc=nn.Linear(8, n_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean(-1))


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 4, 10, generator=g), torch.randint(0, 5, (6,), generator=g)


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 4, extra=None) -> None:
    for step in range(steps):
        model.train()
        x, y = _batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        if extra is not None:
            loss = loss + extra()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def model() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


# ---------------------------------------------------------------------------------------------------- patterns


def test_parse_freeze_patterns_splits_funasr_commas_strips_spaces_and_accepts_lists():
    assert parse_freeze_patterns("encoder, predictor ,,decoder.embed") == ["encoder", "predictor", "decoder.embed"]
    assert parse_freeze_patterns(["encoder", " a,b "]) == ["encoder", "a", "b"]
    assert parse_freeze_patterns(None) == [] and parse_freeze_patterns("") == []
    assert parse_freeze_patterns("x,x") == ["x"]
    with pytest.raises(ConfigError):
        parse_freeze_patterns(3)  # type: ignore[arg-type]


def test_prefix_matches_exactly_as_funasr_so_encoder_does_not_select_encoder2():
    m = nn.ModuleDict({"encoder": nn.Linear(2, 2), "encoder2": nn.Linear(2, 2), "decoder": nn.Linear(2, 2)})
    hits = match_parameters(m, "encoder, decoder.weight")
    assert hits == {"encoder": ["encoder.weight", "encoder.bias"], "decoder.weight": ["decoder.weight"]}
    report = apply_freeze(m, "encoder")
    assert report.frozen == ["encoder.weight", "encoder.bias"]
    assert m.encoder2.weight.requires_grad and not m.encoder.weight.requires_grad


def test_glob_selects_parameter_names_and_every_parameter_of_a_module_it_names(model):
    assert match_parameters(model, "backbone.*.bias")["backbone.*.bias"] == [
        "backbone.bn1.bias",
        "backbone.layer1.1.bias",
    ]
    # `backbone.layer?` names a module, not a parameter: it freezes everything inside it
    assert match_parameters(model, "backbone.layer?")["backbone.layer?"] == [
        "backbone.layer1.0.weight",
        "backbone.layer1.1.weight",
        "backbone.layer1.1.bias",
    ]
    assert match_parameters(model, "*.bn1")["*.bn1"] == ["backbone.bn1.weight", "backbone.bn1.bias"]


def test_pattern_matching_nothing_raises_naming_it_and_the_nearest_names(model):
    with pytest.raises(ConfigError) as e:
        apply_freeze(model, "backbone, bakcbone.layer1")
    msg = str(e.value)
    assert "'bakcbone.layer1'" in msg and "backbone.layer1" in msg and "head" in msg
    assert all(p.requires_grad for p in model.parameters())  # nothing half-applied
    with pytest.raises(ConfigError, match="encoder"):
        match_parameters(model, "encoder.*")


# ---------------------------------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_frozen_tensors_stay_bit_identical_under_momentum_and_weight_decay_while_others_change(model, opt):
    apply_freeze(model, "backbone.conv,backbone.layer1")
    groups = trainable_parameter_groups(model, 0.1, 1e-2)
    optimizer = (
        torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)
        if opt == "sgd"
        else torch.optim.AdamW(groups, lr=0.01)
    )
    before = _snapshot(model)
    _train(model, optimizer, steps=4)
    after = _snapshot(model)
    for name in [
        "backbone.conv.weight",
        "backbone.layer1.0.weight",
        "backbone.layer1.1.bias",
        "backbone.layer1.1.running_mean",
        "backbone.layer1.1.running_var",
        "backbone.layer1.1.num_batches_tracked",
    ]:
        assert torch.equal(before[name], after[name]), name
    for name in ["backbone.bn1.weight", "head.fc.weight", "head.fc.bias", "backbone.bn1.running_mean"]:
        assert not torch.equal(before[name], after[name]), name


def test_optimizer_holds_no_tensor_and_no_state_for_frozen_tensors(model):
    apply_freeze(model, "backbone")
    optimizer = torch.optim.AdamW(trainable_parameter_groups(model, 1e-3, 1e-2))
    _train(model, optimizer, steps=2)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen = list(model.backbone.parameters())
    assert frozen and not any(id(p) in held for p in frozen)
    assert not any(p in optimizer.state for p in frozen)
    assert all(p in optimizer.state for p in model.head.parameters())


def test_frozen_batchnorm_statistics_stay_fixed_after_model_train(model):
    report = apply_freeze(model, "backbone")
    assert set(report.frozen_bn) == {"backbone.bn1", "backbone.layer1.1", "backbone.pool_bn"}
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    model.train()  # what every trainer does at the start of an epoch
    optimizer = torch.optim.SGD(trainable_parameter_groups(model, 0.1, 1e-4), lr=0.1, momentum=0.9)
    _train(model, optimizer, steps=3)
    state = model.state_dict()
    for k, v in bn_before.items():
        assert torch.equal(v, state[k]), k
    assert model.training and not model.backbone.bn1.training  # pinned in eval mode even after model.train()
    # the pin travels with the module (EMA teachers and fine-tune copies are deep copies)
    clone = copy.deepcopy(model)
    clone.train()
    clone(_batch()[0])
    assert torch.equal(clone.backbone.bn1.running_mean, bn_before["backbone.bn1.running_mean"])


def test_batchnorm_with_trainable_parameters_keeps_updating_statistics(model):
    report = apply_freeze(model, "backbone.conv")
    assert report.frozen_bn == []
    before = model.backbone.bn1.running_mean.clone()
    model.train()
    model(_batch()[0])
    assert not torch.equal(before, model.backbone.bn1.running_mean)


def test_non_affine_batchnorm_is_pinned_only_when_its_subtree_is_frozen(model):
    assert "backbone.pool_bn" not in apply_freeze(model, "backbone.conv,backbone.bn1").frozen_bn
    assert "backbone.pool_bn" in apply_freeze(model, "backbone.conv,backbone.bn1,backbone.layer1").frozen_bn
    assert "backbone.pool_bn" in apply_freeze(model, "backbone.conv,backbone.pool*").frozen_bn
    assert apply_freeze(model, "backbone", freeze_bn=False).frozen_bn == []


def test_next_stage_unfreezes_what_it_does_not_list_and_releases_batchnorm(model):
    apply_freeze(model, "backbone")
    model.train()
    report = apply_freeze(model, "head")
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert not any(p.requires_grad for p in model.head.parameters())
    assert report.frozen_bn == [] and frozen_batchnorms(model) == []
    assert model.backbone.bn1.training  # back to the model's mode
    before = model.backbone.bn1.running_mean.clone()
    model(_batch()[0])
    assert not torch.equal(before, model.backbone.bn1.running_mean)


def test_report_table_counts_trainable_and_frozen_scalars_per_top_level_module(model):
    report = apply_freeze(model, "backbone")
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_head = sum(p.numel() for p in model.head.parameters())
    assert report.counts == {"backbone": (0, n_backbone), "head": (n_head, 0)}
    lines = report.table().splitlines()
    assert lines[0].split() == ["module", "trainable", "frozen"]
    assert lines[1].split() == ["backbone", "0", f"{n_backbone:,}"]
    assert lines[3].split() == ["total", f"{n_head:,}", f"{n_backbone:,}"]
    assert len({len(line) for line in lines[:4]}) == 1  # aligned columns


# ---------------------------------------------------------------------------------------------------- groups


def _group_of(groups, name):
    return next(g for g in groups if name in g["param_names"])


def test_lr_mult_groups_get_scaled_lr_and_the_longest_key_wins(model):
    groups = trainable_parameter_groups(model, 0.2, 1e-4, lr_mult={"backbone": 0.1, "backbone.layer1": 0.5})
    assert _group_of(groups, "backbone.conv.weight")["lr"] == pytest.approx(0.02)
    assert _group_of(groups, "backbone.layer1.0.weight")["lr"] == pytest.approx(0.1)
    assert _group_of(groups, "backbone.layer1.0.weight")["lr_mult"] == 0.5
    assert _group_of(groups, "head.fc.weight")["lr"] == pytest.approx(0.2)
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each tensor exactly once
    optimizer = torch.optim.SGD(groups, lr=0.2)
    for g in optimizer.param_groups:  # the way a schedule scales them
        g["lr"] = 0.01 * g["lr_mult"]
    assert _group_of(optimizer.param_groups, "backbone.conv.weight")["lr"] == pytest.approx(0.001)


def test_lr_mult_key_matching_nothing_raises(model):
    with pytest.raises(ConfigError, match="lr_mult key 'classifier'.*head"):
        trainable_parameter_groups(model, 0.1, 1e-4, lr_mult={"classifier": 10.0})


def test_bias_and_norm_weights_get_no_weight_decay_unless_no_decay_is_empty(model):
    groups = trainable_parameter_groups(model, 0.1, 1e-4)
    assert _group_of(groups, "backbone.conv.weight")["weight_decay"] == 1e-4
    assert _group_of(groups, "head.fc.weight")["weight_decay"] == 1e-4
    for name in ["backbone.bn1.bias", "backbone.bn1.weight", "head.fc.bias"]:
        assert _group_of(groups, name)["weight_decay"] == 0.0
    assert all(g["weight_decay"] == 1e-4 for g in trainable_parameter_groups(model, 0.1, 1e-4, no_decay=()))


class Prototypes(nn.Module):
    """An SDPN-like objective owning free parameters, registered the right way."""

    def __init__(self) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.empty(7, 5).uniform_(-0.4, 0.4))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits @ self.prototypes.t()).logsumexp(-1).mean()


def test_extra_module_parameters_are_grouped_with_their_own_weight_decay(model):
    objective = Prototypes()
    groups = trainable_parameter_groups(
        model,
        0.1,
        1e-4,
        extra_modules={"objective": objective},
        param_overrides={"objective.prototypes": {"weight_decay": 0.0}},
    )
    g = _group_of(groups, "objective.prototypes")
    assert g["params"] == [objective.prototypes] and g["weight_decay"] == 0.0 and g["lr"] == 0.1
    assert "objective.prototypes" in g["name"]
    with pytest.raises(ConfigError, match="param_overrides key"):
        trainable_parameter_groups(model, 0.1, 1e-4, param_overrides={"objective.protos": {"weight_decay": 0.0}})


def test_groups_refuse_a_tensor_that_requires_grad_but_is_not_registered(model):
    objective = nn.Module()
    objective.prototypes = torch.randn(7, 5, requires_grad=True)
    with pytest.raises(ConfigError, match="objective.prototypes"):
        trainable_parameter_groups(model, 0.1, 1e-4, extra_modules={"objective": objective})


def test_groups_refuse_a_fully_frozen_model(model):
    apply_freeze(model, "backbone,head")
    with pytest.raises(ConfigError, match="nothing to train"):
        trainable_parameter_groups(model, 0.1, 1e-4)


# ---------------------------------------------------------------------------------------------------- integrity


def _checked_step(modules, optimizer, loss_fn, **kw) -> list:
    chk = UpdateIntegrityCheck(modules, optimizer, **kw)
    optimizer.zero_grad(set_to_none=True)
    loss_fn().backward()
    assert chk.before_step()
    optimizer.step()
    return chk.after_step() + chk.finish()  # a one-step stage: tensors waiting for a gradient are judged at its end


def _ce(model):
    x, y = _batch()
    return lambda: nn.functional.cross_entropy(model(x), y)


def test_integrity_check_passes_on_a_clean_model_with_frozen_parts(model, caplog):
    apply_freeze(model, "backbone.conv,backbone.bn1")
    model.train()
    optimizer = torch.optim.SGD(trainable_parameter_groups(model, 0.1, 1e-4), lr=0.1, momentum=0.9)
    with caplog.at_level(logging.INFO, logger="speakerforge.train.integrity"):
        assert _checked_step({"model": model}, optimizer, _ce(model)) == []
    assert "passed" in caplog.text


class BrokenSDPN(nn.Module):
    """3D-Speaker #191: prototypes are a plain tensor attribute; the loss uses them, no optimizer sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.prototypes = torch.randn(7, 5, requires_grad=True)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits @ self.prototypes.t()).logsumexp(-1).mean()


def test_integrity_check_catches_free_prototypes_that_the_loss_uses_but_no_optimizer_holds(model):
    objective = BrokenSDPN()
    optimizer = torch.optim.SGD(list(model.parameters()) + list(objective.parameters()), lr=0.1)
    x, _ = _batch()
    with pytest.raises(IntegrityError, match=r"free tensor not registered.*objective\.prototypes"):
        _checked_step({"model": model, "objective": objective}, optimizer, lambda: objective(model(x)))
    assert objective.prototypes.grad is not None  # it did get a gradient: the bug is silent without the check
    assert find_free_tensors({"objective": objective}) == ["objective.prototypes"]


def test_integrity_check_catches_a_registered_parameter_left_out_of_the_optimizer(model):
    objective = Prototypes()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, _ = _batch()
    with pytest.raises(IntegrityError, match=r"not held by the optimizer: objective\.prototypes"):
        _checked_step({"model": model, "objective": objective}, optimizer, lambda: objective(model(x)))


class UnusedBranch(Tiny):
    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(8, 5)  # built, trainable, never used by forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x).mean(-1)
        return self.head(h) + 0.0 * self.aux(h)  # multiplied by zero: a gradient that is exactly zero


def test_integrity_check_catches_a_parameter_whose_gradient_is_exactly_zero():
    torch.manual_seed(0)
    model = UnusedBranch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(IntegrityError, match=r"gradient exactly zero on each of its first 1 steps.*model\.aux\.weight"):
        _checked_step({"model": model}, optimizer, _ce(model))


class LateBranch(Tiny):
    """A branch that only some batches use: the first batch gives it an exactly-zero gradient (as one-token
    hotwords give a SeACo LSTM's recurrent weights, which meet h0 = 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(8, 5)
        self.use_aux = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x).mean(-1)
        return self.head(h) + self.use_aux * self.aux(h)


def _steps(chk, model, optimizer, uses: list[float]) -> None:
    for use in uses:
        model.use_aux = use
        optimizer.zero_grad(set_to_none=True)
        _ce(model)().backward()
        chk.before_step()
        optimizer.step()
        chk.after_step()


def test_an_exactly_zero_first_gradient_is_rejudged_on_the_next_steps(caplog):
    torch.manual_seed(0)
    model = LateBranch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    chk = UpdateIntegrityCheck({"model": model}, optimizer, recheck_steps=5)
    with caplog.at_level(logging.INFO, logger="speakerforge.train.integrity"):
        _steps(chk, model, optimizer, [0.0, 0.0, 1.0])
    assert chk.done and chk.finish() == []
    assert "re-judged over the next 5 steps: model.aux.weight, model.aux.bias" in caplog.text
    assert "every tensor received a gradient by step 3" in caplog.text


def test_a_branch_that_stays_at_zero_gradient_is_reported_after_the_recheck_steps():
    torch.manual_seed(0)
    model = LateBranch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    chk = UpdateIntegrityCheck({"model": model}, optimizer, recheck_steps=3)
    _steps(chk, model, optimizer, [0.0, 0.0, 0.0])  # the first step and two re-judged: still waiting
    assert not chk.done
    with pytest.raises(IntegrityError, match=r"gradient exactly zero on each of its first 4 steps.*model\.aux\.bias"):
        _steps(chk, model, optimizer, [0.0])
    relaxed = UpdateIntegrityCheck({"model": model}, optimizer, recheck_steps=2, allow_dead=True)
    _steps(relaxed, model, optimizer, [0.0, 0.0])
    assert [v.name for v in relaxed.finish()] == ["model.aux.weight", "model.aux.bias"]


def test_integrity_check_catches_a_parameter_the_loss_never_reaches(model):
    model.extra = nn.Linear(3, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(IntegrityError, match=r"no gradient.*model\.extra\.weight, model\.extra\.bias"):
        _checked_step({"model": model}, optimizer, _ce(model))


def test_integrity_check_catches_a_frozen_parameter_moved_by_weight_decay_through_a_stale_optimizer(model):
    # stage 1 trains everything; stage 2 freezes the backbone the FunASR way (requires_grad only) and keeps the
    # optimizer; zero_grad(set_to_none=False) leaves zero gradients, so weight decay and momentum still move it
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    _train(model, optimizer, steps=1)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    chk = UpdateIntegrityCheck({"model": model}, optimizer)
    optimizer.zero_grad(set_to_none=False)
    _ce(model)().backward()
    chk.before_step()
    optimizer.step()
    with pytest.raises(IntegrityError, match=r"frozen but changed by the optimizer step: model\.backbone\.conv"):
        chk.after_step()


def test_integrity_check_catches_frozen_batchnorm_statistics_that_changed(model):
    apply_freeze(model, "backbone")
    model.train()
    optimizer = torch.optim.SGD(trainable_parameter_groups(model, 0.1, 0.0), lr=0.1)

    def loss():
        model.backbone.bn1.running_mean.add_(1.0)  # something bypassing the pin during the forward pass
        return _ce(model)()

    with pytest.raises(IntegrityError, match=r"frozen BatchNorm changed.*: model\.backbone\.bn1\.running_mean"):
        _checked_step({"model": model}, optimizer, loss)


def test_allow_dead_warns_and_returns_the_dead_tensors_instead_of_raising(model, caplog):
    model.extra = nn.Linear(3, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="speakerforge.train.integrity"):
        found = _checked_step({"model": model}, optimizer, _ce(model), allow_dead=True)
    assert {v.name for v in found} == {"model.extra.weight", "model.extra.bias"}
    assert "model.extra.weight" in caplog.text


def test_ignore_patterns_skip_tensors_expected_to_sit_out_the_first_step(model):
    model.extra = nn.Linear(3, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert _checked_step({"model": model}, optimizer, _ce(model), ignore="model.extra") == []
    with pytest.raises(ConfigError, match="ignore pattern"):
        UpdateIntegrityCheck({"model": model}, optimizer, ignore="model.extr")


def test_integrity_check_waits_for_nonzero_lr_and_rearms_after_a_skipped_amp_step(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    chk = UpdateIntegrityCheck({"model": model}, optimizer)
    loss = _ce(model)
    loss().backward()
    assert not chk.before_step()  # warm-up starting at lr 0: nothing could move yet
    optimizer.step()
    assert chk.after_step() == [] and not chk.done
    optimizer.param_groups[0]["lr"] = 0.1
    assert chk.before_step()
    assert chk.after_step(step_skipped=True) == [] and not chk.done
    optimizer.zero_grad()
    loss().backward()
    assert chk.before_step()
    optimizer.step()
    assert chk.after_step() == [] and chk.done
    assert not chk.before_step()  # a no-op from now on


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
def test_weight_norm_computed_weight_is_not_mistaken_for_a_free_tensor():
    layer = torch.nn.utils.weight_norm(nn.Linear(4, 3))  # RDINO's last layer; sets a computed `weight` attribute
    assert find_free_tensors({"head": layer}) == []
    assert find_free_tensors({"head": torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 3))}) == []
    layer.cache = [nn.Parameter(torch.zeros(2))]  # a parameter hidden in a list is not registered
    assert find_free_tensors({"head": layer}) == ["head.cache[0]"]


def test_a_bias_cancelled_by_the_next_batchnorm_is_a_warning_not_a_failure(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 1), nn.BatchNorm1d(8), nn.Flatten(), nn.Linear(80, 5))
    nn.init.constant_(model[0].bias, 10.0)  # its gradient is rounding noise, far below one ulp of 10 after lr 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch()
    chk = UpdateIntegrityCheck({"model": model}, optimizer)
    nn.functional.cross_entropy(model(x), y).backward()
    chk.before_step()
    optimizer.step()
    with caplog.at_level(logging.WARNING, logger="speakerforge.train.integrity"):
        assert chk.after_step() == []
    assert "model.0.bias" in chk.warnings[0] and "bias=False" in caplog.text


def test_freeze_pattern_may_name_a_batchnorm_without_parameters_to_pin_its_statistics(model):
    report = apply_freeze(model, "backbone.pool_bn")
    assert report.frozen == [] and report.frozen_bn == ["backbone.pool_bn"]
    with pytest.raises(ConfigError):
        apply_freeze(model, "backbone.pool_bn", freeze_bn=False)


def test_a_real_gradient_with_a_step_below_float32_resolution_is_a_warning_not_a_failure():
    """[new-user] 1: a tensor near 1.0 whose first step (tiny warm-up lr x gradient) rounds away is not dead."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 5))
    nn.init.constant_(model[0].weight, 1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-9, momentum=0.9)
    chk = UpdateIntegrityCheck({"model": model}, optimizer)
    x, y = torch.randn(16, 4), torch.randint(0, 5, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    before = model[0].weight.detach().clone()
    chk.before_step()
    optimizer.step()
    assert torch.equal(before, model[0].weight)  # the step rounded away
    assert chk.after_step() == []
    assert "model.0.weight" in " ".join(chk.warnings) and "ulp" in " ".join(chk.warnings)


def test_a_tensor_the_step_should_have_moved_but_did_not_still_fails_and_names_the_flag():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    kept = model[2].weight.detach().clone()
    optimizer.register_step_post_hook(lambda opt, args, kwargs: model[2].weight.data.copy_(kept))  # a buggy step
    chk = UpdateIntegrityCheck({"model": model}, optimizer)
    x, y = torch.randn(16, 4), torch.randint(0, 5, (16,))
    nn.functional.cross_entropy(model(x), y).backward()
    chk.before_step()
    optimizer.step()
    with pytest.raises(IntegrityError, match=r"model.2.weight.*--allow-dead-params"):
        chk.after_step()


def test_report_table_opens_the_tree_down_to_where_frozen_and_trainable_separate():
    """[new-user] 7: the table showed only top-level modules, so it could not confirm what a nested pattern froze."""
    from speakerforge.models import build_model

    m = nn.Module()
    m.backbone = build_model("campplus", embedding_dim=16)
    m.classifier = nn.Linear(16, 4)
    rows = [line.rstrip() for line in apply_freeze(m, "backbone.head,backbone.xvector.block1").table().splitlines()]
    labels = [r.split("  ")[0] if not r.startswith(" ") else r[: len(r) - len(r.lstrip())] + r.split()[0] for r in rows]
    assert labels[:4] == ["module", "backbone", "  head", "  xvector"]
    block1 = next(r for r in rows if r.strip().startswith("block1"))
    assert block1.startswith("    block1") and block1.split()[1] == "0"  # wholly frozen: one row, not opened
    assert not any(r.strip().startswith("tdnnd") for r in rows)
    nested = apply_freeze(m, "backbone.xvector.block*.tdnnd*.cam_layer.*").table()
    assert "tdnnd1..tdnnd12 (12 alike)" in nested  # alike siblings share a row, and it opens to the cam_layer
    cam = [r for r in nested.splitlines() if r.strip().startswith("cam_layer")]
    assert len(cam) == 3 and all(r.split()[1] == "0" for r in cam)
