"""The augmentation policy of a training run: the config checked as a whole, and `Augmenter`, which draws clean,
noisy, reverberant or both per utterance."""

from __future__ import annotations

import logging

import numpy as np

from speakerforge.config import AugmentConfig
from speakerforge.data.augment.banks import NoiseBank, RirBank
from speakerforge.errors import ConfigError

log = logging.getLogger(__name__)


def check_augment(config: AugmentConfig, prefix: str = "augment") -> None:
    """ConfigError naming `prefix.key` for settings that each pass their declared range but not together."""
    for name in ("noise_prob", "reverb_prob", "both_prob"):
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{prefix}.{name}={value}: a probability must lie in [0, 1]")
    total = config.noise_prob + config.reverb_prob + config.both_prob
    if total > 1.0 + 1e-9:
        raise ConfigError(
            f"{prefix}.noise_prob + reverb_prob + both_prob = {total:g} > 1: they are exclusive choices per utterance"
        )
    if config.enabled:
        if not config.noise_dir and (config.noise_prob > 0 or config.both_prob > 0):
            raise ConfigError(
                f"{prefix}.noise_dir is not set but {prefix}.noise_prob={config.noise_prob} / "
                f"both_prob={config.both_prob}: set the folder or make those probabilities 0"
            )
        if not config.rir_dir and (config.reverb_prob > 0 or config.both_prob > 0):
            raise ConfigError(
                f"{prefix}.rir_dir is not set but {prefix}.reverb_prob={config.reverb_prob} / "
                f"both_prob={config.both_prob}: set the folder or make those probabilities 0"
            )
    for name in ("noise_snr", "music_snr", "babble_snr", "babble_speakers"):
        pair = list(getattr(config, name))
        if len(pair) != 2:
            raise ConfigError(f"{prefix}.{name}={pair}: give two numbers, [low, high]")
        if pair[0] > pair[1]:
            raise ConfigError(f"{prefix}.{name}={pair}: low must not exceed high")
    if config.babble_speakers[0] < 1:
        raise ConfigError(f"{prefix}.babble_speakers must be at least 1, got {config.babble_speakers}")


class Augmenter:
    """Applies the configured policy; `augmenter(wav, rng)` is a pure function of `wav` and the rng state."""

    def __init__(self, config: AugmentConfig, prefix: str = "augment") -> None:
        check_augment(config, prefix)
        self.config = config
        self.noise: NoiseBank | None = None
        self.rirs: RirBank | None = None
        if config.noise_dir:
            snr = {
                "noise": tuple(config.noise_snr),
                "music": tuple(config.music_snr),
                "speech": tuple(config.babble_snr),
            }
            self.noise = NoiseBank.from_path(
                config.noise_dir,
                key=f"{prefix}.noise_dir",
                snr_db=snr,
                babble_speakers=(config.babble_speakers[0], config.babble_speakers[1]),
                cache_size=config.cache_size,
            )
        if config.rir_dir:
            self.rirs = RirBank.from_path(config.rir_dir, key=f"{prefix}.rir_dir", cache_size=config.cache_size)
        if not config.enabled:
            log.info("augmentation off: neither %s.noise_dir nor %s.rir_dir is set", prefix, prefix)

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Clean, noisy, reverberant or both, drawn once per call; same length, float32."""
        c = self.config
        if not c.enabled:
            return np.asarray(wav, dtype=np.float32)
        u = float(rng.random())
        if u < c.noise_prob:
            return self.noise.add_random(wav, rng)
        if u < c.noise_prob + c.reverb_prob:
            return self.rirs.reverberate_random(wav, rng)
        if u < c.noise_prob + c.reverb_prob + c.both_prob:
            return self.noise.add_random(self.rirs.reverberate_random(wav, rng), rng)
        return np.asarray(wav, dtype=np.float32)
