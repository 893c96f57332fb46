"""The training engine: exact resume, several sources, config-change rules, non-finite losses, bad data."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from speakerforge.errors import ConfigError, SpeakerforgeError
from speakerforge.train.trainer import RunOptions, StopForTest, Trainer, TrainingError
from tests.trainutil import assert_same_weights, model_weights, tiny_config, tiny_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.mktemp("corpus"))


def _train(cfg, exp, **opts):
    return Trainer(cfg, exp, RunOptions(**opts)).run()


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory):
    exp = tmp_path_factory.mktemp("straight")
    _train(tiny_config([corpus], "train.save_every_steps=2", "train.epochs=3"), exp)
    return exp


def test_training_writes_model_curves_config_and_metrics(straight):
    for name in ("model.safetensors", "config.yaml", "train.log", "metrics.jsonl", "training_curves.png", "run.json"):
        assert (straight / name).is_file(), name
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert {"loss", "acc", "lr", "margin", "samples_per_s"} <= rows[0].keys()
    assert rows[-1]["margin"] == pytest.approx(0.2)


@pytest.mark.parametrize("stops", [[1], [2, 3], [4]])
def test_resume_after_stop_matches_uninterrupted_run(corpus, straight, tmp_path, stops):
    """Stopped after k steps (checkpoints every 2 steps, so some steps are redone) and resumed: same weights."""
    cfg = tiny_config([corpus], "train.save_every_steps=2", "train.epochs=3")
    for k in stops:
        with pytest.raises(StopForTest):
            _train(cfg, tmp_path, stop_after_steps=k)
    _train(cfg, tmp_path)
    assert_same_weights(model_weights(straight), model_weights(tmp_path))


def test_rerun_of_a_finished_run_changes_nothing(corpus, straight, tmp_path):
    cfg = tiny_config([corpus], "train.save_every_steps=2", "train.epochs=3")
    _train(cfg, tmp_path)
    before = model_weights(tmp_path)
    _train(cfg, tmp_path)
    assert_same_weights(before, model_weights(tmp_path))


def test_changed_config_is_refused_with_a_diff(corpus, tmp_path):
    _train(tiny_config([corpus], "train.epochs=1"), tmp_path)
    with pytest.raises(ConfigError) as err:
        _train(tiny_config([corpus], "train.epochs=1", "optim.lr=0.01"), tmp_path)
    assert "optim.lr: 0.05 -> 0.01" in str(err.value) and "--allow-config-change" in str(err.value)


def test_no_resume_starts_afresh_in_a_new_subfolder_and_keeps_the_old_run(corpus, tmp_path):
    cfg = tiny_config([corpus], "train.epochs=1")
    _train(cfg, tmp_path)
    old = (tmp_path / "model.safetensors").read_bytes()
    out = _train(tiny_config([corpus], "train.epochs=1", "optim.lr=0.01"), tmp_path, resume=False)
    assert out.parent.name == "restart-1"
    assert (tmp_path / "model.safetensors").read_bytes() == old


def test_corrupt_newest_checkpoint_falls_back_to_previous(corpus, straight, tmp_path, caplog):
    cfg = tiny_config([corpus], "train.save_every_steps=2", "train.epochs=3")
    with pytest.raises(StopForTest):
        _train(cfg, tmp_path, stop_after_steps=4)
    newest = sorted((tmp_path / "checkpoints").glob("ckpt-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        _train(cfg, tmp_path)
    assert newest.name in caplog.text
    assert_same_weights(model_weights(straight), model_weights(tmp_path))


def test_two_sources_get_separate_speaker_namespaces_and_counts(tmp_path, caplog):
    a = tiny_corpus(tmp_path / "a", n_speakers=4, prefix="spk", seed=1)
    b = tiny_corpus(tmp_path / "b", n_speakers=3, prefix="spk", seed=2, utts=2)  # same speaker names, other people
    cfg = tiny_config([a, b], "train.epochs=1")
    cfg.data.sources[1].weight = 2.0
    cfg.data.sources[1].name = "bsrc"
    with caplog.at_level(logging.INFO):
        _train(cfg, tmp_path / "exp")
    from speakerforge.checkpoint_io import load_model_file

    _state, meta = load_model_file(tmp_path / "exp" / "model.safetensors")
    assert (
        len(meta["speakers"]) == 7 and "bsrc/spk00" in meta["speakers"] and "a/spk00" in meta["speakers"]
    )  # a/train.jsonl is named after its folder
    assert "a=13, bsrc=9" in caplog.text  # 22 draws split by weight x size: 16 : 2 x 6


def test_shared_speakers_merge_names_across_sources(tmp_path):
    a = tiny_corpus(tmp_path / "a", n_speakers=4, seed=1)
    b = tiny_corpus(tmp_path / "b", n_speakers=3, seed=2)
    _train(tiny_config([a, b], "train.epochs=1", "data.shared_speakers=true"), tmp_path / "exp")
    from speakerforge.checkpoint_io import load_model_file

    assert len(load_model_file(tmp_path / "exp" / "model.safetensors")[1]["speakers"]) == 4


def test_nonfinite_losses_are_skipped_then_stop_training(corpus, tmp_path, monkeypatch):
    from speakerforge.train import objectives

    real = objectives.SupervisedModule.forward
    calls = {"n": 0}

    def sometimes_nan(self, feats, labels):
        loss, correct = real(self, feats, labels)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] >= 3 else loss), correct

    monkeypatch.setattr(objectives.SupervisedModule, "forward", sometimes_nan)
    cfg = tiny_config([corpus], "train.save_every_steps=1", "train.max_nonfinite_steps=2", "train.epochs=3")
    with pytest.raises(TrainingError, match="NaN/inf for 2 steps in a row"):
        _train(cfg, tmp_path)
    # steps 1-2 were good and checkpointed; steps 3-4 were skipped and wrote nothing: the last good one is newest
    ckpts = sorted((tmp_path / "checkpoints").glob("ckpt-*.pt"))
    assert ckpts[-1].name == "ckpt-000000002.pt"
    from speakerforge.checkpoint_io import load_state

    st = load_state(ckpts[-1])
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())


def test_unreadable_rows_stop_before_training_or_are_skipped(corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = corpus.read_text().splitlines()
    (tmp_path / "broken.wav").write_text("not audio")
    (tmp_path / "empty.wav").write_bytes(b"")
    bad.write_text(
        "\n".join(
            rows
            + [
                json.dumps({"key": "x1", "wav": "broken.wav", "spk": "spk00"}),
                json.dumps({"key": "x2", "wav": "empty.wav", "spk": "spk00"}),
            ]
        )
        + "\n"
    )
    # manifests written by make_synthetic_corpus hold absolute-or-relative paths: rebase them
    fixed = []
    for line in bad.read_text().splitlines():
        row = json.loads(line)
        if not row["wav"].startswith("/") and row["key"].startswith("spk"):
            row["wav"] = str(corpus.parent / row["wav"])
        fixed.append(json.dumps(row))
    bad.write_text("\n".join(fixed) + "\n")
    with pytest.raises(SpeakerforgeError) as err:
        _train(tiny_config([bad], "train.epochs=1"), tmp_path / "exp1")
    assert "2 unreadable training rows" in str(err.value) and "bad.jsonl:25" in str(err.value)
    assert not (tmp_path / "exp1" / "checkpoints").exists()
    _train(tiny_config([bad], "train.epochs=1", "data.skip_bad_audio=true"), tmp_path / "exp2")
    skipped = (tmp_path / "exp2" / "skipped.tsv").read_text().splitlines()
    assert len(skipped) == 2 and skipped[0].startswith(str(bad) + ":25")


def test_missing_source_and_batch_mismatch_are_clear_errors(corpus, tmp_path):
    with pytest.raises(SpeakerforgeError, match="nope.jsonl: data source not found"):
        _train(tiny_config([tmp_path / "nope.jsonl"]), tmp_path / "e1")
    with pytest.raises(ConfigError, match="multiple of"):
        _train(tiny_config([corpus], "data.batch_size=9", "train.grad_accum=2"), tmp_path / "e2")


def test_grad_accumulation_splits_each_step_into_micro_batches(corpus, tmp_path, monkeypatch):
    from speakerforge.data import datasets

    sizes = []
    real = datasets.collate_crops

    def spy(batch):
        sizes.append(len(batch))
        return real(batch)

    monkeypatch.setattr(Trainer, "collate", staticmethod(spy))
    _train(tiny_config([corpus], "train.epochs=1", "train.grad_accum=2"), tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sizes == [4] * 6 and [r["step"] for r in rows] == [1, 2, 3]  # 24 samples, batch 8 = 3 steps of 2 x 4


def test_bf16_autocast_trains_on_cpu(corpus, tmp_path):
    _train(tiny_config([corpus], "train.epochs=1", "train.amp=bf16"), tmp_path)
    w = model_weights(tmp_path)
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        _train(tiny_config([corpus], "train.epochs=1", "train.amp=fp16"), tmp_path / "x")


def test_shipped_demo_config_with_a_long_warmup_passes_the_integrity_check(tmp_path, caplog):
    """[hardening] 10 / [new-user] 1: `demo-ecapa.yaml` with `data.samples_per_epoch=1000000` starts warm-up at lr
    1.6e-6; the first step then rounds away for many tensors near 1.0, which the check used to call dead (23)."""
    from pathlib import Path

    from speakerforge.config import SourceConfig, load_config

    corpus = tiny_corpus(tmp_path / "c", n_speakers=4, seed=5)
    config = Path(__file__).resolve().parents[1] / "configs" / "demo-ecapa.yaml"
    cfg = load_config(config, ["data.samples_per_epoch=1000000", "data.num_workers=0", "train.threads=1"])
    cfg.data.sources = [SourceConfig(path=str(corpus))]
    with caplog.at_level(logging.INFO, logger="speakerforge.train.integrity"), pytest.raises(StopForTest):
        Trainer(cfg, tmp_path / "exp", RunOptions(stop_after_steps=2)).run()
    assert "update-integrity check" in caplog.text and "ulp" in caplog.text
    assert "asp.linear2.bias" not in caplog.text  # cancelled by the softmax over time, by design: not reported


def _cli_train(exp, corpus, *sets, extra=()):
    from speakerforge.cli import main

    base = [*TRAIN_SETS, *sets]
    return main(
        ["--quiet", "train", "--exp", str(exp), "--data", str(corpus), *extra, *(x for s in base for x in ("--set", s))]
    )


TRAIN_SETS = [
    "model.name=ecapa_tdnn",
    "model.args={channels: 8, embedding_dim: 8}",
    "data.batch_size=8",
    "data.crop_seconds=0.5",
    "train.threads=1",
    "train.seed=3",
    "optim.warmup_epochs=0",
]


def test_extending_a_finished_run_trains_the_extra_epochs_and_says_so(corpus, tmp_path, caplog):
    """[new-user] 2: `--set train.epochs=4 --allow-config-change` on a finished 2-epoch run trained nothing, exited 0
    and rewrote config.yaml to say 4 epochs."""
    exp = tmp_path / "full"
    assert _cli_train(exp, corpus, "train.epochs=2") == 0
    steps_2 = json.loads((exp / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    before = model_weights(exp)
    with caplog.at_level(logging.WARNING, logger="speakerforge.train.trainer"):
        assert _cli_train(exp, corpus, "train.epochs=4", extra=["--allow-config-change"]) == 0
    rows = [json.loads(x) for x in (exp / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 * steps_2 and {r["epoch"] for r in rows} == {1, 2, 3, 4}
    assert "epochs 2 -> 4" in caplog.text and "recomputed over 4 epochs" in caplog.text
    after = model_weights(exp)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_shortening_a_run_below_what_it_trained_is_refused(corpus, tmp_path, capsys):
    exp = tmp_path / "full"
    assert _cli_train(exp, corpus, "train.epochs=2") == 0
    before = (exp / "config.yaml").read_text()
    assert _cli_train(exp, corpus, "train.epochs=1", extra=["--allow-config-change"]) == 2
    err = capsys.readouterr().err
    assert "epochs changed from 2 to 1, but it has trained 2 epoch(s)" in err and "--no-resume" in err
    assert (exp / "config.yaml").read_text() == before  # nothing claimed


def test_rerunning_a_killed_no_resume_command_resumes_its_restart(corpus, straight, tmp_path):
    """[new-user] 6: the re-run of a killed `--no-resume` command started restart-2 instead of resuming restart-1."""
    cfg = tiny_config([corpus], "train.save_every_steps=2", "train.epochs=3")
    _train(tiny_config([corpus], "train.epochs=1"), tmp_path)  # the folder's original run, finished
    with pytest.raises(StopForTest):
        _train(cfg, tmp_path, resume=False, stop_after_steps=3)  # killed inside restart-1
    out = _train(cfg, tmp_path, resume=False)  # the same command again
    assert out.parent.name == "restart-1" and not (tmp_path / "restart-2").exists()
    assert_same_weights(model_weights(straight), model_weights(tmp_path / "restart-1"))
    # a finished restart with the same config: --no-resume now starts afresh once more
    assert _train(cfg, tmp_path, resume=False).parent.name == "restart-2"


def test_resume_without_the_flag_takes_the_newest_run_of_the_folder(corpus, tmp_path):
    cfg = tiny_config([corpus], "train.save_every_steps=2", "train.epochs=2")
    _train(tiny_config([corpus], "train.epochs=1"), tmp_path)
    with pytest.raises(StopForTest):
        _train(cfg, tmp_path, resume=False, stop_after_steps=2)  # after its first checkpoint
    assert _train(cfg, tmp_path).parent.name == "restart-1"  # not the finished original in tmp_path


def test_sources_from_prepare_are_named_after_their_folders_and_data_spec_sets_name_and_weight(tmp_path, caplog):
    """[new-user] 8: `--data a b c` of three `prepare` outputs gave sources `manifest`, `manifest2`, `manifest3`."""
    from speakerforge.cli import main

    for name, seed in (("libri", 1), ("cv-fa", 2), ("cv-multi", 3)):
        assert main(["--quiet", "prepare", "synthetic", "--out", str(tmp_path / name), "--speakers", "3",
                     "--utts-per-speaker", "2", "--seconds", "1", "--seed", str(seed)]) == 0  # fmt: skip
    data = [str(tmp_path / "libri" / "manifest.jsonl"), str(tmp_path / "cv-fa" / "manifest.jsonl")]
    data.append(f"{tmp_path / 'cv-multi' / 'manifest.jsonl'}:multi:3")
    with caplog.at_level(logging.INFO, logger="speakerforge.train.trainer"):
        assert (
            _cli_train(tmp_path / "exp", tmp_path, "train.epochs=1", "data.batch_size=4", extra=["--data", *data]) == 0
        )
    assert "libri=" in caplog.text and "cv-fa=" in caplog.text and "multi=" in caplog.text
    assert "manifest2" not in caplog.text
    from speakerforge.checkpoint_io import load_model_file

    speakers = load_model_file(tmp_path / "exp" / "model.safetensors")[1]["speakers"]
    assert {s.split("/")[0] for s in speakers} == {"libri", "cv-fa", "multi"}


@pytest.mark.parametrize(
    "spec, message",
    [("x.jsonl:name:heavy", "is not a number"), ("x.jsonl:n:0", "> 0"), ("x.jsonl:bad name", "letters, digits")],
)
def test_a_bad_data_spec_is_one_clear_error(spec, message):
    from speakerforge.config import SourceConfig

    with pytest.raises(ConfigError, match=message):
        SourceConfig.from_spec(spec)


def test_a_changed_config_is_refused_in_one_line_naming_the_keys(tmp_path, corpus, capsys):
    """[new-user] 9: the refusal spanned many lines and dumped whole `data.sources` lists."""
    exp = tmp_path / "e"
    assert _cli_train(exp, corpus, "train.epochs=1") == 0
    capsys.readouterr()
    other = tiny_corpus(tmp_path / "other", n_speakers=3, seed=9)
    assert _cli_train(exp, corpus, "train.epochs=1", "optim.lr=0.01", extra=["--data", str(corpus), str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "in 2 keys (data.sources; optim.lr: 0.1 -> 0.01)" in err[0] and "--allow-config-change" in err[0]
