"""`speakerforge asr train`: FunASR's SeACo- and Contextual-Paraformer through the shared training loop.

`AsrTrainer` is a task of the engine (`speakerforge.train.task`); stages, freezing (FunASR prefix semantics, a pattern
that matches nothing is an error), per-stage optimizers, checkpoints and exact resume are the engine's. The network
is FunASR's (`speakerforge.asr.paraformer`), from one of:
- `--init FUNASR_DIR`: a FunASR model directory as released (its `config.yaml`, `model.pt` loaded strictly,
  `tokens.json` + `seg_dict`, `am.mvn`), or an experiment (model file) of `asr train`; the config says
  `model: {name: funasr}` with no `model.args`;
- no `--init`: a new model of `model.args`, a FunASR `config.yaml` (`configs/asr-funasr-small-seaco.yaml`), with
  BPE tokens and CMVN made from the training data (`speakerforge.asr.funasr_new`).
Specific here:
- data: FunASR JSONL (`key`, `source`, `target`, optional per-row `hotwords`), whole utterances, hotwords re-drawn
  every epoch as FunASR's `AudioDatasetHotword` draws them (`speakerforge.asr.data`);
- the `asr:` config section: loss terms per stage (`asr.stage_losses: {stage name: [ce, ctc, cif, hotword]}`,
  default `asr.losses`), their weights (default: `model_conf`, as FunASR), the hotword sampling, the BPE size;
- every stage's freeze list is checked against the module names before the first step of the first stage, so a
  typo in stage 2 is not found after stage 1 has run;
- `decoder.embed` is read by the hotword branch and by the glancing sampler of the CE loss; a stage with neither
  may leave it untouched;
- a hotword-only stage over a frozen ASR part reuses each utterance's ASR states (`asr.cache_asr_states`);
- the run writes `model.safetensors` with the FunASR config, tokens, `seg_dict`, CMVN (and BPE model), so
  `asr decode/eval/export` rebuild it. A ContextualParaformer has no `hotword` loss: its decoder reads the batch's
  list in `ce`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from speakerforge.asr.data import AsrDataset, HotwordSampling, load_asr_sources, make_collate, pad_features
from speakerforge.asr.funasr_dir import FunasrModel
from speakerforge.asr.paraformer import ASR_PART
from speakerforge.asr.paraformer import SeacoParaformer as FunasrSeaco
from speakerforge.config import Config, from_dict, to_dict
from speakerforge.errors import CheckpointError, ConfigError, SpeakerforgeError
from speakerforge.train import freezing
from speakerforge.train.checkpoint import seed_everything
from speakerforge.train.engine import RunOptions, TrainingRun
from speakerforge.train.stages import Stage
from speakerforge.train.task import LossResult

log = logging.getLogger(__name__)

LOSSES = ("ce", "ctc", "cif", "hotword")


@dataclass
class AsrConfig:
    """The `asr:` section."""

    bpe_size: int = 400  # a new model: at most this many BPE pieces learnt from the training transcripts
    losses: list[str] = field(default_factory=lambda: list(LOSSES))  # for stages not in stage_losses
    stage_losses: dict[str, list[str]] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)
    hotwords: HotwordSampling = field(default_factory=HotwordSampling)
    # a hotword-only stage over a frozen ASR part computes each utterance's CIF embeddings and decoder states once
    # (dropout off) and reuses them every epoch: about 6x faster than running the frozen part at every step
    cache_asr_states: bool = True


def parse_asr_config(raw: dict[str, Any] | None, where: str = "config") -> AsrConfig:
    """Validate the `asr:` section: unknown keys, loss names, weights, sampling ranges."""
    a = from_dict(AsrConfig, dict(raw or {}), where, "asr.")
    for key, names in [("asr.losses", a.losses), *((f"asr.stage_losses.{k}", v) for k, v in a.stage_losses.items())]:
        bad = [n for n in names if n not in LOSSES]
        if bad or not names:
            raise ConfigError(
                f"{where}: {key}: unknown loss {bad[0]!r}"
                if bad
                else f"{where}: {key} is empty; choose from {', '.join(LOSSES)}"
            )
    for k, w in a.loss_weights.items():
        if k not in LOSSES or w < 0:
            raise ConfigError(f"{where}: asr.loss_weights.{k}={w!r}: weights are >= 0, for {', '.join(LOSSES)}")
    if a.bpe_size < 8:
        raise ConfigError(f"{where}: asr.bpe_size={a.bpe_size}: need at least 8 pieces")
    h = a.hotwords
    if not (0 <= h.double_prob <= h.prob <= 1):
        raise ConfigError(f"{where}: asr.hotwords: need 0 <= double_prob <= prob <= 1")
    if (
        not (1 <= h.min_len <= h.max_len)
        or h.span_unit not in ("token", "word")
        or min(h.distractors, h.rare_power) < 0
    ):
        raise ConfigError(
            f"{where}: asr.hotwords: need 1 <= min_len <= max_len, span_unit token|word, and "
            "distractors, rare_power >= 0"
        )
    if h.listed not in ("add", "only", "off"):
        raise ConfigError(f"{where}: asr.hotwords.listed {h.listed!r}: choose add, only or off")
    if h.rare_power > 0 and h.span_unit != "word":
        raise ConfigError(f"{where}: asr.hotwords.rare_power counts words: it needs span_unit: word")
    return a


@dataclass
class AsrInit:
    """`asr train --init SRC`: a FunASR model directory, or an experiment / model file of `asr train`."""

    src: str | Path

    def read(self) -> FunasrModel:
        from speakerforge.asr.funasr_dir import load_funasr

        if not Path(self.src).exists():
            raise CheckpointError(
                f"{self.src}: --init source not found (a FunASR model directory, or an `asr train` experiment)"
            )
        return load_funasr(self.src)


class AsrTrainer(TrainingRun):
    """Two-stage (or any-stage) SeACo-Paraformer training; see the module docstring."""

    # features are the model's WavFrontend, utterances whole, the loss FunASR's: these speaker settings do nothing
    unread_keys = (
        "features",
        "head",
        "margin",
        "data.crop_seconds",
        "data.min_seconds",
        "data.speed_perturb",
        "data.augment",
        "data.shared_speakers",
        "stages.margin",
        "stages.crop_seconds",
        "stages.speed_perturb",
    )

    def __init__(
        self, cfg: Config, exp_dir: str | Path, options: RunOptions | None = None, init: AsrInit | None = None
    ):
        self.asr = parse_asr_config(cfg.asr, "config")  # before the run folder is created
        self.init = init
        # `model.args` without --init: a new FunASR model of that config.yaml, its tokens and CMVN made from the
        # training data when the data is read (`speakerforge.asr.funasr_new`)
        self.new_funasr: dict[str, Any] | None = None
        self.funasr: FunasrModel | None = self._read_funasr(cfg, init)
        options = dataclasses.replace(options or RunOptions(), command="asr-train")
        if init is not None:
            options.init_description = {"init": str(Path(init.src).resolve()), "part": "all", "format": "funasr"}
        super().__init__(cfg, exp_dir, options)
        names = [s.name for s in self.stages]
        unknown = [k for k in self.asr.stage_losses if k not in names]
        if unknown:
            raise ConfigError(f"asr.stage_losses.{unknown[0]}: no stage of that name (stages: {', '.join(names)})")
        self._losses: tuple[str, ...] = ()

    # ------------------------------------------------------------------------------------------------ setup
    def _read_funasr(self, cfg: Config, init: AsrInit | None) -> FunasrModel | None:
        """The model of `--init SRC` (weights loaded strictly), or None for a new model of `model.args` (made in
        `build_data`)."""
        if cfg.model.name != "funasr":
            raise ConfigError(
                f"model.name {cfg.model.name}: `asr train` trains FunASR's models, model: {{name: funasr}} with "
                "--init FUNASR_DIR, or with model.args a FunASR config.yaml for a new one "
                "(configs/asr-funasr-small-seaco.yaml; the small model of earlier releases is retired)"
            )
        if init is None:
            if not cfg.model.args:
                raise ConfigError(
                    "model.name funasr: give the FunASR model directory to train with --init FUNASR_DIR, "
                    "or a FunASR config.yaml for a new model as model.args (configs/asr-funasr-small-seaco.yaml)"
                )
            self.new_funasr = dict(cfg.model.args)
            return None
        if cfg.model.args:
            raise ConfigError(
                "model.args: with --init FUNASR_DIR the network is the one its config.yaml describes; remove model.args"
            )
        if cfg.asr and "bpe_size" in cfg.asr:
            raise ConfigError("asr.bpe_size: with --init the tokens are the source's (tokens.json + seg_dict)")
        return init.read()

    @property
    def funasr_model(self) -> FunasrModel:
        if self.funasr is None:
            raise RuntimeError("the FunASR model is made when the data is read (build_data)")
        return self.funasr

    def has_ctc(self) -> bool:
        return self.funasr_model.model.ctc is not None

    def loss_weight(self, name: str) -> float:
        """`asr.loss_weights`, else for a FunASR model its `model_conf` (FunASR's Paraformer loss:
        (1 - ctc_weight) x ce + ctc_weight x ctc + predictor_weight x cif; the seaco loss x 1)."""
        if name in self.asr.loss_weights:
            return self.asr.loss_weights[name]
        m = self.funasr_model.model
        ctc = m.ctc_weight if m.ctc is not None else 0.0
        return {"ce": 1.0 - ctc, "ctc": ctc, "cif": m.predictor_weight, "hotword": 1.0}[name]

    def stage_losses(self, stage: Stage) -> tuple[str, ...]:
        names = self.asr.stage_losses.get(stage.name, self.asr.losses)
        if not isinstance(self.funasr_model.model, FunasrSeaco) and "hotword" in names:
            raise ConfigError(
                f"stage {stage.name!r}: a {self.funasr_model.config.get('model')} has no hotword loss (its decoder "
                "reads the list and learns it through ce); choose from ce, cif, ctc"
            )
        if not self.has_ctc():
            if stage.name in self.asr.stage_losses and "ctc" in names:
                raise ConfigError(f"asr.stage_losses.{stage.name}: ctc selected but the model has no ctc head")
            names = [n for n in names if n != "ctc"]
        return tuple(names)

    def build_data(self) -> None:
        self.load_stage_sources(load_asr_sources)
        self.check_batch_size()
        texts = [u.text for s in self.sources for u in s.utts]
        if self.new_funasr is not None:
            self.funasr = self._new_funasr_model(texts)
        tokens = self.funasr_model.tokens  # FunASR's tokens (tokens.json + seg_dict), NO_BIAS its hotword label
        unk = sum(t.count(tokens.unk_id) for t in map(tokens.encode, texts))
        if unk:
            log.warning("%d token(s) of the transcripts are not in tokens.json and become <unk>", unk)
        model = self.funasr_model.model
        no_bias = model.no_bias if isinstance(model, FunasrSeaco) else 0  # no labels without a seaco loss
        self.collate = make_collate(no_bias, model.sos)
        log.info("data: %d sources, %d utterances, FunASR tokens: %d", len(self.sources), len(texts), len(tokens))

    def _new_funasr_model(self, texts: list[str]) -> FunasrModel:
        """The new FunASR model of `model.args`: BPE pieces of the transcripts, CMVN of the training audio (a
        function of the data alone, so a resumed run makes the same)."""
        from speakerforge.asr.funasr_new import new_funasr_model

        utts = [u for s in self.sources for u in s.utts]
        assert self.new_funasr is not None
        cmvn = self._training_cmvn(self.new_funasr.get("frontend_conf") or {}, utts)
        seed_everything(self.cfg.train.seed)  # the initial weights depend on the seed only
        fm = new_funasr_model(self.new_funasr, texts, cmvn, self.asr.bpe_size)
        log.info(
            "new FunASR %s: %d tokens (BPE of at most %d pieces, both seg_dict forms), am.mvn of %d utterances",
            fm.config["model"],
            len(fm.tokens),
            self.asr.bpe_size,
            len(utts),
        )
        return fm

    def _training_cmvn(self, frontend_conf: dict[str, Any], utts: list) -> torch.Tensor:
        """am.mvn of the training audio. It takes a pass over every utterance, so the first start writes it to the
        run folder (`am-mvn.safetensors`, keyed by the utterances and the frontend) and a resume reads it back."""
        import hashlib
        import json

        from speakerforge.asr.funasr_new import compute_cmvn
        from speakerforge.checkpoint_io import load_model_file, save_model_file
        from speakerforge.data.audio import load_audio

        rows = [(u.path, u.start, u.end) for u in utts]
        key = hashlib.sha256(json.dumps([frontend_conf, rows], sort_keys=True, default=str).encode()).hexdigest()
        path = self.exp / "am-mvn.safetensors"
        if path.is_file():
            try:
                state, meta = load_model_file(path)
                if meta.get("key") == key and "cmvn" in state:
                    log.info("am.mvn of the training audio read from %s", path)
                    return state["cmvn"]
            except SpeakerforgeError as exc:
                log.warning("recomputing am.mvn: %s", exc)
        cmvn = compute_cmvn(frontend_conf, (torch.from_numpy(load_audio(*row)) for row in rows))
        if self.env.is_main:
            save_model_file(path, {"cmvn": cmvn}, {"key": key, "utterances": len(rows)})
        return cmvn

    def build_module(self) -> nn.Module:
        module = self.funasr_model.model
        self.funasr_model.frontend.train()  # dither (frontend_conf.dither; FunASR's 1.0 when absent) in training
        for stage in self.stages:  # every stage's freeze list against the module names, before any training
            try:
                freezing.match_parameters(module, freezing.parse_freeze_patterns(stage.freeze))
            except ConfigError as exc:
                raise ConfigError(f"stage {stage.name!r}: {exc}") from None
            self.stage_losses(stage)
        return module.to(self.device)

    def make_dataset(self, stage: Stage, augment: Callable | None) -> torch.utils.data.Dataset:
        self._losses = self.stage_losses(stage)
        self._states: dict[Any, tuple[torch.Tensor, torch.Tensor]] | None = (
            {} if self.asr.cache_asr_states and self._losses == ("hotword",) else None
        )
        self._states_checked = False
        log.info(
            "stage %r: losses %s",
            stage.name,
            ", ".join(f"{n} x {self.loss_weight(n):g}" for n in self._losses),
        )
        return AsrDataset(
            [self.sources[i] for i in self.stage_sources[stage.index]],
            self.funasr_model.tokens,
            self.cfg.train.seed,
            stage.index,
            self.asr.hotwords,
        )

    def integrity_ignore(self, stage: Stage) -> list[str]:
        losses = self.stage_losses(stage)
        ratio = self.funasr_model.model.sampling_ratio
        glances = "ce" in losses and ratio > 0
        ignore = [] if "hotword" in losses or glances else ["model.decoder.embed"]
        if self.funasr_model.model.predictor.upsample_type is not None:
            # CifPredictorV3's timestamp branch: no loss of SeACo training reaches it (nor FunASR's)
            ignore += [f"model.predictor.{m}" for m in ("upsample_cnn", "blstm", "cif_output2")]
        return ignore

    # ------------------------------------------------------------------------------------------------ steps
    def utterance_features(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded `[B, S]` waveforms -> padded `[B, T, F]` features of the model's WavFrontend (LFR, am.mvn)."""
        return self.funasr_model.frontend([wav[i, : int(n)] for i, n in enumerate(lengths)])

    def compute_loss(self, train_module: nn.Module, batch: dict[str, Any], stage_step: int, micro: int) -> LossResult:
        """The weighted sum of this stage's losses; each loss, and the token accuracy of ce (else hotword)."""
        dev = self.device
        states = self.cached_asr_states(train_module, batch)
        if states is not None:
            feats = feat_lengths = None
        else:
            feats, feat_lengths = self.utterance_features(batch["wav"], batch["wav_lengths"])
            feats, feat_lengths = feats.to(dev), feat_lengths.to(dev)
        out = train_module(
            feats,
            feat_lengths,
            batch["targets"].to(dev),
            batch["target_lengths"].to(dev),
            batch["hotwords"].to(dev),
            batch["hotword_lengths"].to(dev),
            batch["hotword_labels"].to(dev),
            losses=self._losses,
            asr_states=states,
        )
        loss = sum(self.loss_weight(n) * out[n] for n in self._losses)
        acc = out.get("ce_acc", out.get("hotword_acc"))
        terms = {k: float(out[k].detach()) for k in self._losses}
        if "hotword_acc" in out:
            terms["hw_acc"] = float(out["hotword_acc"][0]) / max(1.0, float(out["hotword_acc"][1]))
        if acc is not None:
            terms.update(correct=int(acc[0]), count=int(acc[1]))
        return loss, terms

    def cached_asr_states(
        self, train_module: nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The batch's (CIF embeddings, token mask, decoder states) from the cache of a hotword-only stage, the
        missing utterances computed now in eval mode; None when this stage does not cache (its ASR part trains,
        or `asr.cache_asr_states: false`)."""
        if self._states is None:
            return None
        module = getattr(train_module, "module", train_module)  # DDP wraps it
        if not self._states_checked:
            self._states_checked = True
            training = sorted(
                {
                    n.split(".")[0]
                    for n, p in module.named_parameters()
                    if p.requires_grad and n.split(".")[0] in ASR_PART
                }
            )
            if training:
                log.info(
                    "hotword stage: the ASR part is not frozen (%s trains), so its states are recomputed every step",
                    ", ".join(training),
                )
                self._states = None
                return None
            log.info(
                "hotword stage: the frozen ASR part runs once per utterance (dropout off); its states are "
                "reused every epoch"
            )
        missing = [i for i, u in enumerate(batch["uids"]) if u not in self._states]
        if missing:
            was_training = module.training
            module.eval()
            frontend = self.funasr_model.frontend
            frontend.eval()  # no dither: the states are a function of the weights and the utterance
            # One utterance at a time: its states are then a function of the weights and the utterance alone, not
            # of the batch it first met (padding and batch shape change float sums), so a resumed run refills the
            # cache with exactly the values an uninterrupted run holds.
            for i in missing:
                idx = torch.tensor([i])
                feats, feat_lengths = self.utterance_features(batch["wav"][idx], batch["wav_lengths"][idx])
                emb, mask, hidden = module.asr_states(
                    feats.to(self.device), feat_lengths.to(self.device), batch["target_lengths"][idx].to(self.device)
                )
                k = int(mask[0].sum())
                self._states[batch["uids"][i]] = (emb[0, :k].clone(), hidden[0, :k].clone())
            module.train(was_training)
            frontend.train(was_training)
        rows = [self._states[u] for u in batch["uids"]]
        emb, lengths = pad_features([r[0] for r in rows])
        hidden, _ = pad_features([r[1] for r in rows])
        mask = torch.arange(emb.shape[1])[None, :] < lengths[:, None]
        return emb.to(self.device), mask.to(self.device), hidden.to(self.device)

    # ------------------------------------------------------------------------------------------------ outputs
    def finish(self, module: nn.Module) -> Path:
        from speakerforge.checkpoint_io import save_model_file

        out = self.exp / "model.safetensors"
        if self.env.is_main:
            meta = {
                "kind": "asr",
                "model": "funasr",
                "funasr": self.funasr_model.to_meta(),
                "config": to_dict(self.cfg),
            }
            save_model_file(out, module.state_dict(), meta)
            log.info("ASR model (FunASR %s) written to %s", self.funasr_model.config.get("model"), out)
        return out
