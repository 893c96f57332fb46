"""Waveform and feature augmentation: additive noise, reverberation, speed perturbation, SpecAugment.

Every random choice is drawn from a generator the caller passes in (`numpy.random.Generator` for waveforms,
`torch.Generator` for feature masks), never from global state, so that a resumed run that restores the generator
states reproduces the same augmented samples bit for bit. What is cached (decoded noise and RIR files) never changes
which numbers are drawn.

Policy (3D-Speaker / WeSpeaker): per utterance, with probability `noise_prob` add noise, with `reverb_prob`
reverberate, with `both_prob` reverberate then add noise, otherwise leave it clean. Noise comes from a MUSAN-like bank:
`noise` at 0-15 dB SNR, `music` at 5-15 dB, and babble of 3-7 talkers from `speech`, each talker at 13-20 dB.
Levels are kept as they are (no peak normalisation, no clipping): the features are mean-normalised, so a gain is
irrelevant, and a physical mix keeps the requested SNR exact.

The package's modules: `waveform` (mixing, reverberation, speed), `masking` (SpecAugment), `banks` (noise and RIR
files) and `policy` (`Augmenter`).
"""

from speakerforge.data.augment.banks import (
    NOISE_CATEGORIES,
    NoiseBank,
    NoiseItem,
    RirBank,
    write_audio_list,
)
from speakerforge.data.augment.masking import spec_augment
from speakerforge.data.augment.policy import Augmenter, check_augment
from speakerforge.data.augment.waveform import add_babble, add_noise, reverberate, speed_perturb

__all__ = [
    "NOISE_CATEGORIES",
    "Augmenter",
    "NoiseBank",
    "NoiseItem",
    "RirBank",
    "add_babble",
    "add_noise",
    "check_augment",
    "reverberate",
    "spec_augment",
    "speed_perturb",
    "write_audio_list",
]
