"""Two-stage SeACo training (FunASR's network, a new tiny model): each stage changes exactly the part it trains; bad
freeze lists fail before training; kills in either stage resume bit-identical; `asr eval/decode` on the result."""

from __future__ import annotations

import pytest
import torch

from speakerforge.asr.paraformer import ASR_PART
from speakerforge.asr.trainer import AsrTrainer
from speakerforge.errors import ConfigError
from tests.asr.helpers import tiny_config, write_tone_corpus

TEXTS = ["ab cd", "bad cab", "dab", "ace bed", "cade", "bee dab"]
HOTWORD_PART = ("bias_encoder", "seaco_decoder", "hotword_output_layer")
TIMESTAMP = ("predictor.upsample_cnn", "predictor.blstm", "predictor.cif_output2")  # CifPredictorV3's, no loss

TWO_STAGES = [
    {"name": "asr", "epochs": 1, "freeze": ["bias_encoder", "seaco_decoder", "hotword_output_layer"]},
    {"name": "hotword", "epochs": 1, "freeze": "encoder,predictor,decoder,ctc"},
]
STAGE_LOSSES = {"stage_losses": {"asr": ["ce", "ctc", "cif"], "hotword": ["hotword"]}}


class _Snapshots(AsrTrainer):
    """Records the weights at the start of every stage and at the end."""

    snaps: list[dict[str, torch.Tensor]]

    def apply_freeze(self, module, stage):
        self.snaps = getattr(self, "snaps", [])
        self.snaps.append({k: v.detach().clone() for k, v in module.state_dict().items()})
        return super().apply_freeze(module, stage)

    def finish(self, module):
        self.snaps.append({k: v.detach().clone() for k, v in module.state_dict().items()})
        return super().finish(module)


def _changed(a: dict, b: dict, prefixes: tuple[str, ...]) -> dict[str, bool]:
    return {k: not torch.equal(a[k], b[k]) for k in a if k.split(".")[0] in prefixes}


def test_stage1_trains_only_the_asr_part_and_stage2_only_the_hotword_part(tmp_path):
    data = write_tone_corpus(tmp_path / "data", TEXTS)
    trainer = _Snapshots(tiny_config(data, TWO_STAGES, STAGE_LOSSES), tmp_path / "exp")
    out = trainer.run()
    assert out.is_file()
    start, after1, after2 = trainer.snaps
    hot1 = _changed(start, after1, HOTWORD_PART)
    assert hot1 and not any(hot1.values()), "stage 1 changed hotword modules"
    asr1 = {k: v for k, v in _changed(start, after1, ASR_PART).items() if not k.startswith(TIMESTAMP)}
    changed1 = {k for k, v in asr1.items() if v}
    # everything of the ASR part trained, the token embedding too (through the glancing sampler)
    assert changed1 == set(asr1), set(asr1) - changed1
    asr2 = _changed(after1, after2, ASR_PART)
    assert asr2 and not any(asr2.values()), "stage 2 changed the ASR part"
    hot2 = _changed(after1, after2, HOTWORD_PART)
    assert all(hot2.values()), [k for k, v in hot2.items() if not v]


def test_a_freeze_prefix_that_matches_nothing_fails_before_training(tmp_path):
    data = write_tone_corpus(tmp_path / "data", TEXTS)
    stages = [dict(TWO_STAGES[0]), {"name": "hotword", "epochs": 1, "freeze": "encoder,predictor,decodr"}]
    with pytest.raises(ConfigError, match="decodr"):
        AsrTrainer(tiny_config(data, stages, STAGE_LOSSES), tmp_path / "exp").run()
    assert not (tmp_path / "exp" / "checkpoints").exists() or not any((tmp_path / "exp" / "checkpoints").iterdir())


def test_a_trainable_module_left_out_of_the_stage_losses_is_reported(tmp_path):
    """Stage 2 without `ctc` in its freeze list: the CTC head gets no gradient, and the trainer says so."""
    data = write_tone_corpus(tmp_path / "data", TEXTS)
    stages = [{"name": "hotword", "epochs": 1, "freeze": "encoder,predictor,decoder"}]
    from speakerforge.train.integrity import IntegrityError

    with pytest.raises(IntegrityError, match="ctc"):  # a training error (exit 2 in the CLI), not a config error
        AsrTrainer(tiny_config(data, stages, {"stage_losses": {"hotword": ["hotword"]}}), tmp_path / "exp").run()


def test_eval_prints_a_row_per_condition_and_filters_long_lists(tmp_path):
    """`asr eval` end to end on a 1-step model: no list, true list, true + 60 distractors (> 50: filtered)."""
    from speakerforge.asr.infer import evaluate

    data = write_tone_corpus(tmp_path / "data", TEXTS)
    out = AsrTrainer(
        tiny_config(
            data, [dict(TWO_STAGES[0], epochs=1)], {"stage_losses": {"asr": ["ce", "cif"]}}, integrity_check=False
        ),
        tmp_path / "exp",
    ).run()
    (tmp_path / "true.txt").write_text("cab\ndab\n")
    (tmp_path / "d60.txt").write_text("".join(f"zz{chr(97 + i % 26)}{chr(97 + i // 26)}\n" for i in range(60)))
    rows, table = evaluate(out, data, tmp_path / "true.txt", [tmp_path / "d60.txt"])
    assert list(rows) == ["no hotwords", "true hotwords", "true + 60 distractors"]
    lines = table.splitlines()
    assert len(lines) == 7  # header, 3 rows, 2 summary lines against the unbiased row, the decoding
    assert lines[-1].startswith("decoding: seaco")
    assert lines[4].startswith("true hotwords: hotword recall") and "); U-WER" in lines[4]
    assert all(0 <= r["recall"] <= 100 for r in rows.values())


def test_killed_in_each_stage_then_resumed_ends_with_the_same_weights(tmp_path):
    """Stopped mid stage 1 (after 2 steps), then mid stage 2 (3 steps later), then finished: the same model and
    optimizer state as a run that never stopped (hotword draws, glancing and dropout RNG, per-stage optimizer)."""
    from speakerforge.train.trainer import RunOptions, StopForTest
    from tests.trainutil import assert_same_weights, model_weights

    data = write_tone_corpus(tmp_path / "data", TEXTS)
    cfg = tiny_config(data, TWO_STAGES, STAGE_LOSSES, save_every_steps=1)  # dropout 0.1: its RNG is restored too
    straight = AsrTrainer(cfg, tmp_path / "straight").run()
    for k in (2, 3):
        with pytest.raises(StopForTest):
            AsrTrainer(cfg, tmp_path / "resumed", RunOptions(stop_after_steps=k)).run()
    resumed = AsrTrainer(cfg, tmp_path / "resumed").run()
    assert_same_weights(model_weights(straight.parent), model_weights(resumed.parent))
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert "resum" in log.lower()
    # the new model's am.mvn (a pass over all training audio) was computed once and read back on both resumes
    assert log.count("am.mvn of the training audio read from") == 2


def test_init_from_an_experiment_starts_from_its_weights(tmp_path):
    """`--init EXP`: a second run (here the hotword stage alone) starts from the first run's model, tokens and
    CMVN; a missing source is a clear error."""
    from speakerforge.asr.trainer import AsrInit
    from speakerforge.errors import CheckpointError
    from tests.trainutil import model_weights

    data = write_tone_corpus(tmp_path / "data", TEXTS)
    first = AsrTrainer(
        tiny_config(data, [dict(TWO_STAGES[0])], {"stage_losses": {"asr": ["ce", "ctc", "cif"]}}), tmp_path / "asr"
    ).run()
    src = model_weights(first.parent)

    class _Start(AsrTrainer):
        def apply_freeze(self, module, stage):
            self.start = {k: v.detach().clone() for k, v in module.state_dict().items()}
            return super().apply_freeze(module, stage)

    cfg = tiny_config(data, [dict(TWO_STAGES[1])], {"stage_losses": {"hotword": ["hotword"]}})
    cfg.model.args = {}
    cfg.asr.pop("bpe_size")
    trainer = _Start(cfg, tmp_path / "hot", init=AsrInit(first.parent))
    trainer.run()
    assert all(torch.equal(trainer.start[k], src[k]) for k in src)
    with pytest.raises(CheckpointError, match="not found"):
        AsrInit(tmp_path / "nothing").read()


def _without_noise(args: dict) -> dict:
    """Dropout 0 and no SpecAug: the frozen part then gives the same states at every step."""
    for conf in args.values():
        if isinstance(conf, dict):
            conf.update({k: 0.0 for k in conf if "dropout" in k})
    args.pop("specaug", None)
    args.pop("specaug_conf", None)
    return args


def test_hotword_stage_reuses_frozen_asr_states_and_trains_as_without_the_cache(tmp_path):
    """With dropout 0 and no SpecAug the cached ASR states are the ones the frozen part would give at every step,
    so the run ends where the uncached run ends; the encoder runs once per utterance (first epoch) instead of every
    step."""
    from tests.trainutil import model_weights

    data = write_tone_corpus(tmp_path / "data", TEXTS)
    cfg = tiny_config(data, [dict(TWO_STAGES[0])], {"stage_losses": {"asr": ["ce", "ctc", "cif"]}})
    _without_noise(cfg.model.args)
    first = AsrTrainer(cfg, tmp_path / "asr").run()
    from speakerforge.asr.trainer import AsrInit

    calls = []

    class _Count(AsrTrainer):
        def build_module(self):
            module = super().build_module()
            module.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
            return module

    ends = {}
    for cache in (True, False):
        calls.clear()
        cfg = tiny_config(
            data, [dict(TWO_STAGES[1], epochs=3)], {"stage_losses": {"hotword": ["hotword"]}, "cache_asr_states": cache}
        )
        cfg.optim.optimizer = "sgd"  # Adam would blow float noise in gradients that are ~0 (key biases) up to lr
        # one utterance per batch, as the cache computes them: FunASR's CIF scales the alphas to the target count in
        # float32, and a batch's other shape moves a sum to 9.99999, which leaves a last token unfired (FunASR does so)
        cfg.data.batch_size = 1
        cfg.model.args = {}
        cfg.asr.pop("bpe_size")
        out = _Count(cfg, tmp_path / f"hot{cache}", init=AsrInit(first.parent)).run()
        ends[cache] = (model_weights(out.parent), sum(calls))
    (cached, n_cached), (plain, n_plain) = ends[True], ends[False]
    assert n_cached == len(TEXTS) and n_plain == 3 * len(TEXTS)
    for k in plain:
        assert torch.allclose(cached[k], plain[k], atol=1e-5), (k, float((cached[k] - plain[k]).abs().max()))
    assert "reused every epoch" in (tmp_path / "hotTrue" / "train.log").read_text()


def test_ctc_decoding_with_a_context_graph_through_the_cli(tmp_path, capsys):
    """`asr eval/decode --decoding ctc`: the same table and lines; a model without a ctc head is a clear error."""
    from speakerforge.cli import main

    data = write_tone_corpus(tmp_path / "data", TEXTS)
    out = AsrTrainer(
        tiny_config(data, [dict(TWO_STAGES[0])], {"stage_losses": {"asr": ["ce", "ctc", "cif"]}}), tmp_path / "exp"
    ).run()
    (tmp_path / "true.txt").write_text("cab\ndab\n")
    assert (
        main(
            [
                "asr",
                "eval",
                "--model",
                str(out),
                "--data",
                str(data),
                "--hotwords",
                str(tmp_path / "true.txt"),
                "--decoding",
                "ctc",
                "--context-score",
                "3",
                "--beam",
                "4",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "condition" and lines[2].startswith("true hotwords")
    assert lines[-1] == "decoding: ctc beam search, context score 3, beam 4"
    assert (
        main(
            [
                "asr",
                "decode",
                "--model",
                str(out),
                "--data",
                str(data),
                "--hotwords",
                str(tmp_path / "true.txt"),
                "--decoding",
                "ctc",
            ]
        )
        == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == len(TEXTS)

    cfg = tiny_config(data, [dict(TWO_STAGES[0])], {"stage_losses": {"asr": ["ce", "cif"]}})
    cfg.model.args["model_conf"]["ctc_weight"] = 0.0
    no_ctc = AsrTrainer(cfg, tmp_path / "no_ctc").run()
    assert main(["asr", "decode", "--model", str(no_ctc), "--data", str(data), "--decoding", "ctc"]) != 0
    assert "no ctc head" in capsys.readouterr().err


def test_killed_inside_a_cached_hotword_stage_resumes_bit_identical(tmp_path):
    """[new-user] 3: killed after a stage-2 checkpoint, the resumed run ended with hotword tensors up to 1.6e-5 off:
    the cache of frozen ASR states was filled in whatever batches were missing it, so the states of an utterance
    depended on where the run had been resumed (padding and batch shape change float sums)."""
    from speakerforge.train.trainer import RunOptions, StopForTest
    from tests.trainutil import assert_same_weights, model_weights

    texts = ["ab cd", "bad cab ace", "dab", "ace bed dab cab", "cade", "bee dab", "a", "cab bead dace"]
    data = write_tone_corpus(tmp_path / "data", texts)
    stages = [dict(TWO_STAGES[0]), {**TWO_STAGES[1], "epochs": 3}]
    cfg = tiny_config(data, stages, STAGE_LOSSES, save_every_steps=1)
    cfg.data.batch_size = 3
    straight = AsrTrainer(cfg, tmp_path / "straight").run()
    with pytest.raises(StopForTest):  # stage 1 is 3 steps; killed after the 2nd step of stage 2
        AsrTrainer(cfg, tmp_path / "resumed", RunOptions(stop_after_steps=5)).run()
    resumed = AsrTrainer(cfg, tmp_path / "resumed").run()
    assert_same_weights(model_weights(straight.parent), model_weights(resumed.parent))


def test_killed_before_the_first_checkpoint_of_stage_2_resumes_bit_identical(tmp_path):
    """Checkpoints at epoch ends only: killed in stage 2 before its first one, the run resumes from the checkpoint
    written at stage 1's end. It used to restore stage 1's RNG there, where an uninterrupted run starts stage 2 from
    the seed (dropout, hotword stage): 23 hotword tensors ended different."""
    from speakerforge.train.trainer import RunOptions, StopForTest
    from tests.trainutil import assert_same_weights, model_weights

    data = write_tone_corpus(tmp_path / "data", TEXTS)
    stages = [dict(TWO_STAGES[0]), {**TWO_STAGES[1], "epochs": 2}]
    cfg = tiny_config(data, stages, STAGE_LOSSES)  # save_every_steps 0; dropout 0.1
    straight = AsrTrainer(cfg, tmp_path / "straight").run()
    with pytest.raises(StopForTest):  # stage 1 is 3 steps
        AsrTrainer(cfg, tmp_path / "resumed", RunOptions(stop_after_steps=4)).run()
    resumed = AsrTrainer(cfg, tmp_path / "resumed").run()
    assert_same_weights(model_weights(straight.parent), model_weights(resumed.parent))


def test_one_token_hotwords_leave_the_lstm_recurrent_weights_untrained_and_the_check_says_so_at_the_stages_end(
    tmp_path,
):
    """Found by recipes/asr-funasr: a hotword stage whose first batch drew only one-token hotwords stopped with
    "gradient is exactly zero: bias_encoder.weight_hh" (an LSTM's recurrent weights meet h0 = 0 at the first token).
    Such a tensor is now re-judged on the next steps (`tests/test_freezing.py`); here every hotword of every batch
    is one token, so the recurrent weights really never train, and the stage's end says so."""
    from speakerforge.train.integrity import IntegrityError

    texts = ["a b", "b c", "c a", "a c", "b a", "c b"]  # every word one piece: every hotword one token
    data = write_tone_corpus(tmp_path / "data", texts)
    asr = {"stage_losses": {"hotword": ["hotword"]}, "hotwords": {"prob": 1.0, "min_len": 1, "span_unit": "word"}}
    with pytest.raises(IntegrityError, match=r"exactly zero on each of its first 3 steps.*bias_encoder\.weight_hh"):
        AsrTrainer(tiny_config(data, [dict(TWO_STAGES[1])], asr), tmp_path / "exp").run()
    relaxed = tiny_config(data, [dict(TWO_STAGES[1])], asr, allow_dead_params=True)
    assert AsrTrainer(relaxed, tmp_path / "relaxed").run().is_file()
    assert "weight_hh" in (tmp_path / "relaxed" / "train.log").read_text()


def test_hotwords_of_one_token_and_of_several_pass_the_integrity_check_whichever_comes_first(tmp_path):
    texts = ["a b", "b c", "dab cab", "bad cade", "c a", "bee dab"]
    data = write_tone_corpus(tmp_path / "data", texts)
    asr = {"stage_losses": {"hotword": ["hotword"]}, "hotwords": {"prob": 1.0, "min_len": 1, "span_unit": "word"}}
    out = AsrTrainer(tiny_config(data, [{**TWO_STAGES[1], "epochs": 2}], asr), tmp_path / "exp").run()
    assert out.is_file() and "update-integrity check passed" in (tmp_path / "exp" / "train.log").read_text()
