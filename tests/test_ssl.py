"""Self-supervised pretraining (DINO/RDINO, SDPN): prototypes train and are saved, exact resume, EMA teacher outside
the optimizer, update-integrity check (3D-Speaker #191), fine-tuning from an SSL run, losses against speakerlab."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from speakerforge.checkpoint_io import load_state
from speakerforge.cli import main
from speakerforge.config import SourceConfig, load_config
from speakerforge.data.sampling import Draw, load_sources
from speakerforge.data.ssl_views import CropSpec, MultiCropDataset, collate_views
from speakerforge.errors import CheckpointError, ConfigError
from speakerforge.models.ssl import DINOHead, SDPNHead, SSLBranch, ema_momentum, ema_update
from speakerforge.train import freezing
from speakerforge.train.init import read_init
from speakerforge.train.integrity import IntegrityError, UpdateIntegrityCheck
from speakerforge.train.optim import trainable_parameter_groups
from speakerforge.train.pretrain import PretrainTrainer, parse_ssl_config
from speakerforge.train.ssl_objectives import (
    DINOObjective,
    SDPNObjective,
    SSLModule,
    koleo_loss,
    sinkhorn,
    vicreg_regulariser,
)
from speakerforge.train.trainer import RunOptions, StopForTest
from tests.trainutil import TINY_MODEL, assert_same_weights, model_weights, tiny_corpus

SSL_BASE = [
    *TINY_MODEL,
    "data.batch_size=8",
    "train.threads=1",
    "train.log_every=1",
    "optim.lr=0.05",
    "optim.warmup_epochs=0.5",
    "train.seed=5",
    "ssl.global_seconds=0.8",
    "ssl.local_seconds=0.4",
    "ssl.head_hidden_dim=32",
    "ssl.head_bottleneck_dim=16",
]
SDPN_SETS = ["ssl.method=sdpn", "ssl.num_prototypes=32", "train.epochs=2", "train.save_every_steps=2"]


def ssl_config(corpus: Path, *sets: str):
    cfg = load_config(None, [*SSL_BASE, *sets])
    cfg.data.sources = [SourceConfig(path=str(corpus))]
    return cfg


def pretrain(cfg, exp: Path, **opts) -> Path:
    return PretrainTrainer(cfg, exp, RunOptions(**opts)).run()


def latest_state(exp: Path) -> dict:
    return load_state(sorted((exp / "checkpoints").glob("ckpt-*.pt"))[-1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.mktemp("sslcorpus"), n_speakers=6, utts=4, seconds=1.2)


@pytest.fixture(scope="module")
def sdpn_run(corpus, tmp_path_factory):
    """An uninterrupted SDPN run: 24 utterances, batch 8, 2 epochs (6 steps), a checkpoint every 2 steps."""
    exp = tmp_path_factory.mktemp("sdpn")
    pretrain(ssl_config(corpus, *SDPN_SETS), exp)
    return exp


def fresh_module(corpus: Path, tmp_path: Path, *sets: str):
    trainer = PretrainTrainer(ssl_config(corpus, *sets), tmp_path / "fresh")
    trainer.build_data()
    return trainer, trainer.build_module()


# ------------------------------------------------------------------------------------------------ SDPN run
def test_prototypes_change_are_saved_in_every_checkpoint_and_load_back_equal(corpus, sdpn_run, tmp_path):
    _trainer, initial = fresh_module(corpus, tmp_path, *SDPN_SETS)
    ckpts = sorted((sdpn_run / "checkpoints").glob("ckpt-*.pt"))
    assert len(ckpts) >= 2
    for path in ckpts:
        assert "objective.prototypes" in load_state(path)["model"]
    saved = latest_state(sdpn_run)["model"]
    assert saved["objective.prototypes"].shape == (32, 16)
    assert not torch.equal(saved["objective.prototypes"], initial.objective.prototypes.detach())
    initial.load_state_dict(saved)
    assert isinstance(initial.objective.prototypes, torch.nn.Parameter)
    assert torch.equal(initial.objective.prototypes.detach(), saved["objective.prototypes"])


def test_optimizer_holds_prototypes_without_weight_decay_and_never_the_teacher(sdpn_run):
    groups = latest_state(sdpn_run)["optimizer"]["param_groups"]
    names = [n for g in groups for n in g["param_names"]]
    assert not [n for n in names if n.startswith("teacher.")]
    proto = [g for g in groups if "objective.prototypes" in g["param_names"]]
    assert len(proto) == 1 and proto[0]["weight_decay"] == 0.0 and proto[0]["param_names"] == ["objective.prototypes"]
    assert [g["weight_decay"] for g in groups if "student.head.mlp.0.weight" in g["param_names"]] == [1e-4]


def test_integrity_check_passed_with_prototypes_included(sdpn_run, corpus, tmp_path):
    _trainer, module = fresh_module(corpus, tmp_path, *SDPN_SETS)
    trainable = sum(1 for n, _ in module.named_parameters() if not n.startswith("teacher."))
    log = (sdpn_run / "train.log").read_text()
    assert f"update-integrity check passed: {trainable} trainable tensors" in log


def test_resume_mid_epoch_ends_with_the_same_prototypes_and_weights(corpus, sdpn_run, tmp_path):
    """Stopped after 2 steps (checkpoint mid-epoch 1), then after 3 more (step 5 redone from step 4), then finished."""
    cfg = ssl_config(corpus, *SDPN_SETS)
    for k in (2, 3):
        with pytest.raises(StopForTest):
            pretrain(cfg, tmp_path, stop_after_steps=k)
    pretrain(cfg, tmp_path)
    straight, resumed = latest_state(sdpn_run), latest_state(tmp_path)
    assert straight["progress"] == resumed["progress"]
    assert_same_weights(straight["model"], resumed["model"])  # student, teacher (with BN stats), prototypes
    a, b = straight["optimizer"]["state"], resumed["optimizer"]["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k]["momentum_buffer"], b[k]["momentum_buffer"]) for k in a)
    assert_same_weights(model_weights(sdpn_run), model_weights(tmp_path))


def test_model_file_is_the_teacher_backbone(sdpn_run):
    from speakerforge.models.modelfile import load_embedding_model

    state = latest_state(sdpn_run)["model"]
    teacher = {
        "backbone." + k[len("teacher.backbone.") :]: v for k, v in state.items() if k.startswith("teacher.backbone.")
    }
    assert_same_weights(teacher, model_weights(sdpn_run))
    model, meta, _extras = load_embedding_model(sdpn_run / "model.safetensors")
    assert meta["ssl"] == {"method": "sdpn", "part": "teacher"}
    assert model(torch.randn(2, 50, 80)).shape == (2, 16)
    rows = [json.loads(r) for r in (sdpn_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert {"loss", "ploss", "memax", "koleo", "momentum", "acc"} <= rows[0].keys()


# ------------------------------------------------------------------------------------------------ teacher
def test_teacher_gets_no_gradient_and_is_not_in_the_optimizer(corpus, tmp_path):
    trainer, module = fresh_module(corpus, tmp_path, *SDPN_SETS)
    report = trainer.apply_freeze(module, trainer.stages[0])
    assert report.counts["teacher"][0] == 0 and report.counts["teacher"][1] > 0
    groups = trainable_parameter_groups(module, 0.1, 1e-4, param_overrides=trainer.param_overrides(trainer.stages[0]))
    held = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in held for p in module.teacher.parameters())
    assert id(module.objective.prototypes) in held
    feats_g, feats_l = torch.randn(4, 60, 80), torch.randn(16, 30, 80)
    loss, _agree, _count, _terms = module(feats_g, feats_l, 1, 4)
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in module.teacher.parameters())
    assert module.objective.prototypes.grad is not None and module.objective.prototypes.grad.abs().sum() > 0
    # the teacher's BatchNorm is never pinned in eval mode: it runs on batch statistics, as in the references
    assert not [n for n in freezing.frozen_batchnorms(module) if n.startswith("teacher.")]


def test_teacher_after_one_step_is_the_ema_of_the_student(corpus, tmp_path):
    """By hand: teacher_1 = m0 teacher_0 + (1 - m0) student_1, with teacher_0 = student_0 and m0 = 0.996."""
    _trainer, initial = fresh_module(corpus, tmp_path, *SDPN_SETS)
    with pytest.raises(StopForTest):
        pretrain(ssl_config(corpus, *SDPN_SETS, "train.save_every_steps=1"), tmp_path / "one", stop_after_steps=1)
    after = latest_state(tmp_path / "one")["model"]
    m = ema_momentum(0, 6, 0.996, 1.0)
    assert m == pytest.approx(0.996)
    moved = 0
    for name, s0 in initial.student.named_parameters():
        t0 = dict(initial.teacher.named_parameters())[name].detach()
        assert torch.equal(t0, s0.detach())
        s1, t1 = after[f"student.{name}"], after[f"teacher.{name}"]
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s1, rtol=0, atol=1e-6)
        moved += not torch.equal(t1, t0)
    assert moved > 10
    assert ema_momentum(6, 6) == 1.0 and ema_momentum(3, 6) == pytest.approx(0.998)


@pytest.mark.parametrize(
    "name, args",
    [
        ("eres2net", {"embedding_dim": 16, "m_channels": 8, "num_blocks": [1, 1, 1, 1]}),
        ("resnet34", {"embedding_dim": 16, "m_channels": 4}),
    ],
)
def test_any_registry_backbone_trains_as_student_with_an_ema_teacher(name, args):
    from speakerforge.models.registry import build_model

    torch.manual_seed(0)

    def branch():
        return SSLBranch(build_model(name, **args), SDPNHead(16, 32, 16, 3, use_bn=True))

    module = SSLModule("sdpn", branch(), branch(), SDPNObjective(8, 16), weights={"memax": 1.0, "koleo": 0.1})
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    loss, *_ = module(torch.randn(3, 40, 80), torch.randn(12, 20, 80), 1, 4)
    loss.backward()
    torch.optim.SGD(module.parameters(), lr=0.1).step()
    ema_update(module.teacher, module.student, 0.9)
    assert all(p.grad is None for p in module.teacher.parameters())
    moved = [k for k, v in module.teacher.named_parameters() if not torch.equal(v, before[k])]
    assert len(moved) > len(before) // 4


def test_ema_update_leaves_equal_parameters_bit_identical():
    torch.manual_seed(0)
    student = SSLBranch(torch.nn.Linear(4, 4), SDPNHead(4, 8, 4, 2))
    teacher = SSLBranch(torch.nn.Linear(4, 4), SDPNHead(4, 8, 4, 2))
    teacher.load_state_dict(student.state_dict())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.996)
    assert_same_weights(before, teacher.state_dict())


# ------------------------------------------------------------------------------------------------ integrity / #191
def test_prototypes_planted_as_a_plain_tensor_are_caught(corpus, tmp_path, monkeypatch, capsys):
    """3D-Speaker #191: trainable prototypes that no optimizer holds and no checkpoint saves."""
    real_init = SDPNObjective.__init__

    def plain(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        tensor = self.prototypes.detach().clone().requires_grad_(True)
        del self.prototypes
        self.prototypes = tensor  # a plain attribute, as in speakerlab/bin/train_sdpn.py

    monkeypatch.setattr(SDPNObjective, "__init__", plain)
    # through the command: refused before the first step, naming the tensor
    code = main(
        [
            "pretrain",
            "--exp",
            str(tmp_path / "planted"),
            "--data",
            str(corpus),
            *[x for s in (*SSL_BASE, *SDPN_SETS) for x in ("--set", s)],
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "objective.prototypes" in err and "not registered" in err
    # and the update-integrity check itself, with an optimizer built the way speakerlab does (module.parameters())
    _trainer, module = fresh_module(corpus, tmp_path, *SDPN_SETS)
    assert "objective.prototypes" not in module.state_dict()
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    check = UpdateIntegrityCheck({"model": module}, optimizer)
    loss, *_ = module(torch.randn(4, 60, 80), torch.randn(16, 30, 80), 1, 4)
    loss.backward()
    check.before_step()
    optimizer.step()
    with pytest.raises(IntegrityError, match=r"free tensor not registered.*model\.objective\.prototypes"):
        check.after_step()


# ------------------------------------------------------------------------------------------------ DINO
def test_dino_loss_decreases_on_a_tiny_corpus(corpus, tmp_path):
    cfg = ssl_config(
        corpus,
        "ssl.method=dino",
        "ssl.out_dim=64",
        "ssl.add_dim=32",
        "ssl.local_crops=2",
        "ssl.global_seconds=0.5",
        "ssl.local_seconds=0.3",
        "data.batch_size=6",
        "train.epochs=4",
        "optim.warmup_epochs=0",
        "optim.min_lr=0.05",
        "ssl.teacher_momentum=0.9",
        "ssl.teacher_momentum_end=0.9",
    )
    pretrain(cfg, tmp_path)
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    dino = [r["dino"] for r in rows]
    assert len(dino) == 16 and all(math.isfinite(x) for x in dino)
    assert np.mean(dino[-4:]) < 0.5 * np.mean(dino[:2]), dino
    state = latest_state(tmp_path)["model"]
    assert state["objective.center"].abs().sum() > 0  # the centre is a saved buffer, and it moved
    assert {
        "student.head.last_layer.parametrizations.weight.original0",
        "student.head.last_layer.parametrizations.weight.original1",
    } <= state.keys()
    # the unit magnitude of the last layer never trains (norm_last_layer)
    assert torch.equal(state["student.head.last_layer.parametrizations.weight.original0"], torch.ones(64, 1))


def test_dino_last_layer_is_frozen_during_the_first_epoch_only(corpus, tmp_path):
    sets = [
        "ssl.method=dino",
        "ssl.out_dim=16",
        "ssl.add_dim=0",
        "ssl.local_crops=1",
        "ssl.global_crops=1",
        "ssl.vicreg_weight=0",
        "ssl.global_seconds=0.3",
        "ssl.local_seconds=0.2",
        "train.epochs=2",
        "train.save_every_steps=1",
        "train.keep_last=10",
    ]
    pretrain(ssl_config(corpus, *sets), tmp_path / "run")
    key = "student.head.last_layer.parametrizations.weight.original1"
    by_step = {
        int(p.stem.split("-")[1]): load_state(p)["model"][key]
        for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*.pt")
    }
    _trainer, initial = fresh_module(corpus, tmp_path, *sets)
    v0 = initial.student.head.last_layer.parametrizations.weight.original1.detach()
    assert torch.equal(by_step[3], v0)  # 3 steps = epoch 1: untouched (no gradient, no momentum, no decay)
    assert not torch.equal(by_step[6], v0)
    # a DINO run stopped before the last layer unfreezes resumes bit-exactly (centre, teacher BN statistics, ...)
    with pytest.raises(StopForTest):
        pretrain(ssl_config(corpus, *sets), tmp_path / "resumed", stop_after_steps=2)
    pretrain(ssl_config(corpus, *sets), tmp_path / "resumed")
    straight, resumed = latest_state(tmp_path / "run"), latest_state(tmp_path / "resumed")
    assert "objective.center" in resumed["model"]
    assert_same_weights(straight["model"], resumed["model"])


# ------------------------------------------------------------------------------------------------ fine-tuning
FT_SETS = [
    *TINY_MODEL,
    "data.batch_size=8",
    "data.crop_seconds=0.8",
    "train.threads=1",
    "optim.lr=0.05",
    "train.seed=3",
    "train.epochs=1",
]


def _ft(*extra: str) -> list[str]:
    return [x for s in (*FT_SETS, *extra) for x in ("--set", s)]


def _backbone(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if k.startswith("backbone.")}


def test_linear_probe_from_the_ssl_teacher_keeps_its_backbone_bit_identical(sdpn_run, corpus, tmp_path):
    exp = tmp_path / "probe"
    assert (
        main(
            [
                "--quiet",
                "finetune",
                "--init",
                str(sdpn_run),
                "--init-part",
                "teacher",
                "--exp",
                str(exp),
                "--data",
                str(corpus),
                "--freeze",
                "backbone",
                *_ft(),
            ]
        )
        == 0
    )
    assert_same_weights(_backbone(model_weights(sdpn_run)), _backbone(model_weights(exp)))
    assert model_weights(exp)["classifier.weight"].shape[0] == 6
    assert "(teacher backbone)" in (exp / "train.log").read_text()  # [new-user] 13: the log never said "teacher"


def test_full_finetune_from_the_ssl_student_trains_the_backbone(sdpn_run, corpus, tmp_path):
    init = read_init(sdpn_run, part="student")
    student = {
        k[len("student.backbone.") :]: v
        for k, v in latest_state(sdpn_run)["model"].items()
        if k.startswith("student.backbone.")
    }
    assert_same_weights(init.backbone, student)
    exp = tmp_path / "full"
    assert (
        main(
            [
                "--quiet",
                "finetune",
                "--init",
                str(sdpn_run),
                "--init-part",
                "student",
                "--exp",
                str(exp),
                "--data",
                str(corpus),
                *_ft(),
            ]
        )
        == 0
    )
    after = _backbone(model_weights(exp))
    changed = [k for k, v in student.items() if v.is_floating_point() and not torch.equal(v, after["backbone." + k])]
    assert len(changed) > len(student) // 2


def test_an_ssl_run_gives_its_teacher_unless_the_student_is_asked_for(sdpn_run, corpus, tmp_path, caplog):
    """[architecture] one SSL policy (`artifacts.backbone_prefix`): `load_model` took the teacher silently and
    `finetune --init` refused without --init-part; both now take the teacher by default and log it."""
    import logging

    from speakerforge.artifacts import backbone_prefix, list_checkpoints
    from speakerforge.checkpoint_io import load_state
    from speakerforge.train.init import read_init

    state = load_state(list_checkpoints(sdpn_run)[0][1])["model"]
    with caplog.at_level(logging.INFO):
        default = read_init(sdpn_run).backbone
    assert "using its teacher backbone" in caplog.text
    for part in ("teacher", "student"):
        chosen = read_init(sdpn_run, part=part).backbone
        assert all(torch.equal(chosen[k], state[f"{part}.backbone.{k}"]) for k in chosen)
    assert all(torch.equal(default[k], state[f"teacher.backbone.{k}"]) for k in default)
    code = main(["finetune", "--init", str(sdpn_run), "--exp", str(tmp_path / "x"), "--data", str(corpus), *_ft()])
    assert code == 0
    with pytest.raises(CheckpointError, match="not a self-supervised run"):
        backbone_prefix(["backbone.x"], "student", "x")


# ------------------------------------------------------------------------------------------------ config and data
def test_ssl_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"ssl\.method"):
        parse_ssl_config({})
    with pytest.raises(ConfigError, match=r"unknown key 'ssl\.num_protoypes'.*'ssl\.num_prototypes'"):
        parse_ssl_config({"method": "sdpn", "num_protoypes": 8})
    with pytest.raises(ConfigError, match=r"ssl\.teacher_temp belongs to method dino"):
        parse_ssl_config({"method": "sdpn", "teacher_temp": 0.04})
    with pytest.raises(ConfigError, match=r"ssl\.local_crops=0"):
        parse_ssl_config({"method": "sdpn", "local_crops": 0})
    assert parse_ssl_config({"method": "dino"}).global_crops == 2
    assert parse_ssl_config({"method": "sdpn"}).global_crops == 1


def test_multicrop_views_are_seeded_per_example_and_stack(corpus):
    sources = load_sources([(str(corpus), 1.0, "")], need_speakers=False)
    ds = MultiCropDataset(sources, CropSpec(2, 0.5), CropSpec(3, 0.25), seed=1)
    a = ds[(0, Draw(0, 5, 7))]
    b = ds[(0, Draw(0, 5, 7))]
    c = ds[(1, Draw(0, 5, 7))]
    assert a[0].shape == (2, 8000) and a[1].shape == (3, 4000)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1][0], a[1][1])  # crops at their own positions
    batch = collate_views([a, c])
    assert batch["global"].shape == (2, 2, 8000) and batch["local"].shape == (2, 3, 4000)


# ------------------------------------------------------------------------------------------------ objectives
def test_sinkhorn_balances_prototypes_and_normalises_rows():
    g = torch.Generator().manual_seed(0)
    q = torch.softmax(torch.randn(64, 8, generator=g) * 3 + torch.linspace(0, 4, 8), dim=1)
    raw = q.sum(dim=0)
    assert raw.max() / raw.min() > 10  # a strongly unbalanced input
    for iters in (3, 50):
        out = sinkhorn(q, iters)
        torch.testing.assert_close(out.sum(dim=1), torch.ones(64), rtol=0, atol=1e-5)  # each row an assignment
        cols = out.sum(dim=0)  # mass per prototype, target 64 / 8
        if iters == 3:  # SDPN's setting: most of the imbalance gone
            assert cols.max() / cols.min() < 1.5 and (cols / 8 - 1).abs().max() < 0.25, cols
        else:
            torch.testing.assert_close(cols, torch.full((8,), 8.0), rtol=1e-4, atol=0)


def _speakerlab(modname: str):
    try:
        return __import__(f"speakerlab.{modname}", fromlist=["x"])
    except ModuleNotFoundError as exc:
        pytest.skip(f"speakerlab reference unavailable ({exc.name} missing; pip install speakerlab==0.0.6 --no-deps)")


def test_sdpn_and_koleo_losses_match_speakerlab():
    ref = _speakerlab("loss.sdpn_loss")
    ref_koleo = _speakerlab("loss.keleo_loss")
    g = torch.Generator().manual_seed(1)
    b, d, k = 6, 16, 32
    anchors = torch.randn(4 * b, d, generator=g, requires_grad=True)
    targets = torch.randn(b, d, generator=g)
    protos = torch.randn(k, d, generator=g)
    ours = SDPNObjective(k, d)
    with torch.no_grad():
        ours.prototypes.copy_(protos)
    out = ours(anchors, targets, 4, 1)
    (out["ploss"] + out["memax"]).backward()
    ref_protos = protos.clone().requires_grad_(True)
    anchors_ref = anchors.detach().clone().requires_grad_(True)
    ploss, memax, _log, _targets = ref.SDPNLoss(tau=0.1)(anchors_ref, targets, ref_protos, torch.eye(k))
    (ploss + memax).backward()
    torch.testing.assert_close(out["ploss"], ploss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["memax"], memax, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.prototypes.grad, ref_protos.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(anchors.grad, anchors_ref.grad, rtol=1e-4, atol=1e-6)
    q = torch.softmax(torch.randn(b, k, generator=g), 1)
    torch.testing.assert_close(sinkhorn(q, 3), ref.SDPNLoss().distributed_sinkhorn(q.clone()), rtol=1e-5, atol=1e-7)
    emb = torch.randn(b, d, generator=g)
    torch.testing.assert_close(koleo_loss(emb), ref_koleo.KoLeoLoss()(emb), rtol=1e-5, atol=1e-6)


def test_dino_loss_centre_and_vicreg_match_speakerlab(monkeypatch):
    ref = _speakerlab("loss.dino_loss")

    def all_gather(out, x):
        out[0].copy_(x)

    # speakerlab calls torch.distributed unconditionally: a one-process stand-in
    monkeypatch.setattr(
        ref,
        "dist",
        types.SimpleNamespace(
            all_reduce=lambda x: None, get_world_size=lambda: 1, get_rank=lambda: 0, all_gather=all_gather
        ),
    )
    g = torch.Generator().manual_seed(2)
    b, k = 5, 24
    student = torch.randn(6 * b, k, generator=g)
    teacher = torch.randn(2 * b, k, generator=g)
    center = torch.randn(1, k, generator=g)
    theirs = ref.DINOLoss(k, 6, 0.04, 0.04, 0, 1, student_temp=0.1, center_momentum=0.9)
    ours = DINOObjective(k, 0.1, 0.9)
    theirs.center = center.clone()
    ours.center.copy_(center)
    loss, _agree, count = ours(student, teacher, 6, 2, 0.04)
    torch.testing.assert_close(loss, theirs(student, teacher, 0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.center, theirs.center, rtol=1e-6, atol=1e-7)
    assert count == 2 * 5 * b
    s_reg, t_reg = torch.randn(2 * 8, 12, generator=g), torch.randn(2 * 8, 12, generator=g)
    expected = ref.RegLoss(12, 10.0, 1.0, 8, global_ncrops=2)(t_reg, s_reg)
    torch.testing.assert_close(vicreg_regulariser(s_reg, t_reg, 2, 10.0, 1.0), expected, rtol=1e-5, atol=1e-6)


def test_dino_head_shapes_and_fixed_magnitude():
    head = DINOHead(16, out_dim=40, hidden_dim=32, bottleneck_dim=8, layers=3, add_dim=24, use_bn=True)
    reg, logits = head(torch.randn(4, 16))
    assert reg.shape == (4, 24) and logits.shape == (4, 40)
    assert head.fixed_parameters() == ["last_layer.parametrizations.weight.original0"]
    names = dict(head.named_parameters())
    assert torch.equal(names["last_layer.parametrizations.weight.original0"], torch.ones(40, 1))
    row_norms = head.last_layer.weight.norm(dim=1)
    torch.testing.assert_close(row_norms, torch.ones(40))


def test_train_and_finetune_refuse_a_config_with_an_ssl_section(tmp_path, capsys):
    """`speakerforge train --config configs/sdpn-ecapa.yaml` would otherwise run supervised training and drop the
    SDPN settings without a word."""
    root = Path(__file__).resolve().parents[1]
    assert (
        main(
            [
                "train",
                "--config",
                str(root / "configs" / "sdpn-ecapa.yaml"),
                "--exp",
                str(tmp_path / "exp"),
                "--data",
                str(tmp_path / "none.csv"),
            ]
        )
        != 0
    )
    err = capsys.readouterr().err
    assert "ssl: section" in err and "speakerforge pretrain" in err and "`train`" in err
    assert not (tmp_path / "exp").exists()
