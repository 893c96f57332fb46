"""Config schema: unknown keys and wrong types are errors that name the key and suggest the right one."""

from __future__ import annotations

import pytest

from speakerforge.config import Config, config_diff, dump_config, load_config, to_dict
from speakerforge.errors import ConfigError


def _write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults_load_without_a_file():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.features.num_mel_bins == 80


def test_yaml_values_and_overrides_apply_in_order(tmp_path):
    p = _write(tmp_path, "optim: {lr: 0.2}\nmodel: {name: campplus, args: {embedding_dim: 64}}\n")
    cfg = load_config(p, ["optim.lr=0.01", "model.args.m_channels=16", "train.freeze=backbone.a,backbone.b"])
    assert cfg.optim.lr == 0.01
    assert cfg.model.args == {"embedding_dim": 64, "m_channels": 16}
    assert cfg.train.freeze == ["backbone.a", "backbone.b"]


def test_unknown_key_names_it_and_suggests_nearest(tmp_path):
    p = _write(tmp_path, "data:\n  speed_pertub: [1.0, 0.9]\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "data.speed_pertub" in str(err.value) and "data.speed_perturb" in str(err.value)


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="optimm"):
        load_config(_write(tmp_path, "optimm: {lr: 1}\n"))


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.batch_size must be an integer"):
        load_config(_write(tmp_path, "data: {batch_size: many}\n"))
    with pytest.raises(ConfigError, match="train.freeze_bn must be true or false"):
        load_config(None, ["train.freeze_bn=3"])


def test_set_of_missing_key_is_an_error_with_suggestion():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.lrr=0.1"])
    assert "optim.lrr" in str(err.value) and "optim.lr" in str(err.value)


def test_yaml_scientific_notation_string_is_accepted_as_float(tmp_path):
    cfg = load_config(_write(tmp_path, "optim: {min_lr: 1e-5}\n"))
    assert cfg.optim.min_lr == pytest.approx(1e-5)


def test_stages_inherit_and_validate(tmp_path):
    p = _write(
        tmp_path,
        "stages:\n  - {name: head, epochs: 1, freeze: [backbone], lr: 0.1}\n"
        "  - {name: all, epochs: 2, margin: {final: 0.5}}\n",
    )
    cfg = load_config(p)
    assert cfg.stages[0].freeze == ["backbone"] and cfg.stages[1].lr is None
    assert cfg.stages[1].margin.final == 0.5
    with pytest.raises(ConfigError, match=r"stages\[0\]|frezee"):
        load_config(_write(tmp_path, "stages:\n  - {frezee: [x]}\n"))


def test_dump_round_trip_and_diff(tmp_path):
    cfg = load_config(None, ["optim.lr=0.3"])
    again = load_config(_write(tmp_path, dump_config(cfg)))
    assert to_dict(again) == to_dict(cfg)
    diff = config_diff(to_dict(cfg), to_dict(load_config(None, ["optim.lr=0.4"])))
    assert diff == ["optim.lr: 0.3 -> 0.4"]


STAGED = "stages:\n  - {name: asr, epochs: 2}\n  - {name: hotword, epochs: 1, lr: 0.1}\n"


def test_set_reaches_a_stage_by_index_or_by_name(tmp_path):
    """[new-user] 5: `--set stages.0.epochs=3` was refused while the error listed `epochs` among valid keys."""
    (tmp_path / "c.yaml").write_text(STAGED)
    cfg = load_config(tmp_path / "c.yaml", ["stages.0.epochs=3", "stages.hotword.lr=0.5", "stages.asr.freeze=[x]"])
    assert [(s.name, s.epochs, s.lr, s.freeze) for s in cfg.stages] == [
        ("asr", 3, None, ["x"]),
        ("hotword", 1, 0.5, []),
    ]


@pytest.mark.parametrize(
    "item, message",
    [
        ("stages.2.epochs=1", r"the config has 2 stages \(0\.\.1 or a name: asr, hotword\)"),
        ("stages.hot.epochs=1", r"no item of stages is named 'hot'"),
        ("stages.epochs=3", r"stages is a list; pick an item by index \(from 0\) or name, e\.g\. stages\.0\.epochs"),
        ("stages.0.epoch=3", r"unknown key 'stages\.0\.epoch'; did you mean 'stages\.0\.epochs'"),
    ],
)
def test_set_of_a_missing_stage_is_one_clear_line(tmp_path, item, message):
    (tmp_path / "c.yaml").write_text(STAGED)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "c.yaml", [item])


def test_set_stage_through_the_cli(tmp_path, capsys):
    from speakerforge.cli import main

    (tmp_path / "c.yaml").write_text(STAGED)
    code = main(["--quiet", "train", "--config", str(tmp_path / "c.yaml"), "--exp", str(tmp_path / "e"),
                 "--data", str(tmp_path / "missing.jsonl"), "--set", "stages.9.epochs=3"])  # fmt: skip
    assert code == 2 and "the config has 2 stages" in capsys.readouterr().err


def test_a_setting_added_by_a_newer_version_at_its_default_is_no_config_change():
    """A run started before `data.augment.noise_snr` existed resumes: the new key at its default changes nothing."""
    from speakerforge.config import Config, config_diff, to_dict

    new = to_dict(Config())
    old = to_dict(Config())
    del old["data"]["augment"]["noise_snr"]
    assert config_diff(old, new, defaults=to_dict(Config())) == []
    changed = to_dict(load_config(None, ["data.augment.noise_snr=[5, 10]"]))
    diff = config_diff(old, changed, defaults=to_dict(Config()))
    assert diff == ["data.augment.noise_snr: '<absent>' -> [5.0, 10.0]"]


def test_a_key_the_running_task_does_not_read_is_an_error_naming_the_task(tmp_path):
    """[architecture]: `data.crop_seconds`, `head` and `margin` were validated and then silently ignored by
    `pretrain` and `asr train`; each task now names the keys it never reads."""
    from speakerforge.asr.trainer import AsrTrainer
    from speakerforge.config.parse import check_unread_keys
    from speakerforge.train.pretrain import PretrainTrainer
    from speakerforge.train.task import Task

    cfg = load_config(None, ["head.scale=20"])
    check_unread_keys(cfg, Task.unread_keys, "train")  # the speaker task reads head
    with pytest.raises(ConfigError, match=r"config: head is not read by `speakerforge pretrain`"):
        check_unread_keys(cfg, PretrainTrainer.unread_keys, "pretrain")
    cfg = load_config(None, ["stages=[{name: a, crop_seconds: 2.0}]"])
    with pytest.raises(ConfigError, match=r"stages\.0\.crop_seconds is not read by `speakerforge asr train`"):
        check_unread_keys(cfg, AsrTrainer.unread_keys, "asr-train")
    cfg = load_config(None, ["features.num_mel_bins=40"])
    with pytest.raises(ConfigError, match="features is not read"):
        check_unread_keys(cfg, AsrTrainer.unread_keys, "asr-train")
    check_unread_keys(load_config(None, []), AsrTrainer.unread_keys, "asr-train")  # defaults are fine


def test_asr_train_refuses_speaker_settings_before_making_the_run_folder(tmp_path):
    from speakerforge.asr.trainer import AsrTrainer
    from tests.asr.helpers import tiny_config, write_tone_corpus

    cfg = tiny_config(write_tone_corpus(tmp_path / "data", ["ab cd", "cab"]))
    cfg.data.crop_seconds = 2.0
    with pytest.raises(ConfigError, match="data.crop_seconds is not read by `speakerforge asr train`"):
        AsrTrainer(cfg, tmp_path / "exp")
    assert not (tmp_path / "exp").exists()
